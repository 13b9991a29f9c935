//! Model configuration: HF `config.json` of a Qwen2 / Qwen2.5 checkpoint (`model_type:
//! "qwen2"`) or of our NextFlow models (`model_type: "nextflow"`, the sections written by
//! `tools/reference/config.py`), validated on load. Every switch NEXTFLOW_SPEC.md leaves open
//! is a field here; a bad value is an error that names the field.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The text backbone: a Qwen2 decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backbone {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub intermediate_size: usize,
    pub rms_norm_eps: f64,
    /// q/k/v projections carry a bias (Qwen2); o_proj never does.
    #[serde(default = "yes")]
    pub attention_bias: bool,
    /// Per-head RMSNorm on q and k before RoPE (spec §7.4).
    #[serde(default)]
    pub qk_norm: bool,
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Positions the model attends over (prompt and generated tokens together); the KV
    /// cache is never sized past it. Default 32768 (transformers' Qwen2 default).
    #[serde(default = "default_context")]
    pub max_position_embeddings: usize,
}

fn yes() -> bool {
    true
}

fn default_context() -> usize {
    32768
}

impl Backbone {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The vocabulary of a NextFlow model: specials, words, then one id per visual code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    pub specials: Vec<String>,
    pub words: Vec<String>,
    pub codebook_size: usize,
    /// Text ids (specials included) when the text vocabulary is a BPE one that `words`
    /// does not list (the 7B shapes); default: specials + words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_size: Option<usize>,
}

impl Vocabulary {
    /// First id of the visual-code rows.
    pub fn code_start(&self) -> usize {
        (self.specials.len() + self.words.len()).max(self.text_size.unwrap_or(0))
    }
    pub fn size(&self) -> usize {
        self.code_start() + self.codebook_size
    }
    /// Id of a special or word.
    pub fn id(&self, token: &str) -> Option<usize> {
        self.specials.iter().chain(&self.words).position(|t| t == token)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeAxes {
    /// (scale, row, col), as Qwen's (t, h, w).
    Srw,
    /// (row, col, scale), the paper's tuple order.
    Rws,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputMode {
    /// Next-scale input is code(idx_k) alone, bicubic to grid k+1 (NextFlow §4.3).
    Residual,
    /// TokenFlow's accumulated f = bicubic(f + code(idx_k), grid k+1).
    Accumulated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adapter {
    /// Linear(code_dim, D) -> GELU(erf) -> Linear(D, D).
    Mlp2xGelu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelEmbedding {
    /// Input map k (made from scale k's codes) reads lvl_embed row k-1.
    SourceScale,
    /// ... row k, the scale it predicts.
    TargetScale,
}

/// How visual tokens enter the transformer (spec §4.2–4.4, §7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Visual {
    /// Frequency pairs per RoPE axis, summing to head_dim / 2.
    pub mrope_section: Vec<usize>,
    pub rope_axes: RopeAxes,
    /// p_row = C / sqrt(h w) · (i + 0.5).
    pub rope_scale_c: f32,
    pub input_mode: InputMode,
    pub adapter: Adapter,
    pub level_embedding: LevelEmbedding,
    /// Sinusoid of the schedule length K added to every map cell.
    pub scale_length_embedding: bool,
    /// Context images also carry input map K (the last scale's codes at their own grid).
    pub context_last_scale: bool,
}

/// The dual-codebook MSRQ visual tokenizer (spec §1–§2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisualTokenizer {
    pub image_size: usize,
    pub patch_size: usize,
    /// (h, w) per scale, coarse to fine; the last is the token grid.
    pub scales: Vec<[usize; 2]>,
    pub codebook_size: usize,
    pub semantic_dim: usize,
    pub pixel_dim: usize,
    pub pixel_weight: f32,
    pub teacher_channels: Vec<usize>,
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub encoder_res_blocks: usize,
    pub decoder_res_blocks: usize,
    pub z_channels: usize,
    pub norm_groups: usize,
    /// Dynamic resolution (NextFlow §1.4): the other canvases the model was trained on,
    /// `"HxW"` (pixels, height × width) → their scales, coarse to fine, ending at the canvas's
    /// grid. A smaller square is a prefix of `scales`; an aspect ratio has its own schedule of
    /// about the same area per step. The native canvas (`image_size`², `scales`) is not listed.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub schedules: std::collections::BTreeMap<String, Vec<[usize; 2]>>,
}

impl VisualTokenizer {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Every canvas `(height, width)` in pixels with its schedule, the native one first.
    pub fn canvases(&self) -> Vec<((usize, usize), Vec<[usize; 2]>)> {
        let mut all = vec![((self.image_size, self.image_size), self.scales.clone())];
        for (key, scales) in &self.schedules {
            if let Some(hw) = parse_canvas(key) {
                all.push((hw, scales.clone()));
            }
        }
        all
    }
    /// The schedule of a canvas the model offers.
    pub fn schedule(&self, height: usize, width: usize) -> Option<Vec<[usize; 2]>> {
        self.canvases().into_iter().find(|(hw, _)| *hw == (height, width)).map(|(_, s)| s)
    }
    /// The longest schedule: `lvl_embed` has one row more.
    pub fn max_scales(&self) -> usize {
        self.schedules.values().map(Vec::len).chain([self.scales.len()]).max().unwrap_or(0)
    }
    pub fn code_dim(&self) -> usize {
        self.semantic_dim + self.pixel_dim
    }
    pub fn tokens(&self) -> usize {
        self.scales.iter().map(|[h, w]| h * w).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CfgSchedule {
    /// The guidance weight at every scale.
    Constant,
    /// 1 at the first scale ramping linearly to the weight at the last.
    Linear,
}

/// Defaults of the next-scale sampler (spec §4.5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampler {
    /// Guidance weight w: l = l_uncond + w·(l_cond − l_uncond); 1 = none.
    pub cfg_scale: f32,
    pub cfg_schedule: CfgSchedule,
    pub top_k: usize,
    pub top_p: f32,
    pub temperature: f32,
}

/// The image side of a NextFlow model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NextFlowParts {
    pub vocabulary: Vocabulary,
    pub visual: Visual,
    pub tokenizer: VisualTokenizer,
    pub sampler: Sampler,
}

/// Which checkpoint family a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    Qwen2,
    NextFlow,
}

/// A validated model configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub model_type: ModelType,
    pub backbone: Backbone,
    pub vocab_size: usize,
    /// End-of-sequence ids from the config (HF `eos_token_id`, or NextFlow's `<eos>`).
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    /// NextFlow's image side (None for a plain Qwen2).
    pub nextflow: Option<NextFlowParts>,
}

/// HF Qwen2 config.json, the fields we read (others are ignored).
#[derive(Deserialize)]
struct HfQwen2 {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    intermediate_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    /// Hub configs have it at the top; transformers 5 writes it under `rope_parameters`.
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "silu")]
    hidden_act: String,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
}

fn default_eps() -> f64 {
    1e-6
}
fn silu() -> String {
    "silu".into()
}

/// Our NextFlow config.json.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextFlowFile {
    #[allow(dead_code)]
    model_type: String,
    vocabulary: Vocabulary,
    backbone: Backbone,
    visual: Visual,
    tokenizer: VisualTokenizer,
    sampler: Sampler,
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        Error::Config(format!("{what}: field `{path}`: {}", e.into_inner()))
    })
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("field `{field}`: {msg}"))
}

impl Config {
    /// Reads `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Config> {
        let path = crate::weights::inside(dir, "config.json", dir)?;
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Io { path: path.clone(), source: e })?;
        Config::from_json(&text).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Config> {
        #[derive(Deserialize)]
        struct Kind {
            model_type: Option<String>,
        }
        let kind: Kind = parse(text, "config.json")?;
        let config = match kind.model_type.as_deref() {
            Some("qwen2") => Config::from_qwen2(parse(text, "qwen2 config")?)?,
            Some("nextflow") => {
                let f: NextFlowFile = parse(text, "nextflow config")?;
                let eos = f.vocabulary.id("<eos>").map(|i| i as u32).into_iter().collect();
                let bos = f.vocabulary.id("<bos>").map(|i| i as u32);
                Config {
                    model_type: ModelType::NextFlow,
                    vocab_size: f.vocabulary.size(),
                    backbone: f.backbone,
                    eos_token_ids: eos,
                    bos_token_id: bos,
                    nextflow: Some(NextFlowParts { vocabulary: f.vocabulary, visual: f.visual, tokenizer: f.tokenizer, sampler: f.sampler }),
                }
            }
            Some(other) => return Err(invalid("model_type", format!("`{other}` is not supported (qwen2 or nextflow)"))),
            None => return Err(invalid("model_type", "missing (qwen2 or nextflow)")),
        };
        config.validate()?;
        Ok(config)
    }

    fn from_qwen2(hf: HfQwen2) -> Result<Config> {
        if hf.hidden_act != "silu" {
            return Err(invalid("hidden_act", format!("`{}` is not supported (silu)", hf.hidden_act)));
        }
        if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(invalid("rope_scaling", "rope scaling is not supported yet; remove it for contexts within max_position_embeddings"));
        }
        if hf.use_sliding_window {
            return Err(invalid("use_sliding_window", "sliding-window attention is not supported"));
        }
        let theta = hf.rope_theta.or_else(|| hf.rope_parameters.as_ref()?.get("rope_theta")?.as_f64()).unwrap_or(10000.0);
        if let Some(kind) = hf.rope_parameters.as_ref().and_then(|p| p.get("rope_type")?.as_str().map(str::to_string)) {
            if kind != "default" {
                return Err(invalid("rope_parameters.rope_type", format!("`{kind}` is not supported (default)")));
            }
        }
        let eos_token_ids = match hf.eos_token_id {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Number(n)) => vec![n.as_u64().ok_or_else(|| invalid("eos_token_id", "not an id"))? as u32],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|x| x as u32).ok_or_else(|| invalid("eos_token_id", "not an id")))
                .collect::<Result<_>>()?,
            Some(_) => return Err(invalid("eos_token_id", "expected an id or a list of ids")),
        };
        Ok(Config {
            model_type: ModelType::Qwen2,
            vocab_size: hf.vocab_size,
            backbone: Backbone {
                hidden_size: hf.hidden_size,
                num_hidden_layers: hf.num_hidden_layers,
                num_attention_heads: hf.num_attention_heads,
                num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
                intermediate_size: hf.intermediate_size,
                rms_norm_eps: hf.rms_norm_eps,
                attention_bias: true,
                qk_norm: false,
                rope_theta: theta,
                tie_word_embeddings: hf.tie_word_embeddings,
                max_position_embeddings: hf.max_position_embeddings,
            },
            eos_token_ids,
            bos_token_id: hf.bos_token_id,
            nextflow: None,
        })
    }

    /// Cross-field checks; each failure names the field.
    pub fn validate(&self) -> Result<()> {
        let b = &self.backbone;
        // Every size is bounded before anything is derived from it, so no product below
        // (parameters, cache, activations) can overflow.
        for (field, v, max) in [
            ("hidden_size", b.hidden_size, LIMITS.width),
            ("num_hidden_layers", b.num_hidden_layers, LIMITS.layers),
            ("num_attention_heads", b.num_attention_heads, LIMITS.heads),
            ("num_key_value_heads", b.num_key_value_heads, LIMITS.heads),
            ("intermediate_size", b.intermediate_size, LIMITS.width * 8),
            ("vocab_size", self.vocab_size, LIMITS.vocab),
            ("max_position_embeddings", b.max_position_embeddings, LIMITS.context),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be positive"));
            }
            if v > max {
                return Err(invalid(field, format!("{v} is above the supported {max}")));
            }
        }
        if b.hidden_size % b.num_attention_heads != 0 {
            return Err(invalid("num_attention_heads", format!("{} does not divide hidden_size {}", b.num_attention_heads, b.hidden_size)));
        }
        if b.num_attention_heads % b.num_key_value_heads != 0 {
            return Err(invalid("num_key_value_heads", format!("{} does not divide num_attention_heads {}", b.num_key_value_heads, b.num_attention_heads)));
        }
        if b.head_dim() % 2 != 0 || !(16..=256).contains(&b.head_dim()) {
            return Err(invalid("num_attention_heads", format!("head_dim {} must be even and within 16..=256", b.head_dim())));
        }
        if !(b.rms_norm_eps > 0.0) {
            return Err(invalid("rms_norm_eps", "must be positive"));
        }
        if !(b.rope_theta > 1.0) {
            return Err(invalid("rope_theta", "must be > 1"));
        }
        let Some(n) = &self.nextflow else { return Ok(()) };
        let (v, t, s) = (&n.visual, &n.tokenizer, &n.sampler);
        if v.mrope_section.len() != 3 || v.mrope_section.iter().sum::<usize>() * 2 != b.head_dim() {
            return Err(invalid("visual.mrope_section", format!("{:?} must be 3 sections summing to head_dim / 2 = {}", v.mrope_section, b.head_dim() / 2)));
        }
        if n.vocabulary.codebook_size != t.codebook_size {
            return Err(invalid("vocabulary.codebook_size", format!("{} differs from tokenizer.codebook_size {}", n.vocabulary.codebook_size, t.codebook_size)));
        }
        for special in ["<pad>", "<bos>", "<eos>", "<boi>", "<eoi>"] {
            if n.vocabulary.id(special).is_none() {
                return Err(invalid("vocabulary.specials", format!("{special} is missing")));
            }
        }
        if t.image_size == 0 || t.image_size > MAX_CANVAS_PX {
            return Err(invalid("tokenizer.image_size", format!("{} must be within 1..={MAX_CANVAS_PX} px", t.image_size)));
        }
        if t.scales.len() > LIMITS.scales || t.schedules.values().any(|s| s.len() > LIMITS.scales) {
            return Err(invalid("tokenizer.scales", format!("at most {} scales", LIMITS.scales)));
        }
        for (field, v, max) in [
            ("tokenizer.codebook_size", t.codebook_size, LIMITS.vocab),
            ("tokenizer.semantic_dim", t.semantic_dim, LIMITS.width),
            ("tokenizer.pixel_dim", t.pixel_dim, LIMITS.width),
            ("tokenizer.z_channels", t.z_channels, LIMITS.width),
            ("tokenizer.ch", t.ch, LIMITS.width),
            ("tokenizer.encoder_res_blocks", t.encoder_res_blocks, LIMITS.layers),
            ("tokenizer.decoder_res_blocks", t.decoder_res_blocks, LIMITS.layers),
            ("tokenizer.norm_groups", t.norm_groups, LIMITS.width),
        ] {
            if v > max {
                return Err(invalid(field, format!("{v} is above the supported {max}")));
            }
        }
        if t.ch_mult.len() > 8 || t.ch_mult.iter().chain(&t.teacher_channels).any(|&m| m == 0 || m.saturating_mul(t.ch) > LIMITS.width * 16) {
            return Err(invalid("tokenizer.ch_mult", "at most 8 levels, each 1.. and ch x mult within the supported width"));
        }
        if t.patch_size == 0 || t.image_size % t.patch_size != 0 {
            return Err(invalid("tokenizer.patch_size", format!("{} must divide image_size {}", t.patch_size, t.image_size)));
        }
        if t.ch_mult.is_empty() || t.patch_size != 1 << (t.ch_mult.len() - 1) {
            return Err(invalid("tokenizer.ch_mult", format!("{} levels give 2^{} = patch size, not {}", t.ch_mult.len(), t.ch_mult.len().saturating_sub(1), t.patch_size)));
        }
        if t.scales.first() != Some(&[1, 1]) {
            return Err(invalid("tokenizer.scales", "the first scale must be 1x1 (<boi> predicts it alone)"));
        }
        let g = t.grid();
        if t.scales.last() != Some(&[g, g]) {
            return Err(invalid("tokenizer.scales", format!("the last scale must be the token grid {g}x{g}")));
        }
        if t.scales.iter().any(|[h, w]| *h == 0 || *w == 0) {
            return Err(invalid("tokenizer.scales", "every scale must be at least 1x1"));
        }
        for (key, scales) in &t.schedules {
            let field = format!("tokenizer.schedules.{key}");
            let Some((h, w)) = parse_canvas(key).filter(|&(h, w)| h > 0 && w > 0 && h % t.patch_size == 0 && w % t.patch_size == 0) else {
                return Err(invalid(&field, format!("a canvas is \"HxW\" in pixels, multiples of the {} px patch", t.patch_size)));
            };
            if h > MAX_CANVAS_PX || w > MAX_CANVAS_PX {
                return Err(invalid(&field, format!("canvases are at most {MAX_CANVAS_PX} px a side")));
            }
            if scales.first() != Some(&[1, 1]) || scales.last() != Some(&[h / t.patch_size, w / t.patch_size]) {
                return Err(invalid(&field, format!("runs from 1x1 to the canvas grid {}x{}", h / t.patch_size, w / t.patch_size)));
            }
            if scales.iter().any(|&[sh, sw]| sh == 0 || sw == 0 || sh > h / t.patch_size || sw > w / t.patch_size) {
                return Err(invalid(&field, "every scale is at least 1x1 and within the canvas grid"));
            }
        }
        if t.norm_groups == 0 || t.semantic_dim == 0 || t.pixel_dim == 0 || t.z_channels == 0 || t.ch == 0 {
            return Err(invalid("tokenizer", "norm_groups, semantic_dim, pixel_dim, z_channels and ch must be positive"));
        }
        if !(s.temperature >= 0.0) {
            return Err(invalid("sampler.temperature", "must be >= 0"));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(invalid("sampler.top_p", "must be in (0, 1]"));
        }
        if !(s.cfg_scale >= 0.0) {
            return Err(invalid("sampler.cfg_scale", "must be >= 0"));
        }
        Ok(())
    }

    pub fn parts(&self) -> Result<&NextFlowParts> {
        self.nextflow.as_ref().ok_or_else(|| Error::Config("this is a text-only (qwen2) model: it has no image side".into()))
    }

    /// Parameter count of the transformer (embeddings and head included).
    pub fn transformer_parameters(&self) -> usize {
        let b = &self.backbone;
        let (d, hd) = (b.hidden_size, b.head_dim());
        let q = d * b.num_attention_heads * hd + if b.attention_bias { b.num_attention_heads * hd } else { 0 };
        let kv = 2 * (d * b.num_key_value_heads * hd + if b.attention_bias { b.num_key_value_heads * hd } else { 0 });
        let o = b.num_attention_heads * hd * d;
        let mlp = 3 * d * b.intermediate_size;
        let layer = q + kv + o + mlp + 2 * d;
        let embed = self.vocab_size * d;
        let head = if b.tie_word_embeddings { 0 } else { self.vocab_size * d };
        embed + b.num_hidden_layers * layer + d + head
    }
}

/// Built-in configurations for `--config NAME` (with `--random-weights` where no weights
/// exist): their shapes and schedules are the real ones.
pub const NAMED: &[(&str, &str)] = &[
    ("nextflow-tiny", "the embedded ShapeWorld model (model/assets/nextflow-tiny)"),
    ("nextflow-7b", "NextFlow 7B shapes: Qwen2.5-7B backbone, 16k dual codebook, enhanced TokenFlow decoder, 18-scale 1024² schedule"),
    ("qwen2-0.5b", "Qwen2-0.5B text model shapes (benchmarks)"),
];

impl Config {
    /// A built-in configuration by name (see [`NAMED`]).
    pub fn named(name: &str) -> Result<Config> {
        let qwen7b = Backbone {
            hidden_size: 3584,
            num_hidden_layers: 28,
            num_attention_heads: 28,
            num_key_value_heads: 4,
            intermediate_size: 18944,
            rms_norm_eps: 1e-6,
            attention_bias: true,
            qk_norm: false,
            rope_theta: 1e6,
            tie_word_embeddings: false,
            max_position_embeddings: 32768,
        };
        let config = match name.to_ascii_lowercase().as_str() {
            "nextflow-tiny" | "tiny" => return Config::from_json(crate::embedded::CONFIG),
            "qwen2-0.5b" | "0.5b" => Config {
                model_type: ModelType::Qwen2,
                backbone: Backbone {
                    hidden_size: 896,
                    num_hidden_layers: 24,
                    num_attention_heads: 14,
                    num_key_value_heads: 2,
                    intermediate_size: 4864,
                    rms_norm_eps: 1e-6,
                    attention_bias: true,
                    qk_norm: false,
                    rope_theta: 1e6,
                    tie_word_embeddings: true,
                    max_position_embeddings: 32768,
                },
                vocab_size: 151936,
                eos_token_ids: vec![151643],
                bos_token_id: None,
                nextflow: None,
            },
            "nextflow-7b" | "7b" => {
                let vocabulary = Vocabulary {
                    specials: ["<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<unk>"].map(String::from).to_vec(),
                    words: Vec::new(),
                    codebook_size: 16384,
                    text_size: Some(152064),
                };
                let scales = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64].map(|n| [n, n]).to_vec();
                Config {
                    model_type: ModelType::NextFlow,
                    vocab_size: vocabulary.size(),
                    backbone: qwen7b,
                    eos_token_ids: vec![2],
                    bos_token_id: Some(1),
                    nextflow: Some(NextFlowParts {
                        vocabulary,
                        visual: Visual {
                            mrope_section: vec![16, 24, 24],
                            rope_axes: RopeAxes::Srw,
                            rope_scale_c: 64.0,
                            input_mode: InputMode::Residual,
                            adapter: Adapter::Mlp2xGelu,
                            level_embedding: LevelEmbedding::SourceScale,
                            scale_length_embedding: true,
                            context_last_scale: true,
                        },
                        tokenizer: VisualTokenizer {
                            image_size: 1024,
                            patch_size: 16,
                            scales,
                            codebook_size: 16384,
                            semantic_dim: 32,
                            pixel_dim: 8,
                            pixel_weight: 1.0,
                            teacher_channels: vec![64, 128, 256, 512],
                            ch: 256,
                            ch_mult: vec![1, 1, 2, 2, 4],
                            encoder_res_blocks: 2,
                            decoder_res_blocks: 5,
                            z_channels: 256,
                            norm_groups: 32,
                            schedules: Default::default(),
                        },
                        sampler: Sampler { cfg_scale: 7.5, cfg_schedule: CfgSchedule::Linear, top_k: 600, top_p: 0.6, temperature: 1.0 },
                    }),
                }
            }
            other => {
                let names: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
                return Err(Error::Config(format!("no built-in config `{other}`; known: {}", names.join(", "))));
            }
        };
        config.validate()?;
        Ok(config)
    }
}

/// Canvases larger than this many pixels a side are refused by validation.
pub const MAX_CANVAS_PX: usize = 4096;

/// Upper bounds validation puts on every size a config names (far above any published
/// model; they keep every derived product within 64 bits and every allocation checkable).
pub struct Limits {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub vocab: usize,
    pub context: usize,
    pub scales: usize,
}

pub const LIMITS: Limits = Limits { width: 65536, layers: 1024, heads: 1024, vocab: 1 << 24, context: 1 << 24, scales: 64 };

/// `"HxW"` → `(H, W)`.
pub fn parse_canvas(key: &str) -> Option<(usize, usize)> {
    let (h, w) = key.split_once('x')?;
    Some((h.trim().parse().ok()?, w.trim().parse().ok()?))
}
