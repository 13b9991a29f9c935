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
use nextflow_ops::{
    self as ops, attention, AttentionOptions, Epilogue, KvCache, Mask, Rope, Weight,
};
use nextflow_runtime::{DType, Device, Tensor};

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
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|p| p.bias.as_ref()).collect();
        let bias = biases.map(|b| ops::concat(&b, 0)).transpose()?;
        let device = parts[0].weight.device();
        let bytes: u64 = parts.iter().map(|p| (p.weight.rows() * p.weight.cols() * p.weight.dtype().size()) as u64).sum();
        let singles: Option<Vec<&Tensor>> = parts.iter().map(|p| p.weight.single()).collect();
        let weight = match singles {
            Some(w) if bytes <= device.max_buffer_bytes() => Weight::from(ops::concat(&w, 0)?),
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

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.weight.matmul_t(x, Epilogue { bias: self.bias.as_ref(), ..Default::default() })?)
    }

    /// `x·wᵀ + b + residual`, the add fused into the matmul.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let ep = Epilogue { bias: self.bias.as_ref(), residual: Some(residual), ..Default::default() };
        Ok(self.weight.matmul_t(x, ep)?)
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

/// The decoder stack and its head.
pub struct Transformer {
    pub cfg: Backbone,
    pub vocab_size: usize,
    pub embed_tokens: Weight,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `[vocab, hidden]`; the embedding table itself when the head is tied.
    pub lm_head: Weight,
    rope: Rope,
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
            rope: Rope::new(hd, cfg.rope_theta as f32, sections)?,
            eps: cfg.rms_norm_eps as f32,
            dtype,
            device: device.clone(),
        })
    }

    /// Embeddings `[batch, seq, hidden]` of token ids `[batch, seq]` (u32).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.embedding(ids)?)
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
        cache.segments.extend_from_slice(segments);
        let mask = if cache.segments.iter().all(|&n| n == 1) { Mask::Causal } else { Mask::Segments(cache.segments.clone()) };
        let options = AttentionOptions { mask: Some(mask), kv_starts: Some(cache.kv_starts.clone()), ..Default::default() };
        let mut residual = x.clone();
        let mut h = ops::rms_norm(x, &self.layers[0].input_layernorm, self.eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let a = &layer.attn;
            let (hq, hkv, hd) = (a.heads, a.kv_heads, a.head_dim);
            let qkv = a.qkv.forward(&h)?; // [b, s, (hq + 2 hkv) hd]
            let split = |start: usize, heads: usize| -> Result<Tensor> {
                Ok(qkv.narrow(2, start * hd, heads * hd)?.reshape(&[b, s, heads, hd])?.transpose(1, 2)?)
            };
            let (mut q, mut k, v) = (split(0, hq)?, split(hq, hkv)?, split(hq + hkv, hkv)?);
            if let Some((qn, kn)) = &a.qk_norm {
                q = ops::rms_norm(&q, qn, self.eps)?;
                k = ops::rms_norm(&k, kn, self.eps)?;
            }
            let q = self.rope.apply(&q, positions)?;
            let k = self.rope.apply(&k, positions)?;
            cache.layers[i].append(&k, &v)?;
            let (keys, values) = (cache.layers[i].keys(), cache.layers[i].values());
            let out = attention(&q, &keys, &values, &options)?; // [b, hq, s, hd] over [b, s, hq, hd]
            drop((keys, values));
            let out = out.transpose(1, 2)?.reshape(&[b, s, hq * hd])?;
            residual = a.o_proj.forward_add(&out, &residual)?;
            let normed = ops::rms_norm(&residual, &layer.post_attention_layernorm, self.eps)?;
            let gu = layer.gate_up.forward(&normed)?;
            let inter = layer.gate_up.out_features() / 2;
            let act = ops::swiglu(&gu.narrow(2, 0, inter)?, &gu.narrow(2, inter, inter)?)?;
            residual = layer.down.forward_add(&act, &residual)?;
            inspect(i, &residual)?;
            let next = self.layers.get(i + 1).map_or(&self.norm, |l| &l.input_layernorm);
            h = ops::rms_norm(&residual, next, self.eps)?;
        }
        inspect(usize::MAX, &h)?;
        Ok(h)
    }

    /// Logits `[.., rows.len()]` of the head rows `rows` (all rows: `0..vocab`).
    pub fn logits(&self, hidden: &Tensor, rows: std::ops::Range<usize>) -> Result<Tensor> {
        Ok(self.lm_head.narrow_rows(rows.start, rows.len())?.matmul_t(hidden, Epilogue::default())?)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}
