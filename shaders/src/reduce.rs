//! One-row-per-cube kernels over the last dim of a contiguous `[rows, n]` input:
//! reductions, softmax and RMSNorm. Each unit strides over the row accumulating in f32,
//! then the cube combines partials through shared memory (no plane ops: lavapipe lacks them).

use cubecl::prelude::*;

/// A reduction over a row — a comptime kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    Sum,
    Max,
    Mean,
}

/// Cube-wide sum (or max) of one f32 per unit; every unit receives the result.
#[cube]
fn cube_combine(partial: f32, shared: &mut SharedMemory<f32>, #[comptime] block: u32, #[comptime] is_max: bool) -> f32 {
    let unit = UNIT_POS as usize;
    shared[unit] = partial;
    sync_cube();
    let mut stride = comptime![(block / 2) as usize].runtime();
    while stride > 0 {
        if unit < stride {
            if comptime![is_max] {
                shared[unit] = f32::max(shared[unit], shared[unit + stride]);
            } else {
                shared[unit] = shared[unit] + shared[unit + stride];
            }
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// Cube-wide sum of one f32 per unit; every unit receives the result.
#[cube]
pub fn cube_sum(partial: f32, shared: &mut SharedMemory<f32>, #[comptime] block: u32) -> f32 {
    cube_combine(partial, shared, block, false)
}

/// Cube-wide argmax of one (value, index) pair per unit: the largest value, the smallest
/// index among equal values. Every unit receives the winning index.
#[cube]
pub fn cube_argmax(value: f32, index: u32, values: &mut SharedMemory<f32>, indices: &mut SharedMemory<u32>, #[comptime] block: u32) -> u32 {
    let unit = UNIT_POS as usize;
    values[unit] = value;
    indices[unit] = index;
    sync_cube();
    let mut stride = comptime![(block / 2) as usize].runtime();
    while stride > 0 {
        if unit < stride {
            let (v, j) = (values[unit + stride], indices[unit + stride]);
            let (w, k) = (values[unit], indices[unit]);
            if v > w || (v == w && j < k) {
                values[unit] = v;
                indices[unit] = j;
            }
        }
        sync_cube();
        stride /= 2;
    }
    let winner = indices[0];
    sync_cube();
    winner
}

/// `out[row] = sum | max | mean(input[row, :])`.
#[cube(launch_unchecked)]
pub fn reduce_rows<E: Numeric>(input: &Array<E>, output: &mut Array<E>, n: u32, rows: u32, #[comptime] op: Reduce, #[comptime] block: u32) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let n = n as usize;
    let base = row * n;
    let mut shared = SharedMemory::<f32>::new(comptime![block as usize]);
    let is_max = comptime![op == Reduce::Max];
    // f32::MIN, not -inf: WGSL has no infinity literal.
    let mut acc = 0.0f32.runtime();
    if comptime![is_max] {
        acc = f32::MIN;
    }
    let mut i = UNIT_POS as usize;
    while i < n {
        let x = f32::cast_from(input[base + i]);
        match op {
            Reduce::Max => {
                acc = f32::max(acc, x);
            }
            Reduce::Sum | Reduce::Mean => {
                acc += x;
            }
        }
        i += block as usize;
    }
    let total = cube_combine(acc, &mut shared, block, is_max);
    if UNIT_POS == 0 {
        match op {
            Reduce::Mean => {
                output[row] = E::cast_from(total / f32::cast_from(n));
            }
            Reduce::Sum | Reduce::Max => {
                output[row] = E::cast_from(total);
            }
        }
    }
}

/// `out[row] = index of the largest element of input[row, :]` (first index on ties).
#[cube(launch_unchecked)]
pub fn argmax_rows<E: Numeric>(input: &Array<E>, output: &mut Array<u32>, n: u32, rows: u32, #[comptime] block: u32) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let n = n as usize;
    let base = row * n;
    let unit = UNIT_POS as usize;
    let mut values = SharedMemory::<f32>::new(comptime![block as usize]);
    let mut indices = SharedMemory::<u32>::new(comptime![block as usize]);
    let mut best = f32::MIN.runtime();
    let mut best_i = n as u32;
    let mut i = unit;
    while i < n {
        let x = f32::cast_from(input[base + i]);
        // Strictly greater keeps the first index, as units walk their indices in order.
        if x > best || best_i == n as u32 {
            best = x;
            best_i = i as u32;
        }
        i += block as usize;
    }
    let winner = cube_argmax(best, best_i, &mut values, &mut indices, block);
    if unit == 0 {
        output[row] = winner;
    }
}

/// Numerically stable softmax of each row: `exp(x - max) / sum(exp(x - max))`.
#[cube(launch_unchecked)]
pub fn softmax_rows<E: Numeric>(input: &Array<E>, output: &mut Array<E>, n: u32, rows: u32, #[comptime] block: u32) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let n = n as usize;
    let base = row * n;
    let mut shared = SharedMemory::<f32>::new(comptime![block as usize]);
    let mut local_max = f32::MIN.runtime();
    let mut i = UNIT_POS as usize;
    while i < n {
        local_max = f32::max(local_max, f32::cast_from(input[base + i]));
        i += block as usize;
    }
    let row_max = cube_combine(local_max, &mut shared, block, true);
    let mut local_sum = 0.0f32;
    i = UNIT_POS as usize;
    while i < n {
        local_sum += f32::exp(f32::cast_from(input[base + i]) - row_max);
        i += block as usize;
    }
    let inv_sum = 1.0f32 / cube_combine(local_sum, &mut shared, block, false);
    i = UNIT_POS as usize;
    while i < n {
        output[base + i] = E::cast_from(f32::exp(f32::cast_from(input[base + i]) - row_max) * inv_sum);
        i += block as usize;
    }
}

/// RMSNorm of each row with f32 statistics: `x / sqrt(mean(x²) + eps) * weight`.
#[cube(launch_unchecked)]
pub fn rms_norm_rows<E: Numeric>(input: &Array<E>, weight: &Array<E>, output: &mut Array<E>, n: u32, rows: u32, eps: f32, #[comptime] block: u32) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let n = n as usize;
    let base = row * n;
    let mut shared = SharedMemory::<f32>::new(comptime![block as usize]);
    let mut local = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < n {
        let x = f32::cast_from(input[base + i]);
        local += x * x;
        i += block as usize;
    }
    let sum_sq = cube_combine(local, &mut shared, block, false);
    let scale = f32::inverse_sqrt(sum_sq / f32::cast_from(n) + eps);
    i = UNIT_POS as usize;
    while i < n {
        output[base + i] = E::cast_from(f32::cast_from(input[base + i]) * scale * f32::cast_from(weight[i]));
        i += block as usize;
    }
}

/// Fused residual add + RMSNorm: `sum = x + residual` (the new residual stream) and
/// `normed = sum / sqrt(mean(sum²) + eps) · weight`, statistics in f32.
#[cube(launch_unchecked)]
pub fn add_rms_norm_rows<E: Numeric>(
    input: &Array<E>,
    residual: &Array<E>,
    weight: &Array<E>,
    sum_out: &mut Array<E>,
    normed: &mut Array<E>,
    n: u32,
    rows: u32,
    eps: f32,
    #[comptime] block: u32,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let n = n as usize;
    let base = row * n;
    let mut shared = SharedMemory::<f32>::new(comptime![block as usize]);
    let mut local = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < n {
        // Round the sum to E first, so normed is computed from the stored residual stream.
        let h = E::cast_from(f32::cast_from(input[base + i]) + f32::cast_from(residual[base + i]));
        sum_out[base + i] = h;
        let x = f32::cast_from(h);
        local += x * x;
        i += block as usize;
    }
    let sum_sq = cube_combine(local, &mut shared, block, false);
    let scale = f32::inverse_sqrt(sum_sq / f32::cast_from(n) + eps);
    i = UNIT_POS as usize;
    while i < n {
        let h = f32::cast_from(E::cast_from(f32::cast_from(input[base + i]) + f32::cast_from(residual[base + i])));
        normed[base + i] = E::cast_from(h * scale * f32::cast_from(weight[i]));
        i += block as usize;
    }
}
