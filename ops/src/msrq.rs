//! Multi-scale residual quantization (spec §1–§2): nearest-code search (plain squared L2
//! or TokenFlow's dual codebook with a shared index) and VAR's phi tick tables. The encode
//! and decode loops over a schedule are graphs of the model crate (`nextflow_model::msrq`).

use crate::gpu::{self, array, buffer, with_client, with_dtype};
use crate::{contiguous, cpu};
use cubecl::prelude::*;
use nextflow_runtime::{cubecl, DType, Error, Result, Tensor};
use num_traits::Float;

/// Largest `k` of [`Codebook::nearest`] (the kernel keeps the list in registers).
pub const MAX_TOP_K: usize = 16;

/// A codebook `[vocab, dim]` and how distances are measured.
#[derive(Clone, Debug)]
pub struct Codebook {
    /// Rows as distances and lookups use them (per-branch normalized in the dual form).
    table: Tensor,
    /// Dual form: the first `split` dims are the semantic branch, the rest the pixel one.
    split: usize,
    w_sem: f32,
    w_pix: f32,
}

/// Nearest codes of each row: indices `[rows, k]` (u32) and distances `[rows, k]` (f32),
/// ascending; `k = 1` is the plain argmin.
#[derive(Clone, Debug)]
pub struct Nearest {
    pub indices: Tensor,
    pub distances: Tensor,
}

impl Codebook {
    /// VAR's codebook: squared L2 to raw rows.
    pub fn plain(table: &Tensor) -> Result<Codebook> {
        if table.rank() != 2 || table.shape()[0] == 0 {
            return Err(Error::Shape { op: "codebook", msg: format!("expected [vocab, dim], got {:?}", table.shape()) });
        }
        crate::check_float("codebook", table)?;
        Ok(Codebook { table: contiguous(table)?, split: 0, w_sem: 1.0, w_pix: 1.0 })
    }

    /// TokenFlow's dual codebook: semantic `[vocab, ds]` and pixel `[vocab, dp]` rows, each
    /// L2-normalized; one shared index minimizes `w_sem·d_sem + w_pix·d_pix` between the
    /// per-branch normalized input and code (spec §2.2; TokenFlow uses weights 1 and 1).
    pub fn dual(semantic: &Tensor, pixel: &Tensor, w_sem: f32, w_pix: f32) -> Result<Codebook> {
        if semantic.rank() != 2 || pixel.rank() != 2 || semantic.shape()[0] != pixel.shape()[0] || semantic.shape()[0] == 0 {
            return Err(Error::Shape { op: "codebook", msg: format!("expected [vocab, ds] and [vocab, dp], got {:?} and {:?}", semantic.shape(), pixel.shape()) });
        }
        crate::check_same("codebook", semantic, pixel)?;
        let normalize = |t: &Tensor| -> Result<Tensor> {
            let v = t.to_f64_vec()?;
            let d = t.shape()[1];
            let out: Vec<f64> = v
                .chunks(d)
                .flat_map(|r| {
                    let n = r.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                    r.iter().map(move |x| x / n)
                })
                .collect();
            Tensor::from_f64(&out, t.dtype(), t.shape(), &nextflow_runtime::Device::cpu())
        };
        let joined = crate::concat(&[&normalize(semantic)?, &normalize(pixel)?], 1)?.to_device(semantic.device())?;
        Ok(Codebook { table: joined, split: semantic.shape()[1], w_sem, w_pix })
    }

    pub fn vocab(&self) -> usize {
        self.table.shape()[0]
    }
    pub fn dim(&self) -> usize {
        self.table.shape()[1]
    }
    /// The rows that decoding sums (normalized per branch in the dual form).
    pub fn table(&self) -> &Tensor {
        &self.table
    }
    /// `(split, w_sem, w_pix)`; split 0 is the plain form.
    pub fn form(&self) -> (usize, f32, f32) {
        (self.split, self.w_sem, self.w_pix)
    }

    /// Distance of one row to one code in T (the shared formula; `z` already normalized).
    fn distance<T: Float>(&self, z: &[T], code: &[T]) -> T {
        let (mut ds, mut dp) = (T::zero(), T::zero());
        for (c, (a, b)) in z.iter().zip(code).enumerate() {
            let d = *a - *b;
            if self.split > 0 && c < self.split {
                ds = ds + d * d;
            } else {
                dp = dp + d * d;
            }
        }
        if self.split > 0 {
            T::from(self.w_sem).unwrap() * ds + T::from(self.w_pix).unwrap() * dp
        } else {
            dp
        }
    }

    /// The row as compared: per-branch `F.normalize` in the dual form.
    fn prepare<T: Float>(&self, z: &mut [T]) {
        if self.split == 0 {
            return;
        }
        let (s, p) = z.split_at_mut(self.split);
        for part in [s, p] {
            let n = part.iter().fold(T::zero(), |a, &v| a + v * v).sqrt().max(T::from(1e-12).unwrap());
            part.iter_mut().for_each(|v| *v = *v / n);
        }
    }

    /// Top-k of one row in T: `(indices, distances)` ascending, first index on ties.
    pub fn nearest_row<T: Float>(&self, z: &[T], table: &[T], k: usize) -> (Vec<u32>, Vec<T>) {
        let mut zr = z.to_vec();
        self.prepare(&mut zr);
        let dim = self.dim();
        let mut best: Vec<(T, u32)> = Vec::with_capacity(k + 1);
        for (v, code) in table.chunks(dim).enumerate() {
            let d = self.distance(&zr, code);
            if best.len() < k || d < best[best.len() - 1].0 {
                let at = best.iter().position(|(bd, _)| d < *bd).unwrap_or(best.len());
                best.insert(at, (d, v as u32));
                best.truncate(k);
            }
        }
        best.into_iter().map(|(d, i)| (i, d)).unzip()
    }

    /// The `k` nearest codes of every row of `z [rows, dim]`.
    pub fn nearest(&self, z: &Tensor, k: usize) -> Result<Nearest> {
        crate::check_same("nearest_codes", &self.table, z)?;
        if z.rank() != 2 || z.shape()[1] != self.dim() {
            return Err(Error::Shape { op: "nearest_codes", msg: format!("z must be [rows, {}], got {:?}", self.dim(), z.shape()) });
        }
        if k == 0 || k > MAX_TOP_K.min(self.vocab()) {
            return Err(Error::Shape { op: "nearest_codes", msg: format!("k = {k} must be in 1..={}", MAX_TOP_K.min(self.vocab())) });
        }
        let rows = z.shape()[0];
        let cpu_path = |t: &[Tensor]| -> Result<Nearest> {
            let zs = cpu::read_f32(&contiguous(&t[0])?).into_owned();
            let table = cpu::read_f32(&t[1]).into_owned();
            let dim = self.dim();
            let found: Vec<(Vec<u32>, Vec<f32>)> = crate::pool::map(rows, 4, &|r| self.nearest_row(&zs[r * dim..][..dim], &table, k));
            let (idx, dist): (Vec<u32>, Vec<f32>) = found.into_iter().flat_map(|(i, d)| i.into_iter().zip(d)).unzip();
            Ok(Nearest { indices: Tensor::from_slice(&idx, &[rows, k], t[0].device())?, distances: Tensor::from_slice(&dist, &[rows, k], t[0].device())? })
        };
        let device = z.device();
        if device.is_cpu() || !crate::on_gpu(device, &[z.dtype(), self.table.dtype()]) || z.dtype() != self.table.dtype() {
            let cpu_dev = nextflow_runtime::Device::cpu();
            let found = cpu_path(&[z.to_device(&cpu_dev)?, self.table.to_device(&cpu_dev)?])?;
            return Ok(Nearest { indices: found.indices.to_device(device)?, distances: found.distances.to_device(device)? });
        }
        let z = contiguous(z)?;
        let indices = gpu::empty(device, DType::U32, &[rows, k])?;
        let distances = gpu::empty(device, DType::F32, &[rows, k])?;
        let dtype = z.dtype();
        with_client!(device, cl => with_dtype!(dtype, E => unsafe {
            nextflow_shaders::image::nearest_codes::launch_unchecked::<E, _>(
                cl, gpu::grid(rows, 64), CubeDim::new_1d(64),
                array(buffer(&z), dtype), array(buffer(&self.table), dtype),
                array(buffer(&indices), DType::U32), array(buffer(&distances), DType::F32),
                rows as u32, self.vocab() as u32, self.w_sem, self.w_pix,
                self.dim(), self.split, k,
            )
        }));
        Ok(Nearest { indices, distances })
    }
}

/// VAR's quant_resi: `phi(h) = (1 − r)·h + r·conv3x3(h)` with one of several convs per scale.
#[derive(Clone, Debug)]
pub struct Phi {
    /// `(weight [c, c, 3, 3], bias [c])` per shared conv.
    pub convs: Vec<(Tensor, Tensor)>,
    pub ratio: f32,
}

impl Phi {
    /// Which conv scale `k` of `scales` uses: VAR's tick table (`np.linspace(a, 1 − a, n)`
    /// with `a = 1/(3n)` for its published n = 4 convs, else `1/(2n)`), the tick nearest to
    /// `k/(K−1)`, first minimum wins; computed as numpy does, since exact ties occur.
    pub fn select(&self, k: usize, scales: usize) -> usize {
        let n = self.convs.len();
        if n <= 1 || scales <= 1 {
            return 0;
        }
        let a = if n == 4 { 1.0 / 3.0 / n as f64 } else { 1.0 / 2.0 / n as f64 };
        let b = 1.0 - a;
        let step = (b - a) / (n - 1) as f64;
        let ticks: Vec<f64> = (0..n).map(|i| if i + 1 == n { b } else { i as f64 * step + a }).collect();
        let at = k as f64 / (scales - 1) as f64;
        let mut best = 0;
        for (i, t) in ticks.iter().enumerate() {
            if (t - at).abs() < (ticks[best] - at).abs() {
                best = i;
            }
        }
        best
    }
}
