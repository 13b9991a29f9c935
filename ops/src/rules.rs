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
