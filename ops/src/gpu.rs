//! Lowering of ops to the cubecl kernels of `nextflow-shaders`, generic over the runtime.

use cubecl::prelude::*;
use cubecl::server::Handle;

use nextflow_runtime::{cubecl, DType, Device, GpuBuffer, Layout, Result, Storage, Tensor};
use nextflow_shaders::{elementwise, gather, reduce, ELEMENTWISE_CUBE, ROW_CUBE};

thread_local! {
    static GPU_LAUNCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static OUTSIDE_PLANS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    static PLAN_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Kernels this thread has launched on GPU devices so far (each `with_client!` body
/// launches exactly one), so that tests can check the compiler's launch counts.
pub fn gpu_launches() -> u64 {
    GPU_LAUNCHES.with(|c| c.get())
}

/// Of [`gpu_launches`], those launched while no compiled plan was running: model code that
/// called a kernel itself instead of realizing a graph (tests keep this at zero).
pub fn gpu_launches_outside_plans() -> u64 {
    OUTSIDE_PLANS.with(|c| c.get())
}

/// Marks the kernels this thread launches until the guard drops as a plan's own (the
/// compiler holds one while it runs a plan; plans may nest).
pub fn plan_scope() -> PlanScope {
    PLAN_DEPTH.with(|d| d.set(d.get() + 1));
    PlanScope(())
}

/// See [`plan_scope`].
pub struct PlanScope(());

impl Drop for PlanScope {
    fn drop(&mut self) {
        PLAN_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

pub(crate) fn count_launch() {
    GPU_LAUNCHES.with(|c| c.set(c.get() + 1));
    if PLAN_DEPTH.with(|d| d.get()) == 0 {
        OUTSIDE_PLANS.with(|c| c.set(c.get() + 1));
    }
}

/// Runs `$body` with `$c` bound to the device's cubecl client, whatever its runtime
/// (every use launches one kernel, which it counts).
macro_rules! with_client_impl {
    ($device:expr, $c:ident => $body:expr) => {
        match { $crate::gpu::count_launch(); $device.client() } {
            ::nextflow_runtime::Client::Wgpu($c) => $body,
            ::nextflow_runtime::Client::Cuda($c) => $body,
            ::nextflow_runtime::Client::Hip($c) => $body,
            ::nextflow_runtime::Client::Record($c) => $body,
            ::nextflow_runtime::Client::Cpu => unreachable!("GPU lowering called for the CPU backend"),
        }
    };
}

/// Runs `$body` with the type `$t` bound to the Rust element type of `$dtype`.
macro_rules! with_dtype_impl {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            ::nextflow_runtime::DType::F32 => { type $t = f32; $body }
            ::nextflow_runtime::DType::F16 => { type $t = ::half::f16; $body }
            ::nextflow_runtime::DType::BF16 => { type $t = ::half::bf16; $body }
            ::nextflow_runtime::DType::U32 => { type $t = u32; $body }
            ::nextflow_runtime::DType::I32 => { type $t = i32; $body }
            ::nextflow_runtime::DType::U8 => { type $t = u8; $body }
        }
    };
}

/// The compute type of a dtype: f32 for floats, the type itself for integers.
macro_rules! with_compute_impl {
    ($dtype:expr, $e:ident, $a:ident => $body:expr) => {
        match $dtype {
            ::nextflow_runtime::DType::F32 => { type $e = f32; type $a = f32; $body }
            ::nextflow_runtime::DType::F16 => { type $e = ::half::f16; type $a = f32; $body }
            ::nextflow_runtime::DType::BF16 => { type $e = ::half::bf16; type $a = f32; $body }
            ::nextflow_runtime::DType::U32 => { type $e = u32; type $a = u32; $body }
            ::nextflow_runtime::DType::I32 => { type $e = i32; type $a = i32; $body }
            ::nextflow_runtime::DType::U8 => { type $e = u8; type $a = u32; $body }
        }
    };
}

pub(crate) use {with_client_impl as with_client, with_dtype_impl as with_dtype};

pub(crate) fn buffer(t: &Tensor) -> &GpuBuffer {
    match t.storage() {
        Storage::Gpu(g) => g,
        Storage::Cpu(_) => unreachable!("GPU lowering received a CPU tensor"),
    }
}

pub(crate) fn array<R: Runtime>(g: &GpuBuffer, dtype: DType) -> ArrayArg<R> {
    // SAFETY: the handle holds at least `bytes` bytes; kernels index inside the layouts
    // that ops have validated against the buffer.
    unsafe { ArrayArg::from_raw_parts(g.handle.clone(), (g.bytes / dtype.size()).max(1)) }
}

pub(crate) fn upload_u32<R: Runtime>(client: &ComputeClient<R>, values: &[u32]) -> Handle {
    let mut v = values.to_vec();
    if v.is_empty() {
        v.push(0);
    }
    client.create_from_slice(bytemuck::cast_slice(&v))
}

pub(crate) fn grid(units: usize, per_cube: u32) -> CubeCount {
    let cubes = units.div_ceil(per_cube as usize).max(1) as u32;
    // wgpu caps each dispatch dimension at 65535 workgroups.
    if cubes <= 65535 {
        CubeCount::Static(cubes, 1, 1)
    } else {
        CubeCount::Static(65535, cubes.div_ceil(65535), 1)
    }
}

fn rows_grid(rows: usize) -> CubeCount {
    grid(rows, 1)
}

/// Merges adjacent dims that every operand walks contiguously (and drops size-1 dims), so a
/// dense tensor is indexed as rank 1: fewer divisions per element, fewer kernel variants.
pub(crate) fn coalesce(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let mergeable = out_shape.last().is_some() && strides.iter().zip(&out_strides).all(|(s, o)| *o.last().unwrap() == s[d] * shape[d]);
        if mergeable {
            *out_shape.last_mut().unwrap() *= shape[d];
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                *o.last_mut().unwrap() = s[d];
            }
        } else {
            out_shape.push(shape[d]);
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                o.push(s[d]);
            }
        }
    }
    (out_shape, out_strides)
}

/// A new output tensor on `device`.
pub fn empty(device: &Device, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    let numel: usize = shape.iter().product();
    Ok(Tensor::from_storage(device.alloc(numel * dtype.size())?, Layout::contiguous(shape), dtype, device.clone()))
}

/// Writes `op(src)` (converted to `dst_dtype`) into the view `dst_layout` of `dst`.
pub(crate) fn unary_into(src: &Tensor, dst: &GpuBuffer, dst_dtype: DType, dst_layout: &Layout, op: elementwise::Unary) -> Result<()> {
    let (shape, strides) = coalesce(src.shape(), &[src.strides(), dst_layout.strides()]);
    let rank = shape.len();
    let mut layout = vec![src.layout().offset() as u32, dst_layout.offset() as u32];
    for d in (0..rank).rev() {
        layout.extend([shape[d] as u32, strides[0][d] as u32, strides[1][d] as u32]);
    }
    let numel = src.numel();
    if numel == 0 {
        return Ok(());
    }
    with_client_impl!(src.device(), c => {
        let layout = upload_u32(c, &layout);
        with_dtype_impl!(src.dtype(), I => with_dtype_impl!(dst_dtype, O => unsafe {
            elementwise::unary_strided::launch_unchecked::<I, O, _>(
                c,
                grid(numel, ELEMENTWISE_CUBE),
                CubeDim::new_1d(ELEMENTWISE_CUBE),
                array(buffer(src), src.dtype()),
                array(dst, dst_dtype),
                ArrayArg::from_raw_parts(layout.clone(), 2 + 3 * rank),
                numel as u32,
                rank,
                op,
            )
        }))
    });
    Ok(())
}

pub fn unary(x: &Tensor, dtype: DType, op: elementwise::Unary) -> Result<Tensor> {
    let out = empty(x.device(), dtype, x.shape())?;
    unary_into(x, buffer(&out), dtype, out.layout(), op)?;
    Ok(out)
}

/// `a` and `b` are already broadcast to the output shape.
pub fn binary(a: &Tensor, b: &Tensor, op: elementwise::Binary) -> Result<Tensor> {
    let out = empty(a.device(), a.dtype(), a.shape())?;
    let (shape, strides) = coalesce(a.shape(), &[a.strides(), b.strides(), out.strides()]);
    let rank = shape.len();
    let mut layout = vec![a.layout().offset() as u32, b.layout().offset() as u32, 0];
    for d in (0..rank).rev() {
        layout.extend([shape[d] as u32, strides[0][d] as u32, strides[1][d] as u32, strides[2][d] as u32]);
    }
    let numel = a.numel();
    if numel == 0 {
        return Ok(out);
    }
    with_client_impl!(a.device(), c => {
        let layout = upload_u32(c, &layout);
        with_compute_impl!(a.dtype(), E, A => unsafe {
            elementwise::binary_strided::launch_unchecked::<E, A, _>(
                c,
                grid(numel, ELEMENTWISE_CUBE),
                CubeDim::new_1d(ELEMENTWISE_CUBE),
                array(buffer(a), a.dtype()),
                array(buffer(b), b.dtype()),
                array(buffer(&out), out.dtype()),
                ArrayArg::from_raw_parts(layout.clone(), 3 + 4 * rank),
                numel as u32,
                rank,
                op,
            )
        })
    });
    Ok(out)
}

/// Row kernels take a dense `[rows, n]` input.
fn rows_of(x: &Tensor) -> (usize, usize) {
    let n = *x.shape().last().unwrap();
    (x.numel() / n, n)
}

pub fn reduce(x: &Tensor, op: reduce::Reduce) -> Result<Tensor> {
    let (rows, n) = rows_of(x);
    let out = empty(x.device(), x.dtype(), &x.shape()[..x.rank() - 1])?;
    with_client_impl!(x.device(), c => with_dtype_impl!(x.dtype(), E => unsafe {
        reduce::reduce_rows::launch_unchecked::<E, _>(
            c, rows_grid(rows), CubeDim::new_1d(ROW_CUBE), array(buffer(x), x.dtype()), array(buffer(&out), out.dtype()), n as u32, rows as u32, op, ROW_CUBE,
        )
    }));
    Ok(out)
}

pub fn argmax(x: &Tensor) -> Result<Tensor> {
    let (rows, n) = rows_of(x);
    let out = empty(x.device(), DType::U32, &x.shape()[..x.rank() - 1])?;
    with_client_impl!(x.device(), c => with_dtype_impl!(x.dtype(), E => unsafe {
        reduce::argmax_rows::launch_unchecked::<E, _>(
            c, rows_grid(rows), CubeDim::new_1d(ROW_CUBE), array(buffer(x), x.dtype()), array(buffer(&out), out.dtype()), n as u32, rows as u32, ROW_CUBE,
        )
    }));
    Ok(out)
}

pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let (rows, n) = rows_of(x);
    let out = empty(x.device(), x.dtype(), x.shape())?;
    with_client_impl!(x.device(), c => with_dtype_impl!(x.dtype(), E => unsafe {
        reduce::softmax_rows::launch_unchecked::<E, _>(
            c, rows_grid(rows), CubeDim::new_1d(ROW_CUBE), array(buffer(x), x.dtype()), array(buffer(&out), out.dtype()), n as u32, rows as u32, ROW_CUBE,
        )
    }));
    Ok(out)
}

pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32, kernel: crate::NormKernel) -> Result<Tensor> {
    let (rows, n) = rows_of(x);
    let out = empty(x.device(), x.dtype(), x.shape())?;
    let block = kernel.block;
    with_client_impl!(x.device(), c => with_dtype_impl!(x.dtype(), E => unsafe {
        reduce::rms_norm_rows::launch_unchecked::<E, _>(
            c, rows_grid(rows), CubeDim::new_1d(block), array(buffer(x), x.dtype()), array(buffer(weight), weight.dtype()), array(buffer(&out), out.dtype()), n as u32, rows as u32, eps, block,
        )
    }));
    Ok(out)
}

pub fn add_rms_norm(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32, kernel: crate::NormKernel) -> Result<(Tensor, Tensor)> {
    let block = kernel.block;
    let (rows, n) = rows_of(x);
    let sum = empty(x.device(), x.dtype(), x.shape())?;
    let normed = empty(x.device(), x.dtype(), x.shape())?;
    let dtype = x.dtype();
    with_client_impl!(x.device(), c => with_dtype_impl!(dtype, E => unsafe {
        reduce::add_rms_norm_rows::launch_unchecked::<E, _>(
            c, rows_grid(rows), CubeDim::new_1d(block),
            array(buffer(x), dtype), array(buffer(residual), dtype), array(buffer(weight), dtype),
            array(buffer(&sum), dtype), array(buffer(&normed), dtype),
            n as u32, rows as u32, eps, block,
        )
    }));
    Ok((sum, normed))
}

/// `table` dense `[vocab, dim]`, `ids` dense.
pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    embedding_blocks(&[table], ids)
}

/// One lookup over a table stored as row blocks (in order), one launch per block.
pub fn embedding_blocks(blocks: &[&Tensor], ids: &Tensor) -> Result<Tensor> {
    let (dim, dtype, device) = (blocks[0].shape()[1], blocks[0].dtype(), blocks[0].device());
    let vocab: usize = blocks.iter().map(|b| b.shape()[0]).sum();
    let mut shape = ids.shape().to_vec();
    shape.push(dim);
    let out = empty(device, dtype, &shape)?;
    let numel = out.numel();
    if numel == 0 {
        return Ok(out);
    }
    let mut first = 0;
    for table in blocks {
        let rows = table.shape()[0];
        with_client_impl!(device, c => with_dtype_impl!(dtype, E => with_dtype_impl!(ids.dtype(), I => unsafe {
            gather::embedding::launch_unchecked::<E, I, _>(
                c,
                grid(numel, ELEMENTWISE_CUBE),
                CubeDim::new_1d(ELEMENTWISE_CUBE),
                array(buffer(table), dtype),
                array(buffer(ids), ids.dtype()),
                array(buffer(&out), out.dtype()),
                first as u32,
                rows as u32,
                vocab as u32,
                dim as u32,
                numel as u32,
            )
        })));
        first += rows;
    }
    Ok(out)
}

/// Copies each part into its slice of a new tensor along `dim`.
pub fn concat(parts: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
    let out = empty(parts[0].device(), parts[0].dtype(), shape)?;
    let mut start = 0;
    for p in parts {
        let view = out.layout().narrow(dim, start, p.shape()[dim])?;
        unary_into(p, buffer(&out), out.dtype(), &view, elementwise::Unary::Copy)?;
        start += p.shape()[dim];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn coalesce_merges_only_what_every_operand_walks_densely() {
        // Dense [2,3,4]: one dim of 24.
        assert_eq!(coalesce(&[2, 3, 4], &[&[12, 4, 1], &[12, 4, 1]]), (vec![24], vec![vec![1], vec![1]]));
        // A broadcast row ([4] against [2,3,4]) keeps the outer dims apart from the inner one.
        assert_eq!(coalesce(&[2, 3, 4], &[&[12, 4, 1], &[0, 0, 1]]), (vec![6, 4], vec![vec![4, 1], vec![0, 1]]));
        // Transposed source: nothing merges; size-1 dims vanish.
        assert_eq!(coalesce(&[3, 1, 2], &[&[1, 9, 3], &[2, 2, 1]]), (vec![3, 2], vec![vec![1, 3], vec![2, 1]]));
    }
}
