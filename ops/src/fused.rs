//! Fused elementwise chains: one launch of `nextflow_shaders::fused::fused_elementwise`
//! (or one pass on the CPU backend) evaluates a small program over broadcast inputs.
//! The compiler builds the programs; this module checks and runs them.

use crate::gpu::{self, array, buffer, grid, upload_u32, with_client};
use crate::{cpu, reference, BinaryOp, UnaryOp};
use cubecl::prelude::*;
use nextflow_runtime::{cubecl, DType, Error, Result, Tensor};
use nextflow_shaders::{elementwise, fused as kernels, ELEMENTWISE_CUBE};

/// One instruction; each defines the next register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FusedInstr {
    /// Input `i`, broadcast to the program's shape.
    Load(usize),
    /// `scalars[i]`.
    Scalar(usize),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    /// `silu(a) · b`.
    SiluMul(usize, usize),
    /// Register `a` rounded to a half type (f16 or bf16) as storing it would round it.
    Round(DType, usize),
}

/// A straight-line program over f32 registers and the registers it stores.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FusedProgram {
    pub instrs: Vec<FusedInstr>,
    pub outputs: Vec<usize>,
    pub scalars: Vec<f32>,
}

impl FusedProgram {
    /// The comptime program the kernel reads: the one place instructions map to
    /// `nextflow_shaders::fused::Instr`.
    fn encode(&self) -> Vec<kernels::Instr> {
        self.instrs
            .iter()
            .map(|i| match *i {
                FusedInstr::Load(a) => kernels::Instr::Load(a),
                FusedInstr::Scalar(a) => kernels::Instr::Scalar(a),
                FusedInstr::Unary(op, a) => kernels::Instr::Unary(nextflow_shaders::elementwise::Unary::F(op), a),
                FusedInstr::Binary(op, a, b) => kernels::Instr::Binary(op.kernel_op(), a, b),
                FusedInstr::SiluMul(a, b) => kernels::Instr::Binary(elementwise::Binary::SiluMul, a, b),
                FusedInstr::Round(d, a) => kernels::Instr::Round(if d == DType::BF16 { kernels::Half::Bf16 } else { kernels::Half::F16 }, a),
            })
            .collect()
    }

    fn check(&self, inputs: usize) -> Result<()> {
        let bad = |msg: String| Err(Error::Shape { op: "fused_elementwise", msg });
        for (pc, i) in self.instrs.iter().enumerate() {
            let ok = match *i {
                FusedInstr::Load(a) => a < inputs,
                FusedInstr::Scalar(a) => a < self.scalars.len(),
                FusedInstr::Unary(_, a) => a < pc,
                FusedInstr::Round(d, a) => a < pc && matches!(d, DType::F16 | DType::BF16),
                FusedInstr::Binary(_, a, b) | FusedInstr::SiluMul(a, b) => a < pc && b < pc,
            };
            if !ok {
                return bad(format!("instruction {pc} ({i:?}) names a missing input, scalar or later register"));
            }
        }
        if self.outputs.is_empty() || self.outputs.iter().any(|&r| r >= self.instrs.len()) {
            return bad(format!("outputs {:?} must name registers of the {} instructions", self.outputs, self.instrs.len()));
        }
        Ok(())
    }
}

/// Inputs plus outputs one fused launch may bind on `device` (the scalars and the layout
/// take two more bindings).
pub fn max_buffers(device: &nextflow_runtime::Device) -> usize {
    use nextflow_runtime::Client;
    let bindings = match device.client() {
        Client::Cpu => return usize::MAX,
        Client::Wgpu(c) => c.properties().hardware.max_bindings,
        Client::Cuda(c) => c.properties().hardware.max_bindings,
        Client::Hip(c) => c.properties().hardware.max_bindings,
        Client::Record(c) => c.properties().hardware.max_bindings,
    };
    (bindings as usize).saturating_sub(2).max(2)
}

/// Runs `program` over `inputs` broadcast to `shape` (one float dtype) and returns one dense
/// tensor of the float `out_dtype` per program output. `reuse[k]`, when given, is a dense
/// tensor of that shape and dtype whose buffer output `k` overwrites (in place over a dead
/// input: each element is read before it is written).
pub fn fused_elementwise(inputs: &[Tensor], shape: &[usize], program: &FusedProgram, out_dtype: DType, reuse: Vec<Option<Tensor>>) -> Result<Vec<Tensor>> {
    let first = inputs.first().ok_or(Error::Shape { op: "fused_elementwise", msg: "needs at least one input".into() })?;
    crate::check_float("fused_elementwise", first)?;
    for t in &inputs[1..] {
        crate::check_same("fused_elementwise", first, t)?;
    }
    program.check(inputs.len())?;
    if inputs.len() + program.outputs.len() > max_buffers(first.device()) {
        return Err(Error::Shape {
            op: "fused_elementwise",
            msg: format!("{} inputs and {} outputs exceed the {} buffers a kernel may bind here", inputs.len(), program.outputs.len(), max_buffers(first.device())),
        });
    }
    if !out_dtype.is_float() {
        return Err(Error::Unsupported { op: "fused_elementwise", dtype: out_dtype, device: first.device().info().spec() });
    }
    let views: Vec<Tensor> = inputs.iter().map(|t| t.broadcast_to(shape)).collect::<Result<_>>()?;
    let dtype = first.dtype();
    let device = first.device().clone();
    let rounds_to: Vec<DType> = program.instrs.iter().filter_map(|i| if let FusedInstr::Round(d, _) = i { Some(*d) } else { None }).collect();
    if device.is_cpu() {
        return Ok(cpu_fused(&views, shape, program, out_dtype));
    }
    if !crate::on_gpu(&device, &[&[dtype, out_dtype][..], &rounds_to].concat()) {
        let host: Vec<Tensor> = views.iter().map(|t| t.to_device(&nextflow_runtime::Device::cpu())).collect::<Result<_>>()?;
        return cpu_fused(&host, shape, program, out_dtype).iter().map(|t| t.to_device(&device)).collect();
    }
    let numel: usize = shape.iter().product();
    let mut outputs = Vec::with_capacity(program.outputs.len());
    let mut reuse = reuse.into_iter();
    for _ in &program.outputs {
        let fits = |t: &Tensor| t.is_dense() && t.shape() == shape && t.dtype() == out_dtype && t.device().same(&device);
        match reuse.next().flatten() {
            Some(t) if fits(&t) => outputs.push(t),
            _ => outputs.push(gpu::empty(&device, out_dtype, shape)?),
        }
    }
    if numel == 0 {
        return Ok(outputs);
    }
    let strides: Vec<&[usize]> = views.iter().map(|t| t.strides()).collect();
    let (dims, dim_strides) = gpu::coalesce(shape, &strides);
    let rank = dims.len();
    let mut layout = vec![numel as u32];
    layout.extend(views.iter().map(|t| t.layout().offset() as u32));
    for d in (0..rank).rev() {
        layout.push(dims[d] as u32);
        layout.extend(dim_strides.iter().map(|s| s[d] as u32));
    }
    let scalars = if program.scalars.is_empty() { vec![0.0] } else { program.scalars.clone() };
    let code = program.encode();
    with_client!(device, c => {
        let layout_h = upload_u32(c, &layout);
        let scalars_h = c.create_from_slice(bytemuck::cast_slice(&scalars));
        macro_rules! launch {
            ($i:ty, $o:ty) => {{
                let mut ins = SequenceArg::new();
                for t in &views {
                    ins.push(array(buffer(t), dtype));
                }
                let mut outs = SequenceArg::new();
                for t in &outputs {
                    outs.push(array(buffer(t), out_dtype));
                }
                unsafe {
                    kernels::fused_elementwise::launch_unchecked::<$i, $o, _>(
                        c,
                        grid(numel, ELEMENTWISE_CUBE),
                        CubeDim::new_1d(ELEMENTWISE_CUBE),
                        ins,
                        outs,
                        ArrayArg::from_raw_parts(scalars_h.clone(), scalars.len()),
                        ArrayArg::from_raw_parts(layout_h.clone(), layout.len()),
                        rank,
                        views.len(),
                        code.clone(),
                        program.outputs.clone(),
                    )
                }
            }};
            ($i:ty) => {{
                match out_dtype {
                    DType::F32 => launch!($i, f32),
                    DType::F16 => launch!($i, ::half::f16),
                    DType::BF16 => launch!($i, ::half::bf16),
                    _ => unreachable!("checked float"),
                }
            }};
        }
        match dtype {
            DType::F32 => launch!(f32),
            DType::F16 => launch!(::half::f16),
            DType::BF16 => launch!(::half::bf16),
            _ => unreachable!("checked float"),
        }
    });
    Ok(outputs)
}

/// The CPU path: instruction by instruction over blocks of elements that stay in L1, so a
/// fused chain costs one pass over memory and no per-element dispatch.
fn cpu_fused(views: &[Tensor], shape: &[usize], program: &FusedProgram, out_dtype: DType) -> Vec<Tensor> {
    const BLOCK: usize = 1024;
    let numel: usize = shape.iter().product();
    let values: Vec<std::borrow::Cow<[f32]>> = views.iter().map(cpu::read_f32).collect();
    let mut outputs: Vec<Vec<f32>> = (0..program.outputs.len()).map(|_| nextflow_runtime::CpuBuffer::scratch_f32(numel)).collect();
    let mut blocks: Vec<Vec<&mut [f32]>> = Vec::new();
    for out in outputs.iter_mut() {
        for (b, chunk) in out.chunks_mut(BLOCK).enumerate() {
            if blocks.len() <= b {
                blocks.push(Vec::new());
            }
            blocks[b].push(chunk);
        }
    }
    let run = |(b, outs): (usize, Vec<&mut [f32]>)| {
        let start = b * BLOCK;
        let len = BLOCK.min(numel - start);
        let mut regs: Vec<std::borrow::Cow<[f32]>> = Vec::with_capacity(program.instrs.len());
        for i in &program.instrs {
            if let FusedInstr::Load(a) = *i {
                regs.push(std::borrow::Cow::Borrowed(&values[a][start..start + len]));
                continue;
            }
            let col: Vec<f32> = match *i {
                FusedInstr::Load(_) => unreachable!(),
                FusedInstr::Scalar(a) => vec![program.scalars[a]; len],
                FusedInstr::Unary(op, a) => regs[a].iter().map(|&x| reference::unary_scalar(op, x)).collect(),
                FusedInstr::Binary(op, a, b) => {
                    let (x, y) = (&regs[a][..], &regs[b][..]);
                    match op {
                        BinaryOp::Add => x.iter().zip(y).map(|(p, q)| p + q).collect(),
                        BinaryOp::Sub => x.iter().zip(y).map(|(p, q)| p - q).collect(),
                        BinaryOp::Mul => x.iter().zip(y).map(|(p, q)| p * q).collect(),
                        BinaryOp::Div => x.iter().zip(y).map(|(p, q)| p / q).collect(),
                        BinaryOp::Max => x.iter().zip(y).map(|(p, q)| p.max(*q)).collect(),
                    }
                }
                FusedInstr::SiluMul(a, b) => regs[a].iter().zip(regs[b].iter()).map(|(x, y)| x / (1.0 + (-x).exp()) * y).collect(),
                FusedInstr::Round(DType::BF16, a) => regs[a].iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
                FusedInstr::Round(_, a) => regs[a].iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
            };
            regs.push(std::borrow::Cow::Owned(col));
        }
        for (out, &r) in outs.into_iter().zip(&program.outputs) {
            out.copy_from_slice(&regs[r]);
        }
    };
    if numel >= 1 << 15 {
        // 16 blocks (16 K elements) per task.
        crate::pool::chunks_mut(&mut blocks, 16, &|start, bs| bs.iter_mut().enumerate().for_each(|(j, b)| run((start + j, std::mem::take(b)))));
    } else {
        blocks.into_iter().enumerate().for_each(run);
    }
    let device = views[0].device();
    outputs.iter().map(|v| cpu::write_f32(v, out_dtype, shape, device)).collect()
}
