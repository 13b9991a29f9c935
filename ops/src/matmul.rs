//! Matrix multiplication with a fused epilogue (bias, activation, residual add).
//!
//! `matmul(a [.., m, k], b [.., k, n])`: transposes are views (`w.transpose(0, 1)` for an
//! HF `[out, in]` weight), `b` may be 2-D and shared by every batch. f32 accumulation for
//! every dtype. GPU kernel choice: GEMV for few rows, else a tiled kernel from
//! [`MATMUL_TILES`] (the candidates the autotuner will time; [`DEFAULT_TILE`] until then).

use crate::gpu::{self, array, buffer, upload_u32, with_client, with_dtype};
use crate::{contiguous, cpu};
use cubecl::prelude::*;
use nextflow_runtime::{cubecl, DType, Error, Result, Tensor};
use nextflow_shaders::matmul as kernels;

/// Activation applied after the bias, before the residual add.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Activation {
    #[default]
    None,
    Silu,
    GeluErf,
}

/// What a matmul adds to `a·b` before storing it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// `[n]`, added to every row.
    pub bias: Option<&'a Tensor>,
    pub activation: Activation,
    /// Shaped like the output, added last.
    pub residual: Option<&'a Tensor>,
}

/// One register-blocked tile shape: a cube computes `bm × bn`, each unit `tm × tn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileConfig {
    pub bm: usize,
    pub bn: usize,
    pub bk: usize,
    pub tm: usize,
    pub tn: usize,
}

impl TileConfig {
    pub fn units(&self) -> u32 {
        ((self.bm / self.tm) * (self.bn / self.tn)) as u32
    }
    pub fn name(&self) -> String {
        format!("tiled {}x{}x{} / {}x{}", self.bm, self.bn, self.bk, self.tm, self.tn)
    }
}

/// The tiled-kernel candidates, all 256 units per cube.
pub const MATMUL_TILES: &[TileConfig] = &[
    TileConfig { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
    TileConfig { bm: 32, bn: 32, bk: 16, tm: 2, tn: 2 },
    TileConfig { bm: 128, bn: 64, bk: 8, tm: 8, tn: 4 },
];
pub const DEFAULT_TILE: TileConfig = MATMUL_TILES[0];

/// Rows at or below which the GPU uses a GEMV kernel.
pub const GEMV_MAX_ROWS: usize = 4;

/// A GPU kernel choice (the CPU backend always uses the `gemm` crate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    Auto,
    Tiled(TileConfig),
    Gemv,
    /// Tensor cores, f16 only, where [`cmma_available`] says so. Not chosen by `Auto` until
    /// it has been validated on hardware by `scripts/device-check.sh` (no GPU here yet).
    Cmma,
}

/// Whether the device reports an f16×f16→f32 16×16×16 matrix-multiply-accumulate unit.
pub fn cmma_available(device: &nextflow_runtime::Device) -> bool {
    use cubecl::features::MmaConfig;
    use cubecl::ir::{ElemType, FloatKind};
    let config = MmaConfig {
        a_type: ElemType::Float(FloatKind::F16).into(),
        b_type: ElemType::Float(FloatKind::F16).into(),
        cd_type: ElemType::Float(FloatKind::F32).into(),
        m: 16,
        n: 16,
        k: 16,
    };
    match device.client() {
        nextflow_runtime::Client::Cpu => false,
        nextflow_runtime::Client::Wgpu(c) => c.features().matmul.cmma.contains(&config),
        nextflow_runtime::Client::Cuda(c) => c.features().matmul.cmma.contains(&config),
        nextflow_runtime::Client::Hip(c) => c.features().matmul.cmma.contains(&config),
        nextflow_runtime::Client::Record(c) => c.features().matmul.cmma.contains(&config),
    }
}

/// A view as `(offset, batch stride, row stride, col stride)` over `batch` matrices.
#[derive(Clone, Copy, Debug)]
struct MatView {
    offset: usize,
    sb: usize,
    sr: usize,
    sc: usize,
}

/// Collapses the batch dims of a rank >= 2 view into one stride, if they allow it.
fn mat_view(t: &Tensor) -> Option<MatView> {
    let (shape, strides) = (t.shape(), t.strides());
    let r = shape.len();
    let mut sb = 0;
    let mut expected: Option<usize> = None;
    for d in (0..r - 2).rev() {
        if shape[d] == 1 {
            continue;
        }
        match expected {
            None => sb = strides[d],
            Some(e) if e != strides[d] => return None,
            Some(_) => {}
        }
        expected = Some(strides[d] * shape[d]);
    }
    Some(MatView { offset: t.layout().offset(), sb, sr: strides[r - 2], sc: strides[r - 1] })
}

/// A view usable by the kernels: batch dims collapsible, else a dense copy.
fn as_mat(t: &Tensor) -> Result<(Tensor, MatView)> {
    if let Some(v) = mat_view(t) {
        return Ok((t.clone(), v));
    }
    let dense = contiguous(t)?;
    let v = mat_view(&dense).expect("dense tensors collapse");
    Ok((dense, v))
}

/// `a·b` with the epilogue, choosing the kernel automatically.
pub fn matmul(a: &Tensor, b: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
    matmul_with(a, b, epilogue, MatmulKernel::Auto)
}

/// `x·wᵀ + bias` for an HF-layout weight `[out, in]` and any `x [.., in]`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if weight.rank() != 2 {
        return Err(Error::Shape { op: "linear", msg: format!("weight must be [out, in], got {:?}", weight.shape()) });
    }
    matmul(x, &weight.transpose(0, 1)?, Epilogue { bias, ..Default::default() })
}

fn check(a: &Tensor, b: &Tensor, epilogue: &Epilogue) -> Result<Vec<usize>> {
    crate::check_float("matmul", a)?;
    crate::check_same("matmul", a, b)?;
    let out = crate::rules::matmul(a.shape(), b.shape())?;
    for (what, t) in [("matmul bias", epilogue.bias), ("matmul residual", epilogue.residual)] {
        if let Some(t) = t {
            crate::check_same(what, a, t)?;
        }
    }
    crate::rules::matmul_epilogue(&out, epilogue.bias.map(|b| b.shape()), epilogue.residual.map(|r| r.shape()))?;
    Ok(out)
}

/// `a·b` with the epilogue on a chosen GPU kernel (tests and the autotuner use this).
pub fn matmul_with(a: &Tensor, b: &Tensor, epilogue: Epilogue, kernel: MatmulKernel) -> Result<Tensor> {
    let out_shape = check(a, b, &epilogue)?;
    let device = a.device().clone();
    if device.is_cpu() {
        return cpu_matmul(a, b, &epilogue, &out_shape);
    }
    if !crate::on_gpu(&device, &[a.dtype()]) {
        let mut inputs = vec![a, b];
        inputs.extend(epilogue.bias);
        inputs.extend(epilogue.residual);
        let has_bias = epilogue.bias.is_some();
        return crate::via_cpu(&inputs, |h| {
            let bias = has_bias.then(|| &h[2]);
            let residual = epilogue.residual.map(|_| &h[h.len() - 1]);
            cpu_matmul(&h[0], &h[1], &Epilogue { bias, activation: epilogue.activation, residual }, &out_shape)
        });
    }
    gpu_matmul(a, b, &epilogue, &out_shape, kernel, None)
}

/// The kernels' activation: the one place `Activation` maps to `nextflow_shaders`.
fn kernel_act(a: Activation) -> kernels::Activation {
    match a {
        Activation::None => kernels::Activation::None,
        Activation::Silu => kernels::Activation::Silu,
        Activation::GeluErf => kernels::Activation::GeluErf,
    }
}

/// `a·b` with the epilogue written into `out`, a view whose columns are dense (e.g. a column
/// block of a wider tensor: `wide.narrow(-1, start, n)`). Kernels only: on the CPU, or for a
/// dtype the device has no kernels for, it is refused (`ops::Weight` joins blocks there).
pub fn matmul_into(a: &Tensor, b: &Tensor, epilogue: Epilogue, out: &Tensor) -> Result<()> {
    matmul_into_with(a, b, epilogue, out, MatmulKernel::Auto)
}

/// [`matmul_into`] on a chosen kernel (the compiler's autotuned choice).
pub fn matmul_into_with(a: &Tensor, b: &Tensor, epilogue: Epilogue, out: &Tensor, kernel: MatmulKernel) -> Result<()> {
    let out_shape = check(a, b, &epilogue)?;
    let err = |msg: String| Err(Error::Shape { op: "matmul_into", msg });
    if out.shape() != out_shape.as_slice() || out.dtype() != a.dtype() || !out.device().same(a.device()) {
        return err(format!("output is {:?} {} on {}, expected {out_shape:?} {} on {}", out.shape(), out.dtype(), out.device().info().spec(), a.dtype(), a.device().info().spec()));
    }
    let device = a.device().clone();
    if device.is_cpu() || !crate::on_gpu(&device, &[a.dtype()]) {
        return Err(Error::Unsupported { op: "matmul_into", dtype: a.dtype(), device: device.info().spec() });
    }
    match mat_view(out) {
        Some(v) if v.sc == 1 || out_shape[out_shape.len() - 1] == 1 => {
            gpu_matmul(a, b, &epilogue, &out_shape, kernel, Some((out, v)))?;
            Ok(())
        }
        _ => err(format!("output view (strides {:?}) needs dense columns and collapsible batch dims", out.strides())),
    }
}

fn gpu_matmul(a: &Tensor, b: &Tensor, ep: &Epilogue, out_shape: &[usize], kernel: MatmulKernel, into: Option<(&Tensor, MatView)>) -> Result<Tensor> {
    let (a, av) = as_mat(a)?;
    let (b, mut bv) = as_mat(b)?;
    if b.rank() == 2 {
        bv.sb = 0;
    }
    let r = out_shape.len();
    let (m, n) = (out_shape[r - 2], out_shape[r - 1]);
    let k = a.shape()[a.rank() - 1];
    let batch: usize = out_shape[..r - 2].iter().product();
    let (out, ov) = match into {
        Some((t, v)) => (t.clone(), v),
        None => (gpu::empty(a.device(), a.dtype(), out_shape)?, MatView { offset: 0, sb: m * n, sr: n, sc: 1 }),
    };
    if out.numel() == 0 {
        return Ok(out);
    }
    let bias = ep.bias.map(contiguous).transpose()?;
    let residual = ep.residual.map(|t| as_mat(t)).transpose()?;
    let rv = residual.as_ref().map(|(_, v)| *v).unwrap_or(MatView { offset: 0, sb: 0, sr: 0, sc: 0 });
    use kernels::geo;
    let mut geometry = [0u32; geo::LEN];
    for (slot, v) in [
        (geo::M, m),
        (geo::N, n),
        (geo::K, k),
        (geo::A_OFFSET, av.offset),
        (geo::A_BATCH, av.sb),
        (geo::A_ROW, av.sr),
        (geo::A_COL, av.sc),
        (geo::B_OFFSET, bv.offset),
        (geo::B_BATCH, bv.sb),
        (geo::B_ROW, bv.sr),
        (geo::B_COL, bv.sc),
        (geo::R_OFFSET, rv.offset),
        (geo::R_BATCH, rv.sb),
        (geo::R_ROW, rv.sr),
        (geo::R_COL, rv.sc),
        (geo::O_OFFSET, ov.offset),
        (geo::O_BATCH, ov.sb),
        (geo::O_ROW, ov.sr),
    ] {
        geometry[slot] = v as u32;
    }
    // Absent epilogue operands bind the output buffer; the kernel never reads them.
    let bias_buf = bias.as_ref().map(buffer).unwrap_or(buffer(&out));
    let res_buf = residual.as_ref().map(|(t, _)| buffer(t)).unwrap_or(buffer(&out));
    let (has_bias, has_res, act) = (bias.is_some(), residual.is_some(), kernel_act(ep.activation));
    let dtype = a.dtype();
    let kernel = match kernel {
        MatmulKernel::Auto if m <= GEMV_MAX_ROWS => MatmulKernel::Gemv,
        MatmulKernel::Auto => MatmulKernel::Tiled(DEFAULT_TILE),
        MatmulKernel::Cmma if dtype != DType::F16 || !cmma_available(a.device()) => {
            return Err(Error::Unsupported { op: "matmul (cmma)", dtype, device: a.device().info().spec() });
        }
        chosen => chosen,
    };
    with_client!(a.device(), c => {
        let geometry = upload_u32(c, &geometry);
        let geo = unsafe { ArrayArg::from_raw_parts(geometry.clone(), geo::LEN) };
        with_dtype!(dtype, E => unsafe {
            let args = (array(buffer(&a), dtype), array(buffer(&b), dtype), array(bias_buf, dtype), array(res_buf, dtype), array(buffer(&out), dtype));
            match kernel {
                MatmulKernel::Tiled(t) => kernels::matmul_tiled::launch_unchecked::<E, _>(
                    c,
                    CubeCount::Static(n.div_ceil(t.bn) as u32, m.div_ceil(t.bm) as u32, batch as u32),
                    CubeDim::new_1d(t.units()),
                    args.0, args.1, args.2, args.3, args.4, geo,
                    t.bm, t.bn, t.bk, t.tm, t.tn,
                    av.sr == 1 && av.sc != 1,
                    bv.sr == 1 && bv.sc != 1,
                    has_bias, act, has_res,
                ),
                MatmulKernel::Cmma => kernels::matmul_cmma::launch_unchecked::<_>(
                    c,
                    CubeCount::Static(n.div_ceil(16) as u32, m.div_ceil(16) as u32, batch as u32),
                    CubeDim::new_1d(32),
                    array(buffer(&a), dtype), array(buffer(&b), dtype), array(bias_buf, dtype), array(res_buf, dtype), array(buffer(&out), dtype), geo,
                    has_bias, act, has_res,
                ),
                _ if bv.sr == 1 => kernels::gemv_k_contiguous::launch_unchecked::<E, _>(
                    c,
                    CubeCount::Static(n as u32, m as u32, batch as u32),
                    CubeDim::new_1d(64),
                    args.0, args.1, args.2, args.3, args.4, geo,
                    64, has_bias, act, has_res,
                ),
                _ => kernels::gemv_n_contiguous::launch_unchecked::<E, _>(
                    c,
                    CubeCount::Static(n.div_ceil(64) as u32, m as u32, batch as u32),
                    CubeDim::new_1d(64),
                    args.0, args.1, args.2, args.3, args.4, geo,
                    has_bias, act, has_res,
                ),
            }
        })
    });
    Ok(out)
}

/// f32 view of a CPU tensor for the `gemm` crate: the tensor itself when it is f32,
/// else an f32 copy (f16/bf16 widen exactly).
fn f32_operand(t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        return Ok(t.clone());
    }
    crate::cast(t, DType::F32)
}

fn cpu_matmul(a: &Tensor, b: &Tensor, ep: &Epilogue, out_shape: &[usize]) -> Result<Tensor> {
    let dtype = a.dtype();
    let (a32, b32) = (f32_operand(a)?, f32_operand(b)?);
    let (a32, mut av) = as_mat(&a32)?;
    let (b32, mut bv) = as_mat(&b32)?;
    if b32.rank() == 2 {
        bv.sb = 0;
    }
    let r = out_shape.len();
    let (mut m, n) = (out_shape[r - 2], out_shape[r - 1]);
    let k = a32.shape()[a32.rank() - 1];
    let mut batch: usize = out_shape[..r - 2].iter().product();
    // A batch of row blocks against one shared b is one taller matrix.
    if batch > 1 && bv.sb == 0 && av.sb == m * av.sr {
        (m, batch) = (m * batch, 1);
        av.sb = 0;
    }
    let bias = ep.bias.map(cpu::read_f32);
    let residual = ep.residual.map(cpu::read_f32);
    // Not zero-filled: the GEMMs write every element (`read_dst` false) before anything
    // reads it; only raw pointers reach the memory until then, and set_len comes last.
    let total = batch * m * n;
    let mut out = nextflow_runtime::CpuBuffer::reserve_f32(total);
    let (sa, sb) = (cpu::buffer_f32(&a32), cpu::buffer_f32(&b32));
    let dst_all = crate::pool::SendPtr(out.as_mut_ptr());
    if k == 0 {
        // SAFETY: the allocation holds `total` f32s; all-zero bytes are 0.0.
        unsafe { std::ptr::write_bytes(dst_all.get(), 0, total) };
    }
    // The epilogue of rows × columns c0..c1 of output matrix `dst` (already written).
    let epilogue = |dst: crate::pool::SendPtr<f32>, bi: usize, c0: usize, c1: usize| {
        if bias.is_none() && residual.is_none() && ep.activation == Activation::None {
            return;
        }
        for row in 0..m {
            // SAFETY: row `row`, columns c0..c1 of the m×n matrix at dst: written, and this
            // caller's alone.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(row * n + c0), c1 - c0) };
            let res_row = (bi * m + row) * n;
            for (j, v) in (c0..c1).zip(o.iter_mut()) {
                let mut x = *v + bias.as_ref().map_or(0.0, |b| b[j]);
                x = match ep.activation {
                    Activation::None => x,
                    Activation::Silu => crate::reference::unary_scalar(crate::UnaryOp::Silu, x),
                    Activation::GeluErf => crate::reference::unary_scalar(crate::UnaryOp::GeluErf, x),
                };
                *v = x + residual.as_ref().map_or(0.0, |r| r[res_row + j]);
            }
        }
    };
    for bi in 0..batch {
        // SAFETY: matrix bi of the output, inside the allocation.
        let dst = crate::pool::SendPtr(unsafe { dst_all.get().add(bi * m * n) });
        if k == 0 {
            epilogue(dst, bi, 0, n);
            continue;
        }
        let a_at = av.offset + bi * av.sb;
        let b_at = bv.offset + bi * bv.sb;
        if m <= GEMV_MAX_ROWS && av.sc == 1 && (bv.sc == 1 || bv.sr == 1) {
            // SAFETY: zero the few rows first, so the slice covers initialized memory.
            let rows = unsafe {
                std::ptr::write_bytes(dst.get(), 0, m * n);
                std::slice::from_raw_parts_mut(dst.get(), m * n)
            };
            cpu_gemv(&sa[a_at..], av.sr, &sb[b_at..], bv, m, k, n, rows);
            epilogue(dst, bi, 0, n);
            continue;
        }
        // Output columns in blocks of 16 (the GEMM's vector width, so a weight stored
        // column-major is used unpacked), one single-threaded GEMM per block on the pool;
        // small products stay on one thread.
        let threads = crate::pool::threads_in_pool();
        let blocks = if m * n * k < (1 << 18) { 1 } else { (threads * 2).min(n.div_ceil(16)) };
        let width = n.div_ceil(blocks).div_ceil(16) * 16;
        let blocks = n.div_ceil(width);
        let dst_ptr = dst;
        crate::pool::for_each(blocks, &|blk| {
            let (c0, c1) = (blk * width, ((blk + 1) * width).min(n));
            // SAFETY: offsets and strides describe views inside the two buffers (checked by
            // the runtime's layouts); this task alone writes columns c0..c1 of the dense
            // m×n block dst.
            unsafe {
                gemm::gemm(
                    m,
                    c1 - c0,
                    k,
                    dst_ptr.get().add(c0),
                    1,
                    n as isize,
                    false,
                    sa.as_ptr().add(a_at),
                    av.sc as isize,
                    av.sr as isize,
                    sb.as_ptr().add(b_at + c0 * bv.sc),
                    bv.sc as isize,
                    bv.sr as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            epilogue(dst_ptr, bi, c0, c1);
        });
    }
    // SAFETY: every element was written above (GEMMs, GEMV rows, or the k == 0 zeros).
    unsafe { out.set_len(total) };
    Ok(cpu::from_vec(out, dtype, out_shape, a.device()))
}

/// Few-row matmul on the CPU, memory-bound: parallel over blocks of output columns.
/// `b` n-contiguous (`[k, n]`): each thread streams a range of B's rows through axpy; k-contiguous (an HF weight
/// `[n, k]` seen transposed): one dot product per output.
#[allow(clippy::too_many_arguments)]
fn cpu_gemv(a: &[f32], a_sr: usize, b: &[f32], bv: MatView, m: usize, k: usize, n: usize, dst: &mut [f32]) {
    const COLS: usize = 512;
    for i in 0..m {
        let x = &a[i * a_sr..][..k];
        let row = &mut dst[i * n..(i + 1) * n];
        if bv.sc == 1 {
            // Split k, not n, so each thread streams whole rows of B; then add the partials.
            let parts = if n * k < (1 << 16) { 1 } else { crate::pool::threads_in_pool() };
            let rows_per = k.div_ceil(parts);
            let mut partials = vec![0f32; parts * n];
            crate::pool::chunks_mut(&mut partials, n, &|start, acc| {
                let t = start / n;
                for p in t * rows_per..((t + 1) * rows_per).min(k) {
                    crate::simd::axpy(x[p], &b[p * bv.sr..][..n], acc);
                }
            });
            row.copy_from_slice(&partials[..n]);
            for part in partials.chunks(n).skip(1) {
                crate::simd::axpy(1.0, part, row);
            }
        } else {
            crate::pool::chunks_mut(row, COLS, &|start, out| {
                for (jj, o) in out.iter_mut().enumerate() {
                    *o = crate::simd::dot(x, &b[(start + jj) * bv.sc..][..k]);
                }
            });
        }
    }
}


