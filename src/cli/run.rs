//! What each subcommand does.

use super::files::{check_new, png_bytes, write_free, write_new};
use super::memory;
use super::*;
use nextflow_model::nextflow::{Generated, NextFlow, Sequence};
use nextflow_model::shapeeval;
use nextflow_model::text::{self, TextOptions};
use nextflow_model::visual::{from_rgb8, to_rgb8};
use nextflow_model::config::VisualTokenizer;
use nextflow_model::{Config, ImageOptions, Message, ModelType, StreamDecoder, TextTokenizer, Transformer, Weights};
use nextflow_runtime::{Backend, DType, Device};
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fail(msg: impl Into<String>) -> Box<dyn std::error::Error> {
    msg.into().into()
}

pub fn open_device(spec: &str) -> Result<Device> {
    Ok(Device::open(spec)?)
}

fn dtype_for(arg: DTypeArg, device: &Device) -> Result<DType> {
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
fn config_of(args: &ModelArgs) -> Result<Config> {
    Ok(match (&args.model, &args.config) {
        (Some(_), Some(_)) => return Err(fail("give --model DIR or --config NAME, not both")),
        (Some(dir), None) => Config::load(dir)?,
        (None, Some(name)) => Config::named(name)?,
        (None, None) => Config::named("nextflow-tiny")?,
    })
}

fn describe(args: &ModelArgs) -> String {
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

pub fn load_nextflow(args: &ModelArgs, device: &Device) -> Result<NextFlow> {
    load_nextflow_for(args, device, 1, None, true)
}

/// [`load_nextflow`] for runs of `batch` images per forward on `scales` (the memory check).
fn load_nextflow_for(args: &ModelArgs, device: &Device, batch: usize, scales: Option<&[[usize; 2]]>, context_image: bool) -> Result<NextFlow> {
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
    let model = NextFlow::from_parts(config, &weights, text, dtype, device)?;
    eprintln!("model: {} on {device} ({dtype:?}), loaded in {:.2} s", describe(args), t.elapsed().as_secs_f64());
    Ok(model)
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
fn aspect_of(w: usize, h: usize) -> String {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let g = gcd(w, h).max(1);
    format!("{}:{}", w / g, h / g)
}

/// Per-scale progress on stderr: a bar when it is a terminal, a line per scale otherwise.
struct Progress {
    tty: bool,
    label: String,
}

impl Progress {
    fn new(label: &str) -> Progress {
        Progress { tty: std::io::stderr().is_terminal(), label: label.into() }
    }
    fn scale(&self, k: usize, total: usize, took: Duration, scales: &[[usize; 2]]) {
        let [h, w] = scales.get(k).copied().unwrap_or([0, 0]);
        let done = (k + 1) * 20 / total.max(1);
        let bar = format!("[{}{}]", "#".repeat(done), " ".repeat(20 - done));
        if self.tty {
            eprint!("\r{} {bar} scale {}/{total} ({h}x{w}) {:.1} ms   ", self.label, k + 1, took.as_secs_f64() * 1e3);
            if k + 1 == total {
                eprintln!();
            }
        } else {
            eprintln!("{} scale {}/{total} ({h}x{w}) {:.1} ms", self.label, k + 1, took.as_secs_f64() * 1e3);
        }
    }
}

/// Path of image `i` of `n`.
fn image_path(out: &Path, i: usize, n: usize) -> PathBuf {
    let s = out.to_string_lossy();
    if s.contains("{i}") {
        return PathBuf::from(s.replace("{i}", &i.to_string()));
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

/// A status line: redrawn in place on a terminal, one line each when stderr is a file or
/// pipe (logs stay readable, and an error never lands mid-line).
fn status(line: std::fmt::Arguments) {
    if std::io::stderr().is_terminal() {
        eprint!("\r{line}");
    } else {
        eprintln!("{line}");
    }
}

/// Ends a run of [`status`] lines.
fn end_status() {
    if std::io::stderr().is_terminal() {
        eprintln!();
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

/// Writes image `rgb` as a PNG at `path` (None: the first free default name); returns the path.
fn write_png(path: Option<&Path>, rgb: &[u8], width: usize, height: usize, force: bool) -> Result<PathBuf> {
    let bytes = png_bytes(rgb, width, height)?;
    match path {
        Some(p) => write_new(p, &bytes, force).map(|()| p.to_path_buf()),
        None => write_free(default_names(), &bytes),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn report_images(t: &nextflow_model::nextflow::Timings, paths: &[PathBuf], json: bool, extra: serde_json::Value) -> Result<()> {
    if json {
        let mut v = serde_json::json!({
            "images": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "timings_ms": {
                "prefill": ms(t.prefill),
                "scales": t.scales.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "decoder": ms(t.decode),
                "total": ms(t.total()),
            },
        });
        if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let scales: Vec<String> = t.scales.iter().map(|d| format!("{:.1}", ms(*d))).collect();
        eprintln!(
            "time: prefill {:.1} ms, scales [{}] ms, decoder {:.1} ms, total {:.1} ms",
            ms(t.prefill),
            scales.join(", "),
            ms(t.decode),
            ms(t.total())
        );
        for p in paths {
            println!("{}", p.display());
        }
    }
    Ok(())
}

/// Writes each image of `g` (image `i` to `paths[i]`, or a free default name); returns the paths.
fn save_images(g: &Generated, paths: Option<&[PathBuf]>, force: bool) -> Result<Vec<PathBuf>> {
    let (h, w) = (g.images.shape()[2], g.images.shape()[3]);
    to_rgb8(&g.images)?.iter().enumerate().map(|(i, rgb)| write_png(paths.map(|p| p[i].as_path()), rgb, w, h, force)).collect()
}

/// A sampling error of the library, worded with the flag that sets the value.
fn as_flags(e: nextflow_model::Error) -> Box<dyn std::error::Error> {
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

pub fn generate(args: &GenerateArgs, device: &Device) -> Result<()> {
    check_num_images(args.num_images)?;
    if args.max_batch == Some(0) {
        return Err(fail("--max-batch must be at least 1"));
    }
    let force = args.model.force;
    let paths = args.output.out.as_deref().map(|out| output_paths(out, args.num_images));
    if let Some(paths) = &paths {
        check_outputs(paths, force)?;
    }
    // The canvas and the sampler are checked against the config before any weight is read.
    let config = config_of(&args.model)?;
    let scales = schedule(&config.parts()?.tokenizer, args.size, args.aspect.as_deref())?;
    check_image_sampling(&config, &args.sampling)?;
    let dtype = dtype_for(args.model.dtype, device)?;
    let all_scales = scales.clone().unwrap_or_else(|| config.parts().map(|p| p.tokenizer.scales.clone()).unwrap_or_default());
    let positions = image_run(&config, 0, 1, Some(&all_scales), false).positions;
    let batch = match args.max_batch {
        Some(b) => b,
        None => memory::default_batch(&config, parameters(&config, None), positions, dtype, device),
    }
    .min(args.num_images);
    let model = load_nextflow_for(&args.model, device, batch, Some(&all_scales), false)?;
    let mut opts = image_options(&model, &args.sampling)?;
    opts.scales = scales;
    let chunks = args.num_images.div_ceil(batch);
    let mut written = Vec::new();
    let mut timings = nextflow_model::nextflow::Timings::default();
    for c in 0..chunks {
        let (start, n) = (c * batch, batch.min(args.num_images - c * batch));
        let label = if chunks > 1 { format!("generate {}-{}/{}", start + 1, start + n, args.num_images) } else { "generate".into() };
        let progress = Progress::new(&label);
        let o = ImageOptions { seed: opts.seed.wrapping_add(start as u64), ..opts.clone() };
        let g = model.text_to_image(&args.prompt, args.negative_prompt.as_deref(), n, &o, &mut |k, total, d| progress.scale(k, total, d, &all_scales))?;
        written.extend(save_images(&g, paths.as_ref().map(|p| &p[start..start + n]), force)?);
        timings.prefill += g.timings.prefill;
        timings.decode += g.timings.decode;
        if timings.scales.is_empty() {
            timings.scales = g.timings.scales.clone();
        } else {
            timings.scales.iter_mut().zip(&g.timings.scales).for_each(|(a, b)| *a += *b);
        }
    }
    let seeds: Vec<u64> = (0..args.num_images as u64).map(|i| opts.seed.wrapping_add(i)).collect();
    report_images(&timings, &written, args.output.json, serde_json::json!({"prompt": args.prompt, "seed": opts.seed, "seeds": seeds, "batch": batch, "cfg": opts.cfg_scale, "top_k": opts.top_k, "top_p": opts.top_p, "temperature": opts.temperature, "scales": all_scales}))
}

/// Every check a command makes before it loads a model, for the parsed command line: the
/// config and its bounds, the canvas, sampling values, output paths (nothing is written) and
/// input images. `main` runs it first; the fuzz tests drive it with random flag values.
pub fn preflight(cli: &Cli) -> Result<()> {
    nextflow_ops::pool::threads_from_env().map_err(fail)?;
    let text_options = |a: &ChatArgs| TextOptions {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature.unwrap_or(0.0),
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        ..Default::default()
    };
    match &cli.command {
        Command::Devices | Command::Bench(_) => Ok(()),
        Command::Inspect(m) => config_of(m).map(|_| ()),
        Command::Generate(a) => {
            check_num_images(a.num_images)?;
            if let Some(out) = &a.output.out {
                check_outputs(&output_paths(out, a.num_images), a.model.force)?;
            }
            let config = config_of(&a.model)?;
            schedule(&config.parts()?.tokenizer, a.size, a.aspect.as_deref())?;
            check_image_sampling(&config, &a.sampling)
        }
        Command::Understand(a) => {
            let config = config_of(&a.model)?;
            read_image(&a.image, config.parts()?.tokenizer.image_size).map(|_| ())
        }
        Command::Edit(a) => {
            if let Some(out) = &a.output.out {
                check_outputs(&output_paths(out, 1), a.model.force)?;
            }
            let config = config_of(&a.model)?;
            check_image_sampling(&config, &a.sampling)?;
            read_image(&a.image, config.parts()?.tokenizer.image_size).map(|_| ())
        }
        Command::Chat(a) => {
            config_of(&a.model)?;
            text_options(a).validate().map_err(as_flags)?;
            a.logits_out.as_deref().map_or(Ok(()), |p| check_new(p, a.model.force))
        }
        Command::Eval(EvalCommand::Shapes(a)) => {
            let config = config_of(&a.model)?;
            schedule(&config.parts()?.tokenizer, a.size, a.aspect.as_deref())?;
            check_image_sampling(&config, &a.sampling)
        }
    }
}

/// Reads an image file as RGB8 at `size` x `size` (nearest resize of any canvas, with a
/// note), before any model is loaded; the decoder's limits refuse oversized images.
fn read_image(path: &Path, size: usize) -> Result<Vec<u8>> {
    let (rgb, canvas) = shapeeval::load_png_canvas(path).map_err(fail)?;
    let (h, w) = (canvas.height, canvas.width);
    if (h, w) == (size, size) {
        return Ok(rgb);
    }
    eprintln!("note: {} is {w}x{h}; resized to the model's {size}x{size}", path.display());
    Ok((0..size * size)
        .flat_map(|p| {
            let (y, x) = ((p / size) * h / size, (p % size) * w / size);
            let at = (y * w + x) * 3;
            [rgb[at], rgb[at + 1], rgb[at + 2]]
        })
        .collect())
}

pub fn understand(args: &UnderstandArgs, device: &Device) -> Result<()> {
    let size = config_of(&args.model)?.parts()?.tokenizer.image_size;
    let rgb = read_image(&args.image, size)?;
    let model = load_nextflow(&args.model, device)?;
    let t = Instant::now();
    let indices = model.encode_image(&from_rgb8(&rgb, size, model.dtype(), model.device())?)?;
    let encode = t.elapsed();
    let tok = model.text.as_ref().ok_or_else(|| fail("random weights have no tokenizer to print text with"))?;
    let mut stream = StreamDecoder::new(tok, true);
    let mut answer = String::new();
    let out = model.understand(&indices, &args.prompt, args.max_new_tokens, &mut |id| {
        if let Ok(piece) = stream.push(id) {
            if !args.json {
                print!("{piece}");
                let _ = std::io::stdout().flush();
            }
            answer.push_str(&piece);
        }
        ControlFlow::Continue(())
    })?;
    answer.push_str(&stream.finish()?);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({
            "answer": answer.trim(), "ids": out.ids,
            "timings_ms": {"encode": ms(encode), "prefill": ms(out.prefill), "decode": ms(out.decode)},
        }))?);
    } else {
        println!();
        eprintln!("time: encode {:.1} ms, prefill {:.1} ms, decode {:.1} ms", ms(encode), ms(out.prefill), ms(out.decode));
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
    let rgb = read_image(&args.image, size)?;
    let model = load_nextflow(&args.model, device)?;
    let opts = image_options(&model, &args.sampling)?;
    let t = Instant::now();
    let indices = model.encode_image(&from_rgb8(&rgb, size, model.dtype(), model.device())?)?;
    let encode = t.elapsed();
    let scales = model.parts().tokenizer.scales.clone();
    let progress = Progress::new("edit");
    let g = model.edit(&indices, &args.prompt, &opts, &mut |k, n, d| progress.scale(k, n, d, &scales))?;
    let written = save_images(&g, paths.as_deref(), force)?;
    report_images(&g.timings, &written, args.output.json, serde_json::json!({"instruction": args.prompt, "encode_ms": ms(encode), "seed": opts.seed}))
}

/// Text model for `chat`: any checkpoint's backbone (NextFlow's included).
struct TextModel {
    config: Config,
    transformer: Transformer,
    tokenizer: Option<TextTokenizer>,
}

/// The text backbone for a run of up to `positions` positions (prompt and answer).
fn load_text(args: &ModelArgs, device: &Device, positions: usize) -> Result<TextModel> {
    let dtype = dtype_for(args.dtype, device)?;
    let config = config_of(args)?;
    let sections = |c: &Config| c.nextflow.as_ref().map_or(vec![c.backbone.head_dim() / 2], |p| p.visual.mrope_section.clone());
    let t = Instant::now();
    let (weights, tokenizer) = require_weights(args)?;
    let run = memory::Run { parameters: parameters(&config, Some(&weights)), rows: 1, positions: positions as u64, images: 0 };
    memory::check(&config, run, dtype, device, args.force).map_err(fail)?;
    let transformer = Transformer::load(&weights, &config.backbone, config.vocab_size, &sections(&config), dtype, device)?;
    let unused = weights.unused();
    if config.model_type == ModelType::Qwen2 && !weights.is_random() && !unused.is_empty() {
        eprintln!("warning: {} tensors in the checkpoint are not used: {}", unused.len(), unused.join(", "));
    }
    eprintln!("model: {} on {device} ({dtype:?}), loaded in {:.2} s", describe(args), t.elapsed().as_secs_f64());
    Ok(TextModel { config, transformer, tokenizer })
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
    let model = load_nextflow(&args.model, device)?;
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
                match save_images(g, path.as_ref().map(std::slice::from_ref), force) {
                    Ok(mut p) => {
                        let p = p.remove(0);
                        if !args.json {
                            print!("[image: {}] ", p.display());
                        }
                        saved.push(p.display().to_string());
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"text": text_all.trim(), "images": saved}))?);
    } else {
        println!();
    }
    failed.map_or(Ok(()), Err)
}

/// `text` may not carry the tokenizer's control tokens (they would forge the template's markers).
fn refuse_control_tokens(tok: &TextTokenizer, what: &str, text: &str) -> Result<()> {
    match tok.control_token_in(text) {
        Some(t) => Err(fail(format!("{what} contains the control token `{t}`, which cannot be typed (it would be taken as the template's own marker)"))),
        None => Ok(()),
    }
}

pub fn chat(args: &ChatArgs, device: &Device) -> Result<()> {
    let config = config_of(&args.model)?;
    let sampled = args.temperature.is_some_and(|t| t > 0.0) && !args.greedy;
    let mut opts = TextOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: if sampled { args.temperature.unwrap_or(0.0) } else { 0.0 },
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        stop_tokens: Vec::new(),
        keep_logits: args.logits_out.is_some(),
        vocab_limit: config.nextflow.as_ref().map(|p| p.vocabulary.code_start()),
    };
    // Every value is checked as given, whether or not greedy decoding uses it; a sampling
    // option that greedy decoding would ignore is refused rather than dropped.
    TextOptions { temperature: args.temperature.unwrap_or(0.0), ..opts.clone() }.validate().map_err(as_flags)?;
    if !sampled && (args.top_k != 0 || args.top_p != 1.0) {
        return Err(fail("--top-k and --top-p shape sampling, and this run decodes greedily: add --temperature T (T > 0, without --greedy), or drop them"));
    }
    if args.images_out.is_some() && (config.model_type != ModelType::NextFlow || args.prompt_ids.is_some() || args.prompt.is_none()) {
        return Err(fail("--images-out is for NextFlow models answering a --prompt (their answers may contain images)"));
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
    if let Some(tok) = &m.tokenizer {
        for s in ["<|im_end|>", "<|endoftext|>", "<eos>"] {
            if let Some(id) = tok.token_to_id(s) {
                if !opts.stop_tokens.contains(&id) {
                    opts.stop_tokens.push(id);
                }
            }
        }
    }
    for &id in &m.config.eos_token_ids {
        if !opts.stop_tokens.contains(&id) {
            opts.stop_tokens.push(id);
        }
    }
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
        let tok = m.tokenizer.as_ref().ok_or_else(|| fail("this checkpoint has no tokenizer.json: give --prompt-ids"))?;
        if let Some(last) = history.last() {
            refuse_control_tokens(tok, "the prompt", &last.content)?;
        }
        if tok.has_chat_template() {
            Ok(tok.encode(&tok.apply_chat_template(history, true)?, false)?)
        } else {
            // No template: the last user message as plain text (NextFlow: after <bos>).
            let mut ids: Vec<u32> = m.config.bos_token_id.into_iter().collect();
            ids.extend(tok.encode(&history.last().map(|h| h.content.clone()).unwrap_or_default(), false)?);
            Ok(ids)
        }
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
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({
                "prompt_ids": prompt, "ids": out.ids, "text": text_out,
                "prefill_tokens_per_s": out.prefill_tokens_per_s(), "decode_tokens_per_s": out.decode_tokens_per_s(),
                "stopped_by_stop_token": out.stopped_by.is_some(),
            }))?);
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

fn gib(bytes: f64) -> String {
    if bytes >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", bytes / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes / (1u64 << 20) as f64)
    }
}

pub fn inspect(args: &ModelArgs) -> Result<()> {
    let config = config_of(args)?;
    let b = &config.backbone;
    let weights = if args.random_weights { None } else { open_weights(args)?.map(|(w, _)| w) };
    println!("model        {}", describe(args));
    println!("type         {:?}", config.model_type);
    println!(
        "backbone     Qwen2: {} layers, hidden {}, {} heads / {} kv heads (head_dim {}), SwiGLU {}, vocab {}, rope_theta {}, {} head",
        b.num_hidden_layers, b.hidden_size, b.num_attention_heads, b.num_key_value_heads, b.head_dim(), b.intermediate_size, config.vocab_size, b.rope_theta,
        if b.tie_word_embeddings { "tied" } else { "untied" }
    );
    let mut params = config.transformer_parameters();
    if let Some(p) = &config.nextflow {
        let t = &p.tokenizer;
        let v = &p.visual;
        println!("vocabulary   {} text ids (specials + words), {} visual codes from id {}", p.vocabulary.code_start(), p.vocabulary.codebook_size, p.vocabulary.code_start());
        for (i, ((h, w), scales)) in t.canvases().iter().enumerate() {
            let label = if i == 0 { "image       " } else { "            " };
            let tokens: usize = scales.iter().map(|[a, b]| a * b).sum();
            let listed: Vec<String> = scales.iter().map(|[a, b]| if a == b { format!("{a}") } else { format!("{a}x{b}") }).collect();
            let flags = format!("--size {} --aspect {}", h.min(w), aspect_of(*w, *h));
            println!("{label} {w}x{h} px ({flags}), {} px/token, {} scales {listed:?} ({tokens} tokens)", t.patch_size, scales.len());
        }
        println!("visual rows  input {:?}, 3D RoPE sections {:?} axes {:?} C={}, level embedding {:?}, K embedding {}", v.input_mode, v.mrope_section, v.rope_axes, v.rope_scale_c, v.level_embedding, v.scale_length_embedding);
        println!("tokenizer    dual codebook {} x ({} semantic + {} pixel), decoder ch {} x {:?}, {} res blocks/level", t.codebook_size, t.semantic_dim, t.pixel_dim, t.ch, t.ch_mult, t.decoder_res_blocks);
        println!("sampler      cfg {} ({:?}), top-k {}, top-p {}, temperature {}", p.sampler.cfg_scale, p.sampler.cfg_schedule, p.sampler.top_k, p.sampler.top_p, p.sampler.temperature);
        params += b.hidden_size * (t.code_dim() + 1) + b.hidden_size * (b.hidden_size + 1) + (t.scales.len() + 1) * b.hidden_size;
    }
    if let Some(w) = &weights {
        let total: usize = w.names().filter_map(|n| w.info(n)).map(|i| i.shape.iter().product::<usize>()).sum();
        let dtypes: Vec<String> = w.disk_dtypes().iter().map(|(d, bytes)| format!("{d} {}", gib(*bytes as f64))).collect();
        println!("checkpoint   {} tensors, {:.2} M parameters, on disk: {}", w.names().count(), total as f64 / 1e6, dtypes.join(", "));
        params = total;
    } else {
        println!("parameters   {:.3} B (computed from the shapes)", params as f64 / 1e9);
    }
    let kv_per_token = 2 * b.num_hidden_layers * b.num_key_value_heads * b.head_dim();
    let tokens = config.nextflow.as_ref().map_or(4096, |p| 2 * (p.tokenizer.tokens() + 64));
    println!("memory       weights + KV cache for {tokens} positions (CFG batch of 2 for images):");
    for (name, size) in [("f32", 4.0), ("f16", 2.0), ("bf16", 2.0)] {
        println!("  {name:5} {} + {}", gib(params as f64 * size), gib((kv_per_token * tokens) as f64 * size));
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
    let model = load_nextflow_for(&args.model, device, args.batch.min(args.n.max(1) * shapeeval::TASKS.len()), scales.as_deref(), true)?;
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
                write_png(Some(&image_file(dir, e.index)), &rgb, width, height, args.model.force)?;
            }
        }
        status(format_args!("t2i {}/{} images, {:.1} s", results.len(), prompts.len(), started.elapsed().as_secs_f64()));
    }
    end_status();
    let t2i = shapeeval::score_t2i(&results);
    let (understanding, editing) = eval_other(&model, args, &ImageOptions { scales: None, ..opts.clone() })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({
            "n_per_task": args.n, "canvas": format!("{width}x{height}"), "prompt_seed": args.prompt_seed, "sampler_seed": opts.seed, "cfg": opts.cfg_scale, "top_k": opts.top_k,
            "t2i": t2i, "correct": results.iter().map(|(_, ok)| *ok).collect::<Vec<_>>(),
            "understanding": understanding, "editing": editing, "seconds": started.elapsed().as_secs_f64(),
        }))?);
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
        eprintln!("{:.1} s", started.elapsed().as_secs_f64());
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
    let (understanding, editing) = nextflow_model::eval_set::load().map_err(fail)?;
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
        let ok = shapeeval::edit_success(&case.rgb, &case.instruction, &after, case.size).map_err(fail)?;
        e.push((case.kind.as_str(), ok));
        status(format_args!("editing {}/{}", e.len(), editing.len().min(4 * args.n_other)));
    }
    end_status();
    Ok((per_type(u), per_type(e)))
}
