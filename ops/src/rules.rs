//! Shape rules: the one place each op's operand shapes are checked and its output shape
//! derived. The eager ops (this crate) and the compiler's lazy graph both call these, so an
//! op is refused with the same message whichever way it is run.

use nextflow_runtime::{Error, Result};

fn err<T>(op: &'static str, msg: String) -> Result<T> {
    Err(Error::Shape { op, msg })
}

/// `a · b`: `[.., m, k] · [.., k, n]` (b 2-D, or with a's batch dims) → `[.., m, n]`.
pub fn matmul(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    if a.len() < 2 || b.len() < 2 {
        return err("matmul", format!("operands need rank >= 2, got {a:?} and {b:?}"));
    }
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (kb, n) = (b[b.len() - 2], b[b.len() - 1]);
    if k != kb {
        return err("matmul", format!("inner dims differ: {a:?} · {b:?}"));
    }
    if b.len() > 2 && b[..b.len() - 2] != a[..a.len() - 2] {
        return err("matmul", format!("batch dims differ: {a:?} · {b:?} (b may also be 2-D)"));
    }
    let mut out = a[..a.len() - 2].to_vec();
    out.extend([m, n]);
    Ok(out)
}

/// A matmul epilogue's operands against the output shape `out`: bias `[n]`, residual `out`.
pub fn matmul_epilogue(out: &[usize], bias: Option<&[usize]>, residual: Option<&[usize]>) -> Result<()> {
    let n = out[out.len() - 1];
    if let Some(b) = bias.filter(|b| *b != [n]) {
        return err("matmul", format!("bias has shape {b:?}, expected [{n}]"));
    }
    if let Some(r) = residual.filter(|r| *r != out) {
        return err("matmul", format!("residual has shape {r:?}, expected {out:?}"));
    }
    Ok(())
}

/// The row length of a last-dim row op's input (rank ≥ 1, last dim non-empty).
pub fn rows(op: &'static str, x: &[usize]) -> Result<usize> {
    match x.last() {
        None => err(op, "needs a tensor of rank >= 1".into()),
        Some(0) => err(op, format!("the last dim of {x:?} is empty")),
        Some(&n) => Ok(n),
    }
}

/// RMSNorm of rows `x` by `weight [n]` with `eps` (finite, ≥ 0); returns the row length.
pub fn rms_norm(op: &'static str, x: &[usize], weight: &[usize], eps: f32) -> Result<usize> {
    let n = rows(op, x)?;
    if weight != [n] {
        return err(op, format!("weight has shape {weight:?}, expected [{n}]"));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return err(op, format!("eps must be finite and >= 0, got {eps}"));
    }
    Ok(n)
}

/// Parts joined along `dim`: equal ranks, equal sizes off `dim`.
pub fn concat(parts: &[&[usize]], dim: usize) -> Result<Vec<usize>> {
    let first = *parts.first().ok_or(Error::Shape { op: "concat", msg: "needs at least one tensor".into() })?;
    if dim >= first.len() {
        return Err(Error::DimOutOfRange { op: "concat", dim, rank: first.len() });
    }
    for p in &parts[1..] {
        if p.len() != first.len() || (0..first.len()).any(|d| d != dim && p[d] != first[d]) {
            return err("concat", format!("cannot join {first:?} and {p:?} along dim {dim}"));
        }
    }
    let mut shape = first.to_vec();
    shape[dim] = parts.iter().map(|p| p[dim]).sum();
    Ok(shape)
}

/// Convolution of `x [n, cin, h, w]` (nearest ×2 first when `upsample2x`) by
/// `weight [cout, cin, kh, kw]` with geometry `p`, a `[cout]` bias and a residual of the
/// output's shape → `[n, cout, oh, ow]`.
pub fn conv2d(x: &[usize], weight: &[usize], bias: Option<&[usize]>, residual: Option<&[usize]>, p: crate::Conv2d, upsample2x: bool) -> Result<[usize; 4]> {
    if x.len() != 4 || weight.len() != 4 || weight[1] != x[1] {
        return err("conv2d", format!("expected x [n, cin, h, w] and weight [cout, cin, kh, kw], got {x:?} and {weight:?}"));
    }
    let up = if upsample2x { 2 } else { 1 };
    let (n, h, w) = (x[0], up * x[2], up * x[3]);
    let (cout, kh, kw) = (weight[0], weight[2], weight[3]);
    if let Some(b) = bias.filter(|b| *b != [cout]) {
        return err("conv2d", format!("bias has shape {b:?}, expected [{cout}]"));
    }
    if p.stride == 0 {
        return err("conv2d", "stride must be >= 1".into());
    }
    let Some((oh, ow)) = p.out_size(h, w, kh, kw) else {
        return err("conv2d", format!("a {kh}x{kw} kernel does not fit a padded {h}x{w} input"));
    };
    let out = [n, cout, oh, ow];
    if let Some(r) = residual.filter(|r| *r != out) {
        return err("conv2d", format!("residual has shape {r:?}, expected {out:?}"));
    }
    Ok(out)
}

/// GroupNorm of `x [n, c, ..]` in `groups` groups with `[c]` gamma and beta.
pub fn group_norm(x: &[usize], groups: usize, gamma: &[usize], beta: &[usize]) -> Result<()> {
    if x.len() < 2 {
        return err("group_norm", format!("expected [n, c, ...], got {x:?}"));
    }
    let c = x[1];
    if groups == 0 || c % groups != 0 {
        return err("group_norm", format!("{groups} groups do not divide {c} channels"));
    }
    if gamma != [c] || beta != [c] {
        return err("group_norm", format!("gamma {gamma:?} and beta {beta:?} must be [{c}]"));
    }
    Ok(())
}

/// An NCHW resize of `x [n, c, h, w]` to `out_h × out_w` → the output shape.
pub fn interpolate(x: &[usize], out_h: usize, out_w: usize) -> Result<[usize; 4]> {
    if x.len() != 4 {
        return err("interpolate", format!("expected [n, c, h, w], got {x:?}"));
    }
    if out_h == 0 || out_w == 0 || x[2] == 0 || x[3] == 0 {
        return err("interpolate", format!("cannot resize {x:?} to {out_h}x{out_w}"));
    }
    Ok([x[0], x[1], out_h, out_w])
}

/// Single-head attention over the positions of `q`, `k`, `v`: one `[n, c, h, w]` shape.
pub fn spatial_attention(q: &[usize], k: &[usize], v: &[usize]) -> Result<()> {
    if q.len() != 4 || q != k || q != v {
        return err("spatial_attention", format!("q, k, v must share one [n, c, h, w] shape, got {q:?}, {k:?}, {v:?}"));
    }
    Ok(())
}

/// Writing `src` into `dst` along `dim` from `start`: `src` is `dst` narrowed there.
pub fn store(dst: &[usize], src: &[usize], dim: usize, start: usize) -> Result<()> {
    let fits = dim < dst.len()
        && src.len() == dst.len()
        && start.checked_add(src[dim]).is_some_and(|end| end <= dst[dim])
        && (0..dst.len()).all(|d| d == dim || src[d] == dst[d]);
    if !fits {
        return err("write_into", format!("cannot write {src:?} into {dst:?} at {start} along dim {dim}"));
    }
    Ok(())
}
