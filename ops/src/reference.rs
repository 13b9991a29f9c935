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

/// Floats the unary formulas run in: f64 for the reference, f32 for the CPU backend.
pub trait Scalar: num_traits::Float {
    fn erf(self) -> Self;
}

impl Scalar for f32 {
    fn erf(self) -> f32 {
        libm::erff(self)
    }
}

impl Scalar for f64 {
    fn erf(self) -> f64 {
        libm::erf(self)
    }
}

/// The unary functions, written once for every float type.
pub fn unary_scalar<T: Scalar>(op: UnaryOp, x: T) -> T {
    let one = T::one();
    let half = T::from(0.5).unwrap();
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => one / x.sqrt(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Silu => x / (one + (-x).exp()),
        UnaryOp::GeluErf => half * x * (one + (x * T::from(std::f64::consts::FRAC_1_SQRT_2).unwrap()).erf()),
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

/// `a [.., m, k] · b [.., k, n] (or [k, n])`, then `+ bias[n]`, activation, `+ residual`.
pub fn matmul(a: &HostArray, b: &HostArray, bias: Option<&HostArray>, act: crate::Activation, residual: Option<&HostArray>) -> HostArray {
    let r = a.shape.len();
    let (m, k) = (a.shape[r - 2], a.shape[r - 1]);
    let n = b.shape[b.shape.len() - 1];
    let batch: usize = a.shape[..r - 2].iter().product();
    let b_batched = b.shape.len() > 2;
    let mut shape = a.shape[..r - 2].to_vec();
    shape.extend([m, n]);
    let mut data = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let (ao, bo) = (bi * m * k, if b_batched { bi * k * n } else { 0 });
        for i in 0..m {
            for j in 0..n {
                let mut acc: f64 = (0..k).map(|p| a.data[ao + i * k + p] * b.data[bo + p * n + j]).sum();
                acc += bias.map_or(0.0, |b| b.data[j]);
                acc = match act {
                    crate::Activation::None => acc,
                    crate::Activation::Silu => unary_scalar(UnaryOp::Silu, acc),
                    crate::Activation::GeluErf => unary_scalar(UnaryOp::GeluErf, acc),
                };
                data[(bi * m + i) * n + j] = acc + residual.map_or(0.0, |r| r.data[(bi * m + i) * n + j]);
            }
        }
    }
    HostArray::new(&shape, data)
}

/// Plain attention: scores, mask, softmax, weighted sum. Shapes as [`crate::attention`];
/// `kv_ranges[b] = (start, end)` are the valid keys of batch row `b` (default: all).
pub fn attention(q: &HostArray, k: &HostArray, v: &HostArray, mask: &crate::Mask, kv_ranges: Option<&[(usize, usize)]>, scale: f64) -> HostArray {
    let (b, hq, sq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (hkv, skv) = (k.shape[1], k.shape[2]);
    let segment: Vec<usize> = match mask {
        crate::Mask::Segments(s) => s.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i, n)).collect(),
        _ => (0..skv).collect(),
    };
    let mut data = vec![0.0; b * hq * sq * d];
    for bi in 0..b {
        let (start, len) = kv_ranges.map_or((0, skv), |l| l[bi]);
        for h in 0..hq {
            let kh = h / (hq / hkv);
            for i in 0..sq {
                let q_pos = skv - sq + i;
                let qrow = &q.data[((bi * hq + h) * sq + i) * d..][..d];
                let visible = |j: usize| {
                    (start..len).contains(&j)
                        && match mask {
                            crate::Mask::None => true,
                            crate::Mask::Causal => j <= q_pos,
                            crate::Mask::Segments(_) => segment[j] <= segment[q_pos],
                        }
                };
                let scores: Vec<Option<f64>> = (0..skv)
                    .map(|j| {
                        visible(j).then(|| {
                            let krow = &k.data[((bi * hkv + kh) * skv + j) * d..][..d];
                            qrow.iter().zip(krow).map(|(x, y)| x * y).sum::<f64>() * scale
                        })
                    })
                    .collect();
                let max = scores.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| s.map_or(0.0, |s| (s - max).exp())).collect();
                let total: f64 = weights.iter().sum();
                if total == 0.0 {
                    continue;
                }
                let out = &mut data[((bi * hq + h) * sq + i) * d..][..d];
                for (j, w) in weights.iter().enumerate() {
                    let vrow = &v.data[((bi * hkv + kh) * skv + j) * d..][..d];
                    for c in 0..d {
                        out[c] += w / total * vrow[c];
                    }
                }
            }
        }
    }
    HostArray::new(&q.shape, data)
}

/// Rotate-half RoPE with angles `pos[axis[i]] · inv_freq[i]` (angles rounded to f32, as
/// devices compute them). `positions` is `[b or 1, s, 3]`.
pub fn rope(x: &HostArray, positions: &HostArray, inv_freq: &[f32], axis: &[u32]) -> HostArray {
    let (b, h, s, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let half = d / 2;
    let mut data = x.data.clone();
    for bi in 0..b {
        let pb = if positions.shape[0] == 1 { 0 } else { bi };
        for hi in 0..h {
            for si in 0..s {
                let row = ((bi * h + hi) * s + si) * d;
                for i in 0..half {
                    let p = positions.data[(pb * s + si) * 3 + axis[i] as usize] as f32;
                    let angle = (p * inv_freq[i]) as f64;
                    let (x1, x2) = (x.data[row + i], x.data[row + i + half]);
                    data[row + i] = x1 * angle.cos() - x2 * angle.sin();
                    data[row + i + half] = x2 * angle.cos() + x1 * angle.sin();
                }
            }
        }
    }
    HostArray::new(&x.shape, data)
}

/// Resize of `[n, c, h, w]` values (the shared formula in f64).
pub fn interpolate(x: &HostArray, out_h: usize, out_w: usize, mode: crate::Resize) -> HostArray {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let mut data = vec![0.0; n * c * out_h * out_w];
    for (o, p) in data.chunks_mut(out_h * out_w).zip(x.data.chunks(h * w)) {
        crate::image::resize_plane(p, h, w, out_h, out_w, mode, o);
    }
    HostArray::new(&[n, c, out_h, out_w], data)
}

pub fn conv2d(x: &HostArray, weight: &HostArray, bias: Option<&HostArray>, p: crate::Conv2d) -> HostArray {
    let (n, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, kh, kw) = (weight.shape[0], weight.shape[2], weight.shape[3]);
    let oh = (h + p.pad[0] + p.pad[1] - kh) / p.stride + 1;
    let ow = (w + p.pad[2] + p.pad[3] - kw) / p.stride + 1;
    let mut data = vec![0.0; n * cout * oh * ow];
    for (o, img) in data.chunks_mut(cout * oh * ow).zip(x.data.chunks(cin * h * w)) {
        crate::image::conv2d_image(img, cin, h, w, &weight.data, cout, kh, kw, bias.map(|b| b.data.as_slice()), p, o);
    }
    HostArray::new(&[n, cout, oh, ow], data)
}

pub fn group_norm(x: &HostArray, groups: usize, gamma: &HostArray, beta: &HostArray, eps: f64, silu: bool) -> HostArray {
    let c = x.shape[1];
    let spatial: usize = x.shape[2..].iter().product();
    let len = c / groups * spatial;
    let mut data = vec![0.0; x.data.len()];
    for (row, (o, v)) in data.chunks_mut(len).zip(x.data.chunks(len)).enumerate() {
        crate::image::group_norm_group(v, (row % groups) * (c / groups), spatial, &gamma.data, &beta.data, eps, silu, o);
    }
    HostArray::new(&x.shape, data)
}
