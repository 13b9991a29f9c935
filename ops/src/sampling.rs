//! Token sampling (spec §3.4, §4.5): CFG combine, restriction to an id range, temperature,
//! top-k, top-p and a multinomial draw from a counter-based RNG, or argmax when greedy.
//!
//! Results are a pure function of (logits, config, seed, scale, row) and are the same on
//! every backend: the uniform of row `r` is Philox4x32-10 of the counter `(r, scale, 0, 0)`
//! under the key `(seed_lo, seed_hi)`, and the CPU path below repeats the kernel's
//! arithmetic step for step (same f32 operations, same summation order, weights from the
//! same table instead of `exp`), so both pick the same index. The arithmetic contract:
//!
//! * logit `l = clamp(a_c·cond) − clamp(a_u·uncond)` (clamped again), with
//!   `a_c = (1+t)/T`, `a_u = t/T` rounded once to f32 (`T` = 1 when greedy); clamps are to
//!   the finite f32 range, and a cond logit clamped to the bottom (−inf: masked) stays
//!   there whatever uncond holds. NaN logits give unspecified results.
//! * greedy (`T` = 0): the first index of the largest `l` in the id range.
//! * top-k: keep `l >= ` the k-th largest (ties at the k-th all stay), as VAR does.
//! * weight of `l`: level `e = min(ceil(min(m − l, 64)·log2(e)·2^20), 64·2^20)` below the
//!   row max `m`, `w = 2^(−e/2^20)` from a table (relative error < 1e-6 against `exp`),
//!   except `w = 0` at the last level: logits 44.4 or more below the max (and −inf, the
//!   usual mask) are never drawn.
//! * top-p (VAR: sort ascending, `cum = cumsum(softmax)`, drop `cum <= 1 − p` except the
//!   largest): keep levels `e <= φ`, `φ` the largest level with
//!   mass{top-k, level >= φ} > (1 − p)·mass{top-k}. Equal weights stay or go together.
//! * draw: see [`nextflow_shaders::sampling::sample_rows`].

use crate::gpu::{self, array, buffer, with_client, with_dtype};
use crate::{check_float, check_rows, check_same, contiguous, cpu, on_gpu, via_cpu};
use cubecl::prelude::*;
use nextflow_runtime::{cubecl, DType, Device, Error, Result, Tensor};
use nextflow_shaders::sampling::{self as kernels, GROUP, LEVEL_MAX, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1, TABLE_LEN};
use std::sync::OnceLock;

/// How [`sample`] turns logits into one token id per row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// CFG scale `t`: logits are `(1+t)·cond − t·uncond` when an uncond tensor is given.
    pub cfg_scale: f32,
    /// Logits are divided by it; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the `top_k` largest logits (with ties); 0 = off.
    pub top_k: usize,
    /// Keep the smallest set of largest probabilities whose mass reaches `top_p`; in
    /// (0, 1], 1 = off.
    pub top_p: f32,
    /// Only ids in `start..end` can be drawn (e.g. the visual-code rows); `None` = all.
    pub id_range: Option<(usize, usize)>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig { cfg_scale: 0.0, temperature: 1.0, top_k: 0, top_p: 1.0, id_range: None }
    }
}

/// Everything a row needs, validated and resolved to kernel form.
#[derive(Clone, Copy, Debug)]
struct Plan {
    vocab: usize,
    rows: usize,
    start: usize,
    len: usize,
    block: usize,
    has_uncond: bool,
    greedy: bool,
    coef_cond: f32,
    coef_uncond: f32,
    /// 0 = off (also when it keeps the whole range).
    top_k: usize,
    /// `1 − p` when top-p is on.
    one_minus_p: Option<f32>,
    seed: u64,
    scale: u32,
}

fn bad(msg: String) -> Error {
    Error::Shape { op: "sample", msg }
}

/// Units per row: about 16 logits per unit, 16..=256 (a power of two).
fn block_for(len: usize) -> usize {
    (len / 16).next_power_of_two().clamp(16, 256)
}

fn plan(cond: &Tensor, uncond: Option<&Tensor>, cfg: &SamplerConfig, seed: u64, scale: u32) -> Result<Plan> {
    check_float("sample", cond)?;
    let vocab = check_rows("sample", cond)?;
    if let Some(u) = uncond {
        check_same("sample", cond, u)?;
        if u.shape() != cond.shape() {
            return Err(bad(format!("uncond logits {:?} differ from cond logits {:?}", u.shape(), cond.shape())));
        }
    }
    if vocab > u32::MAX as usize / 2 || cond.numel() / vocab > u32::MAX as usize {
        return Err(bad(format!("logits {:?} exceed the u32 indexing of the kernel", cond.shape())));
    }
    let (start, end) = cfg.id_range.unwrap_or((0, vocab));
    if start >= end || end > vocab {
        return Err(bad(format!("id range {start}..{end} is empty or outside the vocabulary of {vocab}")));
    }
    if !cfg.cfg_scale.is_finite() {
        return Err(bad(format!("cfg_scale must be finite, got {}", cfg.cfg_scale)));
    }
    if !(cfg.temperature.is_finite() && cfg.temperature >= 0.0) {
        return Err(bad(format!("temperature must be finite and >= 0, got {}", cfg.temperature)));
    }
    if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
        return Err(bad(format!("top_p must be in (0, 1], got {}", cfg.top_p)));
    }
    let greedy = cfg.temperature == 0.0;
    let divisor = if greedy { 1.0 } else { cfg.temperature as f64 };
    let t = cfg.cfg_scale as f64;
    let coef_cond = ((1.0 + t) / divisor) as f32;
    let coef_uncond = (t / divisor) as f32;
    if !(coef_cond.is_finite() && coef_uncond.is_finite()) {
        return Err(bad(format!("cfg_scale {} / temperature {} overflows f32", cfg.cfg_scale, cfg.temperature)));
    }
    let len = end - start;
    if len > 1 << 24 {
        // The kernel counts in f32, exact below 2^24.
        return Err(bad(format!("id range {start}..{end} holds more than 2^24 ids")));
    }
    Ok(Plan {
        vocab,
        rows: cond.numel() / vocab,
        start,
        len,
        block: block_for(len),
        // t = 0 makes CFG a no-op (and 0·inf would be NaN): the uncond logits are not read.
        has_uncond: uncond.is_some() && coef_uncond != 0.0,
        greedy,
        coef_cond,
        coef_uncond,
        top_k: if cfg.top_k < len { cfg.top_k } else { 0 },
        one_minus_p: (cfg.top_p < 1.0).then_some(1.0 - cfg.top_p),
        seed,
        scale,
    })
}

/// One token id (u32, absolute in the vocabulary) per row of `[.., vocab]` logits: output
/// shape is the logits' shape without the last dim. Row `r` (in row-major order) draws with
/// the Philox counter `(r, scale)` under `seed`. `logits_uncond`, when given, must match
/// `logits_cond` in shape, dtype and device. Float dtypes only.
pub fn sample(logits_cond: &Tensor, logits_uncond: Option<&Tensor>, cfg: &SamplerConfig, seed: u64, scale: u32) -> Result<Tensor> {
    let plan = plan(logits_cond, logits_uncond, cfg, seed, scale)?;
    let out_shape = &logits_cond.shape()[..logits_cond.rank() - 1];
    let device = logits_cond.device();
    let logits_uncond = logits_uncond.filter(|_| plan.has_uncond);
    let run_cpu = |h: &[Tensor]| Ok(sample_cpu(&h[0], h.get(1), &plan, out_shape, h[0].device()));
    let inputs: Vec<&Tensor> = std::iter::once(logits_cond).chain(logits_uncond).collect();
    if device.is_cpu() {
        let owned: Vec<Tensor> = inputs.into_iter().cloned().collect();
        return run_cpu(&owned);
    }
    if !on_gpu(device, &[logits_cond.dtype()]) {
        return via_cpu(&inputs, run_cpu);
    }
    sample_gpu(&contiguous(logits_cond)?, logits_uncond.map(contiguous).transpose()?.as_ref(), &plan, out_shape)
}

/// `[hi (1024), lo (1024), pow (65)]`: `2^(−j/1024)`, `2^(−j/2^20)`, `2^−j` (but 0 for
/// j = 64: the last level weighs nothing), each rounded once from f64.
pub fn weight_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let hi = (0..1024).map(|j| (-(j as f64) / 1024.0).exp2() as f32);
        let lo = (0..1024).map(|j| (-(j as f64) / 1048576.0).exp2() as f32);
        let pow = (0..=64).map(|j| if j < 64 { (-(j as f64)).exp2() as f32 } else { 0.0 });
        let t: Vec<f32> = hi.chain(lo).chain(pow).collect();
        assert_eq!(t.len(), TABLE_LEN);
        t
    })
}

/// High 32 bits of `a·b` from 16-bit limbs, as the kernel computes it.
fn mul_hi(a: u32, b: u32) -> u32 {
    let (a0, a1) = (a & 0xFFFF, a >> 16);
    let (b0, b1) = (b & 0xFFFF, b >> 16);
    let (p01, p10) = (a0 * b1, a1 * b0);
    let mid = ((a0 * b0) >> 16) + (p01 & 0xFFFF) + (p10 & 0xFFFF);
    a1 * b1 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)
}

/// Philox4x32-10 (Salmon et al., SC'11; Random123's `philox4x32`).
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut x0, mut x1, mut x2, mut x3] = counter;
    let [mut k0, mut k1] = key;
    for _ in 0..10 {
        let (hi0, lo0) = (mul_hi(PHILOX_M0, x0), x0.wrapping_mul(PHILOX_M0));
        let (hi1, lo1) = (mul_hi(PHILOX_M1, x2), x2.wrapping_mul(PHILOX_M1));
        (x0, x1, x2, x3) = (hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0);
        k0 = k0.wrapping_add(PHILOX_W0);
        k1 = k1.wrapping_add(PHILOX_W1);
    }
    [x0, x1, x2, x3]
}

/// The uniform in [0, 1) (24 bits) that row `position` of `scale` draws with under `seed`.
pub fn uniform(seed: u64, scale: u32, position: u32) -> f32 {
    let bits = philox4x32_10([position, scale, 0, 0], [seed as u32, (seed >> 32) as u32])[0];
    (bits >> 8) as f32 * (1.0 / 16777216.0)
}

/// The kernel's `min(max(x, MIN), MAX)` (not `f32::clamp`, which keeps NaN).
#[allow(clippy::manual_clamp)]
fn clamp(x: f32) -> f32 {
    x.max(f32::MIN).min(f32::MAX)
}

/// u32 keys in the order of the f32 values (−0 as +0).
fn ordered(l: f32) -> u32 {
    let b = l.to_bits();
    match b {
        0x8000_0000 => 0x8000_0000,
        _ if b >= 0x8000_0000 => !b,
        _ => b | 0x8000_0000,
    }
}

fn level(l: f32, m: f32) -> u32 {
    let x = ((m - l).min(64.0) * std::f32::consts::LOG2_E * 1048576.0).ceil();
    (x as u32).min(LEVEL_MAX)
}

fn weight(table: &[f32], e: u32) -> f32 {
    table[((e >> 10) & 1023) as usize] * table[1024 + (e & 1023) as usize] * table[2048 + (e >> 20) as usize]
}

/// The kernel's fixed-order cube sum: groups of `GROUP` consecutive units serially, then
/// the group sums serially.
fn cube_sum(parts: &[f32]) -> f32 {
    parts.chunks(GROUP).map(|g| g.iter().fold(0.0f32, |acc, p| acc + p)).fold(0.0f32, |acc, g| acc + g)
}

/// Per-unit sequential sums (unit `t` owns offsets `j ≡ t mod block`) of `w[j]` where `keep(j)`.
fn unit_sums(w: &[f32], block: usize, keep: impl Fn(usize) -> bool) -> Vec<f32> {
    (0..block)
        .map(|t| (t..w.len()).step_by(block).filter(|&j| keep(j)).fold(0.0f32, |acc, j| acc + w[j]))
        .collect()
}

/// The kernel's arithmetic for one row; `cond`/`uncond` are the in-range logits.
fn sample_row(cond: &[f32], uncond: Option<&[f32]>, plan: &Plan, position: usize) -> usize {
    let l: Vec<f32> = match uncond {
        None => cond.iter().map(|&c| clamp(c * plan.coef_cond)).collect(),
        Some(u) => cond
            .iter()
            .zip(u)
            .map(|(&c, &u)| {
                let pc = clamp(c * plan.coef_cond);
                if pc > f32::MIN {
                    clamp(pc - clamp(u * plan.coef_uncond))
                } else {
                    pc
                }
            })
            .collect(),
    };
    if plan.greedy {
        return (0..l.len()).fold(0, |best, j| if l[j] > l[best] { j } else { best });
    }
    let m = l.iter().copied().fold(f32::MIN, f32::max);
    let ord: Vec<u32> = l.iter().map(|&x| ordered(x)).collect();
    let theta = if plan.top_k > 0 {
        let mut sorted = ord.clone();
        *sorted.select_nth_unstable_by(plan.top_k - 1, |a, b| b.cmp(a)).1
    } else {
        0
    };
    let table = weight_table();
    let e: Vec<u32> = l.iter().map(|&x| level(x, m)).collect();
    let w: Vec<f32> = e.iter().map(|&e| weight(table, e)).collect();
    let block = plan.block;
    let phi = match plan.one_minus_p {
        None => LEVEL_MAX,
        Some(one_minus_p) => {
            let threshold = one_minus_p * cube_sum(&unit_sums(&w, block, |j| ord[j] >= theta));
            let (mut lo, mut hi) = (0u32, LEVEL_MAX + 1);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if cube_sum(&unit_sums(&w, block, |j| ord[j] >= theta && e[j] >= mid)) > threshold {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        }
    };
    let kept = |j: usize| ord[j] >= theta && e[j] <= phi;
    let sums = unit_sums(&w, block, kept);
    let mut prefix = vec![0f32; block + 1];
    for t in 0..block {
        prefix[t + 1] = prefix[t] + sums[t];
    }
    let last_unit = (0..block).rev().find(|&t| sums[t] > 0.0).unwrap_or(0);
    let total = prefix[block];
    let target = (uniform(plan.seed, plan.scale, position as u32) * total).min(f32::MAX);
    let inside = (0..block).find(|&t| prefix[t] <= target && target < prefix[t + 1]);
    let unit = inside.unwrap_or(last_unit);
    let local = target - prefix[unit];
    let (mut run, mut last) = (0f32, None);
    for j in (unit..l.len()).step_by(block).filter(|&j| kept(j)) {
        run += w[j];
        if w[j] > 0.0 {
            last = Some(j);
        }
        if inside.is_some() && run > local {
            return j;
        }
    }
    last.expect("the drawing unit holds kept mass")
}

fn sample_cpu(cond: &Tensor, uncond: Option<&Tensor>, plan: &Plan, out_shape: &[usize], device: &Device) -> Tensor {
    let c = cpu::read_f32(cond);
    let u = uncond.map(cpu::read_f32);
    let (v, s, len) = (plan.vocab, plan.start, plan.len);
    let mut ids = vec![0u32; plan.rows];
    // Rows in parallel, a few per task (one row is microseconds of work).
    crate::pool::chunks_mut(&mut ids, 8, &|first, part| {
        for (i, id) in part.iter_mut().enumerate() {
            let (r, at) = (first + i, (first + i) * v + s);
            let urow = u.as_ref().map(|u| &u[at..at + len]);
            *id = (s + sample_row(&c[at..at + len], urow, plan, r)) as u32;
        }
    });
    Tensor::from_slice(&ids, out_shape, device).expect("shape matches")
}

fn sample_gpu(cond: &Tensor, uncond: Option<&Tensor>, plan: &Plan, out_shape: &[usize]) -> Result<Tensor> {
    let device = cond.device();
    let dtype = cond.dtype();
    let out = gpu::empty(device, DType::U32, out_shape)?;
    if plan.rows == 0 {
        return Ok(out);
    }
    let table = Tensor::from_slice(weight_table(), &[TABLE_LEN], device)?;
    // The kernel always binds an uncond array; a distinct dummy avoids aliasing bindings.
    let dummy;
    let uncond = match uncond {
        Some(u) => u,
        None => {
            dummy = Tensor::from_f64(&[0.0, 0.0], dtype, &[2], device)?;
            &dummy
        }
    };
    let p = *plan;
    with_client!(device, c => with_dtype!(dtype, E => unsafe {
        kernels::sample_rows::launch_unchecked::<E, _>(
            c,
            gpu::grid(p.rows, 1),
            CubeDim::new_1d(p.block as u32),
            array(buffer(cond), dtype),
            array(buffer(uncond), dtype),
            array(buffer(&table), DType::F32),
            array(buffer(&out), DType::U32),
            p.vocab as u32,
            p.rows as u32,
            p.start as u32,
            p.len as u32,
            p.top_k as u32,
            p.coef_cond,
            p.coef_uncond,
            p.one_minus_p.unwrap_or(0.0),
            std::f32::consts::LOG2_E,
            f32::MIN,
            f32::MAX,
            p.seed as u32,
            (p.seed >> 32) as u32,
            p.scale,
            p.block as u32,
            p.has_uncond,
            p.greedy,
            p.top_k > 0,
            p.one_minus_p.is_some(),
        )
    }));
    Ok(out)
}

/// A plain f64 reference of the VAR sampler's distribution (spec §3.4) for tests: the
/// probability of each id of one row after CFG, id range, temperature, top-k and top-p
/// (sorted ascending, cumulative softmax, drop `cum <= 1 − p` except the largest).
pub fn reference_probabilities(cond: &[f64], uncond: Option<&[f64]>, cfg: &SamplerConfig) -> Vec<f64> {
    let t = cfg.cfg_scale as f64;
    let (start, end) = cfg.id_range.unwrap_or((0, cond.len()));
    let mut l: Vec<f64> = (0..cond.len())
        .map(|i| match uncond {
            // A masked (−inf) cond logit stays masked.
            Some(u) if cond[i] > f64::NEG_INFINITY => (1.0 + t) * cond[i] - t * u[i],
            _ => cond[i],
        })
        .collect();
    for (i, x) in l.iter_mut().enumerate() {
        if i < start || i >= end {
            *x = f64::NEG_INFINITY;
        }
    }
    let mut p = vec![0.0; l.len()];
    if cfg.temperature == 0.0 {
        let best = (0..l.len()).fold(start, |b, i| if l[i] > l[b] { i } else { b });
        p[best] = 1.0;
        return p;
    }
    l.iter_mut().for_each(|x| *x /= cfg.temperature as f64);
    let n_valid = end - start;
    if cfg.top_k > 0 && cfg.top_k < n_valid {
        let mut sorted = l.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let kth = sorted[cfg.top_k - 1];
        l.iter_mut().filter(|x| **x < kth).for_each(|x| *x = f64::NEG_INFINITY);
    }
    let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = l.iter().map(|x| (x - m).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut order: Vec<usize> = (0..l.len()).collect();
    order.sort_by(|&a, &b| w[a].partial_cmp(&w[b]).unwrap());
    let mut keep = vec![true; l.len()];
    if cfg.top_p < 1.0 {
        let mut cum = 0.0;
        for (rank, &i) in order.iter().enumerate() {
            cum += w[i] / total;
            if cum <= 1.0 - cfg.top_p as f64 && rank + 1 < order.len() {
                keep[i] = false;
            }
        }
    }
    let kept_total: f64 = (0..l.len()).filter(|&i| keep[i]).map(|i| w[i]).sum();
    for i in 0..l.len() {
        if keep[i] {
            p[i] = w[i] / kept_total;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn mul_hi_from_limbs_is_exact() {
        for (a, b) in [(0u32, 0u32), (u32::MAX, u32::MAX), (0xD2511F53, 0x12345678), (0xFFFF, 0x10001), (0x8000_0000, 3)] {
            assert_eq!(mul_hi(a, b), ((a as u64 * b as u64) >> 32) as u32);
        }
    }

    #[test]
    fn ordered_keys_follow_float_order() {
        let v = [f32::MIN, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::MAX];
        for w in v.windows(2) {
            assert!(ordered(w[0]) <= ordered(w[1]), "{w:?}");
        }
        assert_eq!(ordered(-0.0), ordered(0.0));
    }

    #[test]
    fn masked_logits_weigh_nothing() {
        let table = weight_table();
        assert_eq!(weight(table, level(f32::MIN, 3.0)), 0.0);
        assert_eq!(weight(table, level(-41.5, 3.0)), 0.0);
        assert!(weight(table, level(-41.0, 3.0)) > 0.0);
        assert_eq!(weight(table, 0), 1.0);
    }

    #[test]
    fn weights_track_exp_closely() {
        let table = weight_table();
        for d in [0.0f32, 1e-6, 0.3, 1.0, 7.25, 20.0, 44.0] {
            let w = weight(table, level(-d, 0.0)) as f64;
            let want = (-(d as f64)).exp();
            assert!((w / want - 1.0).abs() < 1e-6, "d {d}: {w} vs {want}");
        }
    }
}
