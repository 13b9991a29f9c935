//! Command-line front end: argument parsing and the text each subcommand prints.

pub mod bench;
pub mod devices;
pub mod files;
pub mod memory;
pub mod run;

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
#[command(name = "nextflow", version, about, long_about = None)]
pub struct Cli {
    #[arg(long, global = true, env = "NEXTFLOW_DEVICE", default_value = "auto", help = DEVICE_HELP)]
    pub device: String,

    /// Print what the compiler ran on exit: kernel launches, bytes read and written, FLOPs,
    /// plans compiled and replayed.
    #[arg(long, global = true)]
    pub stats: bool,

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
    Devices,
    /// Benchmarks: `bench kernels --config tiny|7b` times every candidate kernel of every op
    /// family at a config's shapes and saves the winners in the autotune cache; `bench image`
    /// times whole text-to-image generations per stage after warm-up runs.
    Bench(bench::BenchArgs),
    /// Text to image: paint a picture scale by scale, coarse to fine.
    ///
    /// Example: nextflow generate --prompt "a red circle above a blue square" --out shapes.png
    Generate(GenerateArgs),
    /// Answer a question about an image (the image is tokenized into the sequence).
    ///
    /// Example: nextflow understand --image shapes.png --prompt "what color is the circle?"
    Understand(UnderstandArgs),
    /// Edit an image by instruction: the image and the instruction in, a new image out.
    ///
    /// Example: nextflow edit --image shapes.png --prompt "make the circle green" --out edited.png
    Edit(EditArgs),
    /// Text generation with any Qwen2 / Qwen2.5 checkpoint (or a NextFlow one), streamed.
    ///
    /// One prompt with --prompt (or --prompt-ids), else an interactive session (an empty
    /// line or Ctrl-D ends it). Uses the checkpoint's chat template when it has one.
    Chat(ChatArgs),
    /// Describe a model: architecture, parameters, dtypes on disk, memory needed per dtype.
    Inspect(ModelArgs),
    /// Evaluations.
    #[command(subcommand)]
    Eval(EvalCommand),
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// ShapeEval (GenEval-style, rule-based): generate for the seeded prompt set of the six
    /// tasks and score; then understanding accuracy per question type and editing success
    /// per edit type on the shipped evaluation set.
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
    /// Checkpoint directory (config.json, model.safetensors[.index.json], tokenizer.json).
    /// Default: the embedded nextflow-tiny.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A built-in configuration instead of a directory: nextflow-tiny, nextflow-7b,
    /// qwen2-0.5b. Needs --random-weights unless it is nextflow-tiny.
    #[arg(long, value_name = "NAME")]
    pub config: Option<String>,
    /// Random weights of the chosen shapes, to measure speed where no weights exist
    /// (images come out as noise).
    #[arg(long)]
    pub random_weights: bool,
    /// Compute dtype; weights are converted on load.
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
    /// Classifier-free guidance weight w (1 = off): l = l_uncond + w (l_cond − l_uncond).
    #[arg(long)]
    pub cfg: Option<f32>,
    /// Keep the k most likely codes per cell (0 = all).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Keep the smallest set of codes whose probability reaches p (1 = all).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Sampling temperature (0 = greedy).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Seed of the sampler (same seed, same image, on any device up to f32 rounding).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Where images go.
#[derive(Debug, Args, Clone)]
pub struct Output {
    /// PNG path; with several images a pattern with `{i}` (e.g. `out-{i}.png`), else
    /// `-1`, `-2`, ... are added before the extension. Default: nextflow.png, or the first
    /// of nextflow-2.png, nextflow-3.png, ... that does not exist.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print a JSON report (timings per stage, paths) on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to paint, e.g. "a red circle above a blue square".
    #[arg(long)]
    pub prompt: String,
    /// What to steer away from (the unconditional side of CFG).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Short side of the image in pixels: one of the canvases the model was trained on
    /// (`nextflow inspect` lists them; default: its native size).
    #[arg(long, long_help = canvas_help("size"))]
    pub size: Option<usize>,
    /// Aspect ratio W:H of the image, one the model was trained on (default 1:1).
    #[arg(long, long_help = canvas_help("aspect"))]
    pub aspect: Option<String>,
    /// Images to paint; image i uses seed --seed + i (reproducible alone).
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// Images per forward batch (default: as many as memory allows, at most 32); more
    /// images run in several batches with identical results.
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
    /// The image (PNG; resized to the model's input size if it differs).
    #[arg(long)]
    pub image: PathBuf,
    /// The question, e.g. "what color is the circle?".
    #[arg(long)]
    pub prompt: String,
    /// Most tokens of the answer (never more than the model's context leaves).
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// The image to edit (PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// The instruction, e.g. "make the circle green".
    #[arg(long)]
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
    /// One prompt (rendered with the chat template when the checkpoint has one).
    #[arg(long, conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// The prompt as token ids, e.g. 1,2,3 (no template): for comparisons with other
    /// implementations.
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// A system message for the chat template.
    #[arg(long)]
    pub system: Option<String>,
    /// Greedy decoding (the default when no sampling option is given).
    #[arg(long)]
    pub greedy: bool,
    /// Most tokens to generate (never more than the model's context leaves).
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0 or absent = greedy).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// With --temperature: keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// With --temperature: keep the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Divide a seen token's logit by this (HF's rule; 1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the generated ids and text as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the logits of every generated position to this .npy file ([n, vocab], f32).
    #[arg(long)]
    pub logits_out: Option<PathBuf>,
    /// NextFlow models with --prompt: the answer may contain images (the model writes
    /// `<boi>`, an image is painted, text continues); they are written here (`{i}` is
    /// the image number; default nextflow.png, nextflow-2.png, ...).
    #[arg(long)]
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
    #[arg(long, default_value_t = 25)]
    pub batch: usize,
    /// Fail (exit 1) if the overall t2i score is below this.
    #[arg(long)]
    pub min_overall: Option<f64>,
    /// Keep the generated images here (NNNNN.png by prompt index; existing files are
    /// refused before the run unless --force).
    #[arg(long)]
    pub save_images: Option<PathBuf>,
    /// Short side of the text-to-image canvas (as `generate --size`; understanding and
    /// editing use the model's native canvas).
    #[arg(long, long_help = canvas_help("size"))]
    pub size: Option<usize>,
    /// Aspect ratio W:H of the text-to-image canvas (as `generate --aspect`), e.g. 2:1 to
    /// score position relations on a wide canvas.
    #[arg(long, long_help = canvas_help("aspect"))]
    pub aspect: Option<String>,
    #[command(flatten)]
    pub sampling: ImageSampling,
    /// Print the scores as JSON.
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
