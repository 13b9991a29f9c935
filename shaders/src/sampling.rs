//! Token sampling, one row per cube (spec §3.4, §4.5): CFG combine, id range, temperature,
//! top-k, top-p and a multinomial draw whose uniform comes from Philox4x32-10 keyed by
//! (seed, scale, row), or argmax when greedy.
//!
//! Every float step is an exactly rounded IEEE op (add, sub, mul, min/max, ceil) kept out of
//! reach of FMA contraction (a runtime `min`/`max` sits between each product and the add it
//! feeds; CUDA contracts by default), weights come from a table rather than `exp` (whose
//! accuracy differs per backend), and sums run in a fixed order, so `nextflow_ops::sampling`'s
//! CPU twin reproduces every value bit for bit and picks the same index. No sorting:
//! thresholds are found by 8-ary searches with cube-wide counts and sums.

use cubecl::prelude::*;

pub const PHILOX_M0: u32 = 0xD251_1F53;
pub const PHILOX_M1: u32 = 0xCD9E_8D57;
pub const PHILOX_W0: u32 = 0x9E37_79B9;
pub const PHILOX_W1: u32 = 0xBB67_AE85;

/// Fraction bits of a weight level: `e = ceil(log2(max weight / weight) · 2^20)`.
pub const LEVEL_BITS: u32 = 20;
/// The last level: logits 64·ln 2 ≈ 44.4 or more below the row max (and −inf) weigh 0.
pub const LEVEL_MAX: u32 = 64 << LEVEL_BITS;
/// `table[TABLE_HI + j] = 2^(-j/1024)`, `table[TABLE_LO + j] = 2^(-j/2^20)` (j < 1024),
/// `table[TABLE_POW + j] = 2^-j` (j < 64) and `table[TABLE_POW + 64] = 0`:
/// `weight(e) = hi · lo · pow`.
pub const TABLE_HI: u32 = 0;
pub const TABLE_LO: u32 = 1024;
pub const TABLE_POW: u32 = 2048;
pub const TABLE_LEN: usize = 2048 + 65;
/// Thresholds tried per pass of a threshold search (an 8-ary search).
pub const SPLITS: usize = 7;
/// Cube sums add partials serially in groups of this many consecutive units, then the
/// group sums serially: three barriers instead of a log2(block)-level tree.
pub const GROUP: usize = 16;

/// High 32 bits of `a · b`, from 16-bit limbs so that no backend needs a 64-bit product.
#[cube]
pub fn mul_hi(a: u32, b: u32) -> u32 {
    let (a0, a1) = (a & 0xFFFFu32, a >> 16u32);
    let (b0, b1) = (b & 0xFFFFu32, b >> 16u32);
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let mid = ((a0 * b0) >> 16u32) + (p01 & 0xFFFFu32) + (p10 & 0xFFFFu32);
    a1 * b1 + (p01 >> 16u32) + (p10 >> 16u32) + (mid >> 16u32)
}

/// Philox4x32-10 of the counter `(c0, c1, 0, 0)` under the key `(k0, k1)`: the first word.
#[cube]
pub fn philox_first_word(c0: u32, c1: u32, k0: u32, k1: u32) -> u32 {
    let mut x0 = c0;
    let mut x1 = c1;
    let mut x2 = 0u32.runtime();
    let mut x3 = 0u32.runtime();
    let mut key0 = k0;
    let mut key1 = k1;
    #[unroll]
    for _ in 0..10 {
        let hi0 = mul_hi(PHILOX_M0, x0);
        let lo0 = x0 * PHILOX_M0;
        let hi1 = mul_hi(PHILOX_M1, x2);
        let lo1 = x2 * PHILOX_M1;
        x0 = hi1 ^ x1 ^ key0;
        x1 = lo1;
        x2 = hi0 ^ x3 ^ key1;
        x3 = lo0;
        key0 += PHILOX_W0;
        key1 += PHILOX_W1;
    }
    x0
}

/// The combined logit: `clamp(a_c·cond) − clamp(a_u·uncond)`, clamped to finite f32; a cond
/// logit at the bottom (−inf: masked) stays there. The clamps also keep each product from
/// fusing with the subtraction.
#[cube]
fn logit<E: Numeric>(
    cond: &Array<E>,
    uncond: &Array<E>,
    at: usize,
    coef_cond: f32,
    coef_uncond: f32,
    lowest: f32,
    highest: f32,
    #[comptime] has_uncond: bool,
) -> f32 {
    let mut l = f32::min(f32::max(f32::cast_from(cond[at]) * coef_cond, lowest), highest);
    if comptime![has_uncond] {
        let u = f32::min(f32::max(f32::cast_from(uncond[at]) * coef_uncond, lowest), highest);
        if l > lowest {
            l = f32::min(f32::max(l - u, lowest), highest);
        }
    }
    l
}

/// A u32 whose order is the order of the f32 values (−0 sorts as +0).
#[cube]
fn ordered(l: f32) -> u32 {
    let b = u32::reinterpret(l);
    let mut o = b | 0x8000_0000u32;
    if b >= 0x8000_0000u32 {
        o = b ^ 0xFFFF_FFFFu32;
    }
    if b == 0x8000_0000u32 {
        o = 0x8000_0000u32;
    }
    o
}

/// Weight level of `l` below the row max `m`.
#[cube]
fn level(l: f32, m: f32, log2e: f32) -> u32 {
    let x = f32::ceil(f32::min(m - l, 64.0f32) * log2e * 1048576.0f32);
    min(u32::cast_from(x), comptime![LEVEL_MAX])
}

/// `2^(-e / 2^20)` (0 at `LEVEL_MAX`) from the table; the `min` (a no-op: weights are <= 1) keeps the product
/// from fusing into the sum it feeds.
#[cube]
fn weight(table: &Array<f32>, e: u32, highest: f32) -> f32 {
    let hi = table[(comptime![TABLE_HI] + ((e >> 10u32) & 1023u32)) as usize];
    let lo = table[(comptime![TABLE_LO] + (e & 1023u32)) as usize];
    let pow = table[(comptime![TABLE_POW] + (e >> 20u32)) as usize];
    f32::min(hi * lo * pow, highest)
}

/// Cube-wide max of one f32 per unit; every unit receives it.
#[cube]
fn cube_max(partial: f32, shared: &mut SharedMemory<f32>, #[comptime] block: u32) -> f32 {
    let unit = UNIT_POS as usize;
    shared[unit] = partial;
    sync_cube();
    let mut stride = comptime![(block / 2) as usize].runtime();
    while stride > 0 {
        if unit < stride {
            shared[unit] = f32::max(shared[unit], shared[unit + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// `totals[s] = Σ_units local[s]` for `s < width`, in the fixed order of [`GROUP`]: units
/// `16g..16g+16` serially, then the groups serially, each from 0.
#[cube]
fn cube_sums(
    local: &Array<f32>,
    partial: &mut SharedMemory<f32>,
    groups: &mut SharedMemory<f32>,
    totals: &mut SharedMemory<f32>,
    #[comptime] width: usize,
    #[comptime] block: usize,
) {
    let unit = UNIT_POS as usize;
    #[unroll]
    for s in 0..width {
        partial[s * block + unit] = local[s];
    }
    sync_cube();
    let n_groups = comptime![block / GROUP];
    if unit < comptime![width * (block / GROUP)] {
        let first = (unit / n_groups) * block + (unit % n_groups) * GROUP;
        let mut acc = 0.0f32.runtime();
        #[unroll]
        for k in 0..GROUP {
            acc += partial[first + k];
        }
        groups[unit] = acc;
    }
    sync_cube();
    if unit < width {
        let mut acc = 0.0f32.runtime();
        let mut g = 0usize.runtime();
        while g < n_groups {
            acc += groups[unit * n_groups + g];
            g += 1;
        }
        totals[unit] = acc;
    }
    sync_cube();
}

/// The [`SPLITS`] thresholds of one search pass over `(lo, hi)`: evenly spaced, clamped below `hi`.
#[cube]
fn split_points(lo: u32, hi: u32, cuts: &mut Array<u32>) {
    let step = max((hi - lo) / comptime![SPLITS as u32 + 1], 1u32);
    #[unroll]
    for s in 0..SPLITS {
        cuts[s] = min(lo + step * comptime![s as u32 + 1], hi - 1u32);
    }
}

/// One index per row of a dense `[rows, n]` pair of logits, among ids `start..start + len`.
///
/// Unit `t` of the `block` units owns the in-range offsets `j ≡ t (mod block)` and walks
/// them in increasing order; per-unit partials combine by [`cube_sums`]. Steps (greedy
/// stops after the first):
/// 1. `m` = max logit. Greedy: first index of the max, done.
/// 2. top-k: `θ` = largest u32 with `#{ordered(l) >= θ} >= top_k`.
/// 3. top-p: `T` = mass of the top-k set; `φ` = largest level with
///    mass{top-k, level >= φ} > (1 − p)·T (the max's level 0 always stays).
/// 4. Draw: unit masses `s_t`, serial prefix `P` by unit 0, `target = u·P[block]`; the unit
///    with `P[t] <= target < P[t+1]` walks its offsets to the first whose running sum
///    exceeds `target − P[t]` (if none, its last kept offset of nonzero weight; the last
///    unit with mass draws that way when `target >= P[block]`).
///
/// `θ` and `φ` are found by 8-ary search on monotone predicates of exact counts and of
/// fixed-order sums, so any search order (the CPU bisects) lands on the same value.
#[cube(launch_unchecked)]
pub fn sample_rows<E: Numeric>(
    cond: &Array<E>,
    uncond: &Array<E>,
    table: &Array<f32>,
    output: &mut Array<u32>,
    n: u32,
    rows: u32,
    start: u32,
    len: u32,
    top_k: u32,
    coef_cond: f32,
    coef_uncond: f32,
    one_minus_p: f32,
    log2e: f32,
    lowest: f32,
    highest: f32,
    seed_lo: u32,
    seed_hi: u32,
    scale: u32,
    #[comptime] block: u32,
    #[comptime] has_uncond: bool,
    #[comptime] greedy: bool,
    #[comptime] use_top_k: bool,
    #[comptime] use_top_p: bool,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let unit = UNIT_POS as usize;
    let step = comptime![block as usize];
    let base = row * n as usize + start as usize;
    let len = len as usize;
    let mut values = SharedMemory::<f32>::new(comptime![block as usize]);
    let mut indices = SharedMemory::<u32>::new(comptime![block as usize]);

    if comptime![greedy] {
        let mut best = f32::MIN.runtime();
        let mut best_j = len;
        let mut j = unit;
        while j < len {
            let l = logit::<E>(cond, uncond, base + j, coef_cond, coef_uncond, lowest, highest, has_uncond);
            if l > best || best_j == len {
                best = l;
                best_j = j;
            }
            j += step;
        }
        let winner = crate::reduce::cube_argmax(best, best_j as u32, &mut values, &mut indices, block);
        if unit == 0 {
            output[row] = start + winner;
        }
    } else {
        let mut partial = SharedMemory::<f32>::new(comptime![SPLITS * block as usize]);
        let mut groups = SharedMemory::<f32>::new(comptime![SPLITS * block as usize / GROUP]);
        let mut totals = SharedMemory::<f32>::new(comptime![SPLITS]);
        let mut local = Array::<f32>::new(comptime![SPLITS]);
        let mut cuts = Array::<u32>::new(comptime![SPLITS]);

        // 1. Row max (and min, the lower end of the top-k search).
        let mut local_max = f32::MIN.runtime();
        let mut local_min = f32::MAX.runtime();
        let mut j = unit;
        while j < len {
            let l = logit::<E>(cond, uncond, base + j, coef_cond, coef_uncond, lowest, highest, has_uncond);
            local_max = f32::max(local_max, l);
            local_min = f32::min(local_min, l);
            j += step;
        }
        let m = cube_max(local_max, &mut values, block);

        // 2. top-k: keep ordered(l) >= theta.
        let mut theta = 0u32.runtime();
        if comptime![use_top_k] {
            let mut lo = ordered(-cube_max(-local_min, &mut values, block));
            let mut hi = ordered(m) + 1u32;
            let k = f32::cast_from(top_k);
            while hi - lo > 1u32 {
                split_points(lo, hi, &mut cuts);
                #[unroll]
                for s in 0..SPLITS {
                    local[s] = 0.0;
                }
                j = unit;
                while j < len {
                    let o = ordered(logit::<E>(cond, uncond, base + j, coef_cond, coef_uncond, lowest, highest, has_uncond));
                    #[unroll]
                    for s in 0..SPLITS {
                        if o >= cuts[s] {
                            local[s] += 1.0;
                        }
                    }
                    j += step;
                }
                cube_sums(&local, &mut partial, &mut groups, &mut totals, SPLITS, comptime![block as usize]);
                let (mut new_lo, mut new_hi) = (lo, hi);
                #[unroll]
                for s in 0..SPLITS {
                    if totals[s] >= k {
                        new_lo = max(new_lo, cuts[s]);
                    } else {
                        new_hi = min(new_hi, cuts[s]);
                    }
                }
                lo = new_lo;
                hi = new_hi;
            }
            theta = lo;
        }

        // 3. top-p: keep level <= phi.
        let mut phi = comptime![LEVEL_MAX].runtime();
        if comptime![use_top_p] {
            local[0] = 0.0;
            j = unit;
            while j < len {
                let l = logit::<E>(cond, uncond, base + j, coef_cond, coef_uncond, lowest, highest, has_uncond);
                if ordered(l) >= theta {
                    local[0] += weight(table, level(l, m, log2e), highest);
                }
                j += step;
            }
            cube_sums(&local, &mut partial, &mut groups, &mut totals, 1usize, comptime![block as usize]);
            let threshold = one_minus_p * totals[0];
            let mut lo = 0u32.runtime();
            let mut hi = comptime![LEVEL_MAX + 1].runtime();
            while hi - lo > 1u32 {
                split_points(lo, hi, &mut cuts);
                #[unroll]
                for s in 0..SPLITS {
                    local[s] = 0.0;
                }
                j = unit;
                while j < len {
                    let l = logit::<E>(cond, uncond, base + j, coef_cond, coef_uncond, lowest, highest, has_uncond);
                    if ordered(l) >= theta {
                        let e = level(l, m, log2e);
                        let w = weight(table, e, highest);
                        #[unroll]
                        for s in 0..SPLITS {
                            if e >= cuts[s] {
                                local[s] += w;
                            }
                        }
                    }
                    j += step;
                }
                cube_sums(&local, &mut partial, &mut groups, &mut totals, SPLITS, comptime![block as usize]);
                let (mut new_lo, mut new_hi) = (lo, hi);
                #[unroll]
                for s in 0..SPLITS {
                    if totals[s] > threshold {
                        new_lo = max(new_lo, cuts[s]);
                    } else {
                        new_hi = min(new_hi, cuts[s]);
                    }
                }
                lo = new_lo;
                hi = new_hi;
            }
            phi = lo;
        }

        // 4. The draw.
        let mut own = 0.0f32.runtime();
        j = unit;
        while j < len {
            let l = logit::<E>(cond, uncond, base + j, coef_cond, coef_uncond, lowest, highest, has_uncond);
            let e = level(l, m, log2e);
            if ordered(l) >= theta && e <= phi {
                own += weight(table, e, highest);
            }
            j += step;
        }
        let mut prefix = SharedMemory::<f32>::new(comptime![block as usize + 1]);
        values[unit] = own;
        sync_cube();
        if unit == 0 {
            let mut acc = 0.0f32.runtime();
            let mut last = 0u32.runtime();
            let mut t = 0usize.runtime();
            prefix[0] = 0.0;
            while t < step {
                acc += values[t];
                prefix[t + 1] = acc;
                if values[t] > 0.0 {
                    last = t as u32;
                }
                t += 1;
            }
            indices[0] = last;
        }
        sync_cube();
        let total = prefix[step];
        let bits = philox_first_word(row as u32, scale, seed_lo, seed_hi);
        let u = f32::cast_from(bits >> 8u32) * 0.000000059604645f32;
        let target = f32::min(u * total, highest);
        let inside = prefix[unit] <= target && target < prefix[unit + 1];
        let past_end = target >= total && unit as u32 == indices[0];
        if inside || past_end {
            let local_target = target - prefix[unit];
            let mut run = 0.0f32.runtime();
            let mut pick = len;
            let mut last = len;
            j = unit;
            while j < len {
                let l = logit::<E>(cond, uncond, base + j, coef_cond, coef_uncond, lowest, highest, has_uncond);
                let e = level(l, m, log2e);
                if ordered(l) >= theta && e <= phi {
                    let w = weight(table, e, highest);
                    run += w;
                    if w > 0.0 {
                        last = j;
                    }
                    if inside && pick == len && run > local_target {
                        pick = j;
                    }
                }
                j += step;
            }
            if pick == len {
                pick = last;
            }
            output[row] = start + pick as u32;
        }
    }
}
