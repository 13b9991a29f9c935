//! NextFlow: the Qwen2 backbone plus the image side — visual rows (adapter + level and
//! schedule-length embeddings, 3D positions), the next-scale sampler with CFG as a batch,
//! and the three pipelines: text-to-image, understanding, editing (spec §4).
//!
//! Sequences are lists of segments: text tokens (causal, positions (t, t, t)) and input maps
//! (bidirectional inside, positions (p_s, row, col)), as `SequenceBuilder` in
//! tools/reference/nextflow_ref.py lays them out.

use crate::config::{CfgSchedule, Config, InputMode, LevelEmbedding, NextFlowParts, RopeAxes};
use crate::text::{self, Prefill, TextOptions, TextOutput};
use crate::tokenizer::TextTokenizer;
use crate::msrq::lookup;
use crate::transformer::{graph, Cache, Linear, Transformer};
use crate::visual::Tokenizer;
use crate::weights::Weights;
use crate::{Error, Result};
use nextflow_compiler::{Graph, Lazy};
use nextflow_ops::sampling::SamplerConfig;
use nextflow_ops::{grid_positions, Resize};
use nextflow_runtime::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// A loaded NextFlow model.
pub struct NextFlow {
    pub config: Config,
    pub transformer: Transformer,
    pub tokenizer: Tokenizer,
    /// None with random weights (prompt words are then hashed to text ids).
    pub text: Option<TextTokenizer>,
    adapter_in: Linear,
    /// Its bias is in `level_bias`.
    adapter_out: Linear,
    /// By schedule length K, per level: adapter_out bias + lvl_embed row + the sinusoid of K,
    /// so the whole visual-row embedding is two matmuls with fused epilogues.
    level_bias: std::collections::BTreeMap<usize, Vec<Tensor>>,
}

/// Sinusoid of the schedule length K: PE[2i] = sin(K / 10000^(2i/D)), PE[2i+1] = cos.
pub fn scale_length_embedding(k: usize, dim: usize) -> Vec<f32> {
    let mut pe = vec![0f32; dim];
    for i in (0..dim).step_by(2) {
        let freq = 10000f32.powf(-(i as f32) / dim as f32);
        let a = k as f32 * freq;
        pe[i] = a.sin();
        if i + 1 < dim {
            pe[i + 1] = a.cos();
        }
    }
    pe
}

/// One part of a sequence.
#[derive(Clone)]
enum Segment {
    Text { ids: Vec<u32>, start: usize },
    /// An input map: features `[1, n, code_dim]`, its lvl_embed row, the length of its image's
    /// schedule (for the scale-length embedding), positions `n × 3`.
    Map { features: Tensor, level: usize, n_scales: usize, positions: Vec<f32> },
}

/// A sequence of text and image rows, built as the reference's `SequenceBuilder`.
#[derive(Clone, Default)]
pub struct Sequence {
    segments: Vec<Segment>,
    /// The next text position.
    pub position: usize,
}

impl Sequence {
    pub fn new() -> Sequence {
        Sequence::default()
    }

    pub fn text(&mut self, ids: &[u32]) -> &mut Self {
        if !ids.is_empty() {
            self.segments.push(Segment::Text { ids: ids.to_vec(), start: self.position });
            self.position += ids.len();
        }
        self
    }

    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Text { ids, .. } => ids.len(),
                Segment::Map { positions, .. } => positions.len() / 3,
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Attention segments: one per text token, one per map.
    fn attention_segments(&self) -> Vec<usize> {
        self.segments
            .iter()
            .flat_map(|s| match s {
                Segment::Text { ids, .. } => vec![1; ids.len()],
                Segment::Map { positions, .. } => vec![positions.len() / 3],
            })
            .collect()
    }

    fn positions(&self) -> Vec<f32> {
        self.segments
            .iter()
            .flat_map(|s| match s {
                Segment::Text { ids, start } => (*start..start + ids.len()).flat_map(|t| [t as f32; 3]).collect(),
                Segment::Map { positions, .. } => positions.clone(),
            })
            .collect()
    }

    /// Text ids seen so far (for repetition penalties).
    fn text_ids(&self) -> Vec<u32> {
        self.segments
            .iter()
            .flat_map(|s| match s {
                Segment::Text { ids, .. } => ids.clone(),
                Segment::Map { .. } => Vec::new(),
            })
            .collect()
    }
}

/// Attention segments of `seq` left-padded to `len` rows (padding as causal singletons).
fn padded_segments(seq: &Sequence, len: usize) -> Vec<usize> {
    let mut segments = vec![1; len - seq.len()];
    segments.extend(seq.attention_segments());
    segments
}

/// The rows of one image batch (the prompts, then with CFG their unconditional twins) in
/// lanes: rows that can share one left-padded batch and KV cache — equal segment structures
/// once padded (text-only prompts always can; an editing prompt and its image-only
/// unconditional cannot, since their maps would sit at different key positions). Each lane
/// keeps the last hidden states of its rows.
struct Lanes {
    lanes: Vec<Lane>,
    /// Rows in all.
    rows: usize,
}

struct Lane {
    /// Row numbers (into the batch) of this lane's batch rows, in order.
    rows: Vec<usize>,
    hidden: Tensor,
    cache: Cache,
}

impl Lanes {
    /// Groups `rows` and prefills each lane, with room for `extra` more positions.
    fn prefill(model: &NextFlow, rows: &[Sequence], extra: usize) -> Result<Lanes> {
        let len = rows.iter().map(Sequence::len).max().unwrap_or(0);
        let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            let sig = padded_segments(r, len);
            match groups.iter_mut().find(|(s, _)| *s == sig) {
                Some((_, members)) => members.push(i),
                None => groups.push((sig, vec![i])),
            }
        }
        let mut lanes = Vec::with_capacity(groups.len());
        for (_, members) in groups {
            let seqs: Vec<Sequence> = members.iter().map(|&i| rows[i].clone()).collect();
            let (hidden, cache) = model.prefill(&seqs, extra)?;
            lanes.push(Lane { rows: members, hidden, cache });
        }
        Ok(Lanes { lanes, rows: rows.len() })
    }

    /// Logits `[rows, positions, code_range]` of every row's last hidden states, in row
    /// order, recorded into `g`.
    fn record_logits(&self, model: &NextFlow, g: &Graph, code_range: std::ops::Range<usize>) -> Result<Lazy> {
        if let [lane] = self.lanes.as_slice() {
            debug_assert!(lane.rows.iter().enumerate().all(|(j, &r)| j == r));
            return model.transformer.record_logits(&g.input(&lane.hidden)?, code_range);
        }
        let mut per_row: Vec<Option<Lazy>> = vec![None; self.rows];
        for lane in &self.lanes {
            let l = model.transformer.record_logits(&g.input(&lane.hidden)?, code_range.clone())?;
            for (j, &row) in lane.rows.iter().enumerate() {
                per_row[row] = Some(l.narrow(0, j, 1)?);
            }
        }
        let per_row: Vec<Lazy> = per_row.into_iter().map(|t| t.expect("every row is in a lane")).collect();
        Ok(Lazy::concat(&per_row.iter().collect::<Vec<_>>(), 0)?)
    }

    /// Each lane's input rows of a map embedded as `x [n, h·w, D]` (image `i` serves rows
    /// `i` and `n + i`), recorded into `x`'s graph.
    fn record_inputs(&self, x: &Lazy) -> Result<Vec<Lazy>> {
        let n = x.shape()[0];
        self.lanes
            .iter()
            .map(|lane| {
                if lane.rows.len() == n && lane.rows.iter().enumerate().all(|(j, &r)| j == r) {
                    return Ok(x.clone());
                }
                let parts: Vec<Lazy> = lane.rows.iter().map(|&r| x.narrow(0, r % n, 1)).collect::<std::result::Result<_, _>>()?;
                Ok(Lazy::concat(&parts.iter().collect::<Vec<_>>(), 0)?)
            })
            .collect()
    }

    /// Feeds each lane its embedded rows `inputs[lane]` of the map of scale `k` at `size`;
    /// `bois[r]` is row `r`'s `<boi>` position.
    fn forward_map(&mut self, model: &NextFlow, inputs: &[Tensor], bois: &[usize], k: usize, size: [usize; 2]) -> Result<()> {
        let positions_n = size[0] * size[1];
        for (lane, x) in self.lanes.iter_mut().zip(inputs) {
            let positions: Vec<f32> = lane.rows.iter().flat_map(|&r| model.map_positions(bois[r] + k, size[0], size[1])).collect();
            let positions = Tensor::from_slice(&positions, &[lane.rows.len(), positions_n, 3], model.device())?;
            lane.hidden = model.transformer.forward(x, &positions, &[positions_n], &mut lane.cache)?;
        }
        Ok(())
    }
}

/// Settings of one next-scale generation.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Guidance weight w (1 = none): l = l_uncond + w·(l_cond − l_uncond).
    pub cfg_scale: f32,
    pub cfg_schedule: CfgSchedule,
    pub top_k: usize,
    pub top_p: f32,
    /// 0 = greedy.
    pub temperature: f32,
    pub seed: u64,
    /// (h, w) per scale; the model's schedule by default.
    pub scales: Option<Vec<[usize; 2]>>,
}

impl ImageOptions {
    /// The sampling values every entry point checks the same way (CLI, server, library).
    pub fn validate(&self) -> Result<()> {
        if !(self.cfg_scale.is_finite() && self.cfg_scale >= 0.0) {
            return Err(Error::Input(format!("cfg must be a finite number >= 0 (1 = off), got {}", self.cfg_scale)));
        }
        text::check_sampling(self.temperature, self.top_p)
    }
}

/// Time spent per stage of an image generation.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub prefill: Duration,
    /// Per scale: forward (for scale 0: none — it comes from the prefill) plus sampling.
    pub scales: Vec<Duration>,
    pub decode: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.prefill + self.scales.iter().sum::<Duration>() + self.decode
    }
}

/// What a next-scale generation returns.
pub struct Generated {
    /// Per scale `[n, h·w]` code indices (u32, 0-based in the codebook).
    pub indices: Vec<Tensor>,
    /// `[n, 3, S, S]` decoded images, about [-1, 1].
    pub images: Tensor,
    pub timings: Timings,
}

impl NextFlow {
    /// Loads a NextFlow checkpoint directory (config.json, model.safetensors, tokenizer.json).
    pub fn load(dir: &std::path::Path, dtype: DType, device: &Device) -> Result<NextFlow> {
        let config = Config::load(dir)?;
        let weights = Weights::open(dir)?;
        let text = TextTokenizer::load(dir)?;
        NextFlow::from_parts(config, &weights, Some(text), dtype, device)
    }

    pub fn from_parts(config: Config, w: &Weights, text: Option<TextTokenizer>, dtype: DType, device: &Device) -> Result<NextFlow> {
        let parts = config.parts()?.clone();
        let b = &config.backbone;
        let transformer = Transformer::load(w, b, config.vocab_size, &parts.visual.mrope_section, dtype, device)?;
        let tokenizer = Tokenizer::load(w, &parts.tokenizer, dtype, device)?;
        let (d, c) = (b.hidden_size, parts.tokenizer.code_dim());
        let adapter_in = Linear::load(w, "model.mm_projector.0", d, c, true, dtype, device)?;
        let adapter_out = Linear { bias: None, ..Linear::load(w, "model.mm_projector.2", d, d, true, dtype, device)? };
        let k_max = parts.tokenizer.max_scales();
        let cpu = Device::cpu();
        let lvl: Vec<f32> = w.get("model.lvl_embed.weight", &[k_max + 1, d], DType::F32, &cpu)?.to_vec()?;
        let bias: Vec<f32> = w.get("model.mm_projector.2.bias", &[d], DType::F32, &cpu)?.to_vec()?;
        let mut level_bias = std::collections::BTreeMap::new();
        let lengths: std::collections::BTreeSet<usize> = parts.tokenizer.canvases().iter().map(|(_, s)| s.len()).collect();
        for k in lengths {
            let pe = if parts.visual.scale_length_embedding { scale_length_embedding(k, d) } else { vec![0.0; d] };
            let rows = (0..=k_max)
                .map(|l| {
                    // Summed in f32, rounded once to `dtype`.
                    let row: Vec<f64> = (0..d).map(|i| (bias[i] + lvl[l * d + i] + pe[i]) as f64).collect();
                    Ok(Tensor::from_f64(&row, dtype, &[d], device)?)
                })
                .collect::<Result<Vec<_>>>()?;
            level_bias.insert(k, rows);
        }
        if let Some(text) = &text {
            if text.vocab_size() != config.vocab_size {
                return Err(Error::Tokenizer(format!("tokenizer.json has {} ids but the config's vocabulary has {}", text.vocab_size(), config.vocab_size)));
            }
        }
        let unused = w.unused();
        if !unused.is_empty() {
            eprintln!("warning: {} tensors in the checkpoint are not used: {}", unused.len(), unused.join(", "));
        }
        Ok(NextFlow { config, transformer, tokenizer, text, adapter_in, adapter_out, level_bias })
    }

    pub fn parts(&self) -> &NextFlowParts {
        self.config.nextflow.as_ref().expect("checked on load")
    }
    pub fn device(&self) -> &Device {
        &self.transformer.device
    }
    pub fn dtype(&self) -> DType {
        self.transformer.dtype
    }
    fn id(&self, token: &str) -> u32 {
        self.parts().vocabulary.id(token).expect("validated specials") as u32
    }
    fn code_range(&self) -> std::ops::Range<usize> {
        self.parts().vocabulary.code_start()..self.config.vocab_size
    }

    /// Word ids of a prompt; words the model does not know are an error naming them.
    pub fn encode_words(&self, text: &str) -> Result<Vec<u32>> {
        let Some(tokenizer) = &self.text else {
            // Random weights: any stable mapping of words to text ids will do.
            let v = &self.parts().vocabulary;
            let (lo, hi) = (v.specials.len() as u64, v.code_start() as u64);
            return Ok(text
                .split_whitespace()
                .map(|w| (lo + w.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3)) % (hi - lo)) as u32)
                .collect());
        };
        let ids = tokenizer.encode(text, false)?;
        let spans = tokenizer.encode_spans(text)?;
        let v = &self.parts().vocabulary;
        let unk = self.id("<unk>");
        let mut kept = Vec::with_capacity(ids.len());
        for (&id, span) in ids.iter().zip(&spans) {
            if id == unk && span.chars().all(|c| c.is_ascii_punctuation()) {
                continue; // "A red circle." : punctuation the vocabulary lacks is dropped
            }
            if id == unk {
                let close = closest_words(span, &v.words);
                let hint = if close.is_empty() { String::new() } else { format!(" (closest known: {})", close.join(", ")) };
                return Err(Error::Input(format!(
                    "the model does not know the word {:?}{hint}; it knows: {}",
                    span.to_lowercase(),
                    v.words.iter().filter(|w| w.chars().all(|c| c.is_alphabetic())).map(|w| w.as_str()).collect::<Vec<_>>().join(" ")
                )));
            }
            if (id as usize) < v.specials.len() {
                return Err(Error::Input(format!("{span:?} is a control token and cannot be typed in a prompt")));
            }
            kept.push(id);
        }
        Ok(kept)
    }

    /// Visual-row embeddings `[b, n, D]` of map features `[b, n, code_dim]`:
    /// `adapter_out(gelu(adapter_in(x))) + level bias`, two matmuls with fused epilogues.
    fn record_map(&self, features: &Lazy, level: usize, n_scales: usize) -> Result<Lazy> {
        let bias = self.level_bias.get(&n_scales).ok_or_else(|| Error::Input(format!("no schedule of {n_scales} scales in this model")))?;
        let h = self.adapter_in.record(features, None)?.gelu()?;
        Ok(self.adapter_out.record(&h, None)?.add(&features.graph().input(&bias[level])?)?)
    }

    /// Row embeddings `[1, len, D]` of a sequence, recorded into `g`.
    fn record_sequence(&self, g: &Graph, seq: &Sequence) -> Result<Lazy> {
        let device = self.device();
        let parts: Vec<Lazy> = seq
            .segments
            .iter()
            .map(|s| match s {
                Segment::Text { ids, .. } => self.transformer.record_embed(g, &Tensor::from_slice(ids, &[1, ids.len()], device)?),
                Segment::Map { features, level, n_scales, .. } => self.record_map(&g.input(features)?, *level, *n_scales),
            })
            .collect::<Result<_>>()?;
        Ok(Lazy::concat(&parts.iter().collect::<Vec<_>>(), 1)?)
    }

    /// Row embeddings `[1, len, D]` of a sequence.
    fn embed(&self, seq: &Sequence) -> Result<Tensor> {
        Ok(self.record_sequence(&graph(self.device()), seq)?.realize()?)
    }

    /// The level row of input map `k` (1-based: made from the codes of scale `k`).
    fn level(&self, k: usize) -> usize {
        match self.parts().visual.level_embedding {
            LevelEmbedding::SourceScale => k - 1,
            LevelEmbedding::TargetScale => k,
        }
    }

    /// Positions of a map's cells in the model's axis order.
    fn map_positions(&self, p_s: usize, h: usize, w: usize) -> Vec<f32> {
        let v = &self.parts().visual;
        let mut pos = grid_positions(p_s as f32, h, w, v.rope_scale_c);
        if v.rope_axes == RopeAxes::Rws {
            pos.chunks_mut(3).for_each(|p| p.rotate_left(1)); // (s, r, c) -> (r, c, s)
        }
        pos
    }

    /// Next-scale input from scale `k`'s codes `[b, C, h, w]` and the state so far: (map
    /// `[b, C, h', w']`, the next state).
    fn record_next_input(&self, codes: &Lazy, state: Option<&Lazy>, size: [usize; 2]) -> Result<(Lazy, Option<Lazy>)> {
        match self.parts().visual.input_mode {
            InputMode::Residual => Ok((codes.interpolate(size[0], size[1], Resize::Bicubic)?, None)),
            InputMode::Accumulated => {
                let f = match state {
                    Some(s) => s.add(codes)?,
                    None => codes.clone(),
                };
                let f = f.interpolate(size[0], size[1], Resize::Bicubic)?;
                Ok((f.clone(), Some(f)))
            }
        }
    }

    /// `[b, C, h, w]` → `[b, h·w, C]` rows.
    fn as_rows(x: &Lazy) -> Result<Lazy> {
        let (b, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        Ok(x.permute(&[0, 2, 3, 1])?.reshape(&[b, h * w, c])?)
    }

    /// The input maps 1..=`n_maps` of an image's per-scale `indices`, as map segments whose
    /// rows sit at `p_s = boi + k`: one graph.
    fn context_maps(&self, indices: &[Tensor], n_maps: usize, boi: usize) -> Result<Vec<Segment>> {
        let scales = &self.parts().tokenizer.scales;
        let g = graph(self.device());
        let table = g.input(self.tokenizer.codebook.table())?;
        let (mut state, mut rows) = (None, Vec::new());
        for k in 1..=n_maps {
            let [h, w] = scales[k - 1];
            let size = scales[k.min(scales.len() - 1)];
            let (x, s) = self.record_next_input(&lookup(&table, &g.input(&indices[k - 1])?, h, w)?, state.as_ref(), size)?;
            state = s;
            rows.push(Self::as_rows(&x)?);
        }
        let rows = g.realize(&rows.iter().collect::<Vec<_>>())?;
        Ok(rows
            .into_iter()
            .zip(1..)
            .map(|(features, k)| {
                let size = scales[k.min(scales.len() - 1)];
                Segment::Map { features, level: self.level(k), n_scales: scales.len(), positions: self.map_positions(boi + k, size[0], size[1]) }
            })
            .collect())
    }

    /// Appends a context image (understanding, editing source): `<boi>`, maps 1..K (or
    /// 1..K-1), `<eoi>`.
    pub fn push_image(&self, seq: &mut Sequence, indices: &[Tensor]) -> Result<()> {
        let scales = &self.parts().tokenizer.scales;
        let boi = seq.position;
        seq.text(&[self.id("<boi>")]);
        let n_maps = if self.parts().visual.context_last_scale { scales.len() } else { scales.len() - 1 };
        seq.segments.extend(self.context_maps(indices, n_maps, boi)?);
        seq.position = boi + n_maps + 1;
        seq.text(&[self.id("<eoi>")]);
        Ok(())
    }

    /// Prefills a batch of sequences (left-padded to one length) into a fresh cache with
    /// room for `extra` more rows; returns the last row's hidden state `[b, 1, D]`.
    fn prefill(&self, seqs: &[Sequence], extra: usize) -> Result<(Tensor, Cache)> {
        let device = self.device();
        let len = seqs.iter().map(Sequence::len).max().unwrap_or(0);
        let d = self.config.backbone.hidden_size;
        let g = graph(device);
        let mut rows = Vec::new();
        let mut positions = Vec::new();
        for s in seqs {
            let pad = len - s.len();
            let x = self.record_sequence(&g, s)?;
            rows.push(if pad > 0 {
                let zeros = g.input(&Tensor::from_f64(&vec![0.0; pad * d], self.dtype(), &[1, pad, d], device)?)?;
                Lazy::concat(&[&zeros, &x], 1)?
            } else {
                x
            });
            positions.extend(std::iter::repeat_n(0f32, pad * 3));
            positions.extend(s.positions());
        }
        let x = Lazy::concat(&rows.iter().collect::<Vec<_>>(), 0)?.realize()?;
        let positions = Tensor::from_slice(&positions, &[seqs.len(), len, 3], device)?;
        // The rows share one segment structure (see `lanes`); padding keys are excluded by
        // kv_starts.
        let segments = padded_segments(&seqs[0], len);
        let mut cache = Cache::new(&self.transformer, seqs.len(), len + extra)?;
        cache.kv_starts = seqs.iter().map(|s| len - s.len()).collect();
        let hidden = self.transformer.forward(&x, &positions, &segments, &mut cache)?;
        Ok((hidden.narrow(1, len - 1, 1)?, cache))
    }

    /// Next-scale generation after `prompts` (each ends just before its `<boi>`, which is
    /// added here), with CFG against `uncond` (one per prompt) when the weight is not 1.
    /// `on_scale(k, elapsed)` reports progress. Image `i` draws with seed `opts.seed + i`:
    /// it is the image that seed gives alone, in any batch.
    pub fn generate_images(
        &self,
        prompts: &[Sequence],
        uncond: &[Sequence],
        opts: &ImageOptions,
        on_scale: &mut dyn FnMut(usize, usize, Duration),
    ) -> Result<Generated> {
        let seeds: Vec<u64> = (0..prompts.len()).map(|i| opts.seed.wrapping_add(i as u64)).collect();
        self.generate_seeded(prompts, uncond, &seeds, opts, on_scale)
    }

    /// [`Self::generate_images`] with image i sampled from `seeds[i]` (`opts.seed` unused):
    /// images of different requests share one batch, each with the pixels it has alone.
    pub fn generate_seeded(
        &self,
        prompts: &[Sequence],
        uncond: &[Sequence],
        seeds: &[u64],
        opts: &ImageOptions,
        on_scale: &mut dyn FnMut(usize, usize, Duration),
    ) -> Result<Generated> {
        opts.validate()?;
        let n = prompts.len();
        if n == 0 {
            return Err(Error::Input("no prompts: nothing to generate".into()));
        }
        if seeds.len() != n {
            return Err(Error::Input(format!("{} seeds for {n} prompts", seeds.len())));
        }
        let scales = opts.scales.clone().unwrap_or_else(|| self.parts().tokenizer.scales.clone());
        self.check_scales(&scales)?;
        let longest = prompts.iter().chain(uncond).map(Sequence::len).max().unwrap_or(0);
        let needed = longest + 1 + scales.iter().skip(1).map(|[h, w]| h * w).sum::<usize>();
        let context = self.config.backbone.max_position_embeddings;
        if needed > context {
            return Err(Error::Input(format!("the prompt and image need {needed} positions; the model's context is {context} (max_position_embeddings)")));
        }
        let guided = opts.cfg_scale != 1.0;
        let mut rows: Vec<Sequence> = prompts.to_vec();
        if guided {
            if uncond.len() != n {
                return Err(Error::Input(format!("{} unconditional prompts for {n} prompts", uncond.len())));
            }
            rows.extend(uncond.iter().cloned());
        }
        let boi_id = self.id("<boi>");
        let bois: Vec<usize> = rows
            .iter_mut()
            .map(|s| {
                let p = s.position;
                s.text(&[boi_id]);
                p
            })
            .collect();
        let extra: usize = scales.iter().skip(1).map(|[h, w]| h * w).sum();
        let mut timings = Timings::default();
        let t0 = Instant::now();
        let mut lanes = Lanes::prefill(self, &rows, extra)?;
        timings.prefill = t0.elapsed();
        let code_range = self.code_range();
        let mut indices = Vec::new();
        let mut state: Option<Tensor> = None;
        let k_total = scales.len();
        for (k, &[h, w]) in scales.iter().enumerate() {
            let t = Instant::now();
            // One graph per scale: the head, the sampler, and (before the last scale) the
            // next scale's input rows from the codes so far.
            let g = graph(self.device());
            let logits = lanes.record_logits(self, &g, code_range.clone())?; // [rows, h·w, codes]
            let weight = match opts.cfg_schedule {
                CfgSchedule::Constant => opts.cfg_scale,
                CfgSchedule::Linear => 1.0 + (opts.cfg_scale - 1.0) * (k as f32 / (k_total.max(2) - 1) as f32),
            };
            let config = SamplerConfig { cfg_scale: weight - 1.0, temperature: opts.temperature, top_k: opts.top_k, top_p: opts.top_p, id_range: None };
            let step = g.param(k as u64);
            let per_image = (0..n)
                .map(|i| {
                    let uncond = if guided { Some(logits.narrow(0, n + i, 1)?) } else { None };
                    Ok(logits.narrow(0, i, 1)?.sample(uncond.as_ref(), &config, g.param(seeds[i]), step)?)
                })
                .collect::<Result<Vec<Lazy>>>()?;
            let idx = match per_image.as_slice() {
                [one] => one.clone(),
                _ => Lazy::concat(&per_image.iter().collect::<Vec<_>>(), 0)?,
            }; // [n, h·w]
            if k + 1 < k_total {
                // The next scale's input from the codes so far, fed to every lane.
                let table = g.input(self.tokenizer.codebook.table())?;
                let s = state.as_ref().map(|s| g.input(s)).transpose()?;
                let (x, s) = self.record_next_input(&lookup(&table, &idx, h, w)?, s.as_ref(), scales[k + 1])?;
                let x = self.record_map(&Self::as_rows(&x)?, self.level(k + 1), k_total)?;
                let inputs = lanes.record_inputs(&x)?;
                let outputs: Vec<&Lazy> = [&idx].into_iter().chain(s.as_ref()).chain(&inputs).collect();
                let mut out = g.realize(&outputs)?.into_iter();
                indices.push(out.next().expect("indices"));
                if s.is_some() {
                    state = out.next();
                }
                lanes.forward_map(self, &out.collect::<Vec<_>>(), &bois, k + 1, scales[k + 1])?;
            } else {
                indices.push(idx.realize()?);
            }
            self.device().sync()?;
            timings.scales.push(t.elapsed());
            on_scale(k, k_total, t.elapsed());
        }
        let t = Instant::now();
        let images = self.tokenizer.decode_scales(&indices, &scales)?;
        self.device().sync()?;
        timings.decode = t.elapsed();
        Ok(Generated { indices, images, timings })
    }

    /// A generation runs a schedule the model was trained on: its native one or one of its
    /// `tokenizer.schedules` (dynamic resolution).
    fn check_scales(&self, scales: &[[usize; 2]]) -> Result<()> {
        let canvases = self.parts().tokenizer.canvases();
        if canvases.iter().any(|(_, s)| s == scales) {
            return Ok(());
        }
        let offered: Vec<String> = canvases.iter().map(|((h, w), _)| format!("{h}x{w}")).collect();
        Err(Error::Input(format!("schedule {scales:?} is not one this model was trained on (canvases {})", offered.join(", "))))
    }

    /// Text-to-image: `n` images for one prompt (CFG against `<bos>` + negative prompt).
    pub fn text_to_image(&self, prompt: &str, negative: Option<&str>, n: usize, opts: &ImageOptions, on_scale: &mut dyn FnMut(usize, usize, Duration)) -> Result<Generated> {
        let (cond, un) = self.text_prompts(prompt, negative)?;
        self.generate_images(&vec![cond; n], &vec![un; n], opts, on_scale)
    }

    /// The conditional and unconditional sequences of a text-to-image prompt: `<bos>` +
    /// prompt words, and `<bos>` + negative prompt words (none: `<bos>` alone).
    pub fn text_prompts(&self, prompt: &str, negative: Option<&str>) -> Result<(Sequence, Sequence)> {
        let bos = self.id("<bos>");
        let mut cond = Sequence::new();
        cond.text(&[bos]).text(&self.encode_words(prompt)?);
        let mut un = Sequence::new();
        un.text(&[bos]);
        if let Some(neg) = negative {
            un.text(&self.encode_words(neg)?);
        }
        Ok((cond, un))
    }

    /// Image `[1, 3, S, S]` → per-scale indices.
    pub fn encode_image(&self, image: &Tensor) -> Result<Vec<Tensor>> {
        let s = self.parts().tokenizer.image_size;
        if image.shape() != [1, 3, s, s] {
            return Err(Error::Input(format!("the model reads {s}x{s} RGB images; got {:?}", image.shape())));
        }
        self.tokenizer.encode(image)
    }

    /// Understanding: `<bos> image question` then text, greedy, until `<eos>`.
    pub fn understand(&self, indices: &[Tensor], question: &str, max_new_tokens: usize, on_token: &mut dyn FnMut(u32) -> ControlFlow<()>) -> Result<TextOutput> {
        self.reply(Some(indices), question, &TextOptions { max_new_tokens, ..Default::default() }, on_token)
    }

    /// A text answer to `<bos> [image] prompt`, decoded with `opts` (its stop tokens and
    /// vocabulary limit are the model's: `<eos>`, and words only, never visual codes).
    pub fn reply(&self, image: Option<&[Tensor]>, prompt: &str, opts: &TextOptions, on_token: &mut dyn FnMut(u32) -> ControlFlow<()>) -> Result<TextOutput> {
        let mut seq = Sequence::new();
        seq.text(&[self.id("<bos>")]);
        if let Some(indices) = image {
            self.push_image(&mut seq, indices)?;
        }
        seq.text(&self.encode_words(prompt)?);
        let opts = TextOptions { stop_tokens: vec![self.id("<eos>")], vocab_limit: Some(self.parts().vocabulary.code_start()), keep_logits: false, ..opts.clone() };
        let prefill = Prefill { x: self.embed(&seq)?, positions: Tensor::from_slice(&seq.positions(), &[1, seq.len(), 3], self.device())?, segments: seq.attention_segments(), next_position: seq.position, seen: seq.text_ids() };
        text::generate_from(&self.transformer, prefill, &opts, on_token)
    }

    /// The most likely word after `<bos> image question` (ShapeEval's exact-match rule:
    /// every answer is one word; only word ids compete).
    pub fn answer_word(&self, indices: &[Tensor], question: &str) -> Result<u32> {
        let mut seq = Sequence::new();
        seq.text(&[self.id("<bos>")]);
        self.push_image(&mut seq, indices)?;
        seq.text(&self.encode_words(question)?);
        let v = &self.parts().vocabulary;
        let hidden = self.forward_sequence(&seq, &mut |_, _| Ok(()))?;
        let g = graph(self.device());
        let last = g.input(&hidden)?.narrow(1, seq.len() - 1, 1)?;
        let first_word = v.specials.len();
        let best = self.transformer.record_logits(&last, first_word..v.code_start())?.argmax()?.realize()?.to_vec::<u32>()?[0];
        Ok(first_word as u32 + best)
    }

    /// Editing: `<bos> image instruction <boi>` → a new image (CFG against the image alone).
    pub fn edit(&self, indices: &[Tensor], instruction: &str, opts: &ImageOptions, on_scale: &mut dyn FnMut(usize, usize, Duration)) -> Result<Generated> {
        let mut base = Sequence::new();
        base.text(&[self.id("<bos>")]);
        self.push_image(&mut base, indices)?;
        let mut cond = base.clone();
        cond.text(&self.encode_words(instruction)?);
        self.generate_images(&[cond], &[base], opts, on_scale)
    }

    /// Teacher-forced hidden states over a prepared sequence (parity tests).
    pub fn forward_sequence(&self, seq: &Sequence, inspect: &mut dyn FnMut(usize, &Tensor) -> Result<()>) -> Result<Tensor> {
        let mut cache = Cache::new(&self.transformer, 1, seq.len())?;
        let positions = Tensor::from_slice(&seq.positions(), &[1, seq.len(), 3], self.device())?;
        self.transformer.forward_layers(&self.embed(seq)?, &positions, &seq.attention_segments(), &mut cache, inspect)
    }

    /// A t2i teacher-forcing sequence: `<bos> prompt <boi>` then maps 1..K-1 of `indices`.
    pub fn t2i_sequence(&self, prompt_ids: &[u32], indices: &[Tensor]) -> Result<Sequence> {
        let mut seq = Sequence::new();
        seq.text(prompt_ids);
        let boi = seq.position;
        seq.text(&[self.id("<boi>")]);
        let scales = &self.parts().tokenizer.scales;
        seq.segments.extend(self.context_maps(indices, scales.len() - 1, boi)?);
        seq.position = boi + scales.len();
        Ok(seq)
    }

    /// Default sampler settings from the config.
    pub fn default_image_options(&self) -> ImageOptions {
        let s = &self.parts().sampler;
        ImageOptions { cfg_scale: s.cfg_scale, cfg_schedule: s.cfg_schedule, top_k: s.top_k, top_p: s.top_p, temperature: s.temperature, seed: 0, scales: None }
    }
}

/// One piece of an interleaved answer.
pub enum Piece {
    /// Generated text ids (the stop token excluded).
    Text(Vec<u32>),
    /// A generated image.
    Image(Generated),
}

impl NextFlow {
    /// Interleaved generation: text after `prompt`; whenever the model writes `<boi>`, a
    /// next-scale block paints an image (CFG against `<bos>`), which then joins the
    /// sequence as a context image (maps, `<eoi>`) and text continues — until `<eos>`, the
    /// token budget, or `max_images`. Each switch re-prefills the whole sequence: simple,
    /// and cheap next to the image itself.
    /// Text is sampled with `text`'s settings (its stop tokens and vocabulary limit are
    /// set here; text segment `j` draws with seed `text.seed + j`).
    pub fn interleaved(
        &self,
        prompt: &str,
        text: &TextOptions,
        max_images: usize,
        opts: &ImageOptions,
        on_piece: &mut dyn FnMut(&Piece),
    ) -> Result<Vec<Piece>> {
        text.validate()?;
        opts.validate()?;
        let max_new_tokens = text.max_new_tokens;
        let (bos, boi, eos) = (self.id("<bos>"), self.id("<boi>"), self.id("<eos>"));
        let mut seq = Sequence::new();
        seq.text(&[bos]).text(&self.encode_words(prompt)?);
        let mut pieces = Vec::new();
        let mut budget = max_new_tokens;
        let mut images = 0;
        while budget > 0 {
            let text_opts = TextOptions {
                max_new_tokens: budget,
                stop_tokens: if images < max_images { vec![eos, boi] } else { vec![eos] },
                vocab_limit: Some(self.parts().vocabulary.code_start()),
                keep_logits: false,
                seed: text.seed.wrapping_add(pieces.len() as u64),
                ..text.clone()
            };
            let prefill = Prefill {
                x: self.embed(&seq)?,
                positions: Tensor::from_slice(&seq.positions(), &[1, seq.len(), 3], self.device())?,
                segments: seq.attention_segments(),
                next_position: seq.position,
                seen: seq.text_ids(),
            };
            let out = text::generate_from(&self.transformer, prefill, &text_opts, &mut |_| ControlFlow::Continue(()))?;
            budget = budget.saturating_sub(out.ids.len());
            let words: Vec<u32> = out.ids.iter().copied().filter(|&id| id != boi && id != eos).collect();
            seq.text(&words);
            if !words.is_empty() {
                let piece = Piece::Text(words);
                on_piece(&piece);
                pieces.push(piece);
            }
            if out.stopped_by != Some(boi) {
                break;
            }
            let mut un = Sequence::new();
            un.text(&[bos]);
            let g = self.generate_images(std::slice::from_ref(&seq), &[un], opts, &mut |_, _, _| {})?;
            self.push_image(&mut seq, &g.indices)?;
            images += 1;
            let piece = Piece::Image(g);
            on_piece(&piece);
            pieces.push(piece);
        }
        Ok(pieces)
    }
}

/// Up to three vocabulary words within edit distance 2 of `word` (case-insensitive), closest first.
fn closest_words(word: &str, words: &[String]) -> Vec<String> {
    let word: Vec<char> = word.to_lowercase().chars().collect();
    let distance = |other: &str| -> usize {
        let other: Vec<char> = other.chars().collect();
        let mut row: Vec<usize> = (0..=other.len()).collect();
        for (i, a) in word.iter().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, b) in other.iter().enumerate() {
                let substitution = previous + usize::from(a != b);
                previous = row[j + 1];
                row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
            }
        }
        row[other.len()]
    };
    let mut scored: Vec<(usize, &String)> =
        words.iter().filter(|w| w.chars().all(|c| c.is_alphabetic())).map(|w| (distance(w), w)).filter(|(d, _)| *d <= 2).collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, w)| w.clone()).collect()
}
