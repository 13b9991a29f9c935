//! `nextflow generate`: text to images, or again from a PNG's parameters.

use super::*;

/// What `generate` paints: from its flags, or from the `parameters` of `--from-png`.
pub(super) struct GenerateInputs {
    prompt: String,
    negative_prompt: Option<String>,
    pub(super) sampling: ImageSampling,
    pub(super) size: Option<usize>,
    pub(super) aspect: Option<String>,
    /// `--from-png`: the model (name, hash) that painted it.
    painted_by: Option<(String, String)>,
}

pub(super) fn generate_inputs(args: &GenerateArgs) -> Result<GenerateInputs> {
    let Some(png) = &args.from_png else {
        return Ok(GenerateInputs {
            prompt: args.prompt.clone().unwrap_or_default(),
            negative_prompt: args.negative_prompt.clone(),
            sampling: args.sampling.clone(),
            size: args.size,
            aspect: args.aspect.clone(),
            painted_by: None,
        });
    };
    let p = Parameters::parse(&images::read_parameters(png)?).map_err(|e| fail(format!("{}: parameters: {e}", png.display())))?;
    if let Some(source) = &p.edit_of {
        return Err(fail(format!("{} is an edit of {source}, not a text-to-image generation: `nextflow edit` paints it again", png.display())));
    }
    Ok(GenerateInputs {
        prompt: p.prompt,
        negative_prompt: p.negative_prompt,
        sampling: ImageSampling { cfg: Some(p.cfg), top_k: Some(p.top_k), top_p: Some(p.top_p), temperature: Some(p.temperature), seed: p.seed },
        size: Some(p.width.min(p.height)),
        aspect: Some(aspect_of(p.width, p.height)),
        painted_by: Some((p.model, p.model_hash)),
    })
}

pub fn generate(args: &GenerateArgs, device: &Device) -> Result<()> {
    if let Some(f) = var::files(&args.model)? {
        return var::generate(args, f, device);
    }
    if args.class.is_some() {
        return Err(fail(CLASS_ON_TEXT_MODEL));
    }
    check_num_images(args.num_images)?;
    if args.max_batch == Some(0) {
        return Err(fail("--max-batch must be at least 1"));
    }
    let input = generate_inputs(args)?;
    let force = args.model.force;
    let paths = args.output.out.as_deref().map(|out| output_paths(out, args.num_images));
    if let Some(paths) = &paths {
        check_outputs(paths, force)?;
    }
    // The canvas and the sampler are checked against the config before any weight is read.
    let config = config_of(&args.model)?;
    let scales = schedule(&config.parts()?.tokenizer, input.size, input.aspect.as_deref())?;
    check_image_sampling(&config, &input.sampling)?;
    let dtype = dtype_for(args.model.dtype, device)?;
    let all_scales = scales.clone().unwrap_or_else(|| config.parts().map(|p| p.tokenizer.scales.clone()).unwrap_or_default());
    let positions = image_run(&config, 0, 1, Some(&all_scales), false).positions;
    let batch = match args.max_batch {
        Some(b) => b,
        None => memory::default_batch(&config, parameters(&config, None), positions, dtype, device),
    }
    .min(args.num_images);
    let (model, info) = load_nextflow_for(&args.model, device, batch, Some(&all_scales), false, true)?;
    if let Some((name, hash)) = &input.painted_by {
        if Some(hash) != info.hash.as_ref() && !force {
            return Err(fail(format!(
                "{} was painted by {name} (weights {hash}); this is {} (weights {}): give that model with -m/--config, or --force to paint it with this one",
                args.from_png.as_ref().map_or(String::new(), |p| p.display().to_string()),
                info.meta.model,
                info.hash.as_deref().unwrap_or_default()
            )));
        }
    }
    let mut opts = image_options(&model, &input.sampling)?;
    opts.scales = scales;
    let t = &model.parts().tokenizer;
    let [gh, gw] = *all_scales.last().unwrap_or(&[0, 0]);
    let (height, width) = (gh * t.patch_size, gw * t.patch_size);
    let chunks = args.num_images.div_ceil(batch);
    let mut written = Vec::new();
    let mut timings = nextflow_model::nextflow::Timings::default();
    for c in 0..chunks {
        let (start, n) = (c * batch, batch.min(args.num_images - c * batch));
        let label = if chunks > 1 { format!("images {}-{}/{}", start + 1, start + n, args.num_images) } else { "scale".into() };
        let o = ImageOptions { seed: opts.seed.wrapping_add(start as u64), ..opts.clone() };
        let g = model.text_to_image(&input.prompt, input.negative_prompt.as_deref(), n, &o, &mut scale_steps(&label, &all_scales))?;
        let meta = |i: usize| Some(painted(&input.prompt, input.negative_prompt.as_deref(), all_scales.len(), (width, height), &opts, o.seed.wrapping_add(i as u64), &info, None));
        written.extend(save_images(&g, paths.as_ref().map(|p| &p[start..start + n]), &meta, force)?);
        timings.prefill += g.timings.prefill;
        timings.decode += g.timings.decode;
        if timings.scales.is_empty() {
            timings.scales = g.timings.scales.clone();
        } else {
            timings.scales.iter_mut().zip(&g.timings.scales).for_each(|(a, b)| *a += *b);
        }
    }
    let r = report::ImageReport {
        meta: info.meta.clone(),
        prompt: input.prompt.clone(),
        negative_prompt: input.negative_prompt.clone(),
        image: None,
        size: format!("{width}x{height}"),
        scales: all_scales.clone(),
        sampler: sampler_of(&opts),
        seed: opts.seed,
        batch,
        images: written.iter().enumerate().map(|(i, p)| report::Image { path: p.display().to_string(), seed: opts.seed.wrapping_add(i as u64) }).collect(),
        timings_ms: image_timings(&timings, info.load, None),
    };
    finish_images(&r, &timings, args.output.json)
}
