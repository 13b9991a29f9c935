//! VAR checkpoints (`--model DIR` holding the published VQVAE and transformer files under
//! any names): `generate --class`, `inspect`, and one clear line from the commands a
//! class-conditional image model cannot serve.

use super::*;
use nextflow_model::var::net::{to_rgb8 as var_rgb8, Var, VarOptions};
use nextflow_model::var::{class_names, parse_class, ModelConfig, ModelFiles};

/// The VAR model `args` names, if it names one: `--model DIR` without a config.json, holding
/// VAR's two files.
pub(super) fn files(args: &ModelArgs) -> Result<Option<ModelFiles>> {
    match (&args.model, &args.config) {
        (Some(dir), None) => Ok(ModelFiles::find(dir)?),
        (None, Some(name)) if name.starts_with("var-") => {
            if !args.random_weights {
                return Err(fail(format!("no weights ship for `{name}`: give --model DIR holding VAR's published files, or --random-weights to measure speed")));
            }
            ModelFiles::random(name).map(Some).ok_or_else(|| fail(format!("unknown VAR configuration `{name}`: var-d16, var-d20, var-d24, var-d30 (256 px) or var-d36 (512 px)")))
        }
        _ => Ok(None),
    }
}

/// Refuses a command a VAR model cannot run (`what` it cannot do), in one line.
pub(super) fn refuse(args: &ModelArgs, what: &str) -> Result<()> {
    match files(args)? {
        Some(f) => Err(only_classes(Path::new(&describe(args)), &f.config, what)),
        None => Ok(()),
    }
}

/// What a VAR model is and what it does, for the commands it cannot run.
pub(super) fn only_classes(dir: &Path, cfg: &ModelConfig, what: &str) -> Box<dyn std::error::Error> {
    fail(format!(
        "{} is a VAR model: class-conditional ImageNet ({} classes, {} px); it {what}. It paints classes: nextflow generate --model DIR --class 207 (or --class \"golden retriever\")",
        dir.display(),
        cfg.var.num_classes,
        cfg.image_size,
    ))
}

/// The sampler of a VAR generation: the official demo's defaults, then the flags.
fn options(s: &ImageSampling) -> Result<VarOptions> {
    if s.temperature.is_some() {
        return Err(fail("VAR's sampler has no temperature: it draws from top-k / top-p filtered logits (--top-k 1 is greedy)"));
    }
    let d = VarOptions::default();
    let o = VarOptions { cfg: s.cfg.unwrap_or(d.cfg), top_k: s.top_k.unwrap_or(d.top_k), top_p: s.top_p.unwrap_or(d.top_p), seed: s.seed };
    o.validate().map_err(as_flags)?;
    Ok(o)
}

/// Everything `generate` checks before it loads a VAR model (also `preflight`).
pub(super) fn check_generate(args: &GenerateArgs, f: &ModelFiles) -> Result<(usize, VarOptions)> {
    let label = describe(&args.model);
    let dir = Path::new(&label);
    if args.prompt.is_some() || args.negative_prompt.is_some() {
        return Err(only_classes(dir, &f.config, "has no text prompts"));
    }
    if args.from_png.is_some() {
        return Err(fail("--from-png repaints a text-to-image generation; a VAR image is painted again with its --class and --seed"));
    }
    let size = f.config.image_size;
    if args.size.is_some_and(|s| s != size) || args.aspect.as_deref().is_some_and(|a| a != "1:1") {
        return Err(fail(format!("this VAR model paints {size}x{size} images only (--size {size}, --aspect 1:1)")));
    }
    let class = args.class.as_deref().ok_or_else(|| only_classes(dir, &f.config, "needs --class"))?;
    let class = parse_class(class, f.config.var.num_classes)?;
    Ok((class, options(&args.sampling)?))
}

pub(super) fn generate(args: &GenerateArgs, f: ModelFiles, device: &Device) -> Result<()> {
    check_num_images(args.num_images)?;
    let (class, opts) = check_generate(args, &f)?;
    let force = args.model.force;
    let paths = args.output.out.as_deref().map(|out| output_paths(out, args.num_images));
    if let Some(paths) = &paths {
        check_outputs(paths, force)?;
    }
    let dtype = dtype_for(args.model.dtype, device)?;
    let started = Instant::now();
    let ((tp, t), (vp, v)) = (&f.transformer, &f.vae);
    let name = |p: &Path| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned());
    let bytes: u64 = t.files().iter().chain(v.files().iter()).map(|(_, n)| n).sum();
    let spinner = ui::Spinner::start(format!("loading VAR {} + {} ({}) to {device} as {dtype:?}", name(tp), name(vp), ui::bytes(bytes)));
    let model = Var::load(t, v, &f.config, dtype, device)?;
    let c = &f.config.var;
    spinner.done(format!(
        "model: VAR-d{} ({} + {}) on {device} ({dtype:?}), loaded in {:.2} s",
        c.depth,
        name(tp),
        name(vp),
        started.elapsed().as_secs_f64()
    ));
    let load = started.elapsed();
    let label = class_names().get(class).map_or_else(|| format!("class {class}"), |n| format!("class {class} ({n})"));
    let size = f.config.image_size;
    let scales: Vec<[usize; 2]> = c.patch_nums.iter().map(|&p| [p, p]).collect();
    let mut written = Vec::new();
    // Per image: each scale's time, the decoder's and the total (ms).
    let mut runs: Vec<(Vec<f64>, f64, f64)> = Vec::new();
    for i in 0..args.num_images {
        let seed = opts.seed.wrapping_add(i as u64);
        let o = VarOptions { seed, ..opts.clone() };
        let step_label = if args.num_images > 1 { format!("image {}/{}", i + 1, args.num_images) } else { "scale".into() };
        let mut steps = scale_steps(&step_label, &scales);
        let (start, mut last) = (Instant::now(), Instant::now());
        let mut mine = Vec::with_capacity(scales.len());
        let g = model.generate(&[class], &o, &mut |k, total| {
            let took = last.elapsed();
            mine.push(ms(took));
            steps(k - 1, total, took);
            last = Instant::now();
        })?;
        runs.push((mine, ms(last.elapsed()), ms(start.elapsed())));
        let rgb = var_rgb8(&g.images)?;
        let parameters = format!(
            "VAR {label}\nSteps: {}, Size: {size}x{size}, CFG: {}, Top-k: {}, Top-p: {}, Seed: {seed}, Model: VAR-d{} ({})",
            scales.len(),
            o.cfg,
            o.top_k,
            o.top_p,
            c.depth,
            name(tp)
        );
        let path = write_png(paths.as_ref().map(|p| p[i].as_path()), &rgb[0], size, size, Some(&parameters), force)?;
        written.push((path, seed));
    }
    let n = runs.len() as f64;
    let scale_ms: Vec<f64> = (0..scales.len()).map(|k| runs.iter().map(|r| r.0[k]).sum::<f64>() / n).collect();
    let decoder_ms = runs.iter().map(|r| r.1).sum::<f64>() / n;
    if args.output.json {
        let doc = serde_json::json!({
            "model": format!("VAR-d{}", c.depth),
            "files": [name(tp), name(vp)],
            "device": device.to_string(),
            "dtype": format!("{dtype:?}"),
            "class": class,
            "class_name": class_names().get(class),
            "size": format!("{size}x{size}"),
            "sampler": {"cfg": opts.cfg, "top_k": opts.top_k, "top_p": opts.top_p},
            "images": written.iter().map(|(p, s)| serde_json::json!({"path": p.display().to_string(), "seed": s})).collect::<Vec<_>>(),
            "timings_ms": {"load": ms(load), "scales": scale_ms, "decoder": decoder_ms},
            "runs_ms": runs.iter().map(|(s, d, t)| serde_json::json!({"scales": s, "decoder": d, "total": t})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for (p, _) in &written {
            println!("{}", p.display());
        }
        let s: Vec<String> = scale_ms.iter().map(|v| format!("{v:.1}")).collect();
        ui::note(format_args!("time per image: scales [{}] ms, decoder {:.1} ms", s.join(", "), decoder_ms));
    }
    Ok(())
}

/// `nextflow convert DIR --out OUT`.
pub fn convert(args: &ConvertArgs) -> Result<()> {
    let f = ModelFiles::find(&args.dir)?.ok_or_else(|| {
        fail(format!(
            "{}: no VAR files here (a VQVAE and a transformer `.pth`): convert reads published PyTorch checkpoints; safetensors directories load as they are",
            args.dir.display()
        ))
    })?;
    let spinner = ui::Spinner::start(format!("converting {} and {} into {}", f.transformer.0.display(), f.vae.0.display(), args.out.display()));
    let started = Instant::now();
    f.convert(&args.out, args.force)?;
    spinner.done(format!("wrote {} (transformer.safetensors, vae.safetensors, config.json) in {:.1} s", args.out.display(), started.elapsed().as_secs_f64()));
    Ok(())
}

/// `inspect` of a VAR directory: the configuration read off the files.
pub(super) fn inspect(f: &ModelFiles, json: bool) -> Result<()> {
    let (v, a) = (&f.config.var, &f.config.vae);
    let params = |w: &Weights| -> u64 { w.names().filter_map(|n| w.info(n)).map(|i| i.shape.iter().product::<usize>() as u64).sum() };
    let (pt, pv) = (params(&f.transformer.1), params(&f.vae.1));
    let millions = |w: &Weights, n: u64| if w.is_random() { "random weights".to_string() } else { format!("{:.1}M parameters", n as f64 / 1e6) };
    if json {
        let doc = serde_json::json!({
            "family": "var",
            "files": {"transformer": f.transformer.0.display().to_string(), "vae": f.vae.0.display().to_string()},
            "config": &f.config,
            "parameters": {"transformer": pt, "vae": pv},
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("VAR (class-conditional next-scale model), read off the files' tensor shapes:");
    println!("  transformer  {}: depth {}, width {}, heads {} of {}, MLP {}, {} AdaLN, attention {}; {}", f.transformer.0.display(), v.depth, v.width, v.heads, v.head_dim(), v.mlp_hidden, if v.shared_adaln { "shared" } else { "per-block" }, if v.attn_l2_norm { "L2-normalised q/k with learned scale" } else { "scaled dot product" }, millions(&f.transformer.1, pt));
    println!("  classes      {} (+ the null class for CFG)", v.num_classes);
    println!("  schedule     {} scales {:?}, {} tokens, {}x{} px", v.patch_nums.len(), v.patch_nums, v.tokens(), f.config.image_size, f.config.image_size);
    println!("  VQVAE        {}: codebook {} x {}, channels {} x {:?}, {} res blocks, attention {}, quant_resi {:?} (ratio {}); {}{}", f.vae.0.display(), a.vocab_size, a.code_dim, a.ch, a.ch_mult, a.num_res_blocks, a.using_sa, a.phi, a.quant_resi, millions(&f.vae.1, pv), if a.has_encoder { "" } else { " (no encoder)" });
    println!("  sampler      cfg 4, top-k 900, top-p 0.95 (VAR's demo); generate --model DIR --class 207");
    Ok(())
}
