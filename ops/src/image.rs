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
use rayon::prelude::*;

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

fn mode_code(mode: Resize) -> u32 {
    match mode {
        Resize::Nearest => kernels::MODE_NEAREST,
        Resize::Area => kernels::MODE_AREA,
        Resize::Bicubic => kernels::MODE_BICUBIC,
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
    if x.rank() != 4 {
        return Err(Error::Shape { op: "interpolate", msg: format!("expected [n, c, h, w], got {:?}", x.shape()) });
    }
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    if h == 0 || w == 0 || out_h == 0 || out_w == 0 {
        return Err(Error::Shape { op: "interpolate", msg: format!("cannot resize {h}x{w} to {out_h}x{out_w}") });
    }
    let out_layout = if channels_last {
        Layout::contiguous(&[n, out_h, out_w, c]).permute(&[0, 3, 1, 2])?
    } else {
        Layout::contiguous(&[n, c, out_h, out_w])
    };
    let cpu_path = |x: &Tensor| -> Result<Tensor> {
        let planes = cpu::read_f32(&contiguous(x)?).into_owned();
        let mut out = vec![0f32; n * c * out_h * out_w];
        out.par_chunks_mut(out_h * out_w).zip(planes.par_chunks(h * w)).for_each(|(o, p)| resize_plane(p, h, w, out_h, out_w, mode, o));
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
                ArrayArg::from_raw_parts(geo.clone(), geometry.len()), numel as u32, mode_code(mode),
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
    fn out_size(&self, h: usize, w: usize, kh: usize, kw: usize) -> Option<(usize, usize)> {
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
/// `[cin·kh·kw, oh·ow]` matrix and `out = weight [cout, cin·kh·kw] · cols`. Measured
/// against the direct loop in `benches/image.rs`; this is the faster of the two on CPUs.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_im2col(x: &[f32], cin: usize, h: usize, w: usize, weight: &[f32], cout: usize, kh: usize, kw: usize, bias: Option<&[f32]>, p: Conv2d, out: &mut [f32]) {
    let (oh, ow) = p.out_size(h, w, kh, kw).expect("checked by conv2d");
    let (rows, cols_n) = (cin * kh * kw, oh * ow);
    let mut cols = vec![0f32; rows * cols_n];
    cols.par_chunks_mut(cols_n).enumerate().for_each(|(r, col)| {
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
    if let Some(b) = bias {
        out.chunks_mut(cols_n).zip(b).for_each(|(o, &v)| o.fill(v));
    }
    // SAFETY: dense row-major matrices of the sizes given.
    unsafe {
        gemm::gemm(
            cout, cols_n, rows,
            out.as_mut_ptr(), 1, cols_n as isize, bias.is_some(),
            weight.as_ptr(), 1, rows as isize,
            cols.as_ptr(), 1, cols_n as isize,
            1.0, 1.0, false, false, false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// Which CPU convolution `conv2d` uses (benchmarks compare both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvAlgorithm {
    Direct,
    Im2col,
}

/// `x [n, cin, h, w]` (any view) ⋆ `weight [cout, cin, kh, kw]` + `bias [cout]`: dense NCHW.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2d) -> Result<Tensor> {
    conv2d_with(x, weight, bias, p, ConvAlgorithm::Im2col)
}

/// [`conv2d`] with a chosen CPU algorithm (GPUs always run the direct kernel).
pub fn conv2d_with(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2d, algorithm: ConvAlgorithm) -> Result<Tensor> {
    let err = |msg: String| Err(Error::Shape { op: "conv2d", msg });
    crate::check_float("conv2d", x)?;
    crate::check_same("conv2d", x, weight)?;
    if x.rank() != 4 || weight.rank() != 4 || weight.shape()[1] != x.shape()[1] {
        return err(format!("expected x [n, cin, h, w] and weight [cout, cin, kh, kw], got {:?} and {:?}", x.shape(), weight.shape()));
    }
    let (n, cin, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (cout, kh, kw) = (weight.shape()[0], weight.shape()[2], weight.shape()[3]);
    if let Some(b) = bias {
        crate::check_same("conv2d", x, b)?;
        if b.shape() != [cout] {
            return err(format!("bias has shape {:?}, expected [{cout}]", b.shape()));
        }
    }
    if p.stride == 0 {
        return err("stride must be >= 1".into());
    }
    let Some((oh, ow)) = p.out_size(h, w, kh, kw) else {
        return err(format!("a {kh}x{kw} kernel does not fit a padded {h}x{w} input"));
    };
    let cpu_path = |t: &[Tensor]| -> Result<Tensor> {
        let (x, wt) = (&t[0], &t[1]);
        let xs = cpu::read_f32(&contiguous(x)?).into_owned();
        let ws = cpu::read_f32(&contiguous(wt)?).into_owned();
        let bs = t.get(2).map(|b| cpu::read_f32(b).into_owned());
        let mut out = vec![0f32; n * cout * oh * ow];
        match algorithm {
            ConvAlgorithm::Direct => out
                .par_chunks_mut(cout * oh * ow)
                .zip(xs.par_chunks(cin * h * w))
                .for_each(|(o, img)| conv2d_image(img, cin, h, w, &ws, cout, kh, kw, bs.as_deref(), p, o)),
            ConvAlgorithm::Im2col => out
                .chunks_mut(cout * oh * ow)
                .zip(xs.chunks(cin * h * w))
                .for_each(|(o, img)| conv2d_im2col(img, cin, h, w, &ws, cout, kh, kw, bs.as_deref(), p, o)),
        }
        Ok(cpu::from_vec(out, x.dtype(), &[n, cout, oh, ow], x.device()))
    };
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    if x.device().is_cpu() {
        return cpu_path(&inputs.iter().map(|t| (*t).clone()).collect::<Vec<_>>());
    }
    if !crate::on_gpu(x.device(), &[x.dtype()]) {
        return crate::via_cpu(&inputs, cpu_path);
    }
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
    Ok(out)
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

/// GroupNorm over `x [n, c, *spatial]` with `groups` groups, f32 statistics, per-channel
/// `gamma`/`beta` `[c]`, optionally followed by SiLU (the decoder's `Normalize` + act).
pub fn group_norm(x: &Tensor, groups: usize, gamma: &Tensor, beta: &Tensor, eps: f32, silu: bool) -> Result<Tensor> {
    let err = |msg: String| Err(Error::Shape { op: "group_norm", msg });
    crate::check_float("group_norm", x)?;
    crate::check_same("group_norm", x, gamma)?;
    crate::check_same("group_norm", x, beta)?;
    if x.rank() < 2 {
        return err(format!("expected [n, c, ...], got {:?}", x.shape()));
    }
    let (n, c) = (x.shape()[0], x.shape()[1]);
    let spatial: usize = x.shape()[2..].iter().product();
    if groups == 0 || c % groups != 0 {
        return err(format!("{groups} groups do not divide {c} channels"));
    }
    if gamma.shape() != [c] || beta.shape() != [c] {
        return err(format!("gamma {:?} and beta {:?} must be [{c}]", gamma.shape(), beta.shape()));
    }
    let group_len = c / groups * spatial;
    let cpu_path = |t: &[Tensor]| -> Result<Tensor> {
        let xs = cpu::read_f32(&contiguous(&t[0])?).into_owned();
        let (g, b) = (cpu::read_f32(&t[1]).into_owned(), cpu::read_f32(&t[2]).into_owned());
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(group_len.max(1))
            .zip(xs.par_chunks(group_len.max(1)))
            .enumerate()
            .for_each(|(row, (o, v))| group_norm_group(v, (row % groups) * (c / groups), spatial, &g, &b, eps, silu, o));
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
            cl, gpu::grid(rows, 1), CubeDim::new_1d(nextflow_shaders::ROW_CUBE),
            array(buffer(&x), dtype), array(buffer(&gamma), dtype), array(buffer(&beta), dtype), array(buffer(&out), dtype),
            group_len as u32, spatial as u32, (c / groups) as u32, groups as u32, rows as u32, eps,
            nextflow_shaders::ROW_CUBE, silu,
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
    if q.rank() != 4 || q.shape() != k.shape() || q.shape() != v.shape() {
        return Err(Error::Shape { op: "spatial_attention", msg: format!("q, k, v must share one [n, c, h, w] shape, got {:?}, {:?}, {:?}", q.shape(), k.shape(), v.shape()) });
    }
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

