//! VAR's networks on the compiler, written from the official `models/{var,basic_var,vqvae,
//! quant}.py`: the class-conditional transformer (AdaLN self-attention blocks, L2-normalised
//! q/k with a learned per-head scale, `AdaLNBeforeHead`), the next-scale loop of
//! `autoregressive_infer_cfg` over a KV cache, and the VQVAE (plain-codebook MSRQ with
//! quant_resi phi, the `vq-f16` decoder and encoder).
//!
//! It runs on the engine's shared parts: the KV cache and fused attention of the language
//! models, the CFG sampler (`(1+t)·cond − t·uncond`, top-k, top-p), the MSRQ recording of
//! `crate::msrq`, and the conv net blocks of `crate::visual`. What is VAR's own is the block
//! (AdaLN instead of RMSNorm, GELU-tanh MLP, learned attention scale) and its inputs (class
//! embedding, `pos_start`, learned absolute positions, level embedding, `f_hat` area-downsampled
//! to the next scale).

use super::{ModelConfig, PhiSharing, VaeConfig, VarConfig};
use crate::msrq;
use crate::transformer::{append_kv, graph, Linear};
use crate::visual::{var_names, Conv, ConvNet};
use crate::weights::Weights;
use crate::{Error, Result};
use nextflow_compiler::{Graph, Lazy};
use nextflow_ops::msrq::{Codebook, Phi};
use nextflow_ops::sampling::SamplerConfig;
use nextflow_ops::{AttentionOptions, KvCache, Resize};
use nextflow_runtime::{DType, Device, Tensor};
use std::sync::Arc;

/// LayerNorm over the last dim without affine parameters (`elementwise_affine=False`).
fn layer_norm(x: &Lazy, eps: f32) -> Result<Lazy> {
    let last = x.rank() - 1;
    let centred = x.sub(&x.mean()?.unsqueeze(last)?)?;
    let var = centred.mul(&centred)?.mean()?.unsqueeze(last)?;
    Ok(centred.mul(&var.add_scalar(eps)?.rsqrt()?)?)
}

/// `ln(x)·(1 + scale) + shift`, with `scale`/`shift` `[n, 1, C]` per batch row.
fn modulate(x: &Lazy, scale: &Lazy, shift: &Lazy, eps: f32) -> Result<Lazy> {
    Ok(layer_norm(x, eps)?.mul(&scale.add_scalar(1.0)?)?.add(shift)?)
}

/// `F.normalize(x, dim=-1)`: `x / max(‖x‖₂, 1e-12)`.
fn l2_normalize(x: &Lazy) -> Result<Lazy> {
    let norm = x.mul(x)?.sum()?.unsqueeze(x.rank() - 1)?.sqrt()?;
    Ok(x.div(&norm.maximum(&x.graph().constant(1e-12, x.dtype())?)?)?)
}

/// `nn.GELU(approximate='tanh')`, in PyTorch's order of operations.
fn gelu_tanh(x: &Lazy) -> Result<Lazy> {
    let beta = std::f32::consts::SQRT_2 * std::f32::consts::FRAC_2_SQRT_PI * 0.5;
    let inner = x.add(&x.mul(x)?.mul(x)?.scale(0.044715)?)?.scale(beta)?;
    Ok(x.scale(0.5)?.mul(&inner.tanh()?.add_scalar(1.0)?)?)
}

/// AdaLN parameters of a block: its own `ada_lin` (SiLU → Linear), or the shared one plus the
/// block's `ada_gss`.
enum Ada {
    Own(Linear),
    /// `ada_gss [6, C]`, added to the shared projection.
    Shared(Tensor),
}

struct Block {
    ada: Ada,
    /// `mat_qkv` with the bias `cat(q_bias, 0, v_bias)`.
    qkv: Linear,
    /// `exp(min(scale_mul, ln 100))` per head, `[1, heads, 1, 1]` (L2-normalised attention).
    scale_mul: Option<Tensor>,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

/// The transformer's per-generation constants: one row per lane (classes, then the null
/// class for the unconditional lanes of CFG).
struct Conditioning {
    /// Per block `[n, 6, C]`: gamma1, gamma2, scale1, scale2, shift1, shift2.
    blocks: Vec<Tensor>,
    /// `[n, 2, C]`: the head's scale and shift.
    head: Tensor,
    /// The first scale's input `[n, first_l, C]`.
    first: Tensor,
}

/// What a scale takes from its logits `(graph, scale, logits)`: the ids it feeds on, and what
/// of the scale to keep (see `Var::scales`).
type Pick<'a> = dyn FnMut(&Graph, usize, &Lazy) -> Result<(Lazy, Lazy)> + 'a;

/// The VQVAE: codebook, phi, decoder, and the encoder side when the file has it.
pub struct Vae {
    pub cfg: VaeConfig,
    /// Shared with the plans that search it (a plan names the codebook by address).
    pub codebook: Arc<Codebook>,
    phi: Option<Phi>,
    post_quant_conv: Conv,
    decoder: ConvNet,
    encoder: Option<(ConvNet, Conv)>,
}

impl Vae {
    pub fn load(w: &Weights, cfg: &VaeConfig, dtype: DType, device: &Device) -> Result<Vae> {
        let c = cfg.code_dim;
        let table = w.get("quantize.embedding.weight", &[cfg.vocab_size, c], dtype, device)?;
        let names: Vec<String> = match cfg.phi {
            PhiSharing::Shared => vec!["quantize.quant_resi.qresi".into()],
            PhiSharing::Partial(n) => (0..n).map(|i| format!("quantize.quant_resi.qresi_ls.{i}")).collect(),
            PhiSharing::PerScale(n) => (0..n).map(|i| format!("quantize.quant_resi.{i}")).collect(),
            PhiSharing::None => Vec::new(),
        };
        let convs = names
            .iter()
            .map(|p| Ok((w.get(&format!("{p}.weight"), &[c, c, 3, 3], dtype, device)?, w.get(&format!("{p}.bias"), &[c], dtype, device)?)))
            .collect::<Result<Vec<_>>>()?;
        let k = cfg.quant_conv_kernel;
        let encoder = if cfg.has_encoder && !w.is_random() {
            Some((var_names::encoder(w, cfg, dtype, device)?, var_names::conv(w, "quant_conv", cfg.z_channels, c, k, dtype, device)?))
        } else {
            None
        };
        Ok(Vae {
            cfg: cfg.clone(),
            codebook: Arc::new(Codebook::plain(&table)?),
            phi: (!convs.is_empty()).then_some(Phi { convs, ratio: cfg.quant_resi }),
            post_quant_conv: var_names::conv(w, "post_quant_conv", c, cfg.z_channels, k, dtype, device)?,
            decoder: var_names::decoder(w, cfg, dtype, device)?,
            encoder,
        })
    }

    pub fn can_encode(&self) -> bool {
        self.encoder.is_some()
    }

    /// `image [b, 3, S, S]` in [-1, 1] → indices `[b, pn²]` (u32) per scale of `patch_nums`.
    pub fn encode(&self, image: &Tensor, patch_nums: &[usize]) -> Result<Vec<Tensor>> {
        let (encoder, quant_conv) = self.encoder.as_ref().ok_or_else(|| Error::Input("this VQVAE file has no encoder: it cannot read images".into()))?;
        let g = graph(image.device());
        let f = quant_conv.forward(&encoder.forward(&g.input(image)?)?)?.realize()?;
        let schedule: Vec<(usize, usize)> = patch_nums.iter().map(|&p| (p, p)).collect();
        Ok(msrq::encode(&f, &self.codebook, &schedule, self.phi.as_ref())?.indices)
    }

    /// `f_hat [b, Cvae, pn, pn]` → image `[b, 3, S, S]` in [0, 1]:
    /// `(clamp(decoder(post_quant_conv(f_hat)), −1, 1) + 1) / 2`.
    pub fn decode_f_hat(&self, f_hat: &Tensor) -> Result<Tensor> {
        let g = graph(f_hat.device());
        let img = self.decoder.forward(&self.post_quant_conv.forward(&g.input(f_hat)?)?)?;
        let one = g.constant(1.0, img.dtype())?;
        let minus = g.constant(-1.0, img.dtype())?;
        let clamped = img.maximum(&minus)?.neg()?.maximum(&minus)?.neg()?;
        Ok(clamped.add(&one)?.scale(0.5)?.realize()?)
    }
}

/// Options of one generation.
#[derive(Clone, Debug)]
pub struct VarOptions {
    /// The official `cfg`: the guidance at the last scale; scale `k` uses `cfg·k/(K−1)`.
    pub cfg: f32,
    /// 0 = off; 1 = greedy.
    pub top_k: usize,
    /// In (0, 1]; 1 (or 0, as the official code writes "off") = off.
    pub top_p: f32,
    pub seed: u64,
}

impl VarOptions {
    /// Refuses a guidance below 0 (or not a number) and a top-p outside [0, 1].
    pub fn validate(&self) -> Result<()> {
        if !(self.cfg.is_finite() && self.cfg >= 0.0) {
            return Err(Error::Input(format!("cfg must be a number ≥ 0 (0: unguided; VAR's demo uses 4), got {}", self.cfg)));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(Error::Input(format!("top-p must be in [0, 1] (0 or 1: off), got {}", self.top_p)));
        }
        Ok(())
    }
}

impl Default for VarOptions {
    /// VAR's demo: cfg 4, top-k 900, top-p 0.95.
    fn default() -> Self {
        VarOptions { cfg: 4.0, top_k: 900, top_p: 0.95, seed: 0 }
    }
}

/// What a generation returns.
pub struct Generated {
    /// Per scale `[b, pn²]` u32.
    pub indices: Vec<Tensor>,
    /// `[b, 3, S, S]` in [0, 1].
    pub images: Tensor,
}

/// A VAR model: the transformer and its VQVAE.
pub struct Var {
    pub cfg: ModelConfig,
    pub vae: Vae,
    class_emb: Tensor,
    pos_start: Tensor,
    /// `lvl_embed[level(t)] + pos_1LC[t]` per token `[L, C]`.
    lvl_pos: Tensor,
    word_embed: Linear,
    shared_ada: Option<Linear>,
    blocks: Vec<Block>,
    head_ada: Linear,
    head: Linear,
    pub dtype: DType,
    pub device: Device,
}

impl Var {
    /// Loads the transformer (`t`) and VQVAE (`v`) state dicts as `dtype` on `device`.
    pub fn load(t: &Weights, v: &Weights, cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<Var> {
        let m = &cfg.var;
        let (c, h, hidden) = (m.width, m.heads, m.mlp_hidden);
        let get = |name: &str, shape: &[usize]| t.get(name, shape, dtype, device);
        let host = |name: &str, shape: &[usize]| -> Result<Vec<f32>> { Ok(t.get(name, shape, DType::F32, &Device::cpu())?.to_vec()?) };
        let lin = |name: &str, out: usize, inp: usize| Linear::load(t, name, out, inp, true, dtype, device);
        let mut blocks = Vec::with_capacity(m.depth);
        for i in 0..m.depth {
            let p = format!("blocks.{i}");
            let ada = if m.shared_adaln {
                Ada::Shared(get(&format!("{p}.ada_gss"), &[1, 1, 6, c])?.reshape(&[6, c])?)
            } else {
                Ada::Own(lin(&format!("{p}.ada_lin.1"), 6 * c, c)?)
            };
            // The qkv bias as the official forward builds it: cat(q_bias, zero_k_bias, v_bias)
            // (`zero_k_bias` is a buffer of zeros; a file without it means the same).
            let zero_k = format!("{p}.attn.zero_k_bias");
            let mut bias = host(&format!("{p}.attn.q_bias"), &[c])?;
            bias.extend(if t.contains(&zero_k) { host(&zero_k, &[c])? } else { vec![0.0; c] });
            bias.extend(host(&format!("{p}.attn.v_bias"), &[c])?);
            let qkv = Linear::load(t, &format!("{p}.attn.mat_qkv"), 3 * c, c, false, dtype, device)?;
            let qkv = Linear { weight: qkv.weight, bias: Some(Tensor::from_f64(&bias.iter().map(|&b| b as f64).collect::<Vec<_>>(), dtype, &[3 * c], device)?) };
            let scale_mul = if m.attn_l2_norm {
                let max = 100f32.ln();
                let s: Vec<f64> = host(&format!("{p}.attn.scale_mul_1H11"), &[1, h, 1, 1])?.iter().map(|&x| x.min(max).exp() as f64).collect();
                Some(Tensor::from_f64(&s, dtype, &[1, h, 1, 1], device)?)
            } else {
                None
            };
            blocks.push(Block {
                ada,
                qkv,
                scale_mul,
                proj: lin(&format!("{p}.attn.proj"), c, c)?,
                fc1: lin(&format!("{p}.ffn.fc1"), hidden, c)?,
                fc2: lin(&format!("{p}.ffn.fc2"), c, hidden)?,
            });
        }
        // lvl_embed(lvl_1L) + pos_1LC, in f32 as the official code adds them.
        let (k, l) = (m.patch_nums.len(), m.tokens());
        let lvl = host("lvl_embed.weight", &[k, c])?;
        let pos = host("pos_1LC", &[1, l, c])?;
        let mut lvl_pos = Vec::with_capacity(l * c);
        let mut token = 0;
        for (level, pn) in m.patch_nums.iter().enumerate() {
            for _ in 0..pn * pn {
                lvl_pos.extend((0..c).map(|j| (lvl[level * c + j] + pos[token * c + j]) as f64));
                token += 1;
            }
        }
        let first_l = m.patch_nums[0] * m.patch_nums[0];
        Ok(Var {
            cfg: cfg.clone(),
            vae: Vae::load(v, &cfg.vae, dtype, device)?,
            class_emb: get("class_emb.weight", &[m.num_classes + 1, c])?,
            pos_start: get("pos_start", &[1, first_l, c])?,
            lvl_pos: Tensor::from_f64(&lvl_pos, dtype, &[l, c], device)?,
            word_embed: lin("word_embed", c, m.code_dim)?,
            shared_ada: if m.shared_adaln { Some(lin("shared_ada_lin.1", 6 * c, c)?) } else { None },
            blocks,
            head_ada: lin("head_nm.ada_lin.1", 2 * c, c)?,
            head: lin("head", m.vocab_size, c)?,
            dtype,
            device: device.clone(),
        })
    }

    fn var(&self) -> &VarConfig {
        &self.cfg.var
    }

    /// Class embeddings of `lanes` (class ids, `num_classes` = the null class) and what the
    /// blocks and the head derive from them, once per generation.
    fn condition(&self, lanes: &[usize]) -> Result<Conditioning> {
        let m = self.var();
        let c = m.width;
        let n = lanes.len();
        if let Some(&bad) = lanes.iter().find(|&&l| l > m.num_classes) {
            return Err(Error::Input(format!("class {bad} is out of range: this model has classes 0..{}", m.num_classes - 1)));
        }
        let g = graph(&self.device);
        let ids = Tensor::from_slice(&lanes.iter().map(|&l| l as u32).collect::<Vec<_>>(), &[n], &self.device)?;
        let cond = g.input(&self.class_emb)?.embedding(&g.input(&ids)?)?; // [n, C]
        let act = cond.silu()?;
        let shared = match &self.shared_ada {
            Some(lin) => Some(lin.record(&act, None)?.reshape(&[n, 6, c])?),
            None => None,
        };
        let mut outs = Vec::with_capacity(self.blocks.len() + 2);
        for b in &self.blocks {
            outs.push(match (&b.ada, &shared) {
                (Ada::Own(lin), _) => lin.record(&act, None)?.reshape(&[n, 6, c])?,
                (Ada::Shared(gss), Some(s)) => g.input(gss)?.add(s)?,
                (Ada::Shared(_), None) => unreachable!("a shared-AdaLN block has the shared projection"),
            });
        }
        // The head's AdaLN takes the raw class embedding, shared AdaLN or not.
        outs.push(self.head_ada.record(&act, None)?.reshape(&[n, 2, c])?);
        let first_l = m.patch_nums[0] * m.patch_nums[0];
        let first = cond.unsqueeze(1)?.add(&g.input(&self.pos_start)?)?.add(&g.input(&self.lvl_pos)?.narrow(0, 0, first_l)?)?;
        outs.push(first);
        let mut t = g.realize(&outs.iter().collect::<Vec<_>>())?;
        let first = t.pop().expect("first input");
        let head = t.pop().expect("head AdaLN");
        Ok(Conditioning { blocks: t, head, first })
    }

    /// One block over new rows `x [n, l, C]`, appending their keys to `cache`: two graphs
    /// (up to the new keys and values, which the cache stores in place; then attention over
    /// the cache and the MLP), each compiled once per shape and replayed across blocks.
    fn block(&self, b: &Block, x: &Tensor, ada: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let m = self.var();
        let (n, l, c) = (x.shape()[0], x.shape()[1], m.width);
        let (h, hd) = (m.heads, m.head_dim());
        let eps = m.norm_eps as f32;
        let g = graph(&self.device);
        let ada_l = g.input(ada)?;
        let part = |i: usize| ada_l.narrow(1, i, 1);
        let (scale1, shift1) = (part(2)?, part(4)?);
        let hidden = modulate(&g.input(x)?, &scale1, &shift1, eps)?;
        let qkv = b.qkv.record(&hidden, None)?; // [n, l, 3C]
        let split = |i: usize| -> Result<Lazy> { Ok(qkv.narrow(2, i * c, c)?.reshape(&[n, l, h, hd])?.transpose(1, 2)?) };
        let (mut q, mut k, v) = (split(0)?, split(1)?, split(2)?);
        if let Some(s) = &b.scale_mul {
            q = l2_normalize(&q)?.mul(&g.input(s)?)?;
            k = l2_normalize(&k)?;
        }
        let q = append_kv(&g, &q, &k, &v, cache)?;

        let g = graph(&self.device);
        let ada_l = g.input(ada)?;
        let part = |i: usize| ada_l.narrow(1, i, 1);
        let (gamma1, gamma2, scale2, shift2) = (part(0)?, part(1)?, part(3)?, part(5)?);
        let scale = if b.scale_mul.is_some() { 1.0 } else { 0.25 / (hd as f32).sqrt() };
        // Every new row sees every cached key: earlier scales and its own (no mask).
        let options = AttentionOptions { scale: Some(scale), ..Default::default() };
        let (keys, values) = (g.input_dynamic(&cache.keys()?, 2)?, g.input_dynamic(&cache.values()?, 2)?);
        let out = g.input(&q)?.attention(&keys, &values, &options)?.transpose(1, 2)?.reshape(&[n, l, c])?;
        let x = g.input(x)?.add(&b.proj.record(&out, None)?.mul(&gamma1)?)?;
        let mlp = b.fc2.record(&gelu_tanh(&b.fc1.record(&modulate(&x, &scale2, &shift2, eps)?, None)?)?, None)?;
        Ok(x.add(&mlp.mul(&gamma2)?)?.realize()?)
    }

    /// The blocks over one scale's input rows.
    fn blocks_over(&self, mut x: Tensor, cond: &Conditioning, caches: &mut [KvCache]) -> Result<Tensor> {
        for (i, b) in self.blocks.iter().enumerate() {
            x = self.block(b, &x, &cond.blocks[i], &mut caches[i])?;
        }
        Ok(x)
    }

    /// Head logits `[n, l, V]` of the blocks' output, recorded into `x`'s graph.
    fn record_logits(&self, x: &Lazy, cond: &Conditioning) -> Result<Lazy> {
        let g = x.graph();
        let ada = g.input(&cond.head)?;
        let h = modulate(x, &ada.narrow(1, 0, 1)?, &ada.narrow(1, 1, 1)?, self.var().norm_eps as f32)?;
        self.head.record(&h, None)
    }

    /// After scale `si` drew `ids [b, pn²]`: `f_hat += phi(up(codes))` and the next scale's
    /// input rows `word_embed(area(f_hat)) + lvl_pos` (`None` after the last scale),
    /// recorded into `ids`' graph.
    fn record_next(&self, ids: &Lazy, f_hat: &Lazy, si: usize, guided: bool) -> Result<(Lazy, Option<Lazy>)> {
        let m = self.var();
        let g = ids.graph();
        let (k, pn) = (m.patch_nums.len(), m.patch_nums[si]);
        let side = *m.patch_nums.last().expect("validated");
        let b = ids.shape()[0];
        let codes = msrq::lookup(&g.input(self.vae.codebook.table())?, ids, pn, pn)?;
        let f_hat = f_hat.add(&msrq::upsampled(g, &codes, side, side, self.vae.phi.as_ref(), si, k)?)?;
        if si + 1 == k {
            return Ok((f_hat, None));
        }
        let next = m.patch_nums[si + 1];
        let start: usize = m.patch_nums[..=si].iter().map(|p| p * p).sum();
        let rows = f_hat.interpolate(next, next, Resize::Area)?.reshape(&[b, m.code_dim, next * next])?.transpose(1, 2)?;
        let x = self.word_embed.record(&rows, None)?.add(&g.input(&self.lvl_pos)?.narrow(0, start, next * next)?)?;
        // The conditional and unconditional lanes see the same input (the official `repeat(2, 1, 1)`).
        let x = if guided { Lazy::concat(&[&x, &x], 0)? } else { x };
        Ok((f_hat, Some(x)))
    }

    fn caches(&self, n: usize) -> Result<Vec<KvCache>> {
        let m = self.var();
        (0..m.depth).map(|_| Ok(KvCache::new(&self.device, self.dtype, n, m.heads, m.head_dim(), m.tokens())?)).collect()
    }

    fn zero_f_hat(&self, b: usize) -> Result<Tensor> {
        let m = self.var();
        let side = *m.patch_nums.last().expect("validated");
        Ok(Tensor::from_f64(&vec![0.0; b * m.code_dim * side * side], self.dtype, &[b, m.code_dim, side, side], &self.device)?)
    }

    /// The next-scale loop of generation and teacher forcing: per scale, the blocks over its
    /// input rows, the head's logits, `pick` (the ids scale `si` takes from its logits, and
    /// what to keep of the scale), then `f_hat` and the next scale's input, in one graph.
    /// Returns what was kept per scale and the last `f_hat` (`b` images).
    fn scales(
        &self,
        cond: &Conditioning,
        b: usize,
        guided: bool,
        pick: &mut Pick,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(Vec<Tensor>, Tensor)> {
        let k = self.var().patch_nums.len();
        let mut caches = self.caches(cond.first.shape()[0])?;
        let (mut x, mut f_hat) = (cond.first.clone(), self.zero_f_hat(b)?);
        let mut kept = Vec::with_capacity(k);
        for si in 0..k {
            let out = self.blocks_over(x.clone(), cond, &mut caches)?;
            let g = graph(&self.device);
            let logits = self.record_logits(&g.input(&out)?, cond)?;
            let (ids, keep) = pick(&g, si, &logits)?;
            let (next_f_hat, next) = self.record_next(&ids, &g.input(&f_hat)?, si, guided)?;
            let mut outs = g.realize(&[&keep, &next_f_hat].into_iter().chain(next.as_ref()).collect::<Vec<_>>())?;
            if next.is_some() {
                x = outs.pop().expect("next input");
            }
            f_hat = outs.pop().expect("f_hat");
            kept.push(outs.pop().expect("kept"));
            progress(si + 1, k);
        }
        Ok((kept, f_hat))
    }

    /// `autoregressive_infer_cfg`: images of `classes` (one per image). With guidance, each
    /// image runs a conditional and an unconditional lane (the null class); scale `k` mixes
    /// them with `t = cfg·k/(K−1)`. `progress(scale, scales)` is called after each scale.
    pub fn generate(&self, classes: &[usize], opts: &VarOptions, progress: &mut dyn FnMut(usize, usize)) -> Result<Generated> {
        let m = self.var();
        let b = classes.len();
        if b == 0 {
            return Err(Error::Input("no image to generate".into()));
        }
        opts.validate()?;
        let guided = opts.cfg > 0.0;
        let lanes: Vec<usize> = if guided { classes.iter().copied().chain(std::iter::repeat_n(m.num_classes, b)).collect() } else { classes.to_vec() };
        let k = m.patch_nums.len();
        let mut sample = |g: &Graph, si: usize, logits: &Lazy| -> Result<(Lazy, Lazy)> {
            let config = SamplerConfig {
                cfg_scale: opts.cfg * si as f32 / (k - 1).max(1) as f32,
                temperature: if opts.top_k == 1 { 0.0 } else { 1.0 },
                top_k: opts.top_k,
                top_p: if opts.top_p <= 0.0 { 1.0 } else { opts.top_p },
                id_range: None,
            };
            let ids = if guided {
                logits.narrow(0, 0, b)?.sample(Some(&logits.narrow(0, b, b)?), &config, g.param(opts.seed), g.param(si as u64))?
            } else {
                logits.sample(None, &config, g.param(opts.seed), g.param(si as u64))?
            };
            Ok((ids.clone(), ids))
        };
        let (indices, f_hat) = self.scales(&self.condition(&lanes)?, b, guided, &mut sample, progress)?;
        Ok(Generated { indices, images: self.vae.decode_f_hat(&f_hat)? })
    }

    /// Teacher forcing (the official `forward` with the label kept): the logits `[b, pn², V]`
    /// of every scale given the ground-truth indices `[b, pn²]` of the scales before it.
    pub fn teacher_logits(&self, classes: &[usize], indices: &[Tensor]) -> Result<Vec<Tensor>> {
        let k = self.var().patch_nums.len();
        if indices.len() != k {
            return Err(Error::Input(format!("{} index maps for {k} scales", indices.len())));
        }
        let mut given = |g: &Graph, si: usize, logits: &Lazy| -> Result<(Lazy, Lazy)> { Ok((g.input(&indices[si])?, logits.clone())) };
        Ok(self.scales(&self.condition(classes)?, classes.len(), false, &mut given, &mut |_, _| {})?.0)
    }
}

/// `[b, 3, S, S]` in [0, 1] → one RGB8 buffer per image, `x·255` truncated (the official
/// demo's `mul(255)` then `astype(uint8)`).
pub fn to_rgb8(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    let (b, h, w) = (images.shape()[0], images.shape()[2], images.shape()[3]);
    let v: Vec<f32> = graph(images.device()).input(images)?.cast(DType::F32)?.realize()?.to_vec()?;
    Ok((0..b)
        .map(|i| {
            let img = &v[i * 3 * h * w..(i + 1) * 3 * h * w];
            (0..h * w).flat_map(|p| (0..3).map(move |ch| (img[ch * h * w + p] * 255.0).clamp(0.0, 255.0) as u8)).collect()
        })
        .collect())
}
