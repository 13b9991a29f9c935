//! nextflow-ops: the op set. Each op is defined once here: argument checks that return a
//! typed error, a shape/dtype rule, a CPU path (`cpu`), a plain reference (`reference`)
//! and a lowering to the kernels of `nextflow-shaders` (`gpu`).
//!
//! Where a device cannot run a dtype (u8 or bf16 on wgpu, f16 on adapters without
//! shader-f16), the op runs on the CPU backend and uploads the result: slower, never wrong.

pub mod attention;
mod blocked;
pub mod cpu;
pub mod fused;
mod gpu;
pub mod image;
pub mod matmul;
pub mod msrq;
pub mod pool;
pub mod reference;
pub mod rules;
pub mod sampling;
mod simd;
mod table;

use nextflow_runtime::{broadcast_shape, DType, Device, Error, Result, Tensor};
use nextflow_shaders::{elementwise, reduce as kernels};

pub use nextflow_runtime as runtime;
pub use attention::{attention, attention_with, grid_positions, text_positions, write_into, AttentionKernel, AttentionOptions, KvCache, Mask, Rope};
pub use image::{conv2d, conv2d_fused, conv2d_with, group_norm, group_norm_with, interpolate, interpolate_nhwc, spatial_attention, Conv2d, ConvAlgorithm, ConvFusion, Resize};
pub use blocked::Weight;
pub use matmul::{linear, matmul, matmul_into, Activation, Epilogue};
pub use table::{OpEntry, OP_TABLE};
pub use gpu::{gpu_launches, gpu_launches_outside_plans, plan_scope, PlanScope};

/// An uninitialised dense tensor on a GPU device (its kernels write it whole: e.g. the
/// matmuls that each fill a column block).
pub fn empty(device: &Device, dtype: DType, shape: &[usize]) -> Result<Tensor> {
    if device.is_cpu() {
        return Err(Error::Unsupported { op: "empty", dtype, device: device.info().spec() });
    }
    gpu::empty(device, dtype, shape)
}

/// Float functions of one argument (the shaders' own enum: a kernel matches on it).
pub use nextflow_shaders::elementwise::UnaryOp;

/// Elementwise functions of two broadcast operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 5] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max];

    /// The kernel's op: the one place the op maps to `nextflow_shaders`.
    fn kernel_op(self) -> elementwise::Binary {
        match self {
            BinaryOp::Add => elementwise::Binary::Add,
            BinaryOp::Sub => elementwise::Binary::Sub,
            BinaryOp::Mul => elementwise::Binary::Mul,
            BinaryOp::Div => elementwise::Binary::Div,
            BinaryOp::Max => elementwise::Binary::Max,
        }
    }
}

/// Reductions over the last dim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
    Mean,
}

impl ReduceOp {
    pub const ALL: [ReduceOp; 3] = [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Mean];

    /// The kernel's op: the one place the op maps to `nextflow_shaders`.
    fn kernel_op(self) -> kernels::Reduce {
        match self {
            ReduceOp::Sum => kernels::Reduce::Sum,
            ReduceOp::Max => kernels::Reduce::Max,
            ReduceOp::Mean => kernels::Reduce::Mean,
        }
    }
}

pub(crate) fn check_float(op: &'static str, x: &Tensor) -> Result<()> {
    if !x.dtype().is_float() {
        return Err(Error::Unsupported { op, dtype: x.dtype(), device: x.device().info().spec() });
    }
    Ok(())
}

pub(crate) fn check_same(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if !a.device().same(b.device()) {
        return Err(Error::DeviceMismatch { op, lhs: a.device().info().spec(), rhs: b.device().info().spec() });
    }
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch { op, expected: a.dtype(), found: b.dtype() });
    }
    Ok(())
}

/// Checks a last-dim row op's input and returns the row length.
fn check_rows(op: &'static str, x: &Tensor) -> Result<usize> {
    rules::rows(op, x.shape())
}

/// Whether the GPU path can take these dtypes here; else run on the CPU backend.
pub(crate) fn on_gpu(device: &Device, dtypes: &[DType]) -> bool {
    !device.is_cpu() && dtypes.iter().all(|&d| device.supports(d))
}

/// Runs `f` on CPU copies of `inputs` and moves the result back to their device.
pub(crate) fn via_cpu(inputs: &[&Tensor], f: impl FnOnce(&[Tensor]) -> Result<Tensor>) -> Result<Tensor> {
    let device = inputs[0].device().clone();
    let cpu = Device::cpu();
    let host: Vec<Tensor> = inputs.iter().map(|t| t.to_device(&cpu)).collect::<Result<_>>()?;
    f(&host)?.to_device(&device)
}

/// `op(x)` elementwise, in f32, stored as x's dtype.
pub fn unary(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    check_float("unary", x)?;
    if x.device().is_cpu() {
        return Ok(cpu::unary(x, op));
    }
    if !on_gpu(x.device(), &[x.dtype()]) {
        return via_cpu(&[x], |h| Ok(cpu::unary(&h[0], op)));
    }
    gpu::unary(x, x.dtype(), elementwise::Unary::F(op))
}

/// Converts to `dtype` (round to nearest for floats, truncation for float → int).
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.device().is_cpu() {
        return cpu::cast(x, dtype);
    }
    if !on_gpu(x.device(), &[x.dtype(), dtype]) {
        return via_cpu(&[x], |h| cpu::cast(&h[0], dtype));
    }
    gpu::unary(x, dtype, elementwise::Unary::Copy)
}

/// A dense copy of any view (returns `x` itself when it already is dense).
pub fn contiguous(x: &Tensor) -> Result<Tensor> {
    if x.is_dense() {
        return Ok(x.clone());
    }
    cast(x, x.dtype())
}

/// `op(a, b)` with numpy broadcasting; same dtype and device.
pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
    check_same("binary", a, b)?;
    let shape = broadcast_shape("binary", a.shape(), b.shape())?;
    if a.device().is_cpu() {
        return cpu::binary(a, b, op, &shape);
    }
    if !on_gpu(a.device(), &[a.dtype()]) {
        return via_cpu(&[a, b], |h| cpu::binary(&h[0], &h[1], op, &shape));
    }
    gpu::binary(&a.broadcast_to(&shape)?, &b.broadcast_to(&shape)?, op.kernel_op())
}

/// Reduces the last dim away: `[.., n] -> [..]`.
pub fn reduce(x: &Tensor, op: ReduceOp) -> Result<Tensor> {
    check_float("reduce", x)?;
    check_rows("reduce", x)?;
    if x.device().is_cpu() {
        return Ok(cpu::reduce(x, op));
    }
    if !on_gpu(x.device(), &[x.dtype()]) {
        return via_cpu(&[x], |h| Ok(cpu::reduce(&h[0], op)));
    }
    gpu::reduce(&contiguous(x)?, op.kernel_op())
}

/// Index (u32) of the largest element of each row; the first one on ties.
pub fn argmax(x: &Tensor) -> Result<Tensor> {
    check_float("argmax", x)?;
    check_rows("argmax", x)?;
    if x.device().is_cpu() {
        return Ok(cpu::argmax(x));
    }
    if !on_gpu(x.device(), &[x.dtype()]) {
        return via_cpu(&[x], |h| Ok(cpu::argmax(&h[0])));
    }
    gpu::argmax(&contiguous(x)?)
}

/// Softmax over the last dim, statistics in f32, max-subtracted.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    check_float("softmax", x)?;
    check_rows("softmax", x)?;
    if x.device().is_cpu() {
        return Ok(cpu::softmax(x));
    }
    if !on_gpu(x.device(), &[x.dtype()]) {
        return via_cpu(&[x], |h| Ok(cpu::softmax(&h[0])));
    }
    gpu::softmax(&contiguous(x)?)
}

/// RMSNorm over the last dim with an `[n]` weight: `x / sqrt(mean(x²) + eps) · w`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    rms_norm_with(x, weight, eps, NormKernel::default())
}

/// Threads per row of the GPU norm kernels (RMSNorm, add + RMSNorm, GroupNorm; a power of
/// two): the autotune cache chooses it per shape. The CPU has one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NormKernel {
    pub block: u32,
}

impl Default for NormKernel {
    fn default() -> NormKernel {
        NormKernel { block: nextflow_shaders::ROW_CUBE }
    }
}

impl NormKernel {
    /// Every setting a GPU may run.
    pub const CANDIDATES: [NormKernel; 4] = [NormKernel { block: 32 }, NormKernel { block: 64 }, NormKernel { block: 128 }, NormKernel { block: 256 }];

    pub fn name(&self) -> String {
        format!("rows x{}", self.block)
    }
}

/// [`rms_norm`] with the GPU kernel's threads per row chosen.
pub fn rms_norm_with(x: &Tensor, weight: &Tensor, eps: f32, kernel: NormKernel) -> Result<Tensor> {
    check_float("rms_norm", x)?;
    check_same("rms_norm", x, weight)?;
    rules::rms_norm("rms_norm", x.shape(), weight.shape(), eps)?;
    if x.device().is_cpu() {
        return Ok(cpu::rms_norm(x, weight, eps));
    }
    if !on_gpu(x.device(), &[x.dtype()]) {
        return via_cpu(&[x, weight], |h| Ok(cpu::rms_norm(&h[0], &h[1], eps)));
    }
    gpu::rms_norm(&contiguous(x)?, &contiguous(weight)?, eps, kernel)
}

/// Rows of a `[vocab, dim]` table gathered by u32/i32 ids: output `ids.shape + [dim]`.
///
/// Ids on the CPU are range-checked (an error names the first bad id). Ids that already
/// live on a GPU are not read back; out-of-range ones produce zero rows there.
/// Ids of an embedding lookup: `u32`/`i32`, on the table's device.
pub(crate) fn check_embedding_ids(table_device: &Device, ids: &Tensor) -> Result<()> {
    if !matches!(ids.dtype(), DType::U32 | DType::I32) {
        return Err(Error::DTypeMismatch { op: "embedding", expected: DType::U32, found: ids.dtype() });
    }
    if !table_device.same(ids.device()) {
        return Err(Error::DeviceMismatch { op: "embedding", lhs: table_device.info().spec(), rhs: ids.device().info().spec() });
    }
    Ok(())
}

pub fn embedding(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    if table.rank() != 2 {
        return Err(Error::Shape { op: "embedding", msg: format!("table must be [vocab, dim], got {:?}", table.shape()) });
    }
    check_embedding_ids(table.device(), ids)?;
    let mut shape = ids.shape().to_vec();
    shape.push(table.shape()[1]);
    let vocab = table.shape()[0];
    let checked_ids = || -> Result<Vec<usize>> {
        ids.to_f64_vec()?
            .into_iter()
            .map(|id| {
                if id >= 0.0 && (id as usize) < vocab {
                    Ok(id as usize)
                } else {
                    Err(Error::Shape { op: "embedding", msg: format!("id {id} is outside the table of {vocab} rows") })
                }
            })
            .collect()
    };
    if table.device().is_cpu() {
        return cpu::embedding(table, &checked_ids()?, &shape);
    }
    if !on_gpu(table.device(), &[table.dtype()]) {
        let ids = checked_ids()?;
        return via_cpu(&[table], |h| cpu::embedding(&h[0], &ids, &shape));
    }
    gpu::embedding(&contiguous(table)?, &contiguous(ids)?)
}

/// Joins tensors along `dim`; all other dims, the dtype and the device must agree.
pub fn concat(parts: &[&Tensor], dim: usize) -> Result<Tensor> {
    let first = parts.first().ok_or(Error::Shape { op: "concat", msg: "needs at least one tensor".into() })?;
    for p in &parts[1..] {
        check_same("concat", first, p)?;
    }
    let shape = rules::concat(&parts.iter().map(|p| p.shape()).collect::<Vec<_>>(), dim)?;
    if first.device().is_cpu() {
        return cpu::concat(parts, dim, &shape);
    }
    if !on_gpu(first.device(), &[first.dtype()]) {
        return via_cpu(parts, |h| cpu::concat(&h.iter().collect::<Vec<_>>(), dim, &shape));
    }
    gpu::concat(parts, dim, &shape)
}

/// SwiGLU: `silu(gate) · up`, fused, with broadcasting like [`binary`].
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    check_float("swiglu", gate)?;
    check_same("swiglu", gate, up)?;
    let shape = broadcast_shape("swiglu", gate.shape(), up.shape())?;
    let f = |h: &[Tensor]| cpu::swiglu(&h[0], &h[1], &shape);
    if gate.device().is_cpu() {
        return f(&[gate.clone(), up.clone()]);
    }
    if !on_gpu(gate.device(), &[gate.dtype()]) {
        return via_cpu(&[gate, up], f);
    }
    gpu::binary(&gate.broadcast_to(&shape)?, &up.broadcast_to(&shape)?, elementwise::Binary::SiluMul)
}

/// Fused residual add + RMSNorm: returns `(x + residual, rms_norm(x + residual) · weight)`,
/// the new residual stream and the normalized input of the next block.
pub fn add_rms_norm(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    add_rms_norm_with(x, residual, weight, eps, NormKernel::default())
}

/// [`add_rms_norm`] with the GPU kernel's threads per row chosen.
pub fn add_rms_norm_with(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32, kernel: NormKernel) -> Result<(Tensor, Tensor)> {
    check_same("add_rms_norm", x, residual)?;
    if x.shape() != residual.shape() {
        return Err(Error::Shape { op: "add_rms_norm", msg: format!("x {:?} and residual {:?} differ", x.shape(), residual.shape()) });
    }
    if x.device().is_cpu() || !on_gpu(x.device(), &[x.dtype()]) {
        let sum = binary(x, residual, BinaryOp::Add)?;
        let normed = rms_norm(&sum, weight, eps)?;
        return Ok((sum, normed));
    }
    check_float("add_rms_norm", x)?;
    check_same("add_rms_norm", x, weight)?;
    rules::rms_norm("add_rms_norm", x.shape(), weight.shape(), eps)?;
    gpu::add_rms_norm(&contiguous(x)?, &contiguous(residual)?, &contiguous(weight)?, eps, kernel)
}
