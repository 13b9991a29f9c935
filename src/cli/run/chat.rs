//! `nextflow chat`: text (and, for NextFlow models, images) in answer to a prompt.

use super::*;

/// NextFlow models in `chat`: text, and an image wherever the model writes `<boi>`.
fn chat_interleaved(args: &ChatArgs, device: &Device, prompt: &str, text_opts: TextOptions) -> Result<()> {
    if args.system.is_some() {
        return Err(fail("--system needs a chat template, and this NextFlow model has none; put the instruction in --prompt"));
    }
    if args.logits_out.is_some() {
        return Err(fail("--logits-out records text-only generation: with a NextFlow model give the prompt as --prompt-ids"));
    }
    let force = args.model.force;
    if let Some(pattern) = &args.images_out {
        check_outputs(&[image_path(pattern, 0, 2)], force)?;
    }
    let (model, info) = load_nextflow(&args.model, device)?;
    let started = Instant::now();
    let tok = model.text.as_ref().ok_or_else(|| fail("random weights have no tokenizer"))?;
    let opts = ImageOptions { seed: args.seed, ..model.default_image_options() };
    let mut saved = Vec::new();
    let mut text_all = String::new();
    let mut failed: Option<Box<dyn std::error::Error>> = None;
    let pieces = model.interleaved(prompt, &text_opts, 4, &opts, &mut |_| {})?;
    for piece in &pieces {
        match piece {
            nextflow_model::Piece::Text(ids) => {
                let t = tok.decode(ids, true)?;
                if !args.json {
                    print!("{t} ");
                }
                text_all.push_str(&t);
                text_all.push(' ');
            }
            nextflow_model::Piece::Image(g) => {
                let path = args.images_out.as_ref().map(|p| image_path(p, saved.len(), 2));
                match save_images(g, path.as_ref().map(std::slice::from_ref), &|_| None, force) {
                    Ok(mut p) => {
                        let p = p.remove(0);
                        if !args.json {
                            print!("[image: {}] ", p.display());
                        }
                        saved.push(report::Image { path: p.display().to_string(), seed: opts.seed });
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
    }
    if args.json {
        let total = started.elapsed();
        print_json(&report::ChatReport {
            meta: info.meta,
            prompt: Some(prompt.to_string()),
            prompt_ids: Vec::new(),
            ids: pieces.iter().filter_map(|p| if let nextflow_model::Piece::Text(ids) = p { Some(ids.clone()) } else { None }).flatten().collect(),
            text: text_all.trim().to_string(),
            images: saved,
            decoding: if text_opts.temperature > 0.0 { "sample" } else { "greedy" },
            seed: args.seed,
            stopped_by_stop_token: false,
            tokens_per_s: report::TokensPerS { prefill: 0.0, decode: 0.0 },
            timings_ms: report::TextTimings { load: ms(info.load), encode: None, prefill: 0.0, decode: ms(total), total: ms(total) },
        })?;
    } else {
        println!();
    }
    failed.map_or(Ok(()), Err)
}

/// Whether `chat` samples: any sampling option (--temperature above 0, --top-k, --top-p)
/// turns sampling on; `--temperature 0` is greedy decoding, which --top-k/--top-p cannot
/// shape, so that pair is refused rather than one of them silently dropped (clap refuses
/// --greedy with any of them).
pub(super) fn chat_samples(args: &ChatArgs) -> Result<bool> {
    let shaping = args.top_k.is_some() || args.top_p.is_some();
    if args.temperature == Some(0.0) && shaping {
        return Err(fail("--temperature 0 decodes greedily, which --top-k and --top-p cannot shape: drop them, or give a temperature above 0"));
    }
    Ok(!args.greedy && (args.temperature.is_some_and(|t| t > 0.0) || (args.temperature.is_none() && shaping)))
}

pub fn chat(args: &ChatArgs, device: &Device) -> Result<()> {
    let config = config_of(&args.model)?;
    let sampled = chat_samples(args)?;
    let mut opts = TextOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: if sampled { args.temperature.unwrap_or(1.0) } else { 0.0 },
        top_k: args.top_k.unwrap_or(0),
        top_p: args.top_p.unwrap_or(1.0),
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        stop_tokens: Vec::new(),
        keep_logits: args.logits_out.is_some(),
        vocab_limit: config.nextflow.as_ref().map(|p| p.vocabulary.code_start()),
    };
    // Every value is checked as given, whether or not greedy decoding uses it.
    TextOptions { temperature: args.temperature.unwrap_or(0.0), ..opts.clone() }.validate().map_err(as_flags)?;
    if args.images_out.is_some() && (config.model_type != ModelType::NextFlow || args.prompt_ids.is_some() || args.prompt.is_none()) {
        return Err(fail("-o/--out (--images-out) is for NextFlow models answering a --prompt (their answers may contain images)"));
    }
    if let Some(path) = &args.logits_out {
        check_new(path, args.model.force)?;
    }
    if args.prompt_ids.is_none() && !args.model.random_weights && config.model_type == ModelType::NextFlow {
        if let Some(prompt) = &args.prompt {
            return chat_interleaved(args, device, prompt, opts);
        }
    }
    let context = config.backbone.max_position_embeddings;
    let positions = args.prompt_ids.as_ref().map_or(4096, Vec::len).saturating_add(args.max_new_tokens).min(context);
    let m = load_text(&args.model, device, positions)?;
    opts.stop_tokens = m.stop_tokens();
    let templated = m.tokenizer.as_ref().is_some_and(|t| t.has_chat_template());
    if args.system.is_some() && (!templated || args.prompt_ids.is_some()) {
        return Err(fail(if args.prompt_ids.is_some() {
            "--system needs a text prompt rendered by the chat template; --prompt-ids are used as given"
        } else {
            "--system needs a chat template, and this checkpoint has none (tokenizer_config.json without chat_template)"
        }));
    }
    if let (Some(tok), Some(system)) = (&m.tokenizer, &args.system) {
        refuse_control_tokens(tok, "--system", system)?;
    }
    let mut history: Vec<Message> = args.system.iter().map(|s| Message { role: "system".into(), content: s.clone() }).collect();
    let encode = |history: &[Message], m: &TextModel| -> Result<Vec<u32>> {
        if m.tokenizer.is_none() {
            return Err(fail("this checkpoint has no tokenizer.json: give --prompt-ids"));
        }
        m.prompt_ids(history)
    };
    let run_once = |prompt: Vec<u32>, m: &TextModel| -> Result<(text::TextOutput, String)> {
        let mut stream = m.tokenizer.as_ref().map(|t| StreamDecoder::new(t, true));
        let mut text_out = String::new();
        let out = text::generate(&m.transformer, &prompt, &opts, &mut |id| {
            if let Some(s) = stream.as_mut() {
                if let Ok(piece) = s.push(id) {
                    if !args.json {
                        print!("{piece}");
                        let _ = std::io::stdout().flush();
                    }
                    text_out.push_str(&piece);
                }
            }
            ControlFlow::Continue(())
        })?;
        if let Some(s) = stream.as_mut() {
            let rest = s.finish()?;
            if !args.json {
                print!("{rest}");
            }
            text_out.push_str(&rest);
        }
        Ok((out, text_out))
    };
    let report = |out: &text::TextOutput| {
        if ui::quiet() {
            return;
        }
        eprintln!(
            "\n{} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.1} tok/s{}",
            out.prompt_tokens,
            out.ids.len(),
            out.prefill_tokens_per_s(),
            out.decode_tokens_per_s(),
            if out.stopped_by.is_some() { " (stop token)" } else { "" }
        );
    };
    let one_shot = args.prompt.is_some() || args.prompt_ids.is_some();
    if one_shot {
        let prompt = match (&args.prompt_ids, &args.prompt) {
            (Some(ids), _) => ids.clone(),
            (None, Some(p)) => {
                history.push(Message { role: "user".into(), content: p.clone() });
                encode(&history, &m)?
            }
            _ => unreachable!(),
        };
        let (out, text_out) = run_once(prompt.clone(), &m)?;
        if let Some(path) = &args.logits_out {
            let limit = opts.vocab_limit.unwrap_or(m.config.vocab_size).min(m.config.vocab_size);
            write_new(path, &nextflow_model::npy::encode_f32(&out.logits, &[out.logits.len() / limit, limit]), args.model.force)?;
        }
        if args.json {
            let r = |x: f64| (x * 10.0).round() / 10.0;
            print_json(&report::ChatReport {
                meta: m.info.meta.clone(),
                prompt: args.prompt.clone(),
                prompt_ids: prompt,
                ids: out.ids.clone(),
                text: text_out,
                images: Vec::new(),
                decoding: if opts.temperature > 0.0 { "sample" } else { "greedy" },
                seed: args.seed,
                stopped_by_stop_token: out.stopped_by.is_some(),
                tokens_per_s: report::TokensPerS { prefill: r(out.prefill_tokens_per_s()), decode: r(out.decode_tokens_per_s()) },
                timings_ms: report::TextTimings { load: ms(m.info.load), encode: None, prefill: ms(out.prefill), decode: ms(out.decode), total: ms(out.prefill + out.decode) },
            })?;
        } else {
            println!();
            report(&out);
        }
        return Ok(());
    }
    if args.json || args.logits_out.is_some() {
        return Err(fail("--json and --logits-out need --prompt or --prompt-ids"));
    }
    eprintln!("interactive chat: type a message, an empty line or Ctrl-D ends");
    loop {
        eprint!("> ");
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        history.push(Message { role: "user".into(), content: line.trim().to_string() });
        let (out, text_out) = run_once(encode(&history, &m)?, &m)?;
        println!();
        report(&out);
        history.push(Message { role: "assistant".into(), content: text_out });
    }
    Ok(())
}
