//! The Qwen2 decoder shared by text models and NextFlow (candle's qwen2.rs is the model for
//! this file's shape): embeddings, decoder layers (RMSNorm, GQA attention with q/k/v bias,
//! 1D or multi-scale 3D RoPE, SwiGLU), final norm and the head, over a KV cache.
//!
//! Fusion done at load and in the ops: q/k/v are one matmul (weights concatenated), gate/up
//! are one matmul followed by the fused SwiGLU, o_proj and down_proj add the residual in
//! their epilogue, and RoPE reads strided views of the fused projection.

use crate::config::Backbone;
use crate::weights::Weights;
use crate::Result;
use nextflow_ops::sampling::SamplerConfig;
use nextflow_ops::{self as ops, AttentionOptions, KvCache, Mask, Rope, Weight};
use nextflow_compiler::{Graph, Lazy};
use nextflow_runtime::{DType, Device, Tensor};
use std::sync::Arc;

/// `x·wᵀ + b` with an HF `[out, in]` weight (row blocks where it exceeds one GPU binding).
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn load(w: &Weights, prefix: &str, out: usize, inp: usize, bias: bool, dtype: DType, device: &Device) -> Result<Linear> {
        Linear {
            weight: w.get_weight(&format!("{prefix}.weight"), [out, inp], dtype, device)?,
            bias: if bias { Some(w.get(&format!("{prefix}.bias"), &[out], dtype, device)?) } else { None },
        }
        .placed()
    }

    /// Several projections of the same input as one: weights (and biases) stacked by rows,
    /// into one tensor when that fits one binding of the device, else as the parts' blocks.
    pub fn fused(parts: &[Linear]) -> Result<Linear> {
        let device = parts[0].weight.device();
        let rows = |t: &[&Tensor]| -> Result<Tensor> {
            let g = graph(device);
            let lazy = t.iter().map(|t| g.input(t)).collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(Lazy::concat(&lazy.iter().collect::<Vec<_>>(), 0)?.realize()?)
        };
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        let bias = biases.map(|b| rows(&b)).transpose()?;
        let bytes: u64 = parts.iter().map(|p| (p.weight.rows() * p.weight.cols() * p.weight.dtype().size()) as u64).sum();
        let singles: Option<Vec<&Tensor>> = parts.iter().map(|p| p.weight.single()).collect();
        let weight = match singles {
            Some(w) if bytes <= device.max_buffer_bytes() => Weight::from(rows(&w)?),
            _ => Weight::stack(&parts.iter().map(|p| &p.weight).collect::<Vec<_>>())?,
        };
        Linear { weight, bias }.placed()
    }

    /// On the CPU the weight is stored `[in, out]` (seen as the `[out, in]` view): the GEMM
    /// then reads `wᵀ` with unit stride along the output, the layout it uses without
    /// repacking, so no call packs the weight again (measured: packing was 16 % of a tiny
    /// image's CPU time). GPUs keep the checkpoint's layout.
    fn placed(self) -> Result<Linear> {
        Ok(Linear { weight: self.weight.map(cpu_column_major)?, bias: self.bias })
    }

    /// Records `x·wᵀ + b (+ residual)` into `x`'s graph: one matmul per weight block (bias
    /// and residual adds that the compiler folds into its epilogue), joined along the last
    /// dim where the weight is split into blocks.
    pub fn record(&self, x: &Lazy, residual: Option<&Lazy>) -> Result<Lazy> {
        let g = x.graph();
        let last = x.rank().saturating_sub(1);
        let single = self.weight.blocks().len() == 1;
        let mut outs = Vec::with_capacity(self.weight.blocks().len());
        let mut start = 0;
        for block in self.weight.blocks() {
            let n = block.shape()[0];
            let mut y = x.matmul(&g.input(block)?.transpose(0, 1)?)?;
            if let Some(b) = &self.bias {
                y = y.add(&g.input(&if single { b.clone() } else { b.narrow(0, start, n)? })?)?;
            }
            if let Some(r) = residual {
                y = y.add(&if single { r.clone() } else { r.narrow(last, start, n)? })?;
            }
            outs.push(y);
            start += n;
        }
        if single {
            return Ok(outs.pop().expect("one block"));
        }
        Ok(Lazy::concat(&outs.iter().collect::<Vec<_>>(), last)?)
    }

    pub fn out_features(&self) -> usize {
        self.weight.rows()
    }
}

/// A `[rows, cols]` matrix re-stored column by column on the CPU (the same logical matrix,
/// strides `[1, rows]`); unchanged on GPUs. See [`Linear::placed`].
pub fn cpu_column_major(w: Tensor) -> nextflow_runtime::Result<Tensor> {
    if !w.device().is_cpu() || w.rank() != 2 {
        return Ok(w);
    }
    ops::contiguous(&w.transpose(0, 1)?)?.transpose(0, 1)
}

struct Attention {
    qkv: Linear,
    o_proj: Linear,
    /// Per-head RMSNorm weights of q and k (spec §7.4 qk_norm).
    qk_norm: Option<(Tensor, Tensor)>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

struct Layer {
    attn: Attention,
    gate_up: Linear,
    down: Linear,
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
}

/// A graph for the model's next step: lazy, or eager (one-op graphs, for debugging) when
/// `NEXTFLOW_EAGER=1`.
pub fn graph(device: &Device) -> Graph {
    if std::env::var_os("NEXTFLOW_EAGER").is_some_and(|v| !v.is_empty() && v != "0") {
        Graph::eager(device)
    } else {
        Graph::new(device)
    }
}

impl Attention {
    /// Queries, keys and values `[b, heads, s, head_dim]` of the normed rows `h`, with
    /// QK-norm and RoPE applied.
    fn qkv(&self, h: &Lazy, positions: &Lazy, rope: &Arc<Rope>, eps: f32) -> Result<[Lazy; 3]> {
        let g = h.graph();
        let (b, s) = (h.shape()[0], h.shape()[1]);
        let (hq, hkv, hd) = (self.heads, self.kv_heads, self.head_dim);
        let qkv = self.qkv.record(h, None)?; // [b, s, (hq + 2 hkv) hd]
        let split = |start: usize, heads: usize| -> Result<Lazy> {
            Ok(qkv.narrow(2, start * hd, heads * hd)?.reshape(&[b, s, heads, hd])?.transpose(1, 2)?)
        };
        let (mut q, mut k, v) = (split(0, hq)?, split(hq, hkv)?, split(hq + hkv, hkv)?);
        if let Some((qn, kn)) = &self.qk_norm {
            q = q.rms_norm(&g.input(qn)?, eps)?;
            k = k.rms_norm(&g.input(kn)?, eps)?;
        }
        Ok([q.rope(rope, positions)?, k.rope(rope, positions)?, v])
    }
}

impl Layer {
    /// One decoder layer over new rows `x [b, s, hidden]`, as the reference writes it:
    /// `x + attn(norm(x))`, then `+ mlp(norm(·))`. Two graphs: the projections up to the new
    /// keys and values, which `cache` appends, then attention over the whole cache and the
    /// MLP. Each is compiled once per signature and replayed.
    fn forward(&self, x: &Tensor, positions: &Tensor, rope: &Arc<Rope>, eps: f32, options: &AttentionOptions, cache: &mut KvCache) -> Result<Tensor> {
        let (b, s) = (x.shape()[0], x.shape()[1]);
        let a = &self.attn;
        let device = x.device();
        let g = graph(device);
        let h = g.input(x)?.rms_norm(&g.input(&self.input_layernorm)?, eps)?;
        let [q, k, v] = a.qkv(&h, &g.input(positions)?, rope, eps)?;
        let q = append_kv(&g, &q, &k, &v, cache)?;

        let g = graph(device);
        let residual = g.input(x)?;
        let (keys, values) = (g.input_dynamic(&cache.keys()?, 2)?, g.input_dynamic(&cache.values()?, 2)?);
        let out = g.input(&q)?.attention(&keys, &values, options)?; // [b, hq, s, hd] over [b, s, hq, hd]
        let out = out.transpose(1, 2)?.reshape(&[b, s, a.heads * a.head_dim])?;
        let residual = a.o_proj.record(&out, Some(&residual))?;
        let normed = residual.rms_norm(&g.input(&self.post_attention_layernorm)?, eps)?;
        let gu = self.gate_up.record(&normed, None)?;
        let inter = self.gate_up.out_features() / 2;
        let act = gu.narrow(2, 0, inter)?.swiglu(&gu.narrow(2, inter, inter)?)?;
        Ok(self.down.record(&act, Some(&residual))?.realize()?)
    }
}

/// Realizes `q` of graph `g` while the graph appends `k`/`v [b, heads, s, head_dim]` to
/// `cache` in place (its buffers move into the graph as in-place stores at a per-run offset,
/// so the plan replays at every cache position, and come back); returns `q`.
pub(crate) fn append_kv(g: &Graph, q: &Lazy, k: &Lazy, v: &Lazy, cache: &mut KvCache) -> Result<Tensor> {
    let s = k.shape()[2];
    let (keys, values, len) = cache.take()?;
    let at = g.param(len as u64);
    let keys = g.input_owned(keys)?.store(k, 2, at)?;
    let values = g.input_owned(values)?.store(v, 2, at)?;
    let [q, keys, values]: [Tensor; 3] = g.realize(&[q, &keys, &values])?.try_into().expect("three outputs");
    cache.put(keys, values, len + s)?;
    Ok(q)
}

/// The decoder stack and its head.
pub struct Transformer {
    pub cfg: Backbone,
    pub vocab_size: usize,
    pub embed_tokens: Weight,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `[vocab, hidden]`; the embedding table itself when the head is tied.
    pub lm_head: Weight,
    /// Shared, so plans that apply it replay across layers and steps (the plan signature
    /// names the table by address).
    rope: Arc<Rope>,
    eps: f32,
    pub dtype: DType,
    pub device: Device,
}

/// Per-layer KV caches of a batch, and what the attention mask needs of the keys so far.
pub struct Cache {
    layers: Vec<KvCache>,
    /// Lengths of the key segments so far (1 per text token, one per next-scale map).
    segments: Vec<usize>,
    /// First valid key of each batch row (rows left-padded to a common length).
    pub kv_starts: Vec<usize>,
}

impl Cache {
    pub fn new(model: &Transformer, batch: usize, capacity: usize) -> Result<Cache> {
        let b = &model.cfg;
        let layers = (0..b.num_hidden_layers)
            .map(|_| KvCache::new(&model.device, model.dtype, batch, b.num_key_value_heads, b.head_dim(), capacity))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Cache { layers, segments: Vec::new(), kv_starts: vec![0; batch] })
    }
    /// Keys cached so far.
    pub fn len(&self) -> usize {
        self.segments.iter().sum()
    }
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, |l| l.capacity())
    }
    pub fn batch(&self) -> usize {
        self.kv_starts.len()
    }
}

impl Transformer {
    /// Loads `model.*` and `lm_head.weight` (HF Qwen2 names) as `dtype` on `device`.
    pub fn load(w: &Weights, cfg: &Backbone, vocab_size: usize, sections: &[usize], dtype: DType, device: &Device) -> Result<Transformer> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (hq, hkv, inter) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size);
        let get = |name: &str, shape: &[usize]| w.get(name, shape, dtype, device);
        let embed_tokens = w.get_weight("model.embed_tokens.weight", [vocab_size, d], dtype, device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let lin = |name: &str, out: usize, inp: usize, bias: bool| Linear::load(w, &format!("{p}.{name}"), out, inp, bias, dtype, device);
            let bias = cfg.attention_bias;
            let qkv = Linear::fused(&[
                lin("self_attn.q_proj", hq * hd, d, bias)?,
                lin("self_attn.k_proj", hkv * hd, d, bias)?,
                lin("self_attn.v_proj", hkv * hd, d, bias)?,
            ])?;
            let qk_norm = if cfg.qk_norm {
                Some((get(&format!("{p}.self_attn.qknorm.query_norm.weight"), &[hd])?, get(&format!("{p}.self_attn.qknorm.key_norm.weight"), &[hd])?))
            } else {
                None
            };
            layers.push(Layer {
                attn: Attention { qkv, o_proj: lin("self_attn.o_proj", d, hq * hd, false)?, qk_norm, heads: hq, kv_heads: hkv, head_dim: hd },
                gate_up: Linear::fused(&[lin("mlp.gate_proj", inter, d, false)?, lin("mlp.up_proj", inter, d, false)?])?,
                down: lin("mlp.down_proj", d, inter, false)?,
                input_layernorm: get(&format!("{p}.input_layernorm.weight"), &[d])?,
                post_attention_layernorm: get(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
            });
        }
        let norm = get("model.norm.weight", &[d])?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            w.get_weight("lm_head.weight", [vocab_size, d], dtype, device)?.map(cpu_column_major)?
        };
        Ok(Transformer {
            cfg: cfg.clone(),
            vocab_size,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope: Arc::new(Rope::new(hd, cfg.rope_theta as f32, sections)?),
            eps: cfg.rms_norm_eps as f32,
            dtype,
            device: device.clone(),
        })
    }

    /// Embeddings `[batch, seq, hidden]` of token ids `[batch, seq]` (u32).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.record_embed(&graph(&self.device), ids)?.realize()?)
    }

    /// [`Transformer::embed`] recorded into `g`.
    pub fn record_embed(&self, g: &Graph, ids: &Tensor) -> Result<Lazy> {
        let ids = g.input(ids)?;
        Ok(match self.embed_tokens.single() {
            Some(table) => g.input(table)?.embedding(&ids)?,
            // A table split into blocks (larger than one GPU binding) gathers from each.
            None => ids.blocked_embedding(&self.embed_tokens)?,
        })
    }

    /// Runs the decoder over new rows `x [batch, seq, hidden]` at `positions [batch|1, seq, 3]`
    /// (f32), appending their keys to `cache`. `segments` splits the `seq` new rows into
    /// attention segments (bidirectional inside, causal across; all 1 = plain causal).
    /// Returns the final-norm hidden states `[batch, seq, hidden]`.
    pub fn forward(&self, x: &Tensor, positions: &Tensor, segments: &[usize], cache: &mut Cache) -> Result<Tensor> {
        self.forward_layers(x, positions, segments, cache, &mut |_, _| Ok(()))
    }

    /// [`Transformer::forward`], handing each layer's output (and, as layer `usize::MAX`,
    /// the final-norm output) to `inspect` — the parity tests compare them with goldens.
    pub fn forward_layers(
        &self,
        x: &Tensor,
        positions: &Tensor,
        segments: &[usize],
        cache: &mut Cache,
        inspect: &mut dyn FnMut(usize, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let (b, s) = (x.shape()[0], x.shape()[1]);
        if segments.iter().sum::<usize>() != s || segments.contains(&0) {
            return Err(crate::Error::Input(format!("segments {segments:?} must be positive and cover the {s} new rows")));
        }
        if b != cache.batch() {
            return Err(crate::Error::Input(format!("batch of {b} rows but the cache holds {}", cache.batch())));
        }
        if cache.len() + s > cache.capacity() {
            return Err(crate::Error::Input(format!("{} cached + {s} new positions exceed the cache capacity {}", cache.len(), cache.capacity())));
        }
        // Only the new rows query: keys before them are all visible to every new row, so the
        // mask needs the new segments alone (all 1: causal). Keeping earlier segments out of
        // the op keeps the plan signature the same from step to step (a decode step after an
        // image replays its plan).
        let prefix = cache.len();
        cache.segments.extend_from_slice(segments);
        let mask = if segments.iter().all(|&n| n == 1) {
            Mask::Causal
        } else {
            Mask::Segments((prefix > 0).then_some(prefix).into_iter().chain(segments.iter().copied()).collect())
        };
        let options = AttentionOptions { mask: Some(mask), kv_starts: Some(cache.kv_starts.clone()), ..Default::default() };
        let mut residual = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            residual = layer.forward(&residual, positions, &self.rope, self.eps, &options, &mut cache.layers[i])?;
            inspect(i, &residual)?;
        }
        let g = graph(&self.device);
        let h = g.input(&residual)?.rms_norm(&g.input(&self.norm)?, self.eps)?.realize()?;
        inspect(usize::MAX, &h)?;
        Ok(h)
    }

    /// Logits `[.., rows.len()]` of the head rows `rows` (all rows: `0..vocab`).
    pub fn logits(&self, hidden: &Tensor, rows: std::ops::Range<usize>) -> Result<Tensor> {
        self.record_logits(&graph(&self.device).input(hidden)?, rows)?.realize().map_err(Into::into)
    }

    /// [`Transformer::logits`] recorded into `hidden`'s graph.
    pub fn record_logits(&self, hidden: &Lazy, rows: std::ops::Range<usize>) -> Result<Lazy> {
        let head = Linear { weight: self.lm_head.narrow_rows(rows.start, rows.len())?, bias: None };
        head.record(hidden, None)
    }

    /// One id per row of `hidden [b, 1, D]`, drawn from the logits of head rows `rows`
    /// (ids relative to `rows.start`) with `seed` at sampling step `step`: one graph.
    pub fn sample_next(&self, hidden: &Tensor, rows: std::ops::Range<usize>, config: &SamplerConfig, seed: u64, step: u64) -> Result<Vec<u32>> {
        let g = graph(&self.device);
        let logits = self.record_logits(&g.input(hidden)?, rows)?;
        let ids = logits.sample(None, config, g.param(seed), g.param(step))?;
        Ok(ids.realize()?.to_vec()?)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
