//! Text generation: prefill the prompt, then decode one token at a time over the KV cache,
//! greedy or sampled (temperature, top-k, top-p, repetition penalty, seed), until a stop
//! token or the token budget; each token is handed to the caller as soon as it exists.

use crate::transformer::{graph, Cache, Transformer};
use crate::{Error, Result};
use nextflow_ops::sampling::{sample, SamplerConfig};
use nextflow_ops::text_positions;
use nextflow_runtime::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct TextOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// HF's rule: a seen token's logit is divided by it if positive, multiplied if negative.
    pub repetition_penalty: f32,
    pub seed: u64,
    pub stop_tokens: Vec<u32>,
    /// Keep the logits of every generated position (for `--logits-out`).
    pub keep_logits: bool,
    /// Only ids below this can be generated (e.g. NextFlow's text rows); None = all.
    pub vocab_limit: Option<usize>,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions { max_new_tokens: 128, temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0, stop_tokens: Vec::new(), keep_logits: false, vocab_limit: None }
    }
}

impl TextOptions {
    /// The sampling values every entry point checks the same way (CLI, server, library).
    pub fn validate(&self) -> Result<()> {
        check_sampling(self.temperature, self.top_p)?;
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::Input(format!("repetition penalty must be a finite number > 0 (1 = off), got {}", self.repetition_penalty)));
        }
        Ok(())
    }
}

/// Temperature and top-p, as text and image sampling share them.
pub fn check_sampling(temperature: f32, top_p: f32) -> Result<()> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(Error::Input(format!("temperature must be a finite number >= 0 (0 = greedy), got {temperature}")));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(Error::Input(format!("top-p must be in (0, 1] (1 = off), got {top_p}")));
    }
    Ok(())
}

#[derive(Clone, Debug, Default)]
pub struct TextOutput {
    /// Generated ids (the stop token included if one ended generation).
    pub ids: Vec<u32>,
    /// `[generated, vocab]` row-major, when `keep_logits`.
    pub logits: Vec<f32>,
    pub prompt_tokens: usize,
    pub prefill: Duration,
    pub decode: Duration,
    pub stopped_by: Option<u32>,
}

impl TextOutput {
    /// Decode speed over the tokens after the first (the first comes out of the prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.ids.len().saturating_sub(1);
        if n == 0 || self.decode.is_zero() {
            0.0
        } else {
            n as f64 / self.decode.as_secs_f64()
        }
    }
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }
}

fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    let mut done = std::collections::HashSet::new();
    for &id in seen {
        if let Some(l) = logits.get_mut(id as usize) {
            if done.insert(id) {
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// What the decoder sees before the first generated token.
pub struct Prefill {
    /// Row embeddings `[1, len, hidden]`.
    pub x: Tensor,
    /// `[1, len, 3]` f32.
    pub positions: Tensor,
    /// Attention segments of the rows.
    pub segments: Vec<usize>,
    /// Text position of the first generated token.
    pub next_position: usize,
    /// Ids the repetition penalty counts.
    pub seen: Vec<u32>,
}

/// Generates after `prompt` (ids); `on_token` sees each new id and may stop generation.
pub fn generate(model: &Transformer, prompt: &[u32], opts: &TextOptions, on_token: &mut dyn FnMut(u32) -> ControlFlow<()>) -> Result<TextOutput> {
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty: give at least one token".into()));
    }
    if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= model.vocab_size) {
        return Err(Error::Input(format!("prompt id {bad} is outside the vocabulary (size {})", model.vocab_size)));
    }
    let device = &model.device;
    let ids = Tensor::from_slice(prompt, &[1, prompt.len()], device)?;
    let prefill = Prefill {
        x: model.embed(&ids)?,
        positions: text_positions(0, prompt.len(), device)?,
        segments: vec![1; prompt.len()],
        next_position: prompt.len(),
        seen: prompt.to_vec(),
    };
    generate_from(model, prefill, opts, on_token)
}

/// [`generate`] after any prefill (text, images, or both).
pub fn generate_from(model: &Transformer, prefill: Prefill, opts: &TextOptions, on_token: &mut dyn FnMut(u32) -> ControlFlow<()>) -> Result<TextOutput> {
    opts.validate()?;
    let device = model.device.clone();
    let len = prefill.x.shape()[1];
    let context = model.cfg.max_position_embeddings;
    if len >= context {
        return Err(Error::Input(format!("the prompt is {len} tokens; the model's context is {context} (max_position_embeddings), which leaves no room for an answer")));
    }
    // The cache holds what can be generated, never more than the context.
    let max_new_tokens = opts.max_new_tokens.min(context - len);
    let mut cache = Cache::new(model, 1, len + max_new_tokens)?;
    let vocab = model.vocab_size;
    let limit = opts.vocab_limit.unwrap_or(vocab).min(vocab);
    let config = SamplerConfig { temperature: opts.temperature, top_k: opts.top_k, top_p: opts.top_p, ..Default::default() };
    let host_side = opts.keep_logits || opts.repetition_penalty != 1.0;
    let mut out = TextOutput { prompt_tokens: len, ..Default::default() };
    let mut seen = prefill.seen;

    let start = Instant::now();
    let hidden = model.forward(&prefill.x, &prefill.positions, &prefill.segments, &mut cache)?;
    let mut last = hidden.narrow(1, len - 1, 1)?;
    let mut decode_start = None;
    for step in 0..max_new_tokens {
        let id = if host_side {
            let logits = model.record_logits(&graph(&device).input(&last)?, 0..limit)?;
            let mut row: Vec<f32> = logits.cast(DType::F32)?.realize()?.to_vec()?;
            if opts.keep_logits {
                out.logits.extend_from_slice(&row);
            }
            if opts.repetition_penalty != 1.0 {
                apply_repetition_penalty(&mut row, &seen, opts.repetition_penalty);
            }
            let host = Tensor::from_slice(&row, &[1, limit], &Device::cpu())?;
            sample(&host, None, &config, opts.seed, step as u32)?.to_vec::<u32>()?[0]
        } else {
            model.sample_next(&last, 0..limit, &config, opts.seed, step as u64)?[0]
        };
        if step == 0 {
            out.prefill = start.elapsed();
            decode_start = Some(Instant::now());
        }
        out.ids.push(id);
        seen.push(id);
        let stop = opts.stop_tokens.contains(&id);
        if stop {
            out.stopped_by = Some(id);
        }
        if on_token(id).is_break() || stop || step + 1 == max_new_tokens {
            break;
        }
        let pos = prefill.next_position + step;
        let x = model.embed(&Tensor::from_slice(&[id], &[1, 1], &device)?)?;
        last = model.forward(&x, &text_positions(pos, 1, &device)?, &[1], &mut cache)?;
    }
    if let Some(t) = decode_start {
        out.decode = t.elapsed();
    }
    Ok(out)
}
