//! Command-line front end: argument parsing and the text each subcommand prints.

pub mod bench;
pub mod devices;
pub mod files;
pub mod images;
pub mod memory;
pub mod report;
pub mod run;
pub mod serve;
pub mod ui;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const DEVICE_HELP: &str = "Device to run on: auto (the best GPU, else the CPU; never a software \
rasterizer), cpu, cuda[:N], hip[:N], vulkan[:N], metal[:N] or dx12[:N]. `nextflow devices` lists them.";

/// NextFlow-rs: unified multimodal generation (text token by token, images scale by scale)
/// on NVIDIA, AMD and Apple GPUs, Vulkan, and the CPU, from one pure-Rust binary.
///
/// With no --model, every command uses the tiny ShapeWorld model compiled into the binary
/// (128 px images of flat shapes in ten colours; see `nextflow inspect`).
#[derive(Debug, Parser)]
#[command(name = "nextflow", version, about, long_about = None, after_help = EXAMPLES_MAIN)]
pub struct Cli {
    #[arg(long, global = true, env = "NEXTFLOW_DEVICE", hide_env_values = true, default_value = "auto", help = DEVICE_HELP, display_order = 900)]
    pub device: String,

    /// Print what the compiler ran on exit: kernel launches, bytes read and written, FLOPs,
    /// plans compiled and replayed, the largest plan's peak memory, and which matmul kernels
    /// came from the autotune cache (`bench kernels` fills it) and which were timed now.
    #[arg(long, global = true, display_order = 901)]
    pub stats: bool,

    /// No progress, notes or timings on stderr (errors and the results on stdout stay).
    #[arg(short, long, global = true, display_order = 902)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every device this machine offers, with backend, memory and f16/bf16/plane
    /// support, and mark the one `--device auto` would choose.
    ///
    /// With `--device X`, open that device (compiling nothing) and report it, so you can
    /// check a selection before a long run.
    #[command(after_help = EXAMPLES_DEVICES)]
    Devices(DevicesArgs),
    /// Benchmarks: `bench kernels --config tiny|7b` times every candidate kernel of every op
    /// family at a config's shapes and saves the winners in the autotune cache; `bench image`
    /// times whole text-to-image generations per stage after warm-up runs.
    #[command(after_help = EXAMPLES_BENCH)]
    Bench(bench::BenchArgs),
    /// Text to image: paint a picture scale by scale, coarse to fine.
    ///
    /// Each PNG carries its prompt and settings (a `parameters` text chunk, as A1111 and
    /// stable-diffusion.cpp write it); `--from-png FILE` paints that image again.
    #[command(after_help = EXAMPLES_GENERATE)]
    Generate(GenerateArgs),
    /// Answer a question about an image (the image is tokenized into the sequence).
    #[command(after_help = EXAMPLES_UNDERSTAND)]
    Understand(UnderstandArgs),
    /// Edit an image by instruction: the image and the instruction in, a new image out.
    #[command(after_help = EXAMPLES_EDIT)]
    Edit(EditArgs),
    /// Text generation with any Qwen2 / Qwen2.5 checkpoint (or a NextFlow one), streamed.
    ///
    /// One prompt with --prompt (or --prompt-ids), else an interactive session (an empty
    /// line or Ctrl-D ends it). Uses the checkpoint's chat template when it has one.
    /// Decoding is greedy unless a sampling option (--temperature, --top-k, --top-p) is given.
    #[command(after_help = EXAMPLES_CHAT)]
    Chat(ChatArgs),
    /// Describe a model: architecture, parameters, dtypes on disk, memory needed per dtype.
    #[command(after_help = EXAMPLES_INSPECT)]
    Inspect(InspectArgs),
    /// Convert published checkpoint files (VAR's `.pth`) into safetensors plus a config.json,
    /// which `--model OUT` loads memory-mapped, with no pickle to read.
    #[command(after_help = EXAMPLES_CONVERT)]
    Convert(ConvertArgs),
    /// Serve the model over HTTP: OpenAI-compatible image and chat endpoints with batching
    /// and backpressure, a web page at /, Prometheus metrics at /metrics.
    ///
    /// Stateless (no sessions, no stored files): run several behind any load balancer.
    Serve(serve::ServeArgs),
    /// Evaluations.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Print a shell completion script: bash, zsh, fish, powershell or elvish.
    #[command(after_help = EXAMPLES_COMPLETIONS)]
    Completions(CompletionsArgs),
}

const EXAMPLES_MAIN: &str = "Examples:
  nextflow generate -p \"a red circle above a blue square\" -o shapes.png
  nextflow understand -i shapes.png -p \"what color is the circle?\"
  nextflow chat -m ./Qwen2.5-0.5B-Instruct -p \"Why is the sky blue?\"";
const EXAMPLES_DEVICES: &str = "Examples:
  nextflow devices
  nextflow devices --json
  nextflow --device vulkan:0 devices";
const EXAMPLES_BENCH: &str = "Examples:
  nextflow bench kernels --config tiny
  nextflow bench image --reps 5
  nextflow bench image --config 7b --random-weights --reps 1 --warmup 0";
const EXAMPLES_GENERATE: &str = "Examples:
  nextflow generate -p \"a red circle above a blue square\" -o shapes.png
  nextflow generate -p \"three stars\" -n 4 -s 7 -o \"stars-{i}.png\" --json
  nextflow generate --from-png shapes.png -o again.png";
const EXAMPLES_UNDERSTAND: &str = "Examples:
  nextflow understand -i shapes.png -p \"what color is the circle?\"
  nextflow understand -i photo.jpg --pad -p \"how many stars are there?\" --json";
const EXAMPLES_EDIT: &str = "Examples:
  nextflow edit -i shapes.png -p \"make the circle green\" -o edited.png
  nextflow edit -i shapes.webp -p \"remove the square\" -s 3 -o removed.png";
const EXAMPLES_CHAT: &str = "Examples:
  nextflow chat -m ./Qwen2.5-0.5B-Instruct -p \"Why is the sky blue?\"
  nextflow chat -m ./Qwen2.5-0.5B-Instruct --temperature 0.7 --top-p 0.9 -s 1
  nextflow chat -p \"a red circle\" -o answer-{i}.png";
const EXAMPLES_INSPECT: &str = "Examples:
  nextflow inspect
  nextflow inspect -m ./Qwen2.5-0.5B-Instruct --json
  nextflow inspect --config nextflow-7b";
const EXAMPLES_CONVERT: &str = "Examples:
  nextflow convert ./var-d16 --out ./var-d16-st
  nextflow generate -m ./var-d16-st --class 207";
const EXAMPLES_EVAL: &str = "Examples:
  nextflow eval shapes --n 50
  nextflow eval shapes --n 10 --json --save-images eval-images
  nextflow eval shapes --aspect 2:1 --n 20";
const EXAMPLES_COMPLETIONS: &str = "Examples:
  nextflow completions bash > ~/.local/share/bash-completion/completions/nextflow
  nextflow completions zsh > ~/.zfunc/_nextflow
  nextflow completions fish > ~/.config/fish/completions/nextflow.fish";

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Print the devices as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the description as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The model directory: VAR's VQVAE and transformer files as published, under any names.
    pub dir: PathBuf,
    /// Folder to write transformer.safetensors, vae.safetensors and config.json into
    /// (created if needed) [required].
    #[arg(short, long, value_name = "DIR", required = true)]
    pub out: PathBuf,
    /// Overwrite files of an earlier conversion there.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// ShapeEval (GenEval-style, rule-based): generate for the seeded prompt set of the six
    /// tasks and score; then understanding accuracy per question type and editing success
    /// per edit type on the shipped evaluation set.
    #[command(after_help = EXAMPLES_EVAL)]
    Shapes(EvalShapesArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// f16 on CUDA/HIP, f32 elsewhere.
    Auto,
    F32,
    F16,
    Bf16,
}

/// Where the model comes from.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Checkpoint directory (config.json, model.safetensors[.index.json], tokenizer.json)
    /// [default: the embedded nextflow-tiny].
    #[arg(short, long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// A built-in configuration instead of a directory: nextflow-tiny (or tiny),
    /// nextflow-7b (7b), qwen2-0.5b (0.5b), var-d16 / var-d20 / var-d24 / var-d30 / var-d36
    /// (VAR's published shapes). Needs --random-weights unless it is nextflow-tiny
    /// [default: none; --model or the embedded model].
    #[arg(long, value_name = "NAME")]
    pub config: Option<String>,
    /// Random weights of the chosen shapes, to measure speed where no weights exist
    /// (images come out as noise).
    #[arg(long)]
    pub random_weights: bool,
    /// Compute dtype; weights are converted on load (auto: f16 on CUDA/HIP, f32 elsewhere).
    #[arg(long, value_enum, default_value_t = DTypeArg::Auto)]
    pub dtype: DTypeArg,
    /// Overwrite existing output files, and run even where the memory check (weights, KV
    /// cache and activations against the memory this process may use) says it will not fit.
    #[arg(long)]
    pub force: bool,
}

/// Sampler settings of the next-scale generation (defaults: the model's config).
#[derive(Debug, Args, Clone)]
pub struct ImageSampling {
    // Help texts with defaults: sampler_help.
    #[arg(long, help = sampler_help("cfg"))]
    pub cfg: Option<f32>,
    #[arg(long, help = sampler_help("top_k"))]
    pub top_k: Option<usize>,
    #[arg(long, help = sampler_help("top_p"))]
    pub top_p: Option<f32>,
    #[arg(long, help = sampler_help("temperature"))]
    pub temperature: Option<f32>,
    /// Seed of the sampler (same seed, same image, on any device up to f32 rounding).
    #[arg(short, long, default_value_t = 0)]
    pub seed: u64,
}

/// Help of a sampler option, with the model's default and the embedded model's value.
fn sampler_help(what: &str) -> String {
    let s = nextflow_model::Config::from_json(nextflow_model::embedded::CONFIG).ok().and_then(|c| c.parts().ok().map(|p| p.sampler.clone()));
    let (lead, value) = match what {
        "cfg" => ("Classifier-free guidance weight w (1 = off): l = l_uncond + w (l_cond − l_uncond)", s.as_ref().map(|s| s.cfg_scale.to_string())),
        "top_k" => ("Keep the k most likely codes per cell (0 = all)", s.as_ref().map(|s| s.top_k.to_string())),
        "top_p" => ("Keep the smallest set of codes whose probability reaches p (1 = all)", s.as_ref().map(|s| s.top_p.to_string())),
        _ => ("Sampling temperature (0 = greedy)", s.as_ref().map(|s| s.temperature.to_string())),
    };
    format!("{lead} [default: the model's sampler; embedded model: {}]", value.unwrap_or_else(|| "?".into()))
}

/// Where images go.
#[derive(Debug, Args, Clone)]
pub struct Output {
    /// PNG path; with several images a pattern with `{i}` (e.g. `out-{i}.png`), else
    /// `-1`, `-2`, ... are added before the extension; both count from 1. Existing files are
    /// refused unless --force [default: nextflow.png, or the first of nextflow-2.png,
    /// nextflow-3.png, ... that does not exist].
    #[arg(short, long, value_name = "PNG")]
    pub out: Option<PathBuf>,
    /// Print a JSON report (model, device, settings, each image's path and seed, timings)
    /// on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to paint, e.g. "a red circle above a blue square" [required unless --from-png
    /// or --class].
    #[arg(short, long, required_unless_present_any = ["from_png", "class"])]
    pub prompt: Option<String>,
    /// The ImageNet class a class-conditional model (VAR, `--model DIR` with its published
    /// files) paints: an index 0-999 (207) or a name ("golden retriever") [default: none; required for such a model].
    #[arg(long, value_name = "CLASS", conflicts_with_all = ["prompt", "negative_prompt", "from_png"])]
    pub class: Option<String>,
    /// What to steer away from (the unconditional side of CFG) [default: none, the empty prompt].
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Paint again an image this program wrote: prompt, negative prompt, seed, size and
    /// sampler settings come from the PNG's `parameters` chunk (so none of those flags may
    /// be given); the model must be the one that wrote it [default: none].
    #[arg(long, value_name = "PNG", conflicts_with_all = ["prompt", "negative_prompt", "size", "aspect", "cfg", "top_k", "top_p", "temperature", "seed"])]
    pub from_png: Option<PathBuf>,
    /// Short side of the image in pixels: one of the canvases the model was trained on
    /// (`nextflow inspect` lists them) [default: the model's native size].
    #[arg(long, long_help = canvas_help("size"))]
    pub size: Option<usize>,
    /// Aspect ratio W:H of the image, one the model was trained on [default: 1:1].
    #[arg(long, long_help = canvas_help("aspect"))]
    pub aspect: Option<String>,
    /// Images to paint; image i (from 0) uses seed --seed + i, so each can be painted again
    /// alone with that seed.
    #[arg(short, long, default_value_t = 1)]
    pub num_images: usize,
    /// Images per forward batch; more images run in several batches with identical results
    /// [default: as many as memory allows, at most 32].
    #[arg(long)]
    pub max_batch: Option<usize>,
    #[command(flatten)]
    pub sampling: ImageSampling,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct UnderstandArgs {
    #[command(flatten)]
    pub input: ImageInput,
    /// The question, e.g. "what color is the circle?".
    #[arg(short, long)]
    pub prompt: String,
    /// Most tokens of the answer (never more than the model's context leaves).
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Print a JSON report (model, device, answer, ids, timings) on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// An input image and how it is fitted to the model's square canvas.
#[derive(Debug, Args, Clone)]
pub struct ImageInput {
    /// The image: PNG, JPEG or WebP of any size (at most 8192 x 8192). It is scaled so that
    /// its short side fits the model's canvas and the centre is cut out (or --pad).
    #[arg(short, long)]
    pub image: PathBuf,
    /// Fit the whole image instead: scale the long side to the canvas and fill the rest with
    /// the colour of the image's border [default: centre crop].
    #[arg(long)]
    pub pad: bool,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub input: ImageInput,
    /// The instruction, e.g. "make the circle green".
    #[arg(short, long)]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: ImageSampling,
    #[command(flatten)]
    pub output: Output,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// One prompt (rendered with the chat template when the checkpoint has one) [default:
    /// an interactive session].
    #[arg(short, long, conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// The prompt as token ids, e.g. 1,2,3 (no template): for comparisons with other
    /// implementations [default: none].
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// A system message for the chat template [default: none].
    #[arg(long)]
    pub system: Option<String>,
    /// Greedy decoding (the default when no sampling option is given); refused together
    /// with --temperature, --top-k or --top-p.
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    pub greedy: bool,
    /// Most tokens to generate (never more than the model's context leaves).
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; any sampling option turns sampling on, at temperature 1 unless
    /// this says otherwise (0 = greedy, which --top-k/--top-p cannot shape) [default: greedy
    /// decoding when no sampling option is given].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample from the k most likely tokens (0 = all) [default: 0].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample from the smallest set of tokens whose probability reaches p [default: 1].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Divide a seen token's logit by this (HF's rule; 1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Seed of the sampler.
    #[arg(short, long, default_value_t = 0)]
    pub seed: u64,
    /// Print the prompt ids, generated ids, text and speeds as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the logits of every generated position to this .npy file ([n, vocab], f32)
    /// [default: not written].
    #[arg(long, value_name = "NPY")]
    pub logits_out: Option<PathBuf>,
    /// NextFlow models with --prompt: the answer may contain images (the model writes
    /// `<boi>`, an image is painted, text continues); they are written here (`{i}` is the
    /// image number, from 1) [default: nextflow.png, nextflow-2.png, ...].
    #[arg(short = 'o', long = "out", visible_alias = "images-out", value_name = "PNG")]
    pub images_out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct EvalShapesArgs {
    /// Prompts per task (the seeded set is the reference's `eval_prompts(n)`).
    #[arg(long, default_value_t = 50)]
    pub n: usize,
    /// Seed of the prompt set.
    #[arg(long, default_value_t = 0)]
    pub prompt_seed: u64,
    /// Understanding and editing cases per type (at most the shipped set's 20).
    #[arg(long, default_value_t = 20)]
    pub n_other: usize,
    /// Images generated per forward (a larger batch is faster, up to memory; image i
    /// uses seed --seed + i in any batch).
    #[arg(long = "max-batch", visible_alias = "batch", default_value_t = 25)]
    pub batch: usize,
    /// Fail (exit 1) if the overall t2i score is below this [default: never fail].
    #[arg(long)]
    pub min_overall: Option<f64>,
    /// Keep the generated images in this folder (NNNNN.png by prompt index; existing files
    /// are refused before the run unless --force) [default: not kept].
    #[arg(long, value_name = "DIR")]
    pub save_images: Option<PathBuf>,
    /// Short side of the text-to-image canvas (as `generate --size`; understanding and
    /// editing use the model's native canvas) [default: the native size].
    #[arg(long, long_help = canvas_help("size"))]
    pub size: Option<usize>,
    /// Aspect ratio W:H of the text-to-image canvas (as `generate --aspect`), e.g. 2:1 to
    /// score position relations on a wide canvas [default: 1:1].
    #[arg(long, long_help = canvas_help("aspect"))]
    pub aspect: Option<String>,
    #[command(flatten)]
    pub sampling: ImageSampling,
    /// Print the scores (and model, device, settings) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `--size` / `--aspect` help naming the embedded model's canvases (read from its config).
fn canvas_help(flag: &str) -> String {
    let canvases = nextflow_model::Config::from_json(nextflow_model::embedded::CONFIG)
        .ok()
        .and_then(|c| c.parts().ok().map(|p| p.tokenizer.canvases()))
        .unwrap_or_default();
    let list: Vec<String> = canvases.iter().map(|((h, w), _)| format!("{w}x{h}")).collect();
    let lead = if flag == "size" {
        "Short side of the image in pixels, one of the canvases the model was trained on (its native size by default). A value the model does not offer is refused before anything runs; `nextflow inspect` lists a model's canvases."
    } else {
        "Aspect ratio W:H of the image, one the model was trained on (1:1 by default; with --size, the canvas of that short side and shape). A value the model does not offer is refused before anything runs."
    };
    format!("{lead}\n\nThe embedded model's canvases (W x H): {}", list.join(", "))
}
