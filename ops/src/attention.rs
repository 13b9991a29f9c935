//! Fused attention (GQA, causal / block-causal / no mask, key padding), rotary embedding
//! (1D and multi-scale 3D, spec §4.2), and the KV cache.

use crate::gpu::{self, array, buffer, upload_u32, with_client, with_dtype};
use crate::{contiguous, cpu};
use cubecl::prelude::*;
use nextflow_runtime::{cubecl, DType, Device, Error, Layout, Result, Storage, Tensor};
use nextflow_shaders::attention as kernels;

/// Which keys a query may see. Positions are absolute key positions; query `i` of `sq`
/// sits at `skv - sq + i` (the queries are the newest tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mask {
    /// Every valid key.
    None,
    /// Keys at or before the query's position.
    Causal,
    /// Block-causal over consecutive segments of the key sequence (lengths summing to
    /// `skv`): a query sees its own segment and every earlier one. A causal prefix of `t`
    /// tokens is `t` segments of length 1, as the next-scale model needs.
    Segments(Vec<usize>),
}

/// Options of [`attention`].
#[derive(Clone, Debug, Default)]
pub struct AttentionOptions {
    pub mask: Option<Mask>,
    /// Valid keys per batch row (right padding); default: all `skv`.
    pub kv_lens: Option<Vec<usize>>,
    /// First valid key per batch row (left padding, as when a batch of prompts of
    /// different lengths is left-aligned); default: 0.
    pub kv_starts: Option<Vec<usize>>,
    /// Default `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
}

/// Launch settings of the GPU attention kernel (the CPU has one path): queries per cube.
/// The autotune cache chooses them per shape (`nextflow bench kernels`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionKernel {
    pub block_q: u32,
}

impl Default for AttentionKernel {
    fn default() -> AttentionKernel {
        AttentionKernel { block_q: 64 }
    }
}

impl AttentionKernel {
    /// Every setting a GPU may run, by name.
    pub const CANDIDATES: [AttentionKernel; 4] =
        [AttentionKernel { block_q: 16 }, AttentionKernel { block_q: 32 }, AttentionKernel { block_q: 64 }, AttentionKernel { block_q: 128 }];

    pub fn name(&self) -> String {
        format!("flash q{}", self.block_q)
    }
}

/// `softmax(q·kᵀ·scale + mask)·v` per head. `q [b, hq, sq, d]`, `k`/`v [b, hkv, skv, d]`
/// (any strides with a dense last dim, e.g. views of a KV cache or of a fused QKV matmul),
/// `hkv` dividing `hq`. Returns `[b, hq, sq, d]` whose buffer is laid out `[b, sq, hq, d]`,
/// so `.transpose(1, 2)` then `reshape` to `[b, sq, hq·d]` is free.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, options: &AttentionOptions) -> Result<Tensor> {
    attention_with(q, k, v, options, AttentionKernel::default())
}

/// [`attention`] with the GPU kernel's launch settings chosen.
pub fn attention_with(q: &Tensor, k: &Tensor, v: &Tensor, options: &AttentionOptions, kernel: AttentionKernel) -> Result<Tensor> {
    let err = |msg: String| Err(Error::Shape { op: "attention", msg });
    crate::check_float("attention", q)?;
    crate::check_same("attention", q, k)?;
    crate::check_same("attention", q, v)?;
    if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
        return err(format!("q, k, v must be [batch, heads, seq, head_dim], got {:?}, {:?}, {:?}", q.shape(), k.shape(), v.shape()));
    }
    let (b, hq, sq, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (hkv, skv) = (k.shape()[1], k.shape()[2]);
    if k.shape() != v.shape() || k.shape()[0] != b || k.shape()[3] != d {
        return err(format!("k {:?} and v {:?} must both be [{b}, hkv, skv, {d}]", k.shape(), v.shape()));
    }
    if hkv == 0 || hq % hkv != 0 {
        return err(format!("{hkv} kv heads do not divide {hq} query heads"));
    }
    if !(16..=256).contains(&d) || d % 2 != 0 {
        return err(format!("head_dim {d} is outside the supported 16..=256 (even)"));
    }
    if sq > skv {
        return err(format!("{sq} queries but only {skv} keys: queries must be the newest keys"));
    }
    let kv_lens = options.kv_lens.clone().unwrap_or_else(|| vec![skv; b]);
    if kv_lens.len() != b || kv_lens.iter().any(|&l| l > skv) {
        return err(format!("kv_lens {kv_lens:?} must give one length <= {skv} per batch row ({b})"));
    }
    let kv_starts = options.kv_starts.clone().unwrap_or_else(|| vec![0; b]);
    if kv_starts.len() != b || kv_starts.iter().zip(&kv_lens).any(|(&s, &l)| s > l) {
        return err(format!("kv_starts {kv_starts:?} must give one start <= its kv_len per batch row ({b})"));
    }
    let mask = options.mask.clone().unwrap_or(Mask::None);
    if let Mask::Segments(s) = &mask {
        if s.iter().sum::<usize>() != skv || s.contains(&0) {
            return err(format!("segment lengths {s:?} must be positive and sum to skv = {skv}"));
        }
    }
    let scale = options.scale.unwrap_or(1.0 / (d as f32).sqrt());
    // Kernels need a dense last dim.
    let dense_last = |t: &Tensor| if t.strides()[3] == 1 { Ok(t.clone()) } else { contiguous(t) };
    let (q, k, v) = (dense_last(q)?, dense_last(k)?, dense_last(v)?);
    let run = Attention { mask, kv_lens, kv_starts, scale };
    if q.device().is_cpu() {
        return Ok(run.cpu(&q, &k, &v));
    }
    if !crate::on_gpu(q.device(), &[q.dtype()]) {
        return crate::via_cpu(&[&q, &k, &v], |h| Ok(run.cpu(&h[0], &h[1], &h[2])));
    }
    run.gpu(&q, &k, &v, kernel)
}

struct Attention {
    mask: Mask,
    kv_lens: Vec<usize>,
    kv_starts: Vec<usize>,
    scale: f32,
}

impl Attention {
    /// Segment id of each key position (causal = every key its own segment).
    fn segment_ids(&self, skv: usize) -> Vec<u32> {
        match &self.mask {
            Mask::Segments(s) => s.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i as u32, n)).collect(),
            _ => (0..skv as u32).collect(),
        }
    }

    /// One past the last key a query at `q_pos` sees: segments are consecutive, so every
    /// mask leaves a prefix of the keys visible. `seg_end[p]` is the end of p's segment.
    fn visible_end(&self, seg_end: &[usize], q_pos: usize) -> usize {
        match self.mask {
            Mask::None => usize::MAX,
            Mask::Causal => q_pos + 1,
            Mask::Segments(_) => seg_end[q_pos],
        }
    }

    /// Output `[b, hq, sq, d]` view over a dense `[b, sq, hq, d]` buffer.
    fn output_layout(b: usize, hq: usize, sq: usize, d: usize) -> Layout {
        Layout::contiguous(&[b, sq, hq, d]).permute(&[0, 2, 1, 3]).expect("valid permutation")
    }

    fn gpu(&self, q: &Tensor, k: &Tensor, v: &Tensor, kernel: AttentionKernel) -> Result<Tensor> {
        let (b, hq, sq, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
        let (hkv, skv) = (k.shape()[1], k.shape()[2]);
        let device = q.device();
        let storage = device.alloc(b * sq * hq * d * q.dtype().size())?;
        let out = Tensor::from_storage(storage, Self::output_layout(b, hq, sq, d), q.dtype(), device.clone());
        if out.numel() == 0 {
            return Ok(out);
        }
        let (qs, ks, vs) = (q.strides(), k.strides(), v.strides());
        let mut geometry = vec![sq, hq, hq / hkv, skv - sq];
        geometry.extend([q.layout().offset(), qs[0], qs[1], qs[2]]);
        geometry.extend([k.layout().offset(), ks[0], ks[1], ks[2]]);
        geometry.extend([v.layout().offset(), vs[0], vs[1], vs[2]]);
        geometry.extend([sq * hq * d, d, hq * d]);
        let geometry: Vec<u32> = geometry.into_iter().map(|x| x as u32).collect();
        let segments = match self.mask {
            Mask::Segments(_) => self.segment_ids(skv),
            _ => vec![0],
        };
        let kv_ranges: Vec<u32> = self.kv_starts.iter().zip(&self.kv_lens).flat_map(|(&s, &l)| [s as u32, l as u32]).collect();
        // The one place `Mask` maps to the kernel's `MaskKind`.
        let mask = match self.mask {
            Mask::None => kernels::MaskKind::None,
            Mask::Causal => kernels::MaskKind::Causal,
            Mask::Segments(_) => kernels::MaskKind::Segments,
        };
        // Two f32 tiles of block_kv × d must fit 16 KiB of shared memory (wgpu's floor).
        let block_kv = (2048 / d).max(1);
        let block_q = kernel.block_q;
        let dtype = q.dtype();
        with_client!(device, c => {
            let (geo, seg, lens) = (upload_u32(c, &geometry), upload_u32(c, &segments), upload_u32(c, &kv_ranges));
            with_dtype!(dtype, E => unsafe {
                kernels::flash_attention::launch_unchecked::<E, _>(
                    c,
                    CubeCount::Static(sq.div_ceil(block_q as usize) as u32, hq as u32, b as u32),
                    CubeDim::new_1d(block_q),
                    array(buffer(q), dtype),
                    array(buffer(k), dtype),
                    array(buffer(v), dtype),
                    array(buffer(&out), dtype),
                    ArrayArg::from_raw_parts(seg.clone(), segments.len()),
                    ArrayArg::from_raw_parts(lens.clone(), kv_ranges.len()),
                    ArrayArg::from_raw_parts(geo.clone(), geometry.len()),
                    self.scale,
                    d,
                    block_q,
                    block_kv,
                    mask,
                )
            })
        });
        Ok(out)
    }

    /// CPU: per (batch, head, block of queries), scores of the block against the visible
    /// keys, softmax, and the weighted sum of values; blocks run in parallel.
    fn cpu(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        const BLOCK: usize = 128;
        const SUB: usize = 32;
        let (b, hq, sq, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
        let (hkv, skv) = (k.shape()[1], k.shape()[2]);
        let group = hq / hkv;
        let qv = cpu::read_f32(q);
        // Keys and values are read in place when their rows are dense (a KV cache's view
        // is: [b, heads, len <= capacity, d]); else from a dense copy.
        let (k, v) = (cpu::rows_dense(k), cpu::rows_dense(v));
        let (kv, vv) = (cpu::buffer_f32(&k), cpu::buffer_f32(&v));
        let head_at = |t: &Tensor, bi: usize, hh: usize| t.layout().offset() + bi * t.strides()[0] + hh * t.strides()[1];
        let seg_end: Vec<usize> = match &self.mask {
            Mask::Segments(lens) => lens
                .iter()
                .scan(0, |end, &n| {
                    *end += n;
                    Some(std::iter::repeat_n(*end, n))
                })
                .flatten()
                .collect(),
            _ => Vec::new(),
        };
        let q_pos0 = skv - sq;
        let blocks = sq.div_ceil(BLOCK);
        let mut out = nextflow_runtime::CpuBuffer::zeros_f32(b * sq * hq * d);
        let out_rows = crate::pool::SendPtr(out.as_mut_ptr());
        // Tasks own disjoint output rows; scratch (scores, block output) is per thread.
        crate::pool::for_each(b * hq * blocks, &|task| {
            ATTENTION_SCRATCH.with(|scratch| {
                let (scores, o) = &mut *scratch.borrow_mut();
                let (bi, h, blk) = (task / (hq * blocks), (task / blocks) % hq, task % blocks);
                let (q0, q1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(sq));
                let rows = q1 - q0;
                let kv_len = self.kv_lens[bi];
                let kv_start = self.kv_starts[bi];
                let kv_end = match self.mask {
                    Mask::Causal => kv_len.min(q_pos0 + q1),
                    _ => kv_len,
                };
                let q_block = &qv[((bi * hq + h) * sq + q0) * d..];
                let (kh, vh) = (head_at(&k, bi, h / group), head_at(&v, bi, h / group));
                scores.clear();
                scores.resize(rows * kv_end, 0.0);
                o.clear();
                o.resize(rows * d, 0.0);
                if kv_end > 0 {
                    // Causal blocks: keys before the block's first query are visible to every
                    // row (one big product); the diagonal is done in sub-blocks that stop
                    // at their last row's position, skipping the masked triangle.
                    let full = match self.mask {
                        Mask::Causal => (q_pos0 + q0).min(kv_end),
                        _ => kv_end,
                    };
                    let mut pieces = vec![(0, rows, 0, full)];
                    for s0 in (0..rows).step_by(SUB).filter(|_| full < kv_end) {
                        let s1 = (s0 + SUB).min(rows);
                        pieces.push((s0, s1, full, (q_pos0 + q0 + s1).min(kv_end)));
                    }
                    for &(r0, r1, c0, c1) in &pieces {
                        if r1 > r0 && c1 > c0 {
                            // SAFETY: dense row-major blocks inside the read_f32 copies.
                            unsafe {
                                gemm::gemm(
                                    r1 - r0, c1 - c0, d,
                                    scores.as_mut_ptr().add(r0 * kv_end + c0), 1, kv_end as isize, false,
                                    q_block.as_ptr().add(r0 * d), 1, d as isize,
                                    kv[kh + c0 * d..].as_ptr(), d as isize, 1,
                                    0.0, self.scale, false, false, false,
                                    gemm::Parallelism::None,
                                );
                            }
                        }
                    }
                    for (r, row) in scores.chunks_mut(kv_end).enumerate() {
                        // Every mask leaves a prefix of the keys visible.
                        let visible = self.visible_end(&seg_end, q_pos0 + q0 + r).min(kv_end);
                        let start = kv_start.min(visible);
                        row[..start].iter_mut().for_each(|s| *s = 0.0);
                        row[visible..].iter_mut().for_each(|s| *s = 0.0);
                        crate::simd::softmax_in_place(&mut row[start..visible]);
                    }
                    for (i, &(r0, r1, c0, c1)) in pieces.iter().enumerate() {
                        if r1 > r0 && c1 > c0 {
                            // SAFETY: as above; later pieces accumulate into the output.
                            unsafe {
                                gemm::gemm(
                                    r1 - r0, d, c1 - c0,
                                    o.as_mut_ptr().add(r0 * d), 1, d as isize, i > 0 && c0 > 0,
                                    scores.as_ptr().add(r0 * kv_end + c0), 1, kv_end as isize,
                                    vv[vh + c0 * d..].as_ptr(), 1, d as isize,
                                    1.0, 1.0, false, false, false,
                                    gemm::Parallelism::None,
                                );
                            }
                        }
                    }
                }
                for (r, row) in o.chunks(d).enumerate() {
                    let at = ((bi * sq + q0 + r) * hq + h) * d;
                    // SAFETY: row (bi, q0 + r, h) belongs to this task alone.
                    unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out_rows.get().add(at), d) };
                }
            })
        });
        let dense = cpu::from_vec(out, q.dtype(), &[b, sq, hq, d], q.device());
        dense.permute(&[0, 2, 1, 3]).expect("valid permutation")
    }
}

thread_local! {
    /// Each thread's attention scratch (scores, block output), reused across tasks and calls.
    static ATTENTION_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Rotary-embedding tables: per frequency pair `i < head_dim/2`, `inv_freq[i] =
/// theta^(-2i/head_dim)` and the position axis it reads (spec §4.2: M-RoPE sections).
#[derive(Clone, Debug)]
pub struct Rope {
    pub head_dim: usize,
    inv_freq: Vec<f32>,
    axis: Vec<u32>,
}

impl Rope {
    /// `sections` split the `head_dim/2` frequencies among the three position axes, e.g.
    /// `[16, 24, 24]` for Qwen2.5-VL; `[head_dim/2]` (or `[head_dim/2, 0, 0]`) is 1D RoPE.
    pub fn new(head_dim: usize, theta: f32, sections: &[usize]) -> Result<Rope> {
        let half = head_dim / 2;
        if head_dim % 2 != 0 || sections.len() > 3 || sections.iter().sum::<usize>() != half {
            return Err(Error::Shape {
                op: "rope",
                msg: format!("sections {sections:?} must be at most 3 and sum to head_dim/2 = {half}"),
            });
        }
        // As HF computes it: in f32, base ** (2i / dim).
        let inv_freq = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
        let axis = sections.iter().enumerate().flat_map(|(a, &n)| std::iter::repeat_n(a as u32, n)).collect();
        Ok(Rope { head_dim, inv_freq, axis })
    }

    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }
    pub fn axis(&self) -> &[u32] {
        &self.axis
    }

    /// Applies the rotation to `x [b, heads, seq, head_dim]` (any strides, dense last dim)
    /// with `positions [b or 1, seq, 3]` f32; returns a dense tensor.
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let err = |msg: String| Err(Error::Shape { op: "rope", msg });
        crate::check_float("rope", x)?;
        if x.rank() != 4 || x.shape()[3] != self.head_dim {
            return err(format!("x must be [batch, heads, seq, {}], got {:?}", self.head_dim, x.shape()));
        }
        let (b, h, s) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        if positions.dtype() != DType::F32 {
            return Err(Error::DTypeMismatch { op: "rope", expected: DType::F32, found: positions.dtype() });
        }
        if positions.rank() != 3 || (positions.shape()[0] != b && positions.shape()[0] != 1) || positions.shape()[1..] != [s, 3] {
            return err(format!("positions must be [{b} or 1, {s}, 3], got {:?}", positions.shape()));
        }
        if !x.device().same(positions.device()) {
            return Err(Error::DeviceMismatch { op: "rope", lhs: x.device().info().spec(), rhs: positions.device().info().spec() });
        }
        let x = if x.strides()[3] == 1 { x.clone() } else { contiguous(x)? };
        let positions = contiguous(positions)?;
        if x.device().is_cpu() {
            return Ok(self.cpu(&x, &positions));
        }
        if !crate::on_gpu(x.device(), &[x.dtype()]) {
            return crate::via_cpu(&[&x, &positions], |t| Ok(self.cpu(&t[0], &t[1])));
        }
        let half = self.head_dim / 2;
        let out = gpu::empty(x.device(), x.dtype(), x.shape())?;
        let numel = b * h * s * half;
        if numel == 0 {
            return Ok(out);
        }
        let xs = x.strides();
        let pos_sb = if positions.shape()[0] == 1 { 0 } else { s * 3 };
        let geometry: Vec<u32> = [h, s, x.layout().offset(), xs[0], xs[1], xs[2], pos_sb].iter().map(|&v| v as u32).collect();
        let dtype = x.dtype();
        with_client!(x.device(), c => {
            let geo = upload_u32(c, &geometry);
            let axis = upload_u32(c, &self.axis);
            let freq = c.create_from_slice(bytemuck::cast_slice(&self.inv_freq));
            with_dtype!(dtype, E => unsafe {
                nextflow_shaders::attention::rope::launch_unchecked::<E, _>(
                    c,
                    gpu::grid(numel, nextflow_shaders::ELEMENTWISE_CUBE),
                    CubeDim::new_1d(nextflow_shaders::ELEMENTWISE_CUBE),
                    array(buffer(&x), dtype),
                    array(buffer(&out), dtype),
                    array(buffer(&positions), DType::F32),
                    ArrayArg::from_raw_parts(freq.clone(), half),
                    ArrayArg::from_raw_parts(axis.clone(), half),
                    ArrayArg::from_raw_parts(geo.clone(), geometry.len()),
                    numel as u32,
                    half,
                )
            })
        });
        Ok(out)
    }

    fn cpu(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let (b, h, s, d) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
        let half = d / 2;
        let xv = cpu::read_f32(x);
        let pos = cpu::read_f32(positions);
        let shared = positions.shape()[0] == 1;
        // cos/sin per (position row, frequency), shared by every head (and by the calls of
        // every layer with the same positions: a one-entry cache keyed by the values).
        let rows = if shared { s } else { b * s };
        let table = ROPE_TABLE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let pos = &pos[..rows * 3];
            if let Some(((p, f, a), t)) = cache.as_ref() {
                if p[..] == *pos && *f == self.inv_freq && *a == self.axis {
                    return t.clone();
                }
            }
            let mut t = vec![0f32; rows * half * 2];
            for (r, cs) in t.chunks_mut(half * 2).enumerate() {
                let p = &pos[r * 3..][..3];
                for i in 0..half {
                    let (sin, cos) = (p[self.axis[i] as usize] * self.inv_freq[i]).sin_cos();
                    (cs[i], cs[half + i]) = (cos, sin);
                }
            }
            let t = std::sync::Arc::new(t);
            *cache = Some(((pos.to_vec(), self.inv_freq.clone(), self.axis.clone()), t.clone()));
            t
        });
        let mut out = nextflow_runtime::CpuBuffer::scratch_f32(b * h * s * d);
        crate::pool::chunks_mut(&mut out, d * s.max(1), &|start, plane| {
            let bh = start / (d * s.max(1));
            let bi = bh / h;
            for (si, o) in plane.chunks_mut(d).enumerate() {
                let row = bh * s + si;
                let cs = &table[(if shared { si } else { bi * s + si }) * half * 2..][..half * 2];
                let (cos, sin) = cs.split_at(half);
                let xr = &xv[row * d..][..d];
                let (x1, x2) = xr.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                for i in 0..half {
                    o1[i] = x1[i] * cos[i] - x2[i] * sin[i];
                    o2[i] = x2[i] * cos[i] + x1[i] * sin[i];
                }
            }
        });
        cpu::from_vec(out, x.dtype(), x.shape(), x.device())
    }
}

/// The last CPU RoPE table: (positions, inverse frequencies, axes) → cos | sin per row.
type RopeKey = (Vec<f32>, Vec<f32>, Vec<u32>);
thread_local! {
    static ROPE_TABLE: std::cell::RefCell<Option<(RopeKey, std::sync::Arc<Vec<f32>>)>> = const { std::cell::RefCell::new(None) };
}

/// Positions `[1, len, 3]` of text tokens `start..start+len`: `(t, t, t)` (spec §4.2).
pub fn text_positions(start: usize, len: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (start..start + len).flat_map(|t| [t as f32; 3]).collect();
    Tensor::from_slice(&v, &[1, len, 3], device)
}

/// Positions `[h·w, 3]` (flattened row-major) of one input map of a next-scale step
/// (spec §4.2 eq. 1): `(p_s, C/√(hw)·(i+0.5), C/√(hw)·(j+0.5))` for cell `(i, j)`, in the
/// (scale, row, column) axis order; the model permutes the axes if its config says so.
pub fn grid_positions(scale_pos: f32, h: usize, w: usize, c: f32) -> Vec<f32> {
    let step = c / ((h * w) as f32).sqrt();
    (0..h * w).flat_map(|cell| [scale_pos, step * ((cell / w) as f32 + 0.5), step * ((cell % w) as f32 + 0.5)]).collect()
}

/// Per-layer key/value cache `[batch, kv_heads, capacity, head_dim]`; attention reads
/// [`KvCache::keys`] / [`KvCache::values`] (views of the filled part) without copies.
pub struct KvCache {
    /// The key and value buffers `[batch, kv_heads, capacity, head_dim]` (`None` while a
    /// graph that appends to them holds them, see [`KvCache::take`]).
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(device: &Device, dtype: DType, batch: usize, kv_heads: usize, head_dim: usize, capacity: usize) -> Result<KvCache> {
        let zeros = vec![0u8; batch * kv_heads * capacity * head_dim * dtype.size()];
        let shape = [batch, kv_heads, capacity, head_dim];
        Ok(KvCache {
            k: Some(Tensor::from_bytes(&zeros, dtype, &shape, device)?),
            v: Some(Tensor::from_bytes(&zeros, dtype, &shape, device)?),
            len: 0,
            capacity,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn buffers(&self) -> Result<(&Tensor, &Tensor)> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) => Ok((k, v)),
            // A graph that took them failed before giving them back: the cache is lost.
            _ => Err(Error::Shape { op: "kv_cache", msg: "the buffers were taken by a graph that failed and did not give them back".into() }),
        }
    }

    /// The cached keys `[batch, kv_heads, len, head_dim]` (a view).
    pub fn keys(&self) -> Result<Tensor> {
        self.buffers()?.0.narrow(2, 0, self.len)
    }
    /// The cached values `[batch, kv_heads, len, head_dim]` (a view).
    pub fn values(&self) -> Result<Tensor> {
        self.buffers()?.1.narrow(2, 0, self.len)
    }

    /// Appends `k`/`v [batch, kv_heads, s, head_dim]`. Views from `keys()`/`values()` must
    /// have been dropped (the buffers are written in place).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let (mut kb, mut vb, len) = self.take()?;
        let s = k.shape().get(2).copied().unwrap_or(0);
        let written = write_into(&mut kb, 2, len, k).and_then(|_| write_into(&mut vb, 2, len, v));
        self.put(kb, vb, if written.is_ok() { len + s } else { len })?;
        written
    }

    /// Moves the buffers out, with the cached length, for a graph that appends to them in
    /// place; [`KvCache::put`] gives them back. Views from `keys()`/`values()` must have
    /// been dropped first.
    pub fn take(&mut self) -> Result<(Tensor, Tensor, usize)> {
        match (self.k.take(), self.v.take()) {
            (Some(k), Some(v)) => Ok((k, v, self.len)),
            _ => Err(Error::Shape { op: "kv_cache", msg: "the buffers are already taken".into() }),
        }
    }

    /// Puts back the buffers of [`KvCache::take`], now holding `len` positions.
    pub fn put(&mut self, k: Tensor, v: Tensor, len: usize) -> Result<()> {
        if len > self.capacity || k.shape() != v.shape() || k.shape().get(2) != Some(&self.capacity) {
            return Err(Error::Shape {
                op: "kv_cache",
                msg: format!("{len} cached positions in buffers {:?} / {:?} (capacity {})", k.shape(), v.shape(), self.capacity),
            });
        }
        (self.k, self.v, self.len) = (Some(k), Some(v), len);
        Ok(())
    }
}

/// Copies `src` into `dst.narrow(dim, start, src.shape()[dim])` in place.
pub fn write_into(dst: &mut Tensor, dim: usize, start: usize, src: &Tensor) -> Result<()> {
    crate::check_same("write_into", dst, src)?;
    crate::rules::store(dst.shape(), src.shape(), dim, start)?;
    let view = dst.layout().narrow(dim, start, src.shape()[dim])?;
    let device = dst.device().clone();
    let dtype = dst.dtype();
    let busy = || Error::Shape { op: "write_into", msg: "the destination buffer is shared by a live view".into() };
    let storage = dst.storage_mut().ok_or_else(busy)?;
    match storage {
        Storage::Cpu(buf) => {
            let bytes = src.to_bytes()?;
            let size = dtype.size();
            let out = buf.bytes_mut();
            let inner = view.shape().last().copied().unwrap_or(1);
            if view.strides().last() == Some(&1) && inner > 0 {
                // Row by row: the innermost dim is contiguous in the destination.
                let row_bytes = inner * size;
                for (r, src_row) in bytes.chunks(row_bytes).enumerate() {
                    let at = view.offset_of(r * inner);
                    out[at * size..at * size + row_bytes].copy_from_slice(src_row);
                }
            } else {
                for (i, at) in view.offsets().enumerate() {
                    out[at * size..(at + 1) * size].copy_from_slice(&bytes[i * size..(i + 1) * size]);
                }
            }
            Ok(())
        }
        Storage::Gpu(g) => {
            let g = g.clone();
            if crate::on_gpu(&device, &[dtype]) {
                gpu::unary_into(src, &g, dtype, &view, nextflow_shaders::elementwise::Unary::Copy)
            } else {
                // No kernels for this dtype here: patch the bytes on the host.
                let mut all = device.download(&Storage::Gpu(g))?;
                let bytes = src.to_bytes()?;
                let size = dtype.size();
                for (i, at) in view.offsets().enumerate() {
                    all[at * size..(at + 1) * size].copy_from_slice(&bytes[i * size..(i + 1) * size]);
                }
                *dst = Tensor::from_bytes(&all, dtype, dst.shape(), &device)?;
                Ok(())
            }
        }
    }
}
