//! Multi-scale residual quantization on the compiler (spec §1.2–1.3): the encode and decode
//! loops over a schedule of `(h, w)` scales, with VAR's optional phi blend, recorded as
//! lazy graphs. The codebook itself (its nearest-code search and tick tables) is
//! [`nextflow_ops::msrq`].

use crate::transformer::graph;
use crate::Result;
use nextflow_compiler::{Graph, Lazy};
use nextflow_ops::msrq::{Codebook, Phi};
use nextflow_ops::{Conv2d, Resize};
use nextflow_runtime::{Error, Tensor};
use std::sync::Arc;

/// What [`encode`] returns.
#[derive(Clone, Debug)]
pub struct Encoding {
    /// Per scale `[b, h_k·w_k]` u32, row-major cells.
    pub indices: Vec<Tensor>,
    /// Σ of the (upsampled, phi-blended) codes: the map the decoder sees.
    pub f_hat: Tensor,
    /// ‖f − f_hat‖ after each scale.
    pub residual_norms: Vec<f64>,
}

fn check_schedule(op: &'static str, schedule: &[(usize, usize)], h: usize, w: usize) -> Result<()> {
    if schedule.is_empty() || schedule.iter().any(|&(a, b)| a == 0 || b == 0 || a > h || b > w) {
        return Err(Error::Shape { op, msg: format!("schedule {schedule:?} must be non-empty, each (h, w) within {h}x{w}") }.into());
    }
    Ok(())
}

/// Codes of `indices [b, h·w]` as a feature map `[b, dim, h, w]` (a view of the gathered rows).
pub fn lookup(table: &Lazy, indices: &Lazy, h: usize, w: usize) -> Result<Lazy> {
    let b = indices.shape()[0];
    let rows = table.embedding(&indices.reshape(&[b * h * w])?)?;
    Ok(rows.reshape(&[b, h, w, table.shape()[1]])?.permute(&[0, 3, 1, 2])?)
}

/// Scale `k`'s codes `[b, dim, hk, wk]` bicubic-upsampled to `h × w` and (phi) blended.
pub(crate) fn upsampled(g: &Graph, codes: &Lazy, h: usize, w: usize, phi: Option<&Phi>, k: usize, scales: usize) -> Result<Lazy> {
    let up = codes.interpolate(h, w, Resize::Bicubic)?;
    let Some(phi) = phi else { return Ok(up) };
    let (weight, bias) = &phi.convs[phi.select(k, scales)];
    let conv = up.conv2d(&g.input(weight)?, Some(&g.input(bias)?), Conv2d::same(3), false, None)?;
    let r = phi.ratio as f64;
    let keep = g.input(&Tensor::from_f64(&[1.0 - r], up.dtype(), &[1], &g.device())?)?;
    let mix = g.input(&Tensor::from_f64(&[r], up.dtype(), &[1], &g.device())?)?;
    Ok(up.mul(&keep)?.add(&conv.mul(&mix)?)?)
}

/// MSRQ decode recorded into `table`'s graph: `f_hat = Σ_k phi(bicubic(code(idx_k), h × w))`,
/// the same arithmetic, in the same order, as [`encode`] accumulates.
pub fn record_decode(table: &Lazy, indices: &[Lazy], schedule: &[(usize, usize)], out_hw: (usize, usize), phi: Option<&Phi>) -> Result<Lazy> {
    let (h, w) = out_hw;
    check_schedule("msrq_decode", schedule, h, w)?;
    if indices.len() != schedule.len() {
        return Err(Error::Shape { op: "msrq_decode", msg: format!("{} index maps for {} scales", indices.len(), schedule.len()) }.into());
    }
    let g = table.graph();
    let b = indices[0].shape()[0];
    let mut f_hat: Option<Lazy> = None;
    for (k, (idx, &(hk, wk))) in indices.iter().zip(schedule).enumerate() {
        if idx.shape() != [b, hk * wk] {
            return Err(Error::Shape { op: "msrq_decode", msg: format!("scale {k} indices {:?}, expected [{b}, {}]", idx.shape(), hk * wk) }.into());
        }
        let up = upsampled(g, &lookup(table, idx, hk, wk)?, h, w, phi, k, schedule.len())?;
        f_hat = Some(match f_hat {
            Some(f) => f.add(&up)?,
            None => up,
        });
    }
    Ok(f_hat.expect("a non-empty schedule"))
}

/// [`record_decode`] as one graph of its own: per-scale indices → `f_hat [b, dim, h, w]`.
pub fn decode(indices: &[Tensor], codebook: &Codebook, schedule: &[(usize, usize)], out_hw: (usize, usize), phi: Option<&Phi>) -> Result<Tensor> {
    let g = graph(codebook.table().device());
    let idx = indices.iter().map(|t| g.input(t)).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(record_decode(&g.input(codebook.table())?, &idx, schedule, out_hw, phi)?.realize()?)
}

/// MSRQ encode of `f [b, dim, h, w]` as one graph: per scale, area-downsample the residual,
/// pick the nearest codes, bicubic-upsample them back, (phi), accumulate, subtract. The last
/// scale is usually the full grid, where both resizes are identities.
pub fn encode(f: &Tensor, codebook: &Arc<Codebook>, schedule: &[(usize, usize)], phi: Option<&Phi>) -> Result<Encoding> {
    if f.rank() != 4 || f.shape()[1] != codebook.dim() {
        return Err(Error::Shape { op: "msrq_encode", msg: format!("f must be [b, {}, h, w], got {:?}", codebook.dim(), f.shape()) }.into());
    }
    let (b, c, h, w) = (f.shape()[0], f.shape()[1], f.shape()[2], f.shape()[3]);
    check_schedule("msrq_encode", schedule, h, w)?;
    let g = graph(f.device());
    let table = g.input(codebook.table())?;
    let mut rest = g.input(f)?;
    let (mut f_hat, mut indices, mut rests): (Option<Lazy>, Vec<Lazy>, Vec<Lazy>) = (None, Vec::new(), Vec::new());
    for (k, &(hk, wk)) in schedule.iter().enumerate() {
        let z = rest.interpolate(hk, wk, Resize::Area)?;
        let rows = z.permute(&[0, 2, 3, 1])?.reshape(&[b * hk * wk, c])?;
        let idx = rows.nearest_codes(codebook)?.reshape(&[b, hk * wk])?;
        let up = upsampled(&g, &lookup(&table, &idx, hk, wk)?, h, w, phi, k, schedule.len())?;
        f_hat = Some(match f_hat {
            Some(f) => f.add(&up)?,
            None => up.clone(),
        });
        rest = rest.sub(&up)?;
        rests.push(rest.clone());
        indices.push(idx);
    }
    let f_hat = f_hat.expect("a non-empty schedule");
    let outputs: Vec<&Lazy> = indices.iter().chain([&f_hat]).chain(&rests).collect();
    let mut out = g.realize(&outputs)?;
    let residual_norms = out.split_off(schedule.len() + 1).iter().map(|r| Ok(r.to_f64_vec()?.iter().map(|v| v * v).sum::<f64>().sqrt())).collect::<Result<_>>()?;
    let f_hat = out.pop().expect("f_hat");
    Ok(Encoding { indices: out, f_hat, residual_norms })
}
