//! The visual tokenizer on our runtime (spec §1–§2): the semantic teacher and pixel encoder
//! that turn an image into features, dual-codebook multi-scale residual quantization, and
//! the pixel decoder. Weight names follow the checkpoint (TokenFlow / VQGAN):
//! `encoder_vqkd.features.*`, `encode_task_layer.*`, `encoder.*`, `quant_conv.*`,
//! `quantize.embedding_{vqkd,vqgan}.weight`, `post_quant_conv.*`, `decoder.*`.

use crate::config::VisualTokenizer as Cfg;
use crate::msrq;
use crate::transformer::{graph, Linear};
use crate::weights::Weights;
use crate::Result;
use nextflow_compiler::Lazy;
use nextflow_ops::msrq::Codebook;
use nextflow_ops::{self as ops, Conv2d};
use nextflow_runtime::{DType, Device, Tensor};
use std::sync::Arc;

/// A conv layer: weight `[cout, cin, k, k]`, bias, geometry.
pub(crate) struct Conv {
    weight: Tensor,
    bias: Tensor,
    geometry: Conv2d,
}

impl Conv {
    fn load(w: &Weights, prefix: &str, cin: usize, cout: usize, k: usize, geometry: Conv2d, dtype: DType, device: &Device) -> Result<Conv> {
        Ok(Conv {
            weight: w.get(&format!("{prefix}.weight"), &[cout, cin, k, k], dtype, device)?,
            bias: w.get(&format!("{prefix}.bias"), &[cout], dtype, device)?,
            geometry,
        })
    }
    pub(crate) fn forward(&self, x: &Lazy) -> Result<Lazy> {
        self.forward_fused(x, false, None)
    }

    /// With a nearest ×2 upsampling of `x` before and/or a residual added after, fused.
    fn forward_fused(&self, x: &Lazy, upsample2x: bool, residual: Option<&Lazy>) -> Result<Lazy> {
        let g = x.graph();
        Ok(x.conv2d(&g.input(&self.weight)?, Some(&g.input(&self.bias)?), self.geometry, upsample2x, residual)?)
    }
}

/// GroupNorm(min(groups, channels), eps 1e-6), optionally followed by SiLU (fused).
struct Norm {
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
}

impl Norm {
    fn load(w: &Weights, prefix: &str, channels: usize, groups: usize, dtype: DType, device: &Device) -> Result<Norm> {
        Ok(Norm {
            gamma: w.get(&format!("{prefix}.weight"), &[channels], dtype, device)?,
            beta: w.get(&format!("{prefix}.bias"), &[channels], dtype, device)?,
            groups: groups.min(channels),
        })
    }
    fn forward(&self, x: &Lazy, silu: bool) -> Result<Lazy> {
        let g = x.graph();
        Ok(x.group_norm(self.groups, &g.input(&self.gamma)?, &g.input(&self.beta)?, 1e-6, silu)?)
    }
}

struct ResBlock {
    norm1: Norm,
    conv1: Conv,
    norm2: Norm,
    conv2: Conv,
    shortcut: Option<Conv>,
}

impl ResBlock {
    fn load(w: &Weights, p: &str, cin: usize, cout: usize, groups: usize, dt: DType, dev: &Device) -> Result<ResBlock> {
        Ok(ResBlock {
            norm1: Norm::load(w, &format!("{p}.norm1"), cin, groups, dt, dev)?,
            conv1: Conv::load(w, &format!("{p}.conv1"), cin, cout, 3, Conv2d::same(3), dt, dev)?,
            norm2: Norm::load(w, &format!("{p}.norm2"), cout, groups, dt, dev)?,
            conv2: Conv::load(w, &format!("{p}.conv2"), cout, cout, 3, Conv2d::same(3), dt, dev)?,
            shortcut: if cin != cout { Some(Conv::load(w, &format!("{p}.nin_shortcut"), cin, cout, 1, Conv2d::same(1), dt, dev)?) } else { None },
        })
    }
    fn forward(&self, x: &Lazy) -> Result<Lazy> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let skip = match &self.shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        self.conv2.forward_fused(&self.norm2.forward(&h, true)?, false, Some(&skip))
    }
}

/// Single-head attention over all positions, with a residual.
struct AttnBlock {
    norm: Norm,
    qkv: Qkv,
    proj_out: Conv,
}

/// The 1×1 projections of an attention block: three convs (TokenFlow, VQGAN) or one conv
/// with `3c` outputs (VAR's `qkv`).
enum Qkv {
    Split(Box<[Conv; 3]>),
    Fused(Conv),
}

impl AttnBlock {
    fn load(w: &Weights, p: &str, c: usize, groups: usize, dt: DType, dev: &Device) -> Result<AttnBlock> {
        let conv = |n: &str, out: usize| Conv::load(w, &format!("{p}.{n}"), c, out, 1, Conv2d::same(1), dt, dev);
        let qkv = if w.contains(&format!("{p}.qkv.weight")) { Qkv::Fused(conv("qkv", 3 * c)?) } else { Qkv::Split(Box::new([conv("q", c)?, conv("k", c)?, conv("v", c)?])) };
        Ok(AttnBlock { norm: Norm::load(w, &format!("{p}.norm"), c, groups, dt, dev)?, qkv, proj_out: conv("proj_out", c)? })
    }
    fn forward(&self, x: &Lazy) -> Result<Lazy> {
        let t = self.norm.forward(x, false)?;
        let (q, k, v) = match &self.qkv {
            Qkv::Split(qkv) => (qkv[0].forward(&t)?, qkv[1].forward(&t)?, qkv[2].forward(&t)?),
            Qkv::Fused(qkv) => {
                let all = qkv.forward(&t)?;
                let c = all.shape()[1] / 3;
                (all.narrow(1, 0, c)?, all.narrow(1, c, c)?, all.narrow(1, 2 * c, c)?)
            }
        };
        self.proj_out.forward_fused(&q.spatial_attention(&k, &v)?, false, Some(x))
    }
}

enum Block {
    Res(ResBlock),
    Attn(AttnBlock),
    /// Pad right/bottom by one, 3×3 stride 2.
    Down(Conv),
    /// Nearest ×2, then 3×3.
    Up(Conv),
}

impl Block {
    fn forward(&self, x: &Lazy) -> Result<Lazy> {
        match self {
            Block::Res(b) => b.forward(x),
            Block::Attn(b) => b.forward(x),
            Block::Down(c) => c.forward(x),
            Block::Up(c) => c.forward_fused(x, true, None),
        }
    }
}

/// Encoder or decoder: conv_in, blocks, GroupNorm + SiLU, conv_out.
pub(crate) struct ConvNet {
    conv_in: Conv,
    blocks: Vec<Block>,
    norm_out: Norm,
    conv_out: Conv,
}

impl ConvNet {
    pub(crate) fn forward(&self, x: &Lazy) -> Result<Lazy> {
        let mut x = self.conv_in.forward(x)?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        self.conv_out.forward(&self.norm_out.forward(&x, true)?)
    }

    fn mid(w: &Weights, p: &str, c: usize, g: usize, dt: DType, dev: &Device) -> Result<Vec<Block>> {
        Ok(vec![
            Block::Res(ResBlock::load(w, &format!("{p}.mid.0"), c, c, g, dt, dev)?),
            Block::Attn(AttnBlock::load(w, &format!("{p}.mid.1"), c, g, dt, dev)?),
            Block::Res(ResBlock::load(w, &format!("{p}.mid.2"), c, c, g, dt, dev)?),
        ])
    }

    /// Levels `conv_blocks.j`: res blocks, then a resample unless it is the last level.
    fn levels(w: &Weights, p: &str, chans: &[usize], n_res: usize, g: usize, down: bool, dt: DType, dev: &Device) -> Result<Vec<Block>> {
        let mut out = Vec::new();
        for (j, &c) in chans.iter().enumerate() {
            for r in 0..n_res {
                let cin = if r == 0 { chans[j.saturating_sub(1)] } else { c };
                out.push(Block::Res(ResBlock::load(w, &format!("{p}.conv_blocks.{j}.res.{r}"), cin, c, g, dt, dev)?));
            }
            if j + 1 < chans.len() {
                out.push(if down {
                    Block::Down(Conv::load(w, &format!("{p}.conv_blocks.{j}.downsample.conv"), c, c, 3, Conv2d::downsample(), dt, dev)?)
                } else {
                    Block::Up(Conv::load(w, &format!("{p}.conv_blocks.{j}.upsample.conv"), c, c, 3, Conv2d::same(3), dt, dev)?)
                });
            }
        }
        Ok(out)
    }

    fn encoder(w: &Weights, t: &Cfg, dt: DType, dev: &Device) -> Result<ConvNet> {
        let chans: Vec<usize> = t.ch_mult.iter().map(|m| t.ch * m).collect();
        let last = *chans.last().expect("validated");
        let mut blocks = ConvNet::levels(w, "encoder", &chans, t.encoder_res_blocks, t.norm_groups, true, dt, dev)?;
        blocks.extend(ConvNet::mid(w, "encoder", last, t.norm_groups, dt, dev)?);
        Ok(ConvNet {
            conv_in: Conv::load(w, "encoder.conv_in", 3, chans[0], 3, Conv2d::same(3), dt, dev)?,
            blocks,
            norm_out: Norm::load(w, "encoder.norm_out", last, t.norm_groups, dt, dev)?,
            conv_out: Conv::load(w, "encoder.conv_out", last, t.z_channels, 3, Conv2d::same(3), dt, dev)?,
        })
    }

    fn decoder(w: &Weights, t: &Cfg, dt: DType, dev: &Device) -> Result<ConvNet> {
        let chans: Vec<usize> = t.ch_mult.iter().rev().map(|m| t.ch * m).collect();
        let last = *chans.last().expect("validated");
        let mut blocks = ConvNet::mid(w, "decoder", chans[0], t.norm_groups, dt, dev)?;
        blocks.extend(ConvNet::levels(w, "decoder", &chans, t.decoder_res_blocks, t.norm_groups, false, dt, dev)?);
        Ok(ConvNet {
            conv_in: Conv::load(w, "decoder.conv_in", t.z_channels, chans[0], 3, Conv2d::same(3), dt, dev)?,
            blocks,
            norm_out: Norm::load(w, "decoder.norm_out", last, t.norm_groups, dt, dev)?,
            conv_out: Conv::load(w, "decoder.conv_out", last, 3, 3, Conv2d::same(3), dt, dev)?,
        })
    }
}

/// VAR's VQVAE encoder and decoder (the latent-diffusion `vq-f16` nets under their names:
/// `{encoder,decoder}.conv_in`, `encoder.down.{i}.block.{j}` / `.attn.{j}` / `.downsample.conv`,
/// `decoder.up.{i}.…` / `.upsample.conv` (decoder levels are numbered from the finest, run
/// from the coarsest), `mid.block_1`, `mid.attn_1`, `mid.block_2`, `norm_out`, `conv_out`;
/// 32 groups; self-attention in the coarsest level's blocks where `using_sa`).
pub(crate) mod var_names {
    use super::*;
    use crate::var::VaeConfig;

    const GROUPS: usize = 32;

    fn mid(w: &Weights, p: &str, c: usize, sa: bool, dt: DType, dev: &Device) -> Result<Vec<Block>> {
        let mut out = vec![Block::Res(ResBlock::load(w, &format!("{p}.mid.block_1"), c, c, GROUPS, dt, dev)?)];
        if sa {
            out.push(Block::Attn(AttnBlock::load(w, &format!("{p}.mid.attn_1"), c, GROUPS, dt, dev)?));
        }
        out.push(Block::Res(ResBlock::load(w, &format!("{p}.mid.block_2"), c, c, GROUPS, dt, dev)?));
        Ok(out)
    }

    pub(crate) fn encoder(w: &Weights, t: &VaeConfig, dt: DType, dev: &Device) -> Result<ConvNet> {
        let levels = t.ch_mult.len();
        let mut blocks = Vec::new();
        let mut cin = t.ch;
        for (i, m) in t.ch_mult.iter().enumerate() {
            let c = t.ch * m;
            for j in 0..t.num_res_blocks {
                blocks.push(Block::Res(ResBlock::load(w, &format!("encoder.down.{i}.block.{j}"), cin, c, GROUPS, dt, dev)?));
                cin = c;
                if i + 1 == levels && t.using_sa {
                    blocks.push(Block::Attn(AttnBlock::load(w, &format!("encoder.down.{i}.attn.{j}"), c, GROUPS, dt, dev)?));
                }
            }
            if i + 1 < levels {
                blocks.push(Block::Down(Conv::load(w, &format!("encoder.down.{i}.downsample.conv"), c, c, 3, Conv2d::downsample(), dt, dev)?));
            }
        }
        blocks.extend(mid(w, "encoder", cin, t.using_mid_sa, dt, dev)?);
        Ok(ConvNet {
            conv_in: Conv::load(w, "encoder.conv_in", 3, t.ch, 3, Conv2d::same(3), dt, dev)?,
            blocks,
            norm_out: Norm::load(w, "encoder.norm_out", cin, GROUPS, dt, dev)?,
            conv_out: Conv::load(w, "encoder.conv_out", cin, t.z_channels, 3, Conv2d::same(3), dt, dev)?,
        })
    }

    pub(crate) fn decoder(w: &Weights, t: &VaeConfig, dt: DType, dev: &Device) -> Result<ConvNet> {
        let levels = t.ch_mult.len();
        let mut cin = t.ch * t.ch_mult[levels - 1];
        let mut blocks = mid(w, "decoder", cin, t.using_mid_sa, dt, dev)?;
        for i in (0..levels).rev() {
            let c = t.ch * t.ch_mult[i];
            for j in 0..=t.num_res_blocks {
                blocks.push(Block::Res(ResBlock::load(w, &format!("decoder.up.{i}.block.{j}"), cin, c, GROUPS, dt, dev)?));
                cin = c;
                if i + 1 == levels && t.using_sa {
                    blocks.push(Block::Attn(AttnBlock::load(w, &format!("decoder.up.{i}.attn.{j}"), c, GROUPS, dt, dev)?));
                }
            }
            if i > 0 {
                blocks.push(Block::Up(Conv::load(w, &format!("decoder.up.{i}.upsample.conv"), c, c, 3, Conv2d::same(3), dt, dev)?));
            }
        }
        Ok(ConvNet {
            conv_in: Conv::load(w, "decoder.conv_in", t.z_channels, t.ch * t.ch_mult[levels - 1], 3, Conv2d::same(3), dt, dev)?,
            blocks,
            norm_out: Norm::load(w, "decoder.norm_out", cin, GROUPS, dt, dev)?,
            conv_out: Conv::load(w, "decoder.conv_out", cin, 3, 3, Conv2d::same(3), dt, dev)?,
        })
    }

    /// A `k×k` conv `[c_out, c_in, k, k]` with "same" padding (VAR's quant convs).
    pub(crate) fn conv(w: &Weights, prefix: &str, cin: usize, cout: usize, k: usize, dt: DType, dev: &Device) -> Result<Conv> {
        Conv::load(w, prefix, cin, cout, k, Conv2d::same(k), dt, dev)
    }
}

/// The small CNN standing in for SigLIP: stride-2 conv + GroupNorm + SiLU per channel count,
/// then a 3×3 conv (`encoder_vqkd.features.*`).
struct Teacher {
    layers: Vec<(Conv, Norm)>,
    last: Conv,
    channels: usize,
}

impl Teacher {
    fn load(w: &Weights, t: &Cfg, dt: DType, dev: &Device) -> Result<Teacher> {
        let (mut cin, mut at, mut layers) = (3, 0, Vec::new());
        for &c in &t.teacher_channels {
            let conv = Conv::load(w, &format!("encoder_vqkd.features.{at}"), cin, c, 3, Conv2d { stride: 2, pad: [1; 4] }, dt, dev)?;
            let norm = Norm::load(w, &format!("encoder_vqkd.features.{}", at + 1), c, t.norm_groups, dt, dev)?;
            layers.push((conv, norm));
            (cin, at) = (c, at + 3);
        }
        let last = Conv::load(w, &format!("encoder_vqkd.features.{at}"), cin, cin, 3, Conv2d::same(3), dt, dev)?;
        Ok(Teacher { layers, last, channels: cin })
    }
    fn forward(&self, x: &Lazy) -> Result<Lazy> {
        let mut x = x.clone();
        for (conv, norm) in &self.layers {
            x = norm.forward(&conv.forward(&x)?, true)?;
        }
        self.last.forward(&x)
    }
}

/// Encoder half (image → indices), present when the checkpoint has it.
struct Encoding {
    teacher: Teacher,
    task: (Linear, Linear),
    encoder: ConvNet,
    quant_conv: Conv,
}

/// The tokenizer: codebook, decoder, and (optionally) the encoder side.
pub struct Tokenizer {
    pub cfg: Cfg,
    /// Shared with the plans that search it (a plan names the codebook by address).
    pub codebook: Arc<Codebook>,
    encoding: Option<Encoding>,
    post_quant_conv: Conv,
    decoder: ConvNet,
}

impl Tokenizer {
    pub fn load(w: &Weights, t: &Cfg, dt: DType, dev: &Device) -> Result<Tokenizer> {
        let n = t.codebook_size;
        // Codebook rows are normalized in f32 on the host, then cast (as the reference does).
        let semantic = w.get("quantize.embedding_vqkd.weight", &[n, t.semantic_dim], DType::F32, &Device::cpu())?;
        let pixel = w.get("quantize.embedding_vqgan.weight", &[n, t.pixel_dim], DType::F32, &Device::cpu())?;
        let codebook = Codebook::dual(&semantic, &pixel, 1.0, t.pixel_weight)?;
        let table = ops::cast(codebook.table(), dt)?.to_device(dev)?;
        let codebook = Arc::new(Codebook::dual(&table.narrow(1, 0, t.semantic_dim)?, &table.narrow(1, t.semantic_dim, t.pixel_dim)?, 1.0, t.pixel_weight)?);
        let encoding = if w.contains("encoder.conv_in.weight") && !w.is_random() {
            let teacher = Teacher::load(w, t, dt, dev)?;
            let ct = teacher.channels;
            Some(Encoding {
                task: (
                    Linear::load(w, "encode_task_layer.0", ct, ct, true, dt, dev)?,
                    Linear::load(w, "encode_task_layer.2", t.semantic_dim, ct, true, dt, dev)?,
                ),
                teacher,
                encoder: ConvNet::encoder(w, t, dt, dev)?,
                quant_conv: Conv::load(w, "quant_conv", t.z_channels, t.pixel_dim, 1, Conv2d::same(1), dt, dev)?,
            })
        } else {
            None
        };
        Ok(Tokenizer {
            cfg: t.clone(),
            codebook,
            encoding,
            post_quant_conv: Conv::load(w, "post_quant_conv", t.pixel_dim, t.z_channels, 1, Conv2d::same(1), dt, dev)?,
            decoder: ConvNet::decoder(w, t, dt, dev)?,
        })
    }

    pub fn schedule(&self) -> Vec<(usize, usize)> {
        self.cfg.scales.iter().map(|&[h, w]| (h, w)).collect()
    }

    pub fn can_encode(&self) -> bool {
        self.encoding.is_some()
    }

    /// `image [b, 3, S, S]` in [-1, 1] → features `[b, semantic + pixel, G, G]`, one graph.
    pub fn features(&self, image: &Tensor) -> Result<Tensor> {
        let e = self.encoding.as_ref().ok_or_else(|| crate::Error::Input("this checkpoint has no image encoder: it cannot read images".into()))?;
        let g = graph(image.device());
        let image = g.input(image)?;
        let teacher = e.teacher.forward(&image)?; // [b, ct, G, G]
        let cells = teacher.permute(&[0, 2, 3, 1])?;
        let hidden = e.task.0.record(&cells, None)?.tanh()?;
        let semantic = e.task.1.record(&hidden, None)?.permute(&[0, 3, 1, 2])?;
        let pixel = e.quant_conv.forward(&e.encoder.forward(&image)?)?;
        Ok(Lazy::concat(&[&semantic, &pixel], 1)?.realize()?)
    }

    /// Image → per-scale indices `[b, h·w]` (u32).
    pub fn encode(&self, image: &Tensor) -> Result<Vec<Tensor>> {
        let f = self.features(image)?;
        Ok(msrq::encode(&f, &self.codebook, &self.schedule(), None)?.indices)
    }

    /// Per-scale indices → image `[b, 3, S, S]`, about [-1, 1] (clamped when converted
    /// to pixels, see [`to_rgb8`]).
    pub fn decode(&self, indices: &[Tensor]) -> Result<Tensor> {
        self.decode_scales(indices, &self.cfg.scales)
    }

    /// Indices of a generation's own schedule (a prefix of the model's for a smaller `--size`,
    /// or an aspect-ratio schedule) → image `[b, 3, h·p, w·p]` at its last scale's grid.
    pub fn decode_scales(&self, indices: &[Tensor], scales: &[[usize; 2]]) -> Result<Tensor> {
        let schedule: Vec<(usize, usize)> = scales.iter().map(|&[h, w]| (h, w)).collect();
        let grid = *schedule.last().ok_or_else(|| crate::Error::Input("an empty schedule has no image".into()))?;
        let g = graph(self.codebook.table().device());
        let indices = indices.iter().map(|t| g.input(t)).collect::<std::result::Result<Vec<_>, _>>()?;
        let f_hat = msrq::record_decode(&g.input(self.codebook.table())?, &indices, &schedule, grid, None)?;
        let pixel = f_hat.narrow(1, self.cfg.semantic_dim, self.cfg.pixel_dim)?;
        Ok(self.decoder.forward(&self.post_quant_conv.forward(&pixel)?)?.realize()?)
    }
}

/// `[b, 3, S, S]` about [-1, 1] → one RGB8 buffer (row-major, `S·S·3`) per image:
/// `clamp(x · 127.5 + 128, 0, 255)` truncated, as the reference's `to_uint8` (TokenFlow).
pub fn to_rgb8(images: &Tensor) -> Result<Vec<Vec<u8>>> {
    let (b, c, h, w) = (images.shape()[0], images.shape()[1], images.shape()[2], images.shape()[3]);
    assert_eq!(c, 3, "RGB images");
    let v: Vec<f32> = graph(images.device()).input(images)?.cast(DType::F32)?.realize()?.to_vec()?;
    Ok((0..b)
        .map(|i| {
            let img = &v[i * 3 * h * w..(i + 1) * 3 * h * w];
            (0..h * w).flat_map(|p| (0..3).map(move |ch| (img[ch * h * w + p] * 127.5 + 128.0).clamp(0.0, 255.0) as u8)).collect()
        })
        .collect())
}

/// RGB8 (`S·S·3`) → `[1, 3, S, S]` in [-1, 1] (`x / 127.5 − 1`, as ShapeWorld's training).
pub fn from_rgb8(rgb: &[u8], size: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f64; 3 * size * size];
    for p in 0..size * size {
        for ch in 0..3 {
            v[ch * size * size + p] = (rgb[p * 3 + ch] as f32 / 127.5 - 1.0) as f64;
        }
    }
    // f32 values, rounded once to `dtype` on the host.
    Ok(Tensor::from_f64(&v, dtype, &[1, 3, size, size], device)?)
}
