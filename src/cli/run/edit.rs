//! `nextflow edit`: an image changed as an instruction says.

use super::*;

pub fn edit(args: &EditArgs, device: &Device) -> Result<()> {
    let force = args.model.force;
    let paths = args.output.out.as_deref().map(|out| output_paths(out, 1));
    if let Some(paths) = &paths {
        check_outputs(paths, force)?;
    }
    let config = config_of(&args.model)?;
    check_image_sampling(&config, &args.sampling)?;
    let size = config.parts()?.tokenizer.image_size;
    let rgb = read_image(&args.input, size)?;
    let (model, info) = load_nextflow_for(&args.model, device, 1, None, true, true)?;
    let opts = image_options(&model, &args.sampling)?;
    let t = Instant::now();
    let indices = model.encode_image(&from_rgb8(&rgb, size, model.dtype(), model.device())?)?;
    let encode = t.elapsed();
    let scales = model.parts().tokenizer.scales.clone();
    let g = model.edit(&indices, &args.prompt, &opts, &mut scale_steps("scale", &scales))?;
    let source = args.input.image.file_name().map_or_else(|| args.input.image.display().to_string(), |n| n.to_string_lossy().into_owned());
    let meta = |_: usize| Some(painted(&args.prompt, None, scales.len(), (size, size), &opts, opts.seed, &info, Some(&source)));
    let written = save_images(&g, paths.as_deref(), &meta, force)?;
    let r = report::ImageReport {
        meta: info.meta.clone(),
        prompt: args.prompt.clone(),
        negative_prompt: None,
        image: Some(args.input.image.display().to_string()),
        size: format!("{size}x{size}"),
        scales,
        sampler: sampler_of(&opts),
        seed: opts.seed,
        batch: 1,
        images: written.iter().map(|p| report::Image { path: p.display().to_string(), seed: opts.seed }).collect(),
        timings_ms: image_timings(&g.timings, info.load, Some(encode)),
    };
    finish_images(&r, &g.timings, args.output.json)
}
