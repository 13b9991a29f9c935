//! Image-side ops: interpolation (PyTorch semantics), conv2d, GroupNorm (+SiLU) and the
//! decoder's single-head spatial self-attention.
//!
//! The arithmetic of each op is written once, generic over the float type: f64 is the
//! reference the tests trust, f32 (threaded) is the CPU backend, and the cubecl kernels in
//! `nextflow-shaders` follow the same formulas.

use crate::gpu::{self, array, buffer, upload_u32, with_client, with_dtype};
use crate::{contiguous, cpu, matmul, AttentionOptions, Epilogue};
use cubecl::prelude::*;
use nextflow_runtime::{cubecl, Error, Layout, Result, Tensor};
use nextflow_shaders::image as kernels;
use num_traits::Float;

/// `F.interpolate` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resize {
    /// Legacy `nearest`: `src = floor(dst · in/out)` (exactly `dst/2` for ×2).
    Nearest,
    /// `area`: adaptive average pooling over `[floor(o·in/out), ceil((o+1)·in/out))`.
    Area,
    /// `bicubic`, align_corners = false, A = -0.75, clamped taps.
    Bicubic,
}

fn cubic<T: Float>(t: T) -> [T; 4] {
    let c = |v: f64| T::from(v).unwrap();
    let a = c(-0.75);
    let w1 = |x: T| ((a + c(2.0)) * x - (a + c(3.0))) * x * x + c(1.0);
    let w2 = |x: T| ((a * x - c(5.0) * a) * x + c(8.0) * a) * x - c(4.0) * a;
    [w2(t + c(1.0)), w1(t), w1(c(1.0) - t), w2(c(2.0) - t)]
}

/// One `h × w` plane resized to `out_h × out_w` (the formula every backend follows).
pub fn resize_plane<T: Float>(plane: &[T], h: usize, w: usize, out_h: usize, out_w: usize, mode: Resize, out: &mut [T]) {
    let f = |v: usize| T::from(v).unwrap();
    // PyTorch computes the scale in the accumulation type: f32 for f32 inputs.
    let scale = |i: usize, o: usize| T::from(i as f32 / o as f32).unwrap();
    for oy in 0..out_h {
        for ox in 0..out_w {
            out[oy * out_w + ox] = match mode {
                Resize::Nearest => {
                    let pick = |o: usize, i: usize, n: usize| {
                        if n == 2 * i {
                            o / 2
                        } else {
                            ((o as f32 * (i as f32 / n as f32)).floor() as usize).min(i - 1)
                        }
                    };
                    plane[pick(oy, h, out_h) * w + pick(ox, w, out_w)]
                }
                Resize::Area => {
                    let (y0, y1) = (oy * h / out_h, ((oy + 1) * h).div_ceil(out_h));
                    let (x0, x1) = (ox * w / out_w, ((ox + 1) * w).div_ceil(out_w));
                    let mut sum = T::zero();
                    for y in y0..y1 {
                        for x in x0..x1 {
                            sum = sum + plane[y * w + x];
                        }
                    }
                    sum / f((y1 - y0) * (x1 - x0))
                }
                Resize::Bicubic => {
                    let real_y = scale(h, out_h) * (f(oy) + T::from(0.5).unwrap()) - T::from(0.5).unwrap();
                    let real_x = scale(w, out_w) * (f(ox) + T::from(0.5).unwrap()) - T::from(0.5).unwrap();
                    let (fy, fx) = (real_y.floor(), real_x.floor());
                    let (wy, wx) = (cubic(real_y - fy), cubic(real_x - fx));
                    let (iy, ix) = (fy.to_i64().unwrap(), fx.to_i64().unwrap());
                    let at = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
                    let mut acc = T::zero();
                    for (r, wr) in wy.iter().enumerate() {
                        let row = at(iy - 1 + r as i64, h) * w;
                        let mut line = T::zero();
                        for (q, wq) in wx.iter().enumerate() {
                            line = line + plane[row + at(ix - 1 + q as i64, w)] * *wq;
                        }
                        acc = acc + line * *wr;
                    }
                    acc
                }
            };
        }
    }
}

/// The kernel's mode: the one place `Resize` maps to `nextflow_shaders`.
fn kernel_mode(mode: Resize) -> kernels::ResizeMode {
    match mode {
        Resize::Nearest => kernels::ResizeMode::Nearest,
        Resize::Area => kernels::ResizeMode::Area,
        Resize::Bicubic => kernels::ResizeMode::Bicubic,
    }
}

/// Resizes `x [n, c, h, w]` (any view) to `[n, c, out_h, out_w]`, dense NCHW.
pub fn interpolate(x: &Tensor, out_h: usize, out_w: usize, mode: Resize) -> Result<Tensor> {
    resize(x, out_h, out_w, mode, false)
}

/// Resizes channels-last `x [n, h, w, c]` to `[n, out_h, out_w, c]`, dense NHWC.
pub fn interpolate_nhwc(x: &Tensor, out_h: usize, out_w: usize, mode: Resize) -> Result<Tensor> {
    if x.rank() != 4 {
        return Err(Error::Shape { op: "interpolate", msg: format!("expected [n, h, w, c], got {:?}", x.shape()) });
    }
    resize(&x.permute(&[0, 3, 1, 2])?, out_h, out_w, mode, true)?.permute(&[0, 2, 3, 1])
}

/// `channels_last`: the result is an NCHW view over a dense NHWC buffer.
fn resize(x: &Tensor, out_h: usize, out_w: usize, mode: Resize, channels_last: bool) -> Result<Tensor> {
    crate::check_float("interpolate", x)?;
    crate::rules::interpolate(x.shape(), out_h, out_w)?;
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let out_layout = if channels_last {
        Layout::contiguous(&[n, out_h, out_w, c]).permute(&[0, 3, 1, 2])?
    } else {
        Layout::contiguous(&[n, c, out_h, out_w])
    };
    let cpu_path = |x: &Tensor| -> Result<Tensor> {
        let planes = cpu::read_f32(x);
        let mut out = nextflow_runtime::CpuBuffer::scratch_f32(n * c * out_h * out_w);
        let plane = out_h * out_w;
        crate::pool::chunks_mut(&mut out, plane, &|start, o| {
            let i = start / plane;
            resize_plane(&planes[i * h * w..][..h * w], h, w, out_h, out_w, mode, o)
        });
        let dense = cpu::from_vec(out, x.dtype(), &[n, c, out_h, out_w], x.device());
        if channels_last {
            // Same logical values, stored channels-last.
            let nhwc = contiguous(&dense.permute(&[0, 2, 3, 1])?)?;
            return nhwc.permute(&[0, 3, 1, 2]);
        }
        Ok(dense)
    };
    if x.device().is_cpu() {
        return cpu_path(x);
    }
    if !crate::on_gpu(x.device(), &[x.dtype()]) {
        return crate::via_cpu(&[x], |h| cpu_path(&h[0]));
    }
    let storage = x.device().alloc(n * c * out_h * out_w * x.dtype().size())?;
    let out = Tensor::from_storage(storage, out_layout, x.dtype(), x.device().clone());
    let (xs, os) = (x.strides(), out.strides());
    let geometry: Vec<u32> = [c, h, w, out_h, out_w, x.layout().offset(), xs[0], xs[1], xs[2], xs[3], os[0], os[1], os[2], os[3]]
        .iter()
        .map(|&v| v as u32)
        .collect();
    let numel = out.numel();
    let dtype = x.dtype();
    with_client!(x.device(), cl => {
        let geo = upload_u32(cl, &geometry);
        with_dtype!(dtype, E => unsafe {
            kernels::interpolate::launch_unchecked::<E, _>(
                cl, gpu::grid(numel, 256), CubeDim::new_1d(256),
                array(buffer(x), dtype), array(buffer(&out), dtype),
                ArrayArg::from_raw_parts(geo.clone(), geometry.len()), numel as u32, kernel_mode(mode),
            )
        })
    });
    Ok(out)
}

/// Convolution geometry: stride and zero padding `[top, bottom, left, right]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub stride: usize,
    pub pad: [usize; 4],
}

impl Conv2d {
    /// 3×3 (or any odd k×k) keeping the size: padding k/2 on every side.
    pub fn same(k: usize) -> Conv2d {
        Conv2d { stride: 1, pad: [k / 2; 4] }
    }
    /// The VQGAN encoder's downsample: pad right and bottom by one, 3×3 stride 2.
    pub fn downsample() -> Conv2d {
        Conv2d { stride: 2, pad: [0, 1, 0, 1] }
    }
    pub(crate) fn out_size(&self, h: usize, w: usize, kh: usize, kw: usize) -> Option<(usize, usize)> {
        let hh = (h + self.pad[0] + self.pad[1]).checked_sub(kh)? / self.stride + 1;
        let ww = (w + self.pad[2] + self.pad[3]).checked_sub(kw)? / self.stride + 1;
        Some((hh, ww))
    }
}

/// One image's convolution in the float type T: `out [cout, oh·ow]` (the shared formula).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_image<T: Float>(x: &[T], cin: usize, h: usize, w: usize, weight: &[T], cout: usize, kh: usize, kw: usize, bias: Option<&[T]>, p: Conv2d, out: &mut [T]) {
    let (oh, ow) = p.out_size(h, w, kh, kw).expect("checked by conv2d");
    for o in 0..cout {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = bias.map_or(T::zero(), |b| b[o]);
                for c in 0..cin {
                    for i in 0..kh {
                        let yy = oy * p.stride + i;
                        if yy < p.pad[0] || yy - p.pad[0] >= h {
                            continue;
                        }
                        for j in 0..kw {
                            let xx = ox * p.stride + j;
                            if xx < p.pad[2] || xx - p.pad[2] >= w {
                                continue;
                            }
                            acc = acc + weight[((o * cin + c) * kh + i) * kw + j] * x[(c * h + yy - p.pad[0]) * w + xx - p.pad[2]];
                        }
                    }
                }
                out[(o * oh + oy) * ow + ox] = acc;
            }
        }
    }
}

/// CPU convolution as im2col + GEMM (the `gemm` crate): per image, the patches become a
/// `[cin·kh·kw, oh·ow]` matrix and `out (+)= weight [cout, cin·kh·kw] · cols` (one threaded
/// GEMM). [`conv2d_tiled`] replaced it as the default; `benches/image.rs` compares them.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_im2col(x: &[f32], cin: usize, h: usize, w: usize, weight: &[f32], cout: usize, kh: usize, kw: usize, accumulate: bool, p: Conv2d, out: &mut [f32]) {
    let (oh, ow) = p.out_size(h, w, kh, kw).expect("checked by conv2d");
    let (rows, cols_n) = (cin * kh * kw, oh * ow);
    let mut cols = vec![0f32; rows * cols_n];
    crate::pool::chunks_mut(&mut cols, cols_n, &|start, col| {
        let r = start / cols_n.max(1);
        let (c, i, j) = (r / (kh * kw), (r / kw) % kh, r % kw);
        for oy in 0..oh {
            let yy = oy * p.stride + i;
            if yy < p.pad[0] || yy - p.pad[0] >= h {
                continue;
            }
            let src = &x[(c * h + yy - p.pad[0]) * w..][..w];
            for ox in 0..ow {
                let xx = ox * p.stride + j;
                if xx >= p.pad[2] && xx - p.pad[2] < w {
                    col[oy * ow + ox] = src[xx - p.pad[2]];
                }
            }
        }
    });
    // SAFETY: dense row-major matrices of the sizes given.
    unsafe {
        gemm::gemm(
            cout, cols_n, rows,
            out.as_mut_ptr(), 1, cols_n as isize, accumulate,
            weight.as_ptr(), 1, rows as isize,
            cols.as_ptr(), 1, cols_n as isize,
            1.0, 1.0, false, false, false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// Columns per tile: the tile's patch matrix (`k · tile` values) stays about 256 KB, within
/// a core's L2, and the tile is a multiple of the GEMM's 16-lane vectors.
fn tile_columns(k: usize, pixels: usize) -> usize {
    ((65_536 / k.max(1)).clamp(64, 2048) / 16 * 16).min(pixels.div_ceil(16) * 16)
}

/// CPU convolution of one image, tiled: output pixels are cut into tiles that threads take
/// in turn; each builds its tile's patch matrix `[cin·kh·kw, tile]` in a reused buffer (no
/// patch matrix for 1×1 stride-1 convolutions: the input rows are it) and runs one
/// single-threaded GEMM into the tile's columns of `out [cout, oh·ow]`. `out` already holds
/// what the product is added to (bias, residual) when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_tiled(x: &[f32], cin: usize, h: usize, w: usize, weight: &[f32], cout: usize, kh: usize, kw: usize, p: Conv2d, out: &mut [f32], accumulate: bool) {
    let (oh, ow) = p.out_size(h, w, kh, kw).expect("checked by conv2d");
    let (k, pixels) = (cin * kh * kw, oh * ow);
    if k == 0 || pixels == 0 || cout == 0 {
        return;
    }
    let direct = kh == 1 && kw == 1 && p.stride == 1 && p.pad == [0; 4];
    let tile = tile_columns(k, pixels);
    let tiles = pixels.div_ceil(tile);
    // Small maps with many channels (the decoder's 8×8 levels) have fewer tiles than
    // threads: split the output channels too (each part rebuilds the small patch matrix).
    let threads = crate::pool::threads_in_pool();
    // One part per thread measured best (two per thread: +7 % decoder time, four: +30 %).
    let co_parts = if tiles >= threads || cout * k * pixels < (1 << 20) { 1 } else { threads.div_ceil(tiles).min(cout.div_ceil(8)) };
    let co_width = cout.div_ceil(co_parts);
    let co_parts = cout.div_ceil(co_width);
    let dst = crate::pool::SendPtr(out.as_mut_ptr());
    let run = |cols: &mut Vec<f32>, task: usize| {
        let (t, part) = (task / co_parts, task % co_parts);
        let (c0, c1) = (part * co_width, ((part + 1) * co_width).min(cout));
        let (p0, p1) = (t * tile, ((t + 1) * tile).min(pixels));
        let n = p1 - p0;
        let (rhs, rhs_rs) = if direct {
            (x[p0..].as_ptr(), pixels)
        } else {
            // Every entry of the first k·n is written by im2col_tile (zeros included), so a
            // reused buffer needs no clearing; it only grows.
            if cols.len() < k * n {
                cols.resize(k * n, 0.0);
            }
            im2col_tile(x, h, w, kh, kw, p, ow, p0, p1, &mut cols[..k * n]);
            (cols.as_ptr(), n)
        };
        // SAFETY: weight is a dense [cout, k] matrix, rhs a [k, n] view inside x or cols, and
        // rows c0..c1 × columns p0..p1 of the [cout, pixels] output belong to this task alone.
        unsafe {
            gemm::gemm(
                c1 - c0, n, k,
                dst.get().add(c0 * pixels + p0), 1, pixels as isize, accumulate,
                weight.as_ptr().add(c0 * k), 1, k as isize,
                rhs, 1, rhs_rs as isize,
                1.0, 1.0, false, false, false,
                gemm::Parallelism::None,
            );
        }
    };
    crate::pool::for_each(tiles * co_parts, &|task| COLS.with(|c| run(&mut c.borrow_mut(), task)));
}

thread_local! {
    /// Each thread's patch-matrix buffer, reused across tiles and calls.
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The patch matrix of output pixels `p0..p1`: row `(c, i, j)` holds, per pixel, the input
/// value under kernel tap `(i, j)` of channel `c` (0 in the padding).
#[allow(clippy::too_many_arguments)]
fn im2col_tile(x: &[f32], h: usize, w: usize, kh: usize, kw: usize, p: Conv2d, ow: usize, p0: usize, p1: usize, cols: &mut [f32]) {
    let n = p1 - p0;
    for (r, col) in cols.chunks_mut(n).enumerate() {
        let (c, i, j) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &x[c * h * w..][..h * w];
        let mut q = p0;
        while q < p1 {
            let (oy, ox0) = (q / ow, q % ow);
            let run = (ow - ox0).min(p1 - q);
            let seg = &mut col[q - p0..q - p0 + run];
            let yy = (oy * p.stride + i).wrapping_sub(p.pad[0]);
            if yy >= h {
                seg.fill(0.0);
            } else if p.stride == 1 {
                // Input columns ox0 + t + j − pad: a copy with zeros where it leaves the row.
                let src = &plane[yy * w..][..w];
                let first = ox0 + j;
                let lo = p.pad[2].saturating_sub(first).min(run);
                let hi = (w + p.pad[2]).saturating_sub(first).clamp(lo, run);
                seg[..lo].fill(0.0);
                seg[lo..hi].copy_from_slice(&src[first + lo - p.pad[2]..first + hi - p.pad[2]]);
                seg[hi..].fill(0.0);
            } else {
                let src = &plane[yy * w..][..w];
                for (t, o) in seg.iter_mut().enumerate() {
                    let xx = ((ox0 + t) * p.stride + j).wrapping_sub(p.pad[2]);
                    *o = if xx < w { src[xx] } else { 0.0 };
                }
            }
            q += run;
        }
    }
}

/// Nearest ×2 upsampling followed by a 3×3 "same" convolution, as four 2×2 convolutions of
/// the small input, one per output phase `(py, px)`: output row `2i + py` sees input rows
/// `i − 1, i` (py = 0, taps `w0` and `w1 + w2`) or `i, i + 1` (py = 1, `w0 + w1` and `w2`),
/// and likewise for columns — exactly the upsampled image's taps, with 16 instead of 36
/// multiply-adds per input pixel and no upsampled copy. `out [cout, 2h, 2w]` holds what is
/// added (bias, residual).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_upsample2x(x: &[f32], cin: usize, h: usize, w: usize, weight: &[f32], cout: usize, out: &mut [f32]) {
    let (ow, plane) = (2 * w, 4 * h * w);
    // Folded 2×2 kernels of the four phases, phase-major: [4][cout][cin][2][2]. Along one
    // axis, phase 0 folds the 3 taps to (t0, t1 + t2) and phase 1 to (t0 + t1, t2).
    let pairs = cout * cin;
    let mut phase_w = vec![0f32; 4 * pairs * 4];
    for (pair, k3) in weight.chunks_exact(9).enumerate().take(pairs) {
        let fold = |t: [f32; 3], ph: usize| if ph == 0 { [t[0], t[1] + t[2]] } else { [t[0] + t[1], t[2]] };
        let rows = [[k3[0], k3[1], k3[2]], [k3[3], k3[4], k3[5]], [k3[6], k3[7], k3[8]]];
        for py in 0..2 {
            // Rows folded for this phase: two rows of three taps.
            let cols3: [[f32; 3]; 2] = {
                let c = |j: usize| fold([rows[0][j], rows[1][j], rows[2][j]], py);
                let (c0, c1, c2) = (c(0), c(1), c(2));
                [[c0[0], c1[0], c2[0]], [c0[1], c1[1], c2[1]]]
            };
            for px in 0..2 {
                let at = ((py * 2 + px) * pairs + pair) * 4;
                for (a, row) in cols3.iter().enumerate() {
                    let f = fold(*row, px);
                    phase_w[at + a * 2] = f[0];
                    phase_w[at + a * 2 + 1] = f[1];
                }
            }
        }
    }
    // The four phase images, then one parallel pass that interleaves them into the output
    // planes (each output row written once).
    let hw = h * w;
    let mut phases = vec![0f32; 4 * cout * hw];
    for (ph, tmp) in phases.chunks_mut(cout * hw).enumerate() {
        let (py, px) = (ph / 2, ph % 2);
        let geometry = Conv2d { stride: 1, pad: [1 - py, py, 1 - px, px] };
        conv2d_tiled(x, cin, h, w, &phase_w[ph * pairs * 4..][..pairs * 4], cout, 2, 2, geometry, tmp, false);
    }
    let phases = &phases;
    crate::pool::chunks_mut(out, plane, &|start, o| {
        let c = start / plane;
        for i in 0..h {
            for py in 0..2 {
                let row = &mut o[(2 * i + py) * ow..][..ow];
                let (even, odd) = (&phases[((2 * py) * cout + c) * hw + i * w..][..w], &phases[((2 * py + 1) * cout + c) * hw + i * w..][..w]);
                for (j, pair) in row.chunks_exact_mut(2).enumerate() {
                    pair[0] += even[j];
                    pair[1] += odd[j];
                }
            }
        }
    });
}

/// Which CPU convolution `conv2d` uses (benchmarks compare them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// The plain loop (the formula), threaded over images.
    Direct,
    /// One whole-image patch matrix and one threaded GEMM.
    Im2col,
    /// Tiles of output pixels, each its own patch matrix and GEMM (the default).
    Tiled,
}

/// What a convolution computes besides `x ⋆ w + b`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvFusion<'a> {
    /// Nearest ×2 upsampling of `x` first (the decoder's Upsample). A 3×3 "same"
    /// convolution then runs on the CPU as four 2×2 sub-pixel convolutions
    /// ([`conv2d_upsample2x`]); elsewhere as interpolate + conv.
    pub upsample2x: bool,
    /// Added to the result (`[n, cout, oh, ow]`): the residual of a block.
    pub residual: Option<&'a Tensor>,
}

/// `x [n, cin, h, w]` (any view) ⋆ `weight [cout, cin, kh, kw]` + `bias [cout]`: dense NCHW.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2d) -> Result<Tensor> {
    conv2d_with(x, weight, bias, p, ConvFusion::default(), ConvAlgorithm::Tiled)
}

/// [`conv2d`] of the nearest ×2 upsampled `x` and/or plus a residual, fused where the
/// backend has a fused form.
pub fn conv2d_fused(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2d, fusion: ConvFusion) -> Result<Tensor> {
    conv2d_with(x, weight, bias, p, fusion, ConvAlgorithm::Tiled)
}

/// [`conv2d_fused`] with a chosen CPU algorithm (GPUs always run the direct kernel).
pub fn conv2d_with(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2d, fusion: ConvFusion, algorithm: ConvAlgorithm) -> Result<Tensor> {
    crate::check_float("conv2d", x)?;
    crate::check_same("conv2d", x, weight)?;
    for t in bias.iter().chain(fusion.residual.as_ref()) {
        crate::check_same("conv2d", x, t)?;
    }
    let [n, cout, oh, ow] = crate::rules::conv2d(x.shape(), weight.shape(), bias.map(|b| b.shape()), fusion.residual.map(|r| r.shape()), p, fusion.upsample2x)?;
    let up = if fusion.upsample2x { 2 } else { 1 };
    let (cin, h, w) = (x.shape()[1], up * x.shape()[2], up * x.shape()[3]);
    let (kh, kw) = (weight.shape()[2], weight.shape()[3]);
    let subpixel = fusion.upsample2x && (kh, kw) == (3, 3) && p == Conv2d::same(3) && algorithm == ConvAlgorithm::Tiled;
    let cpu_path = |t: &[Tensor]| -> Result<Tensor> {
        let (x, wt) = (&t[0], &t[1]);
        let x = if fusion.upsample2x && !subpixel { interpolate(x, h, w, Resize::Nearest)? } else { x.clone() };
        let (sh, sw) = (x.shape()[2], x.shape()[3]);
        // Logical (dense) values: borrowed from the buffers when they already are dense f32.
        let xs = cpu::read_f32(&x);
        let ws = cpu::read_f32(wt);
        let bs = bias.is_some().then(|| cpu::read_f32(&t[2]));
        let plane = oh * ow;
        // What the product is added to: bias, then the residual.
        let mut out = match (fusion.residual, &bs) {
            (Some(_), _) => cpu::read_f32(t.last().expect("residual")).into_owned(),
            // The bias written straight in (no zero fill first).
            (None, Some(b)) => {
                let mut v = Vec::with_capacity(n * cout * plane);
                (0..n * cout).for_each(|r| v.resize(v.len() + plane, b[r % cout]));
                v
            }
            (None, None) => nextflow_runtime::CpuBuffer::zeros_f32(n * cout * plane),
        };
        if let (Some(_), Some(b)) = (fusion.residual, &bs) {
            out.chunks_mut(plane.max(1)).enumerate().for_each(|(r, o)| {
                let v = b[r % cout];
                o.iter_mut().for_each(|e| *e += v);
            });
        }
        let accumulate = bs.is_some() || fusion.residual.is_some();
        let images = out.chunks_mut(cout * plane).zip(xs.chunks(cin * sh * sw));
        match algorithm {
            ConvAlgorithm::Direct => {
                let mut conv = vec![0f32; out.len()];
                let image = cin * sh * sw;
                crate::pool::chunks_mut(&mut conv, cout * plane, &|start, o| {
                    let img = &xs[start / (cout * plane).max(1) * image..][..image];
                    conv2d_image(img, cin, sh, sw, &ws, cout, kh, kw, None, p, o)
                });
                out.iter_mut().zip(&conv).for_each(|(o, c)| *o += c);
            }
            ConvAlgorithm::Im2col => images.for_each(|(o, img)| conv2d_im2col(img, cin, sh, sw, &ws, cout, kh, kw, accumulate, p, o)),
            ConvAlgorithm::Tiled if subpixel => images.for_each(|(o, img)| conv2d_upsample2x(img, cin, sh, sw, &ws, cout, o)),
            ConvAlgorithm::Tiled => images.for_each(|(o, img)| conv2d_tiled(img, cin, sh, sw, &ws, cout, kh, kw, p, o, accumulate)),
        }
        Ok(cpu::from_vec(out, x.dtype(), &[n, cout, oh, ow], x.device()))
    };
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    inputs.extend(fusion.residual);
    if x.device().is_cpu() {
        return cpu_path(&inputs.iter().map(|t| (*t).clone()).collect::<Vec<_>>());
    }
    if !crate::on_gpu(x.device(), &[x.dtype()]) {
        return crate::via_cpu(&inputs, cpu_path);
    }
    // GPUs: upsample, convolve, add, each its own kernel.
    let x = if fusion.upsample2x { interpolate(x, h, w, Resize::Nearest)? } else { x.clone() };
    let x = &x;
    let weight = contiguous(weight)?;
    let out = gpu::empty(x.device(), x.dtype(), &[n, cout, oh, ow])?;
    let xs = x.strides();
    let geometry: Vec<u32> = [cin, h, w, cout, kh, kw, p.stride, p.pad[0], p.pad[2], oh, ow, x.layout().offset(), xs[0], xs[1], xs[2], xs[3]]
        .iter()
        .map(|&v| v as u32)
        .collect();
    let numel = out.numel();
    let dtype = x.dtype();
    let bias_buf = bias.map(buffer).unwrap_or(buffer(&out));
    with_client!(x.device(), cl => {
        let geo = upload_u32(cl, &geometry);
        with_dtype!(dtype, E => unsafe {
            kernels::conv2d::launch_unchecked::<E, _>(
                cl, gpu::grid(numel, 256), CubeDim::new_1d(256),
                array(buffer(x), dtype), array(buffer(&weight), dtype), array(bias_buf, dtype), array(buffer(&out), dtype),
                ArrayArg::from_raw_parts(geo.clone(), geometry.len()), numel as u32, bias.is_some(),
            )
        })
    });
    match fusion.residual {
        Some(r) => crate::binary(&out, r, crate::BinaryOp::Add),
        None => Ok(out),
    }
}

/// GroupNorm of one group's values (contiguous in NCHW) in the float type T.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_group<T: Float>(x: &[T], first_channel: usize, spatial: usize, gamma: &[T], beta: &[T], eps: T, silu: bool, out: &mut [T]) {
    let n = T::from(x.len()).unwrap();
    let mean = x.iter().fold(T::zero(), |a, &v| a + v) / n;
    let var = x.iter().fold(T::zero(), |a, &v| a + (v - mean) * (v - mean)) / n;
    let inv = T::one() / (var + eps).sqrt();
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let c = first_channel + i / spatial;
        let y = (v - mean) * inv * gamma[c] + beta[c];
        *o = if silu { y / (T::one() + (-y).exp()) } else { y };
    }
}

/// [`group_norm_group`] for the f32 CPU backend: the same two-pass statistics and formula
/// in 16-lane sums and a vectorized exp.
#[allow(clippy::too_many_arguments)]
fn group_norm_group_f32(x: &[f32], first_channel: usize, spatial: usize, gamma: &[f32], beta: &[f32], eps: f32, silu: bool, out: &mut [f32]) {
    let n = x.len() as f32;
    let mean = crate::simd::sum(x) / n;
    let inv = 1.0 / (crate::simd::sum_sq_dev(x, mean) / n + eps).sqrt();
    for (i, (o, v)) in out.chunks_mut(spatial.max(1)).zip(x.chunks(spatial.max(1))).enumerate() {
        let ch = first_channel + i;
        let scale = inv * gamma[ch];
        crate::simd::scale_shift_silu(v, scale, beta[ch] - mean * scale, silu, o);
    }
}

/// GroupNorm over `x [n, c, *spatial]` with `groups` groups, f32 statistics, per-channel
/// `gamma`/`beta` `[c]`, optionally followed by SiLU (the decoder's `Normalize` + act).
pub fn group_norm(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor, eps: f32, silu: bool) -> Result<Tensor> {
    group_norm_with(x, groups, gamma, beta, eps, silu, crate::NormKernel::default())
}

/// [`group_norm`] with the GPU kernel's threads per group chosen.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_with(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor, eps: f32, silu: bool, kernel: crate::NormKernel) -> Result<Tensor> {
    crate::check_float("group_norm", x)?;
    crate::check_same("group_norm", x, gamma)?;
    crate::check_same("group_norm", x, beta)?;
    crate::rules::group_norm(x.shape(), groups, gamma.shape(), beta.shape())?;
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let spatial: usize = x.shape()[2..].iter().product();
    let group_len = c / groups * spatial;
    let cpu_path = |t: &[Tensor]| -> Result<Tensor> {
        let xs = cpu::read_f32(&t[0]);
        let (g, b) = (cpu::read_f32(&t[1]), cpu::read_f32(&t[2]));
        let mut out = nextflow_runtime::CpuBuffer::scratch_f32(xs.len());
        let per_group = c / groups;
        let len = group_len.max(1);
        crate::pool::chunks_mut(&mut out, len, &|start, o| {
            let row = start / len;
            group_norm_group_f32(&xs[start..start + o.len()], (row % groups) * per_group, spatial, &g, &b, eps, silu, o);
        });
        Ok(cpu::from_vec(out, t[0].dtype(), t[0].shape(), t[0].device()))
    };
    if x.device().is_cpu() {
        return cpu_path(&[x.clone(), gamma.clone(), beta.clone()]);
    }
    if !crate::on_gpu(x.device(), &[x.dtype()]) {
        return crate::via_cpu(&[x, gamma, beta], cpu_path);
    }
    let x = contiguous(x)?;
    let (gamma, beta) = (contiguous(gamma)?, contiguous(beta)?);
    let out = gpu::empty(x.device(), x.dtype(), x.shape())?;
    let rows = n * groups;
    let dtype = x.dtype();
    with_client!(x.device(), cl => with_dtype!(dtype, E => unsafe {
        kernels::group_norm::launch_unchecked::<E, _>(
            cl, gpu::grid(rows, 1), CubeDim::new_1d(kernel.block),
            array(buffer(&x), dtype), array(buffer(&gamma), dtype), array(buffer(&beta), dtype), array(buffer(&out), dtype),
            group_len as u32, spatial as u32, (c / groups) as u32, groups as u32, rows as u32, eps,
            kernel.block, silu,
        )
    }));
    Ok(out)
}

/// Single-head self-attention over the positions of `q`, `k`, `v [n, c, h, w]` (the
/// decoder's AttnBlock core): `out[:, :, p] = Σ_s softmax_s(q_p·k_s / √c) v_s`, NCHW.
/// Flash attention serves c <= 256; wider maps use matmul, softmax, matmul.
pub fn spatial_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    crate::check_same("spatial_attention", q, k)?;
    crate::check_same("spatial_attention", q, v)?;
    crate::rules::spatial_attention(q.shape(), k.shape(), v.shape())?;
    let (n, c, h, w) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    // [n, c, h, w] -> [n, 1, h·w, c], positions as rows.
    let rows = |t: &Tensor| -> Result<Tensor> { contiguous(&contiguous(t)?.reshape(&[n, c, h * w])?.transpose(1, 2)?)?.unsqueeze(1) };
    let (qr, kr, vr) = (rows(q)?, rows(k)?, rows(v)?);
    let out = if (16..=256).contains(&c) && c % 2 == 0 {
        crate::attention(&qr, &kr, &vr, &AttentionOptions::default())?
    } else {
        let scores = matmul(&qr, &kr.transpose(2, 3)?, Epilogue::default())?;
        let scale = nextflow_runtime::Tensor::from_f64(&[1.0 / (c as f64).sqrt()], q.dtype(), &[1], q.device())?;
        let probs = crate::softmax(&crate::binary(&scores, &scale, crate::BinaryOp::Mul)?)?;
        matmul(&probs, &vr, Epilogue::default())?
    };
    // [n, 1, h·w, c] -> [n, c, h, w]
    contiguous(&out.reshape_view(&[n, h * w, c])?.transpose(1, 2)?)?.reshape(&[n, c, h, w])
}

trait ReshapeView {
    fn reshape_view(&self, shape: &[usize]) -> Result<Tensor>;
}

impl ReshapeView for Tensor {
    /// Reshape that copies only when the view is not contiguous.
    fn reshape_view(&self, shape: &[usize]) -> Result<Tensor> {
        match self.reshape(shape) {
            Ok(t) => Ok(t),
            Err(_) => contiguous(self)?.reshape(shape),
        }
    }
}

