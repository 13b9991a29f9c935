//! The native CPU backend: f32 compute (f64 for exact copies), parallel over chunks or
//! rows on the CPU pool ([`crate::pool`]) once a tensor is big enough to pay for threads.

use crate::{reference, BinaryOp, ReduceOp, UnaryOp};
use half::{bf16, f16};
use nextflow_runtime::{CpuBuffer, DType, Device, Layout, Result, Storage, Tensor};
use std::borrow::Cow;

/// Below this many elements threads cost more than they save.
const PARALLEL_MIN: usize = 1 << 15;
/// Elements per parallel work item.
const CHUNK: usize = 1 << 14;

fn cpu_buffer(t: &Tensor) -> &CpuBuffer {
    match t.storage() {
        Storage::Cpu(b) => b,
        Storage::Gpu(_) => unreachable!("the CPU backend only receives CPU tensors"),
    }
}

/// The whole f32 buffer under a CPU tensor (index it with the layout's offset and strides).
pub(crate) fn buffer_f32(t: &Tensor) -> &[f32] {
    cpu_buffer(t).as_slice::<f32>()
}

/// `t` itself when it is f32 with dense rows (unit last stride, next-to-last stride = the
/// row length), else a dense f32 copy: rows can then be read in place.
pub(crate) fn rows_dense(t: &Tensor) -> Tensor {
    let (r, st) = (t.rank(), t.strides());
    let n = *t.shape().last().unwrap_or(&1);
    if t.dtype() == DType::F32 && r >= 2 && st[r - 1] == 1 && st[r - 2] == n {
        return t.clone();
    }
    let v = read_f32(t).into_owned();
    from_vec(v, DType::F32, t.shape(), t.device())
}

/// Fills `out` (logical elements `start..start + out.len()` of `t`) with f32 values.
fn gather_f32(t: &Tensor, start: usize, out: &mut [f32]) {
    let buf = cpu_buffer(t);
    let l = t.layout();
    let dense = l.is_contiguous();
    let len = out.len();
    macro_rules! gather {
        ($ty:ty, $conv:expr) => {{
            let s = buf.as_slice::<$ty>();
            if dense {
                let base = l.offset() + start;
                out.iter_mut().zip(&s[base..base + len]).for_each(|(o, v)| *o = $conv(v));
            } else {
                // Walk whole runs of the innermost dim: one offset computation per run.
                let inner = *l.shape().last().unwrap();
                let step = *l.strides().last().unwrap();
                let mut i = 0;
                while i < len {
                    let col = (start + i) % inner;
                    let run = (inner - col).min(len - i);
                    let base = l.offset_of(start + i);
                    for (k, o) in out[i..i + run].iter_mut().enumerate() {
                        *o = $conv(&s[base + k * step]);
                    }
                    i += run;
                }
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

/// [`par_fill`] in chunks of whole rows of `n`, so no row straddles two threads.
fn par_fill_rows<T: Send>(out: &mut [T], n: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if out.len() >= PARALLEL_MIN {
        crate::pool::chunks_mut(out, (CHUNK / n.max(1)).max(1) * n.max(1), &f);
    } else {
        f(0, out);
    }
}

/// Fills `out` chunk by chunk, in parallel when it is big: `f(first_index, chunk)`.
fn par_fill<T: Send>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync) {
    if out.len() >= PARALLEL_MIN {
        crate::pool::chunks_mut(out, CHUNK, &f);
    } else {
        f(0, out);
    }
}

/// Logical values of a view as f32: borrowed when it already is dense f32.
pub fn read_f32(t: &Tensor) -> Cow<'_, [f32]> {
    if t.dtype() == DType::F32 && t.is_contiguous() {
        let start = t.layout().offset();
        return Cow::Borrowed(&cpu_buffer(t).as_slice::<f32>()[start..start + t.numel()]);
    }
    let mut v = vec![0f32; t.numel()];
    par_fill(&mut v, |start, chunk| gather_f32(t, start, chunk));
    Cow::Owned(v)
}

/// A new contiguous tensor of `dtype` whose f32 values `f(first_index, chunk)` writes.
fn write_with(dtype: DType, shape: &[usize], device: &Device, f: impl Fn(usize, &mut [f32]) + Sync) -> Tensor {
    let numel: usize = shape.iter().product();
    let mut buf = CpuBuffer::scratch(numel * dtype.size());
    match dtype {
        DType::F32 => par_fill(buf.as_mut_slice::<f32>(), f),
        _ => {
            let mut tmp = vec![0f32; numel];
            par_fill(&mut tmp, f);
            macro_rules! store {
                ($ty:ty, $conv:expr) => {
                    par_fill(buf.as_mut_slice::<$ty>(), |start, c| {
                        c.iter_mut().zip(&tmp[start..]).for_each(|(o, v)| *o = $conv(*v))
                    })
                };
            }
            match dtype {
                DType::F16 => store!(f16, f16::from_f32),
                DType::BF16 => store!(bf16, bf16::from_f32),
                DType::U32 => store!(u32, |v: f32| v as u32),
                DType::I32 => store!(i32, |v: f32| v as i32),
                DType::U8 => store!(u8, |v: f32| v as u8),
                DType::F32 => unreachable!(),
            }
        }
    }
    Tensor::from_storage(Storage::Cpu(buf), Layout::contiguous(shape), dtype, device.clone())
}

/// A new contiguous tensor shaped like `x` whose rows of `n` f32 values `f(row, values)`
/// transforms in place, starting from x's values (rows in parallel when it pays).
fn map_rows(x: &Tensor, f: impl Fn(&mut [f32]) + Sync + Send) -> Tensor {
    let n = *x.shape().last().unwrap();
    let (dtype, shape) = (x.dtype(), x.shape());
    let fill = |start: usize, c: &mut [f32]| {
        gather_f32(x, start, c);
        for_rows(c, n, &f);
    };
    if dtype == DType::F32 {
        let mut buf = CpuBuffer::scratch(x.numel() * 4);
        par_fill_rows(buf.as_mut_slice::<f32>(), n, fill);
        return Tensor::from_storage(Storage::Cpu(buf), Layout::contiguous(shape), dtype, x.device().clone());
    }
    let mut v = read_f32(x).into_owned();
    for_rows(&mut v, n, &f);
    from_vec(v, dtype, shape, x.device())
}

/// Owned f32 values as a new contiguous tensor of `dtype` on the CPU (no copy for f32).
pub fn from_vec(values: Vec<f32>, dtype: DType, shape: &[usize], device: &Device) -> Tensor {
    debug_assert_eq!(values.len(), shape.iter().product::<usize>());
    if dtype == DType::F32 {
        return Tensor::from_storage(Storage::Cpu(CpuBuffer::from_f32_vec(values)), Layout::contiguous(shape), dtype, device.clone());
    }
    write_f32(&values, dtype, shape, device)
}

/// Wraps f32 values as a new contiguous tensor of `dtype` on the CPU.
pub fn write_f32(values: &[f32], dtype: DType, shape: &[usize], device: &Device) -> Tensor {
    write_with(dtype, shape, device, |start, c| c.copy_from_slice(&values[start..start + c.len()]))
}


/// SwiGLU straight from the buffers when gate and up are f32 views with dense rows of the
/// output's shape (the two halves of a fused gate|up projection are): no gathered copies,
/// the vectorized exp, rows in parallel.
fn swiglu_rows(gate: &Tensor, up: &Tensor, shape: &[usize]) -> Option<Tensor> {
    let dense_rows = |t: &Tensor| {
        let r = t.rank();
        t.dtype() == DType::F32 && t.shape() == shape && r >= 2 && t.strides()[r - 1] == 1 && {
            // Rows evenly spaced: the leading dims collapse to one row stride.
            let row = t.strides()[r - 2];
            (0..r - 2).all(|d| t.shape()[d] == 1 || t.strides()[d] == row * t.shape()[d + 1..r - 1].iter().product::<usize>())
        }
    };
    if !dense_rows(gate) || !dense_rows(up) {
        return None;
    }
    let n = *shape.last()?;
    let rows: usize = shape[..shape.len() - 1].iter().product();
    let (gs, us) = (gate.strides()[gate.rank() - 2], up.strides()[up.rank() - 2]);
    let (gb, ub) = (cpu_buffer(gate).as_slice::<f32>(), cpu_buffer(up).as_slice::<f32>());
    let (go, uo) = (gate.layout().offset(), up.layout().offset());
    let mut out = nextflow_runtime::CpuBuffer::scratch_f32(rows * n);
    par_fill_rows(&mut out, n, |start, c| {
        for (i, o) in c.chunks_mut(n).enumerate() {
            let r = start / n + i;
            crate::simd::silu_mul(&gb[go + r * gs..][..n], &ub[uo + r * us..][..n], o);
        }
    });
    Some(from_vec(out, DType::F32, shape, gate.device()))
}

/// Applies `f` to each row of `n` values, in parallel when it pays.
fn for_rows(data: &mut [f32], n: usize, f: &(impl Fn(&mut [f32]) + Sync + Send)) {
    par_fill_rows(data, n, |_, c| c.chunks_mut(n.max(1)).for_each(f));
}

pub fn unary(x: &Tensor, op: UnaryOp) -> Tensor {
    let v = read_f32(x);
    write_with(x.dtype(), x.shape(), x.device(), |start, c| {
        c.iter_mut().zip(&v[start..]).for_each(|(o, a)| *o = reference::unary_scalar(op, *a))
    })
}

/// Copy with conversion; exact for every pair of dtypes (goes through f64).
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if dtype.is_float() && x.dtype().is_float() {
        // Every float dtype widens to f32 exactly, and one rounding to the target follows.
        let v = read_f32(x);
        return Ok(write_with(dtype, x.shape(), x.device(), |start, c| c.copy_from_slice(&v[start..start + c.len()])));
    }
    let values = x.to_f64_vec()?;
    Tensor::from_bytes(&dtype.f64_to_bytes(&values), dtype, x.shape(), x.device())
}

pub fn binary(a: &Tensor, b: &Tensor, op: BinaryOp, shape: &[usize]) -> Result<Tensor> {
    let (a, b) = (a.broadcast_to(shape)?, b.broadcast_to(shape)?);
    if !a.dtype().is_float() {
        // Integers: exact arithmetic through f64.
        let (x, y) = (a.to_f64_vec()?, b.to_f64_vec()?);
        let out: Vec<f64> = x.iter().zip(&y).map(|(p, q)| reference::binary_scalar(op, *p, *q)).collect();
        return Tensor::from_f64(&out, a.dtype(), shape, a.device());
    }
    let (x, y) = (read_f32(&a), read_f32(&b));
    let f = |p: f32, q: f32| match op {
        BinaryOp::Add => p + q,
        BinaryOp::Sub => p - q,
        BinaryOp::Mul => p * q,
        BinaryOp::Div => p / q,
        BinaryOp::Max => p.max(q),
    };
    Ok(write_with(a.dtype(), shape, a.device(), |start, c| {
        c.iter_mut().zip(x[start..].iter().zip(&y[start..])).for_each(|(o, (p, q))| *o = f(*p, *q))
    }))
}

pub fn reduce(x: &Tensor, op: ReduceOp) -> Tensor {
    let n = *x.shape().last().unwrap();
    let v = read_f32(x);
    let row = |r: &[f32]| match op {
        ReduceOp::Sum => r.iter().sum::<f32>(),
        ReduceOp::Mean => r.iter().sum::<f32>() / n as f32,
        ReduceOp::Max => r.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    };
    let rows_per_task = (CHUNK / n.max(1)).max(1);
    let out: Vec<f32> = crate::pool::map(v.len() / n.max(1), rows_per_task, &|i| row(&v[i * n..][..n]));
    from_vec(out, x.dtype(), &x.shape()[..x.rank() - 1], x.device())
}

pub fn argmax(x: &Tensor) -> Tensor {
    let n = *x.shape().last().unwrap();
    let v = read_f32(x);
    let ids: Vec<u32> = crate::pool::map(v.len() / n.max(1), (CHUNK / n.max(1)).max(1), &|i| {
        let r = &v[i * n..][..n];
        (0..n).fold(0, |best, i| if r[i] > r[best] { i } else { best }) as u32
    });
    Tensor::from_slice(&ids, &x.shape()[..x.rank() - 1], x.device()).expect("shape matches")
}

pub fn softmax(x: &Tensor) -> Tensor {
    map_rows(x, |r| {
        let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for a in r.iter_mut() {
            *a = (*a - max).exp();
            sum += *a;
        }
        let inv = 1.0 / sum;
        r.iter_mut().for_each(|a| *a *= inv);
    })
}

pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Tensor {
    let n = *x.shape().last().unwrap();
    let w = read_f32(weight);
    map_rows(x, |r| {
        let scale = 1.0 / (r.iter().map(|a| a * a).sum::<f32>() / n as f32 + eps).sqrt();
        r.iter_mut().zip(w.iter()).for_each(|(a, w)| *a = *a * scale * w);
    })
}

/// Ids were range-checked by the caller.
pub fn embedding(table: &Tensor, ids: &[usize], out_shape: &[usize]) -> Result<Tensor> {
    let dim = table.shape()[1];
    let table = crate::contiguous(table)?;
    let row = dim * table.dtype().size();
    let mut out = Vec::with_capacity(ids.len() * row);
    // Read the rows in place: a copy of the whole table per call made text decoding with
    // a 151k-row vocabulary copy 545 MB twice per token.
    if let nextflow_runtime::Storage::Cpu(buf) = table.storage() {
        let bytes = &buf.bytes()[table.layout().offset() * table.dtype().size()..];
        for &id in ids {
            out.extend_from_slice(&bytes[id * row..(id + 1) * row]);
        }
        return Tensor::from_bytes(&out, table.dtype(), out_shape, table.device());
    }
    let bytes = table.to_bytes()?;
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

pub fn swiglu(gate: &Tensor, up: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if let Some(t) = swiglu_rows(gate, up, shape) {
        return Ok(t);
    }
    let (g, u) = (gate.broadcast_to(shape)?, up.broadcast_to(shape)?);
    let (x, y) = (read_f32(&g), read_f32(&u));
    Ok(write_with(gate.dtype(), shape, gate.device(), |start, c| {
        c.iter_mut().zip(x[start..].iter().zip(&y[start..])).for_each(|(o, (a, b))| *o = a / (1.0 + (-a).exp()) * b)
    }))
}
