//! What each subcommand does.

use super::files::{check_new, write_free, write_new};
use super::images::{self, Parameters};
use super::report::{self, ms, Meta};
use super::ui::{self, end_status, status};
use super::memory;
use super::*;
use nextflow_model::nextflow::{Generated, NextFlow, Sequence};
use crate::shapeeval;
use nextflow_model::text::{self, TextOptions};
use nextflow_model::visual::{from_rgb8, to_rgb8};
use nextflow_model::config::VisualTokenizer;
use nextflow_model::{Config, ImageOptions, Message, ModelType, StreamDecoder, TextTokenizer, Transformer, Weights};
use nextflow_runtime::{Backend, DType, Device};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

pub(super) fn fail(msg: impl Into<String>) -> Box<dyn std::error::Error> {
    msg.into().into()
}

pub fn open_device(spec: &str) -> Result<Device> {
    Ok(Device::open(spec)?)
}

pub(super) fn dtype_for(arg: DTypeArg, device: &Device) -> Result<DType> {
    let dtype = match arg {
        DTypeArg::Auto => match device.backend() {
            Backend::Cuda | Backend::Hip if device.supports(DType::F16) => DType::F16,
            _ => DType::F32,
        },
        DTypeArg::F32 => DType::F32,
        DTypeArg::F16 => DType::F16,
        DTypeArg::Bf16 => DType::BF16,
    };
    if !device.supports(dtype) {
        return Err(fail(format!("{device} has no {dtype:?} kernels; use --dtype f32")));
    }
    Ok(dtype)
}

/// The config a ModelArgs names.
pub(super) fn config_of(args: &ModelArgs) -> Result<Config> {
    Ok(match (&args.model, &args.config) {
        (Some(_), Some(_)) => return Err(fail("give --model DIR or --config NAME, not both")),
        (Some(dir), None) => Config::load(dir)?,
        (None, Some(name)) => Config::named(name)?,
        (None, None) => Config::named("nextflow-tiny")?,
    })
}

pub(super) fn describe(args: &ModelArgs) -> String {
    match (&args.model, &args.config, args.random_weights) {
        (Some(dir), _, _) => dir.display().to_string(),
        (None, Some(name), true) => format!("{name} (random weights)"),
        (None, Some(name), false) => name.clone(),
        (None, None, true) => "nextflow-tiny (random weights)".into(),
        (None, None, false) => "nextflow-tiny (embedded)".into(),
    }
}

/// The weights a ModelArgs names, with the text tokenizer when there is one; None for a
/// built-in config without --random-weights (its shapes only, no weights).
fn open_weights(args: &ModelArgs) -> Result<Option<(Weights, Option<TextTokenizer>)>> {
    use nextflow_model::embedded;
    if args.random_weights {
        return Ok(Some((Weights::random(0), None)));
    }
    Ok(match (&args.model, args.config.as_deref()) {
        (Some(_), Some(_)) => return Err(fail("give --model DIR or --config NAME, not both")),
        (Some(dir), None) => {
            let tokenizer = if dir.join("tokenizer.json").exists() { Some(TextTokenizer::load(dir)?) } else { None };
            Some((Weights::open(dir)?, tokenizer))
        }
        (None, None | Some("nextflow-tiny")) => Some((Weights::from_static(embedded::NAME, embedded::WEIGHTS)?, Some(TextTokenizer::from_bytes(embedded::TOKENIZER, None)?))),
        (None, Some(_)) => None,
    })
}

/// [`open_weights`] where weights are required.
fn require_weights(args: &ModelArgs) -> Result<(Weights, Option<TextTokenizer>)> {
    open_weights(args)?.ok_or_else(|| {
        let name = args.config.as_deref().unwrap_or_default();
        fail(format!("no weights ship for `{name}`: add --random-weights to measure speed with random weights"))
    })
}

/// Parameters of a model: the checkpoint's tensor sizes, or (random weights) its config's.
fn parameters(config: &Config, weights: Option<&Weights>) -> u64 {
    if let Some(w) = weights.filter(|w| !w.is_random()) {
        return w.names().filter_map(|n| w.info(n)).map(|i| i.shape.iter().product::<usize>() as u64).sum();
    }
    let b = &config.backbone;
    let mut params = config.transformer_parameters() as u64;
    if let Some(p) = &config.nextflow {
        let t = &p.tokenizer;
        params += (b.hidden_size * (t.code_dim() + 1) + b.hidden_size * (b.hidden_size + 1) + (t.max_scales() + 1) * b.hidden_size) as u64;
        // The decoder: about 9 ch_out x ch_in per 3x3 conv, two per res block, per level.
        let chans: Vec<u64> = t.ch_mult.iter().map(|&m| (m * t.ch) as u64).collect();
        params += chans.iter().map(|c| 18 * c * c * (t.decoder_res_blocks as u64 + 1)).sum::<u64>();
    }
    params
}

/// Rows, positions and images of an image generation of `batch` images on `config`
/// (`context_image`: an edit, whose sequence holds the input image too).
fn image_run(config: &Config, parameters: u64, batch: usize, scales: Option<&[[usize; 2]]>, context_image: bool) -> memory::Run {
    let t = config.nextflow.as_ref().map(|p| &p.tokenizer);
    let tokens = match (scales, t) {
        (Some(s), _) => s.iter().map(|[h, w]| h * w).sum(),
        (None, Some(t)) => t.tokens(),
        (None, None) => 0,
    };
    // Prompts of up to 64 tokens; an edit's sequence holds the input image as well.
    let positions = if context_image { 2 * tokens + 64 } else { tokens + 64 };
    memory::Run { parameters, rows: 2 * batch as u64, positions: positions as u64, images: batch as u64 }
}

pub fn load_nextflow(args: &ModelArgs, device: &Device) -> Result<(NextFlow, LoadInfo)> {
    load_nextflow_for(args, device, 1, None, true, false)
}

/// [`load_nextflow`] for runs of `batch` images per forward on `scales` (the memory check);
/// `fingerprint`: the run writes PNG metadata, which names the weights' [`Weights::fingerprint`].
pub(super) fn load_nextflow_for(args: &ModelArgs, device: &Device, batch: usize, scales: Option<&[[usize; 2]]>, context_image: bool, fingerprint: bool) -> Result<(NextFlow, LoadInfo)> {
    let dtype = dtype_for(args.dtype, device)?;
    let t = Instant::now();
    let config = config_of(args)?;
    if config.model_type != ModelType::NextFlow {
        return Err(fail("this is a text-only model: use `nextflow chat`"));
    }
    let (weights, text) = require_weights(args)?;
    if text.is_none() && !weights.is_random() {
        return Err(fail(format!("{}: no tokenizer.json, which a NextFlow model needs for its prompts", weights.dir().display())));
    }
    let run = image_run(&config, parameters(&config, Some(&weights)), batch, scales, context_image);
    memory::check(&config, run, dtype, device, args.force).map_err(fail)?;
    let spinner = loading(args, &weights, device, dtype);
    let model = NextFlow::from_parts(config, &weights, text, dtype, device)?;
    let info = loaded(args, &weights, device, dtype, spinner, t, fingerprint);
    Ok((model, info))
}

/// What a loaded model is, for reports and PNG metadata.
#[derive(Clone, Debug)]
pub struct LoadInfo {
    pub meta: Meta,
    pub load: Duration,
    /// [`Weights::fingerprint`], where the run asked for it (it reads up to 256 MiB).
    pub hash: Option<String>,
}

/// The loading spinner: which files, how many bytes, to which device.
fn loading(args: &ModelArgs, weights: &Weights, device: &Device, dtype: DType) -> ui::Spinner {
    let files = weights.files();
    let total = weights_bytes(weights);
    let names: Vec<String> = files.iter().map(|(p, _)| p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())).collect();
    let what = match files.len() {
        0 => "random weights".to_string(),
        1..=3 => format!("{} ({})", names.join(", "), ui::bytes(total)),
        n => format!("{n} files, {} ({} ... {})", ui::bytes(total), names[0], names[n - 1]),
    };
    ui::Spinner::start(format!("loading {}: {what} to {device} as {dtype:?}", describe(args)))
}

fn weights_bytes(weights: &Weights) -> u64 {
    weights.files().iter().map(|(_, n)| n).sum()
}

fn loaded(args: &ModelArgs, weights: &Weights, device: &Device, dtype: DType, spinner: ui::Spinner, started: Instant, fingerprint: bool) -> LoadInfo {
    let total = weights_bytes(weights);
    let secs = spinner.elapsed().as_secs_f64().max(1e-9);
    let rate = if total > 0 { format!(", {}/s", ui::bytes((total as f64 / secs) as u64)) } else { String::new() };
    let model = describe(args);
    spinner.done(format!("model: {model} on {device} ({dtype:?}), loaded in {secs:.2} s{rate}"));
    LoadInfo { meta: Meta::new(model, device, dtype), load: started.elapsed(), hash: fingerprint.then(|| weights.fingerprint()) }
}

fn image_options(model: &NextFlow, s: &ImageSampling) -> Result<ImageOptions> {
    let mut o = model.default_image_options();
    o.cfg_scale = s.cfg.unwrap_or(o.cfg_scale);
    o.top_k = s.top_k.unwrap_or(o.top_k);
    o.top_p = s.top_p.unwrap_or(o.top_p);
    o.temperature = s.temperature.unwrap_or(o.temperature);
    o.seed = s.seed;
    o.validate().map_err(as_flags)?;
    Ok(o)
}

/// The schedule of the canvas `--size` / `--aspect` name, among those the model was trained on
/// (its native canvas and `tokenizer.schedules`): `--size N` is the short side in pixels,
/// `--aspect W:H` the shape (1:1 when only `--size` is given; the largest canvas of that shape
/// when only `--aspect` is). Anything else is refused, naming what the model offers.
fn schedule(t: &VisualTokenizer, size: Option<usize>, aspect: Option<&str>) -> Result<Option<Vec<[usize; 2]>>> {
    if size.is_none() && aspect.is_none() {
        return Ok(None);
    }
    let ratio = match aspect {
        None => (1, 1),
        Some(a) => a
            .split_once(':')
            .and_then(|(w, h)| Some((w.trim().parse::<usize>().ok()?, h.trim().parse::<usize>().ok()?)))
            .filter(|&(w, h)| w > 0 && h > 0)
            .ok_or_else(|| fail(format!("--aspect {a}: expected W:H in whole numbers, e.g. 2:1")))?,
    };
    let canvases = t.canvases();
    let offered = || {
        canvases.iter().map(|((h, w), _)| format!("{w}x{h} (--size {} --aspect {})", h.min(w), aspect_of(*w, *h))).collect::<Vec<_>>().join(", ")
    };
    let mut fits: Vec<&((usize, usize), Vec<[usize; 2]>)> =
        canvases.iter().filter(|((h, w), _)| w * ratio.1 == h * ratio.0 && size.is_none_or(|s| *h.min(w) == s)).collect();
    fits.sort_by_key(|((h, w), _)| std::cmp::Reverse(h * w));
    let what: Vec<String> = [size.map(|s| format!("--size {s}")), aspect.map(|a| format!("--aspect {a}"))].into_iter().flatten().collect();
    let (_, scales) = fits.first().ok_or_else(|| fail(format!("{}: this model was trained on {}", what.join(" "), offered())))?;
    Ok(Some(scales.clone()))
}

/// `W:H` in lowest terms.
pub(super) fn aspect_of(w: usize, h: usize) -> String {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let g = gcd(w, h).max(1);
    format!("{}:{}", w / g, h / g)
}

/// Per-scale progress of an image batch.
fn scale_steps(label: &str, scales: &[[usize; 2]]) -> impl FnMut(usize, usize, Duration) {
    let steps = ui::Steps::new(label, scales.len(), "scales");
    let scales = scales.to_vec();
    move |k, total, took| {
        let [h, w] = scales.get(k).copied().unwrap_or([0, 0]);
        steps.step(k, total, &format!("({h}x{w}) {:.1} ms", took.as_secs_f64() * 1e3));
    }
}

/// Path of image `i` (from 0) of `n`: `{i}` and the `-N` suffix both number from 1.
fn image_path(out: &Path, i: usize, n: usize) -> PathBuf {
    let s = out.to_string_lossy();
    if s.contains("{i}") {
        return PathBuf::from(s.replace("{i}", &(i + 1).to_string()));
    }
    if n == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = out.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    out.with_file_name(format!("{stem}-{}{ext}", i + 1))
}

/// The paths of `n` images when `--out` is given (default names are picked as each image is
/// written: the first free one of nextflow.png, nextflow-2.png, ...).
fn output_paths(out: &Path, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| image_path(out, i, n)).collect()
}

/// Default image names, in order.
fn default_names() -> impl Iterator<Item = PathBuf> {
    (1..).map(|k| PathBuf::from(if k == 1 { "nextflow.png".to_string() } else { format!("nextflow-{k}.png") }))
}

/// Most images one `generate` writes.
pub const MAX_IMAGES: usize = 100_000;

fn check_num_images(n: usize) -> Result<()> {
    if (1..=MAX_IMAGES).contains(&n) {
        Ok(())
    } else {
        Err(fail(format!("--num-images must be from 1 to {MAX_IMAGES} (got {n})")))
    }
}

/// Checks every output path before any work: no silent overwrite, the folder exists. The
/// write itself refuses again if a file appeared meanwhile.
fn check_outputs(paths: &[PathBuf], force: bool) -> Result<()> {
    for p in paths {
        if p.extension().is_none_or(|e| !e.eq_ignore_ascii_case("png")) {
            return Err(fail(format!("{}: images are written as PNG; give a .png path", p.display())));
        }
        check_new(p, force)?;
    }
    Ok(())
}

/// Writes image `rgb` as a PNG at `path` (None: the first free default name), with its
/// `parameters` text when given; returns the path.
fn write_png(path: Option<&Path>, rgb: &[u8], width: usize, height: usize, parameters: Option<&str>, force: bool) -> Result<PathBuf> {
    let bytes = match parameters {
        Some(p) => images::png_with_parameters(rgb, width, height, p)?,
        None => super::files::png_bytes(rgb, width, height)?,
    };
    match path {
        Some(p) => write_new(p, &bytes, force).map(|()| p.to_path_buf()),
        None => write_free(default_names(), &bytes),
    }
}

/// Stage times of image batches on stderr.
fn print_image_times(t: &nextflow_model::nextflow::Timings) {
    let scales: Vec<String> = t.scales.iter().map(|d| format!("{:.1}", ms(*d))).collect();
    ui::note(format_args!("time: prefill {:.1} ms, scales [{}] ms, decoder {:.1} ms, total {:.1} ms", ms(t.prefill), scales.join(", "), ms(t.decode), ms(t.total())));
}

fn image_timings(t: &nextflow_model::nextflow::Timings, load: Duration, encode: Option<Duration>) -> report::ImageTimings {
    report::ImageTimings {
        load: ms(load),
        encode: encode.map(ms),
        prefill: ms(t.prefill),
        scales: t.scales.iter().map(|d| ms(*d)).collect(),
        decoder: ms(t.decode),
        total: ms(t.total() + encode.unwrap_or_default()),
    }
}

/// The `parameters` of a PNG painted with `opts` and `seed` on a `width` x `height` canvas
/// of `steps` scales (`edit_of`: an edit's input file name).
pub(super) fn painted(prompt: &str, negative_prompt: Option<&str>, steps: usize, (width, height): (usize, usize), opts: &ImageOptions, seed: u64, info: &LoadInfo, edit_of: Option<&str>) -> String {
    Parameters {
        prompt: prompt.to_string(),
        negative_prompt: negative_prompt.map(str::to_string),
        steps,
        cfg: opts.cfg_scale,
        seed,
        width,
        height,
        top_k: opts.top_k,
        top_p: opts.top_p,
        temperature: opts.temperature,
        model: info.meta.model.clone(),
        model_hash: info.hash.clone().unwrap_or_default(),
        version: format!("nextflow {}", env!("CARGO_PKG_VERSION")),
        edit_of: edit_of.map(str::to_string),
    }
    .to_text()
}

/// The end of generate and edit: the report as JSON, or stage times on stderr and the
/// written paths on stdout.
fn finish_images(r: &report::ImageReport, t: &nextflow_model::nextflow::Timings, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    print_image_times(t);
    for image in &r.images {
        println!("{}", image.path);
    }
    Ok(())
}

fn sampler_of(o: &ImageOptions) -> report::Sampler {
    report::Sampler { cfg: o.cfg_scale, top_k: o.top_k, top_p: o.top_p, temperature: o.temperature }
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Writes each image of `g` (image `i` to `paths[i]`, or a free default name, with the
/// `parameters` text `meta(i)` gives); returns the paths.
fn save_images(g: &Generated, paths: Option<&[PathBuf]>, meta: &dyn Fn(usize) -> Option<String>, force: bool) -> Result<Vec<PathBuf>> {
    let (h, w) = (g.images.shape()[2], g.images.shape()[3]);
    to_rgb8(&g.images)?.iter().enumerate().map(|(i, rgb)| write_png(paths.map(|p| p[i].as_path()), rgb, w, h, meta(i).as_deref(), force)).collect()
}

/// A sampling error of the library, worded with the flag that sets the value.
pub(super) fn as_flags(e: nextflow_model::Error) -> Box<dyn std::error::Error> {
    let msg = e.to_string();
    for (name, flag) in [("cfg ", "--cfg "), ("temperature ", "--temperature "), ("top-p ", "--top-p "), ("repetition penalty ", "--repetition-penalty ")] {
        if let Some(pos) = msg.find(name) {
            return fail(format!("{}{flag}{}", &msg[..pos], &msg[pos + name.len()..]));
        }
    }
    e.into()
}

/// The configuration's sampling values checked before any weight is read.
fn check_image_sampling(config: &Config, s: &ImageSampling) -> Result<()> {
    let p = config.parts()?;
    let o = ImageOptions {
        cfg_scale: s.cfg.unwrap_or(p.sampler.cfg_scale),
        cfg_schedule: p.sampler.cfg_schedule,
        top_k: s.top_k.unwrap_or(p.sampler.top_k),
        top_p: s.top_p.unwrap_or(p.sampler.top_p),
        temperature: s.temperature.unwrap_or(p.sampler.temperature),
        seed: s.seed,
        scales: None,
    };
    o.validate().map_err(as_flags)
}

/// What `generate` paints: from its flags, or from the `parameters` of `--from-png`.
struct GenerateInputs {
    prompt: String,
    negative_prompt: Option<String>,
    sampling: ImageSampling,
    size: Option<usize>,
    aspect: Option<String>,
    /// `--from-png`: the model (name, hash) that painted it.
    painted_by: Option<(String, String)>,
}

fn generate_inputs(args: &GenerateArgs) -> Result<GenerateInputs> {
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

/// Every check a command makes before it loads a model, for the parsed command line: the
/// config and its bounds, the canvas, sampling values, output paths (nothing is written) and
/// input images. `main` runs it first; the fuzz tests drive it with random flag values.
pub fn preflight(cli: &Cli) -> Result<()> {
    nextflow_ops::pool::threads_from_env().map_err(fail)?;
    let text_options = |a: &ChatArgs| TextOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature.unwrap_or(0.0),
        top_k: a.top_k.unwrap_or(0),
        top_p: a.top_p.unwrap_or(1.0),
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        ..Default::default()
    };
    match &cli.command {
        Command::Devices(_) | Command::Bench(_) | Command::Completions(_) => Ok(()),
        Command::Inspect(a) => config_of(&a.model).map(|_| ()),
        Command::Serve(a) => config_of(&a.model).map(|_| ()),
        Command::Generate(a) => {
            check_num_images(a.num_images)?;
            let input = generate_inputs(a)?;
            if let Some(out) = &a.output.out {
                check_outputs(&output_paths(out, a.num_images), a.model.force)?;
            }
            let config = config_of(&a.model)?;
            schedule(&config.parts()?.tokenizer, input.size, input.aspect.as_deref())?;
            check_image_sampling(&config, &input.sampling)
        }
        Command::Understand(a) => {
            let config = config_of(&a.model)?;
            read_image(&a.input, config.parts()?.tokenizer.image_size).map(|_| ())
        }
        Command::Edit(a) => {
            if let Some(out) = &a.output.out {
                check_outputs(&output_paths(out, 1), a.model.force)?;
            }
            let config = config_of(&a.model)?;
            check_image_sampling(&config, &a.sampling)?;
            read_image(&a.input, config.parts()?.tokenizer.image_size).map(|_| ())
        }
        Command::Chat(a) => {
            config_of(&a.model)?;
            text_options(a).validate().map_err(as_flags)?;
            chat_samples(a)?;
            a.logits_out.as_deref().map_or(Ok(()), |p| check_new(p, a.model.force))
        }
        Command::Eval(EvalCommand::Shapes(a)) => {
            let config = config_of(&a.model)?;
            schedule(&config.parts()?.tokenizer, a.size, a.aspect.as_deref())?;
            check_image_sampling(&config, &a.sampling)
        }
    }
}

/// Reads the input image (PNG, JPEG or WebP, any size) as RGB8 of the model's `size` x
/// `size` canvas (centre crop, or `--pad`), with a note when it was fitted, before any model
/// is loaded.
fn read_image(input: &ImageInput, size: usize) -> Result<Vec<u8>> {
    let (rgb, (w, h)) = images::read_input(&input.image, size, input.pad)?;
    if (w, h) != (size as u32, size as u32) {
        let how = if input.pad { "scaled to fit and padded" } else { "scaled and centre-cropped" };
        ui::note(format_args!("note: {} is {w}x{h}; {how} to the model's {size}x{size}", input.image.display()));
    }
    Ok(rgb)
}

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

/// Text model for `chat`: any checkpoint's backbone (NextFlow's included).
pub(super) struct TextModel {
    pub config: Config,
    pub transformer: Transformer,
    pub tokenizer: Option<TextTokenizer>,
    pub info: LoadInfo,
}

impl TextModel {
    /// The ids that end an answer: the tokenizer's end markers and the config's eos ids.
    pub(super) fn stop_tokens(&self) -> Vec<u32> {
        let mut stop = Vec::new();
        let named = ["<|im_end|>", "<|endoftext|>", "<eos>"].into_iter().filter_map(|s| self.tokenizer.as_ref()?.token_to_id(s));
        for id in named.chain(self.config.eos_token_ids.iter().copied()) {
            if !stop.contains(&id) {
                stop.push(id);
            }
        }
        stop
    }

    /// A conversation as prompt ids: through the chat template, or (none) the last message
    /// as plain text after `<bos>`. The last message may not carry control tokens.
    pub(super) fn prompt_ids(&self, history: &[Message]) -> Result<Vec<u32>> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| fail("this checkpoint has no tokenizer.json"))?;
        if let Some(last) = history.last() {
            refuse_control_tokens(tok, "the prompt", &last.content)?;
        }
        if tok.has_chat_template() {
            Ok(tok.encode(&tok.apply_chat_template(history, true)?, false)?)
        } else {
            let mut ids: Vec<u32> = self.config.bos_token_id.into_iter().collect();
            ids.extend(tok.encode(&history.last().map(|h| h.content.clone()).unwrap_or_default(), false)?);
            Ok(ids)
        }
    }
}

/// The text backbone for a run of up to `positions` positions (prompt and answer).
pub(super) fn load_text(args: &ModelArgs, device: &Device, positions: usize) -> Result<TextModel> {
    let dtype = dtype_for(args.dtype, device)?;
    let config = config_of(args)?;
    let sections = |c: &Config| c.nextflow.as_ref().map_or(vec![c.backbone.head_dim() / 2], |p| p.visual.mrope_section.clone());
    let t = Instant::now();
    let (weights, tokenizer) = require_weights(args)?;
    let run = memory::Run { parameters: parameters(&config, Some(&weights)), rows: 1, positions: positions as u64, images: 0 };
    memory::check(&config, run, dtype, device, args.force).map_err(fail)?;
    let spinner = loading(args, &weights, device, dtype);
    let transformer = Transformer::load(&weights, &config.backbone, config.vocab_size, &sections(&config), dtype, device)?;
    let info = loaded(args, &weights, device, dtype, spinner, t, false);
    let unused = weights.unused();
    if config.model_type == ModelType::Qwen2 && !weights.is_random() && !unused.is_empty() {
        eprintln!("warning: {} tensors in the checkpoint are not used: {}", unused.len(), unused.join(", "));
    }
    Ok(TextModel { config, transformer, tokenizer, info })
}

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

/// `text` may not carry the tokenizer's control tokens (they would forge the template's markers).
pub(super) fn refuse_control_tokens(tok: &TextTokenizer, what: &str, text: &str) -> Result<()> {
    match tok.control_token_in(text) {
        Some(t) => Err(fail(format!("{what} contains the control token `{t}`, which cannot be typed (it would be taken as the template's own marker)"))),
        None => Ok(()),
    }
}

/// Whether `chat` samples: any sampling option (--temperature above 0, --top-k, --top-p)
/// turns sampling on; `--temperature 0` is greedy decoding, which --top-k/--top-p cannot
/// shape, so that pair is refused rather than one of them silently dropped (clap refuses
/// --greedy with any of them).
fn chat_samples(args: &ChatArgs) -> Result<bool> {
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

/// Plain words for the config's switches (`inspect`).
fn rope_axes_words(a: nextflow_model::config::RopeAxes) -> &'static str {
    match a {
        nextflow_model::config::RopeAxes::Srw => "scale, row, column",
        nextflow_model::config::RopeAxes::Rws => "row, column, scale",
    }
}

fn input_words(m: nextflow_model::config::InputMode) -> &'static str {
    match m {
        nextflow_model::config::InputMode::Residual => "residual (each scale's codes alone)",
        nextflow_model::config::InputMode::Accumulated => "accumulated (the sum of all scales so far)",
    }
}

fn level_words(l: nextflow_model::config::LevelEmbedding) -> &'static str {
    match l {
        nextflow_model::config::LevelEmbedding::SourceScale => "by the scale an input map comes from",
        nextflow_model::config::LevelEmbedding::TargetScale => "by the scale an input map predicts",
    }
}

pub fn inspect(args: &InspectArgs) -> Result<()> {
    let margs = &args.model;
    let config = config_of(margs)?;
    let b = &config.backbone;
    let weights = if margs.random_weights { None } else { open_weights(margs)?.map(|(w, _)| w) };
    let mut params = config.transformer_parameters() as u64;
    let parts = config.nextflow.as_ref().map(|p| {
        let t = &p.tokenizer;
        let v = &p.visual;
        params += (b.hidden_size * (t.code_dim() + 1) + b.hidden_size * (b.hidden_size + 1) + (t.scales.len() + 1) * b.hidden_size) as u64;
        report::Parts {
            text_ids: p.vocabulary.code_start(),
            visual_codes: p.vocabulary.codebook_size,
            canvases: t
                .canvases()
                .iter()
                .map(|((h, w), scales)| report::Canvas { width: *w, height: *h, patch_size: t.patch_size, scales: scales.clone(), tokens: scales.iter().map(|[a, b]| a * b).sum() })
                .collect(),
            visual_input: input_words(v.input_mode).into(),
            rope_sections: v.mrope_section.clone(),
            rope_axes: rope_axes_words(v.rope_axes).into(),
            rope_scale_c: v.rope_scale_c,
            level_embedding: level_words(v.level_embedding).into(),
            scale_count_embedding: v.scale_length_embedding,
            codebook: "dual, L2-normalized halves (TokenFlow)".into(),
            codebook_size: t.codebook_size,
            semantic_dim: t.semantic_dim,
            pixel_dim: t.pixel_dim,
            sampler: report::Sampler { cfg: p.sampler.cfg_scale, top_k: p.sampler.top_k, top_p: p.sampler.top_p, temperature: p.sampler.temperature },
            cfg_schedule: format!("{:?}", p.sampler.cfg_schedule).to_lowercase(),
        }
    });
    let checkpoint = weights.as_ref().map(|w| {
        params = w.names().filter_map(|n| w.info(n)).map(|i| i.shape.iter().product::<usize>() as u64).sum();
        report::Checkpoint { tensors: w.names().count(), bytes_by_dtype: w.disk_dtypes().iter().map(|(d, n)| (d.to_string(), *n as u64)).collect() }
    });
    let context = b.max_position_embeddings;
    let kv_per_token = (2 * b.num_hidden_layers * b.num_key_value_heads * b.head_dim()) as u64;
    let kv_positions = config.nextflow.as_ref().map_or(4096, |p| 2 * (p.tokenizer.tokens() + 64)).min(context);
    let memory = report::Memory {
        kv_positions,
        by_dtype: [("f32", 4u64), ("f16", 2), ("bf16", 2)]
            .iter()
            .map(|(n, size)| (n.to_string(), report::MemoryEntry { weights: params * size, kv_cache: kv_per_token * kv_positions as u64 * size }))
            .collect(),
    };
    let r = report::InspectReport {
        nextflow: env!("CARGO_PKG_VERSION"),
        model: describe(margs),
        model_type: format!("{:?}", config.model_type).to_lowercase(),
        backbone: report::Backbone {
            layers: b.num_hidden_layers,
            hidden_size: b.hidden_size,
            attention_heads: b.num_attention_heads,
            kv_heads: b.num_key_value_heads,
            head_dim: b.head_dim(),
            intermediate_size: b.intermediate_size,
            vocab_size: config.vocab_size,
            rope_theta: b.rope_theta,
            tied_embeddings: b.tie_word_embeddings,
            context,
        },
        nextflow_parts: parts,
        parameters: params,
        checkpoint,
        memory,
    };
    if args.json {
        return print_json(&r);
    }
    let bb = &r.backbone;
    println!("model        {}", r.model);
    println!("type         {}", if config.model_type == ModelType::NextFlow { "NextFlow (text and images)" } else { "Qwen2 (text)" });
    println!(
        "backbone     Qwen2: {} layers, hidden {}, {} heads / {} kv heads (head_dim {}), SwiGLU {}, vocab {}, rope_theta {}, {} output head, context {} positions",
        bb.layers, bb.hidden_size, bb.attention_heads, bb.kv_heads, bb.head_dim, bb.intermediate_size, bb.vocab_size, bb.rope_theta,
        if bb.tied_embeddings { "tied" } else { "separate" }, bb.context
    );
    if let Some(p) = &r.nextflow_parts {
        println!("vocabulary   {} text ids (specials + words), {} visual codes from id {}", p.text_ids, p.visual_codes, p.text_ids);
        for (i, c) in p.canvases.iter().enumerate() {
            let label = if i == 0 { "image       " } else { "            " };
            let listed: Vec<String> = c.scales.iter().map(|[a, b]| if a == b { format!("{a}") } else { format!("{a}x{b}") }).collect();
            let flags = format!("--size {} --aspect {}", c.height.min(c.width), aspect_of(c.width, c.height));
            println!("{label} {}x{} px ({flags}), {} px/token, {} scales [{}] ({} tokens)", c.width, c.height, c.patch_size, c.scales.len(), listed.join(", "), c.tokens);
        }
        println!(
            "visual rows  input maps {}; 3D RoPE over ({}) with {:?} frequency pairs, C = {}; level embedding {}; scale-count embedding {}",
            p.visual_input, p.rope_axes, p.rope_sections, p.rope_scale_c, p.level_embedding, if p.scale_count_embedding { "on" } else { "off" }
        );
        if let Some(t) = config.nextflow.as_ref().map(|p| &p.tokenizer) {
            println!("tokenizer    {} codebook, {} codes x ({} semantic + {} pixel dims), decoder {} channels x {:?}, {} res blocks per level", p.codebook, p.codebook_size, p.semantic_dim, p.pixel_dim, t.ch, t.ch_mult, t.decoder_res_blocks);
        }
        println!("sampler      cfg {} ({}), top-k {}, top-p {}, temperature {}", p.sampler.cfg, p.cfg_schedule, p.sampler.top_k, p.sampler.top_p, p.sampler.temperature);
    }
    match &r.checkpoint {
        Some(c) => {
            let dtypes: Vec<String> = c.bytes_by_dtype.iter().map(|(d, n)| format!("{d} {}", ui::bytes(*n))).collect();
            println!("checkpoint   {} tensors, {:.2} M parameters, on disk: {}", c.tensors, r.parameters as f64 / 1e6, dtypes.join(", "));
        }
        None => println!("parameters   {:.3} B (computed from the shapes)", r.parameters as f64 / 1e9),
    }
    let what = if config.nextflow.is_some() { "one image with CFG (2 rows)" } else { "4096 text positions" };
    println!("memory       weights + KV cache for {} positions ({what}, at most the context):", r.memory.kv_positions);
    for (name, m) in &r.memory.by_dtype {
        println!("  {name:5} {} + {}", ui::bytes(m.weights), ui::bytes(m.kv_cache));
    }
    Ok(())
}

pub fn eval_shapes(args: &EvalShapesArgs, device: &Device) -> Result<()> {
    let config = config_of(&args.model)?;
    let scales = schedule(&config.parts()?.tokenizer, args.size, args.aspect.as_deref())?;
    check_image_sampling(&config, &args.sampling)?;
    if args.batch == 0 {
        return Err(fail("--batch must be at least 1"));
    }
    let (model, info) = load_nextflow_for(&args.model, device, args.batch.min(args.n.max(1) * shapeeval::TASKS.len()), scales.as_deref(), true, false)?;
    let mut opts = image_options(&model, &args.sampling)?;
    let t = &model.parts().tokenizer;
    let (height, width) = match scales.as_ref().and_then(|s| s.last()) {
        Some(&[h, w]) => (h * t.patch_size, w * t.patch_size),
        None => (t.image_size, t.image_size),
    };
    opts.scales = scales;
    let prompts = shapeeval::eval_prompts(args.n, args.prompt_seed);
    let image_file = |dir: &Path, index: usize| dir.join(format!("{index:05}.png"));
    if let Some(dir) = &args.save_images {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: cannot create the folder: {e}", dir.display())))?;
        if !args.model.force {
            if let Some(p) = prompts.iter().map(|e| image_file(dir, e.index)).find(|p| p.exists()) {
                return Err(fail(format!("{} exists; pass --force to overwrite the images in {}", p.display(), dir.display())));
            }
        }
    }
    let bos = model.parts().vocabulary.id("<bos>").expect("validated") as u32;
    let started = Instant::now();
    let mut results = Vec::new();
    let batch = args.batch.max(1);
    for (c, chunk) in prompts.chunks(batch).enumerate() {
        let start = c * batch;
        let seqs: Vec<Sequence> = chunk
            .iter()
            .map(|e| {
                let mut s = Sequence::new();
                s.text(&[bos]).text(&model.encode_words(&e.prompt)?);
                Ok(s)
            })
            .collect::<nextflow_model::Result<_>>()?;
        let mut un = Sequence::new();
        un.text(&[bos]);
        let o = ImageOptions { seed: opts.seed + start as u64, ..opts.clone() };
        let g = model.generate_images(&seqs, &vec![un; seqs.len()], &o, &mut |_, _, _| {})?;
        for (e, rgb) in chunk.iter().zip(to_rgb8(&g.images)?) {
            let (ok, _) = shapeeval::score_image(&rgb, (height, width), e);
            results.push((e.task.clone(), ok));
            if let Some(dir) = &args.save_images {
                write_png(Some(&image_file(dir, e.index)), &rgb, width, height, None, args.model.force)?;
            }
        }
        status(format_args!("t2i {}/{} images, {:.1} s", results.len(), prompts.len(), started.elapsed().as_secs_f64()));
    }
    end_status();
    let t2i = shapeeval::score_t2i(&results);
    let (understanding, editing) = eval_other(&model, args, &ImageOptions { scales: None, ..opts.clone() })?;
    if args.json {
        print_json(&report::EvalReport {
            meta: info.meta.clone(),
            n_per_task: args.n,
            canvas: format!("{width}x{height}"),
            prompt_seed: args.prompt_seed,
            sampler: sampler_of(&opts),
            seed: opts.seed,
            t2i: serde_json::to_value(&t2i)?,
            correct: results.iter().map(|(_, ok)| *ok).collect(),
            understanding,
            editing,
            timings_ms: report::EvalTimings { load: ms(info.load), total: ms(started.elapsed()) },
        })?;
    } else {
        println!("ShapeEval t2i ({} prompts per task, seed {}, {width}x{height} px):", args.n, args.prompt_seed);
        for task in shapeeval::TASKS {
            println!("  {task:14} {:.3}", t2i.get(task).unwrap_or(0.0));
        }
        println!("  {:14} {:.3}", "overall", t2i.overall);
        for (name, scores) in [("understanding (exact match)", &understanding), ("editing (success)", &editing)] {
            println!("{name}:");
            for (k, v) in scores.as_object().into_iter().flatten() {
                println!("  {k:14} {}", v);
            }
        }
        ui::note(format_args!("{:.1} s", started.elapsed().as_secs_f64()));
    }
    if let Some(min) = args.min_overall {
        if t2i.overall < min {
            return Err(fail(format!("overall t2i score {:.3} is below --min-overall {min}", t2i.overall)));
        }
    }
    Ok(())
}

/// Understanding accuracy per question type and editing success per edit type, on the
/// shipped evaluation set (`model/assets/shapeeval_set.json`, the reference's samples).
fn eval_other(model: &NextFlow, args: &EvalShapesArgs, opts: &ImageOptions) -> Result<(serde_json::Value, serde_json::Value)> {
    let (understanding, editing) = shapeeval::eval_set::load()?;
    let tok = model.text.as_ref().ok_or_else(|| fail("random weights cannot answer questions"))?;
    let per_type = |kinds: Vec<(&str, bool)>| -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for kind in kinds.iter().map(|(k, _)| *k).collect::<std::collections::BTreeSet<_>>() {
            let of: Vec<bool> = kinds.iter().filter(|(k, _)| *k == kind).map(|(_, ok)| *ok).collect();
            m.insert(kind.to_string(), serde_json::json!((of.iter().filter(|&&x| x).count() as f64 / of.len() as f64 * 1000.0).round() / 1000.0));
        }
        serde_json::Value::Object(m)
    };
    let take = |kind: &str, i: usize| -> bool { let _ = kind; i < args.n_other };
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut u = Vec::new();
    for case in &understanding {
        let i = seen.entry(case.kind.clone()).or_default();
        *i += 1;
        if !take(&case.kind, *i - 1) {
            continue;
        }
        let indices = model.encode_image(&from_rgb8(&case.rgb, case.size, model.dtype(), model.device())?)?;
        let word = model.answer_word(&indices, &case.question)?;
        let answer = tok.decode(&[word], true)?;
        u.push((case.kind.as_str(), answer.trim() == case.answer));
        status(format_args!("understanding {}/{}", u.len(), understanding.len().min(4 * args.n_other)));
    }
    end_status();
    seen.clear();
    let mut e = Vec::new();
    for (n, case) in editing.iter().enumerate() {
        let i = seen.entry(case.kind.clone()).or_default();
        *i += 1;
        if !take(&case.kind, *i - 1) {
            continue;
        }
        let indices = model.encode_image(&from_rgb8(&case.rgb, case.size, model.dtype(), model.device())?)?;
        let o = ImageOptions { seed: opts.seed + n as u64, ..opts.clone() };
        let g = model.edit(&indices, &case.instruction, &o, &mut |_, _, _| {})?;
        let after = to_rgb8(&g.images)?.remove(0);
        let ok = shapeeval::edit_success(&case.rgb, &case.instruction, &after, case.size)?;
        e.push((case.kind.as_str(), ok));
        status(format_args!("editing {}/{}", e.len(), editing.len().min(4 * args.n_other)));
    }
    end_status();
    Ok((per_type(u), per_type(e)))
}
