//! The JSON each command prints with `--json`: one serde struct per command, documented in
//! the README. Every report starts with the same four keys (`nextflow`, `model`, `device`,
//! `dtype`); times are milliseconds rounded to 0.1; the same concept has the same key in
//! every command (`prompt`, `seed`, `timings_ms.*`).

use schemars::JsonSchema;
use serde::Serialize;
use std::time::Duration;

/// Milliseconds, rounded to 0.1.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// What ran: the first keys of every report.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Meta {
    /// This program's version.
    pub nextflow: &'static str,
    /// The model: a directory, a built-in config name, or `nextflow-tiny (embedded)`.
    pub model: String,
    pub device: String,
    pub dtype: String,
}

impl Meta {
    pub fn new(model: String, device: &nextflow_runtime::Device, dtype: nextflow_runtime::DType) -> Meta {
        Meta { nextflow: env!("CARGO_PKG_VERSION"), model, device: device.to_string(), dtype: format!("{dtype:?}").to_lowercase() }
    }
}

/// The image sampler's settings as they ran.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Sampler {
    pub cfg: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub temperature: f32,
}

/// One written image.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Image {
    pub path: String,
    /// The seed that paints this image alone (`--seed` + its index).
    pub seed: u64,
}

#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
pub struct ImageTimings {
    pub load: f64,
    /// Tokenizing the input image (edit only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encode: Option<f64>,
    pub prefill: f64,
    /// Per scale, coarse to fine, summed over batches.
    pub scales: Vec<f64>,
    pub decoder: f64,
    /// Everything after loading.
    pub total: f64,
}

/// `generate --json` and `edit --json`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ImageReport {
    #[serde(flatten)]
    pub meta: Meta,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// The input image (edit only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `WxH` in pixels.
    pub size: String,
    /// `[h, w]` token grid of each scale.
    pub scales: Vec<[usize; 2]>,
    pub sampler: Sampler,
    /// The first image's seed.
    pub seed: u64,
    /// Images per forward batch.
    pub batch: usize,
    pub images: Vec<Image>,
    pub timings_ms: ImageTimings,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct TextTimings {
    pub load: f64,
    /// Tokenizing the input image (understand only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encode: Option<f64>,
    pub prefill: f64,
    pub decode: f64,
    pub total: f64,
}

/// `understand --json`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct UnderstandReport {
    #[serde(flatten)]
    pub meta: Meta,
    pub prompt: String,
    pub image: String,
    pub answer: String,
    pub ids: Vec<u32>,
    pub timings_ms: TextTimings,
}

/// `chat --json`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ChatReport {
    #[serde(flatten)]
    pub meta: Meta,
    /// The prompt as typed (absent with --prompt-ids).
    pub prompt: Option<String>,
    /// The ids the model read (the rendered template, or --prompt-ids).
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub text: String,
    /// Images the answer holds (NextFlow models).
    pub images: Vec<Image>,
    /// `greedy` or `sample`.
    pub decoding: &'static str,
    pub seed: u64,
    pub stopped_by_stop_token: bool,
    pub tokens_per_s: TokensPerS,
    pub timings_ms: TextTimings,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct TokensPerS {
    pub prefill: f64,
    pub decode: f64,
}

/// `eval shapes --json`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct EvalReport {
    #[serde(flatten)]
    pub meta: Meta,
    pub n_per_task: usize,
    /// `WxH` of the text-to-image canvas.
    pub canvas: String,
    pub prompt_seed: u64,
    pub sampler: Sampler,
    /// The sampler seed of prompt 0 (prompt i uses seed + i).
    pub seed: u64,
    /// Per task and `overall`.
    pub t2i: serde_json::Value,
    /// Per prompt index: whether its image passed.
    pub correct: Vec<bool>,
    pub understanding: serde_json::Value,
    pub editing: serde_json::Value,
    pub timings_ms: EvalTimings,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct EvalTimings {
    pub load: f64,
    pub total: f64,
}

/// `devices --json`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct DevicesReport {
    pub nextflow: &'static str,
    pub devices: Vec<DeviceEntry>,
    /// The spec `--device auto` opens.
    pub auto: String,
    pub unavailable: Vec<Unavailable>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct DeviceEntry {
    /// What `--device` takes, e.g. `vulkan:0`.
    pub spec: String,
    pub backend: String,
    pub kind: String,
    pub name: String,
    pub memory_bytes: Option<u64>,
    /// The largest buffer a kernel can bind (wgpu adapters): weights above it load as blocks.
    pub max_binding_bytes: Option<u64>,
    pub f16: bool,
    pub bf16: bool,
    pub planes: bool,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Unavailable {
    pub backend: String,
    pub reason: String,
}

/// `inspect --json`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct InspectReport {
    pub nextflow: &'static str,
    pub model: String,
    /// `nextflow` or `qwen2`.
    #[serde(rename = "type")]
    pub model_type: String,
    pub backbone: Backbone,
    /// NextFlow models: vocabulary, canvases, visual rows, tokenizer, sampler.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nextflow_parts: Option<Parts>,
    pub parameters: u64,
    /// From the checkpoint's files (absent for a built-in config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    pub memory: Memory,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Backbone {
    pub layers: usize,
    pub hidden_size: usize,
    pub attention_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub rope_theta: f64,
    pub tied_embeddings: bool,
    /// The context length (max_position_embeddings).
    pub context: usize,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Parts {
    pub text_ids: usize,
    pub visual_codes: usize,
    pub canvases: Vec<Canvas>,
    pub visual_input: String,
    pub rope_sections: Vec<usize>,
    pub rope_axes: String,
    pub rope_scale_c: f32,
    pub level_embedding: String,
    pub scale_count_embedding: bool,
    pub codebook: String,
    pub codebook_size: usize,
    pub semantic_dim: usize,
    pub pixel_dim: usize,
    pub sampler: Sampler,
    pub cfg_schedule: String,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub patch_size: usize,
    pub scales: Vec<[usize; 2]>,
    pub tokens: usize,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Checkpoint {
    pub tensors: usize,
    /// Bytes on disk per stored dtype.
    pub bytes_by_dtype: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Memory {
    /// Positions the KV cache is sized for (one image with CFG, or 4096 text positions;
    /// never more than the context).
    pub kv_positions: usize,
    /// Per compute dtype: weights and KV cache in bytes.
    pub by_dtype: std::collections::BTreeMap<String, MemoryEntry>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct MemoryEntry {
    pub weights: u64,
    pub kv_cache: u64,
}

/// The JSON Schema of each command's report, by command name (README, snapshot tests).
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    let of = |s: schemars::Schema| s.to_value();
    vec![
        ("generate", of(schemars::schema_for!(ImageReport))),
        ("edit", of(schemars::schema_for!(ImageReport))),
        ("understand", of(schemars::schema_for!(UnderstandReport))),
        ("chat", of(schemars::schema_for!(ChatReport))),
        ("eval shapes", of(schemars::schema_for!(EvalReport))),
        ("devices", of(schemars::schema_for!(DevicesReport))),
        ("inspect", of(schemars::schema_for!(InspectReport))),
        ("bench kernels", of(schemars::schema_for!(super::bench::KernelsReport))),
        ("bench image", of(schemars::schema_for!(super::bench::ImageBenchReport))),
    ]
}
