//! What each subcommand does: one file per subcommand (generate, understand, edit, chat,
//! inspect, eval), and here what they share — devices and dtypes, loading a model, canvases,
//! output paths and PNG writing, reports, and the checks every command makes before it loads.

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

mod chat;
mod edit;
mod eval;
mod generate;
mod inspect;
mod understand;
mod var;

pub use chat::chat;
pub use edit::edit;
pub use eval::eval_shapes;
pub use generate::generate;
pub use inspect::inspect;
pub use understand::understand;
pub use var::convert;

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
        (Some(dir), None) => match var::files(args)? {
            Some(f) => return Err(var::only_classes(dir, &f.config, "is not a text or text-to-image model")),
            None => Config::load(dir)?,
        },
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

/// `--class` given to a text-to-image model.
const CLASS_ON_TEXT_MODEL: &str = "--class picks the class of a class-conditional model (VAR, --model DIR); this model paints text: give --prompt";

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
        Command::Devices(_) | Command::Bench(_) | Command::Completions(_) | Command::Convert(_) => Ok(()),
        Command::Inspect(a) => match var::files(&a.model)? {
            Some(_) => Ok(()),
            None => config_of(&a.model).map(|_| ()),
        },
        Command::Serve(a) => {
            var::refuse(&a.model, "cannot be served (the server runs text and text-to-image models)")?;
            config_of(&a.model).map(|_| ())
        }
        Command::Generate(a) => {
            check_num_images(a.num_images)?;
            if let Some(f) = var::files(&a.model)? {
                if let Some(out) = &a.output.out {
                    check_outputs(&output_paths(out, a.num_images), a.model.force)?;
                }
                return var::check_generate(a, &f).map(|_| ());
            }
            if a.class.is_some() {
                return Err(fail(CLASS_ON_TEXT_MODEL));
            }
            let input = generate::generate_inputs(a)?;
            if let Some(out) = &a.output.out {
                check_outputs(&output_paths(out, a.num_images), a.model.force)?;
            }
            let config = config_of(&a.model)?;
            schedule(&config.parts()?.tokenizer, input.size, input.aspect.as_deref())?;
            check_image_sampling(&config, &input.sampling)
        }
        Command::Understand(a) => {
            var::refuse(&a.model, "cannot answer questions about images")?;
            let config = config_of(&a.model)?;
            read_image(&a.input, config.parts()?.tokenizer.image_size).map(|_| ())
        }
        Command::Edit(a) => {
            var::refuse(&a.model, "cannot edit images")?;
            if let Some(out) = &a.output.out {
                check_outputs(&output_paths(out, 1), a.model.force)?;
            }
            let config = config_of(&a.model)?;
            check_image_sampling(&config, &a.sampling)?;
            read_image(&a.input, config.parts()?.tokenizer.image_size).map(|_| ())
        }
        Command::Chat(a) => {
            var::refuse(&a.model, "has no text to chat in")?;
            config_of(&a.model)?;
            text_options(a).validate().map_err(as_flags)?;
            chat::chat_samples(a)?;
            a.logits_out.as_deref().map_or(Ok(()), |p| check_new(p, a.model.force))
        }
        Command::Eval(EvalCommand::Shapes(a)) => {
            var::refuse(&a.model, "paints ImageNet classes, not ShapeWorld prompts")?;
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

/// `text` may not carry the tokenizer's control tokens (they would forge the template's markers).
pub(super) fn refuse_control_tokens(tok: &TextTokenizer, what: &str, text: &str) -> Result<()> {
    match tok.control_token_in(text) {
        Some(t) => Err(fail(format!("{what} contains the control token `{t}`, which cannot be typed (it would be taken as the template's own marker)"))),
        None => Ok(()),
    }
}
