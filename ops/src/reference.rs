//! Plain CPU references for every op: f64 arithmetic on logical (row-major) values,
//! written for clarity, not speed. Tests compare every device against these.

use crate::{BinaryOp, ReduceOp, UnaryOp};
use nextflow_runtime::{broadcast_shape, DType, Result, Tensor};

/// Host values of a tensor in logical order, widened to f64.
#[derive(Clone, Debug, PartialEq)]
pub struct HostArray {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl HostArray {
    pub fn new(shape: &[usize], data: Vec<f64>) -> HostArray {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "HostArray shape/data mismatch");
        HostArray { shape: shape.to_vec(), data }
    }

    /// Downloads a tensor (any device, any view).
    pub fn of(t: &Tensor) -> Result<HostArray> {
        Ok(HostArray { shape: t.shape().to_vec(), data: t.to_f64_vec()? })
    }

    /// The last dim and the number of rows before it.
    fn rows(&self) -> (usize, usize) {
        let n = *self.shape.last().expect("rank >= 1");
        (self.data.len() / n.max(1), n)
    }
}

pub fn unary_scalar(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
    }
}

pub fn binary_scalar(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
    }
}

pub fn unary(op: UnaryOp, x: &HostArray) -> HostArray {
    HostArray::new(&x.shape, x.data.iter().map(|&v| unary_scalar(op, v)).collect())
}

/// Values as `dtype` would store them (round-trip through its encoding).
pub fn cast(x: &HostArray, dtype: DType) -> HostArray {
    HostArray::new(&x.shape, dtype.bytes_to_f64(&dtype.f64_to_bytes(&x.data)))
}

pub fn binary(op: BinaryOp, a: &HostArray, b: &HostArray) -> HostArray {
    let shape = broadcast_shape("reference", &a.shape, &b.shape).expect("shapes broadcast");
    let numel: usize = shape.iter().product();
    // Index of output element `i` in an operand of shape `s`, broadcasting size-1 dims.
    let source = |s: &[usize], mut i: usize| -> usize {
        let mut index = 0;
        let mut stride = 1;
        for d in (0..shape.len()).rev() {
            let coord = i % shape[d];
            i /= shape[d];
            if d + s.len() >= shape.len() {
                let own = s[d + s.len() - shape.len()];
                if own != 1 {
                    index += coord * stride;
                }
                stride *= own;
            }
        }
        index
    };
    let data = (0..numel).map(|i| binary_scalar(op, a.data[source(&a.shape, i)], b.data[source(&b.shape, i)])).collect();
    HostArray::new(&shape, data)
}

pub fn reduce(op: ReduceOp, x: &HostArray) -> HostArray {
    let (rows, n) = x.rows();
    let data = (0..rows)
        .map(|r| {
            let row = &x.data[r * n..(r + 1) * n];
            match op {
                ReduceOp::Sum => row.iter().sum(),
                ReduceOp::Mean => row.iter().sum::<f64>() / n as f64,
                ReduceOp::Max => row.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect();
    HostArray::new(&x.shape[..x.shape.len() - 1], data)
}

pub fn argmax(x: &HostArray) -> HostArray {
    let (rows, n) = x.rows();
    let data = (0..rows)
        .map(|r| {
            let row = &x.data[r * n..(r + 1) * n];
            // First index of the maximum.
            (0..n).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as f64
        })
        .collect();
    HostArray::new(&x.shape[..x.shape.len() - 1], data)
}

pub fn softmax(x: &HostArray) -> HostArray {
    let (rows, n) = x.rows();
    let mut data = Vec::with_capacity(x.data.len());
    for r in 0..rows {
        let row = &x.data[r * n..(r + 1) * n];
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        data.extend(row.iter().map(|v| (v - max).exp() / sum));
    }
    HostArray::new(&x.shape, data)
}

pub fn rms_norm(x: &HostArray, weight: &HostArray, eps: f64) -> HostArray {
    let (rows, n) = x.rows();
    let mut data = Vec::with_capacity(x.data.len());
    for r in 0..rows {
        let row = &x.data[r * n..(r + 1) * n];
        let scale = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / n as f64 + eps).sqrt();
        data.extend(row.iter().zip(&weight.data).map(|(v, w)| v * scale * w));
    }
    HostArray::new(&x.shape, data)
}

pub fn embedding(table: &HostArray, ids: &HostArray) -> HostArray {
    let dim = table.shape[1];
    let mut data = Vec::with_capacity(ids.data.len() * dim);
    for &id in &ids.data {
        data.extend_from_slice(&table.data[id as usize * dim..(id as usize + 1) * dim]);
    }
    let mut shape = ids.shape.clone();
    shape.push(dim);
    HostArray::new(&shape, data)
}

pub fn concat(parts: &[HostArray], dim: usize) -> HostArray {
    let mut shape = parts[0].shape.clone();
    shape[dim] = parts.iter().map(|p| p.shape[dim]).sum();
    let outer: usize = shape[..dim].iter().product();
    let mut data = Vec::with_capacity(shape.iter().product());
    for o in 0..outer {
        for p in parts {
            let chunk: usize = p.shape[dim..].iter().product();
            data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
        }
    }
    HostArray::new(&shape, data)
}
