//! The native CPU backend: f32 compute (f64 for exact copies), rows in parallel with rayon.

use crate::{reference::unary_scalar, BinaryOp, ReduceOp, UnaryOp};
use half::{bf16, f16};
use nextflow_runtime::{CpuBuffer, DType, Device, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Below this many elements threads cost more than they save.
const PARALLEL_MIN: usize = 1 << 15;

fn cpu_buffer(t: &Tensor) -> &CpuBuffer {
    match t.storage() {
        Storage::Cpu(b) => b,
        Storage::Gpu(_) => unreachable!("the CPU backend only receives CPU tensors"),
    }
}

/// Logical values of a float view as f32.
pub fn read_f32(t: &Tensor) -> Vec<f32> {
    let buf = cpu_buffer(t);
    let l = t.layout();
    let dense = l.is_contiguous();
    let range = l.offset()..l.offset() + t.numel();
    macro_rules! gather {
        ($ty:ty, $conv:expr) => {{
            let s = buf.as_slice::<$ty>();
            if dense {
                s[range].iter().map($conv).collect()
            } else {
                l.offsets().map(|o| $conv(&s[o])).collect()
            }
        }};
    }
    match t.dtype() {
        DType::F32 => gather!(f32, |v: &f32| *v),
        DType::F16 => gather!(f16, |v: &f16| v.to_f32()),
        DType::BF16 => gather!(bf16, |v: &bf16| v.to_f32()),
        DType::U32 => gather!(u32, |v: &u32| *v as f32),
        DType::I32 => gather!(i32, |v: &i32| *v as f32),
        DType::U8 => gather!(u8, |v: &u8| *v as f32),
    }
}

/// Wraps f32 results as a new contiguous tensor of `dtype` on the CPU.
pub fn write_f32(values: &[f32], dtype: DType, shape: &[usize], device: &Device) -> Tensor {
    let mut buf = CpuBuffer::filled(values.len() * dtype.size(), 0);
    match dtype {
        DType::F32 => buf.as_mut_slice::<f32>().copy_from_slice(values),
        DType::F16 => buf.as_mut_slice::<f16>().iter_mut().zip(values).for_each(|(o, v)| *o = f16::from_f32(*v)),
        DType::BF16 => buf.as_mut_slice::<bf16>().iter_mut().zip(values).for_each(|(o, v)| *o = bf16::from_f32(*v)),
        DType::U32 => buf.as_mut_slice::<u32>().iter_mut().zip(values).for_each(|(o, v)| *o = *v as u32),
        DType::I32 => buf.as_mut_slice::<i32>().iter_mut().zip(values).for_each(|(o, v)| *o = *v as i32),
        DType::U8 => buf.as_mut_slice::<u8>().iter_mut().zip(values).for_each(|(o, v)| *o = *v as u8),
    }
    Tensor::from_storage(Storage::Cpu(buf), Layout::contiguous(shape), dtype, device.clone())
}

fn map_f32(values: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    if values.len() >= PARALLEL_MIN {
        values.par_iter_mut().for_each(|v| *v = f(*v));
    } else {
        values.iter_mut().for_each(|v| *v = f(*v));
    }
}

/// Applies `f` to each row of `n` values, in parallel when it pays.
fn for_rows(data: &mut [f32], n: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    if data.len() >= PARALLEL_MIN {
        data.par_chunks_mut(n).for_each(f);
    } else {
        data.chunks_mut(n).for_each(f);
    }
}

pub fn unary(x: &Tensor, op: UnaryOp) -> Tensor {
    let mut v = read_f32(x);
    map_f32(&mut v, |a| unary_scalar(op, a as f64) as f32);
    write_f32(&v, x.dtype(), x.shape(), x.device())
}

/// Copy with conversion; exact for every pair of dtypes (goes through f64).
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let values = x.to_f64_vec()?;
    Tensor::from_bytes(&dtype.f64_to_bytes(&values), dtype, x.shape(), x.device())
}

pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp, shape: &[usize]) -> Result<Tensor> {
    let (a, b) = (a.broadcast_to(shape)?, b.broadcast_to(shape)?);
    if !a.dtype().is_float() {
        // Integers: exact arithmetic through f64.
        let (x, y) = (a.to_f64_vec()?, b.to_f64_vec()?);
        let out: Vec<f64> = x.iter().zip(&y).map(|(p, q)| crate::reference::binary_scalar(op, *p, *q)).collect();
        return Tensor::from_f64(&out, a.dtype(), shape, a.device());
    }
    let (x, y) = (read_f32(&a), read_f32(&b));
    let f = |(p, q): (&f32, &f32)| match op {
        BinaryOp::Add => p + q,
        BinaryOp::Sub => p - q,
        BinaryOp::Mul => p * q,
        BinaryOp::Div => p / q,
        BinaryOp::Max => p.max(*q),
    };
    let out: Vec<f32> = if x.len() >= PARALLEL_MIN {
        x.par_iter().zip(&y).map(f).collect()
    } else {
        x.iter().zip(&y).map(f).collect()
    };
    Ok(write_f32(&out, a.dtype(), shape, a.device()))
}

pub fn reduce(x: &Tensor, op: ReduceOp) -> Tensor {
    let n = *x.shape().last().unwrap();
    let v = read_f32(x);
    let row = |r: &[f32]| match op {
        ReduceOp::Sum => r.iter().sum::<f32>(),
        ReduceOp::Mean => r.iter().sum::<f32>() / n as f32,
        ReduceOp::Max => r.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    };
    let out: Vec<f32> = v.par_chunks(n).map(row).collect();
    write_f32(&out, x.dtype(), &x.shape()[..x.rank() - 1], x.device())
}

pub fn argmax(x: &Tensor) -> Tensor {
    let n = *x.shape().last().unwrap();
    let v = read_f32(x);
    let ids: Vec<u32> =
        v.par_chunks(n).map(|r| (0..n).fold(0, |best, i| if r[i] > r[best] { i } else { best }) as u32).collect();
    Tensor::from_slice(&ids, &x.shape()[..x.rank() - 1], x.device()).expect("shape matches")
}

pub fn softmax(x: &Tensor) -> Tensor {
    let n = *x.shape().last().unwrap();
    let mut v = read_f32(x);
    for_rows(&mut v, n, |r| {
        let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for a in r.iter_mut() {
            *a = (*a - max).exp();
            sum += *a;
        }
        let inv = 1.0 / sum;
        r.iter_mut().for_each(|a| *a *= inv);
    });
    write_f32(&v, x.dtype(), x.shape(), x.device())
}

pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Tensor {
    let n = *x.shape().last().unwrap();
    let w = read_f32(weight);
    let mut v = read_f32(x);
    for_rows(&mut v, n, |r| {
        let scale = 1.0 / (r.iter().map(|a| a * a).sum::<f32>() / n as f32 + eps).sqrt();
        r.iter_mut().zip(&w).for_each(|(a, w)| *a = *a * scale * w);
    });
    write_f32(&v, x.dtype(), x.shape(), x.device())
}

/// Ids were range-checked by the caller.
pub fn embedding(table: &Tensor, ids: &[usize], out_shape: &[usize]) -> Result<Tensor> {
    let dim = table.shape()[1];
    let table = crate::contiguous(table)?;
    let bytes = table.to_bytes()?;
    let row = dim * table.dtype().size();
    let mut out = Vec::with_capacity(ids.len() * row);
    for &id in ids {
        out.extend_from_slice(&bytes[id * row..(id + 1) * row]);
    }
    Tensor::from_bytes(&out, table.dtype(), out_shape, table.device())
}

pub fn concat(parts: &[&Tensor], dim: usize, shape: &[usize]) -> Result<Tensor> {
    let size = parts[0].dtype().size();
    let outer: usize = shape[..dim].iter().product();
    let bytes: Vec<Vec<u8>> = parts.iter().map(|p| p.to_bytes()).collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(shape.iter().product::<usize>() * size);
    for o in 0..outer {
        for (p, b) in parts.iter().zip(&bytes) {
            let chunk = p.shape()[dim..].iter().product::<usize>() * size;
            out.extend_from_slice(&b[o * chunk..(o + 1) * chunk]);
        }
    }
    Tensor::from_bytes(&out, parts[0].dtype(), shape, parts[0].device())
}
