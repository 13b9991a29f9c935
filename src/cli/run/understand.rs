//! `nextflow understand`: a question about an image, answered in words.

use super::*;

pub fn understand(args: &UnderstandArgs, device: &Device) -> Result<()> {
    let size = config_of(&args.model)?.parts()?.tokenizer.image_size;
    let rgb = read_image(&args.input, size)?;
    let (model, info) = load_nextflow(&args.model, device)?;
    let t = Instant::now();
    let indices = model.encode_image(&from_rgb8(&rgb, size, model.dtype(), model.device())?)?;
    let encode = t.elapsed();
    let tok = model.text.as_ref().ok_or_else(|| fail("random weights have no tokenizer to print text with"))?;
    let mut stream = StreamDecoder::new(tok, true);
    let mut answer = String::new();
    let steps = if args.json { Some(ui::Steps::new("answer", args.max_new_tokens, "tokens")) } else { None };
    let mut n = 0;
    let out = model.understand(&indices, &args.prompt, args.max_new_tokens, &mut |id| {
        if let Some(s) = &steps {
            s.step(n, args.max_new_tokens, "");
            n += 1;
        }
        if let Ok(piece) = stream.push(id) {
            if !args.json {
                print!("{piece}");
                let _ = std::io::stdout().flush();
            }
            answer.push_str(&piece);
        }
        ControlFlow::Continue(())
    })?;
    drop(steps);
    answer.push_str(&stream.finish()?);
    if args.json {
        print_json(&report::UnderstandReport {
            meta: info.meta,
            prompt: args.prompt.clone(),
            image: args.input.image.display().to_string(),
            answer: answer.trim().to_string(),
            ids: out.ids.clone(),
            timings_ms: report::TextTimings { load: ms(info.load), encode: Some(ms(encode)), prefill: ms(out.prefill), decode: ms(out.decode), total: ms(encode + out.prefill + out.decode) },
        })?;
    } else {
        println!();
        ui::note(format_args!("time: encode {:.1} ms, prefill {:.1} ms, decode {:.1} ms", ms(encode), ms(out.prefill), ms(out.decode)));
    }
    Ok(())
}
