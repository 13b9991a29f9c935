//! Image-side kernels: interpolation with PyTorch's exact semantics, 2-D convolution,
//! GroupNorm (+ SiLU), and the nearest-code search of multi-scale residual quantization.

use cubecl::prelude::*;

/// An interpolation mode — a comptime kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeMode {
    Nearest,
    Area,
    Bicubic,
}

/// PyTorch's cubic convolution weights (A = -0.75) for the taps at -1, 0, 1, 2 of offset t.
#[cube]
fn cubic_weight(t: f32, #[comptime] tap: u32) -> f32 {
    let a = -0.75f32;
    let mut w = 0.0f32;
    if comptime![tap == 0] {
        let x = t + 1.0;
        w = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    }
    if comptime![tap == 1] {
        w = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
    }
    if comptime![tap == 2] {
        let x = 1.0 - t;
        w = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    }
    if comptime![tap == 3] {
        let x = 2.0 - t;
        w = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
    }
    w
}

/// Resizes the last two dims of a `[n, c, h, w]` view (any strides: NCHW or NHWC) to
/// `out_h × out_w`, as `F.interpolate` does: `nearest` (legacy), `area` (adaptive average
/// pooling) or `bicubic` (align_corners = false, A = -0.75, unclamped source coordinate,
/// clamped taps). Geometry: `[c, in_h, in_w, out_h, out_w, in_off, in_sn, in_sc, in_sh,
/// in_sw, out_sn, out_sc, out_sh, out_sw]`; one unit per output element.
#[cube(launch_unchecked)]
pub fn interpolate<E: Numeric>(input: &Array<E>, output: &mut Array<E>, geometry: &Array<u32>, numel: u32, #[comptime] mode: ResizeMode) {
    let pos = ABSOLUTE_POS;
    if pos >= numel as usize {
        terminate!();
    }
    let c_len = geometry[0] as usize;
    let (in_h, in_w) = (geometry[1] as usize, geometry[2] as usize);
    let (out_h, out_w) = (geometry[3] as usize, geometry[4] as usize);
    let ox = pos % out_w;
    let oy = (pos / out_w) % out_h;
    let c = (pos / (out_w * out_h)) % c_len;
    let n = pos / (out_w * out_h * c_len);
    let base = geometry[5] as usize + n * geometry[6] as usize + c * geometry[7] as usize;
    let (sh, sw) = (geometry[8] as usize, geometry[9] as usize);
    let value = match mode {
        ResizeMode::Nearest => {
            let mut iy = oy / 2;
            if out_h != 2 * in_h {
                iy = min(usize::cast_from(f32::floor(f32::cast_from(oy) * (f32::cast_from(in_h) / f32::cast_from(out_h)))), in_h - 1);
            }
            let mut ix = ox / 2;
            if out_w != 2 * in_w {
                ix = min(usize::cast_from(f32::floor(f32::cast_from(ox) * (f32::cast_from(in_w) / f32::cast_from(out_w)))), in_w - 1);
            }
            f32::cast_from(input[base + iy * sh + ix * sw])
        }
        ResizeMode::Area => {
            let y0 = (oy * in_h) / out_h;
            let y1 = ((oy + 1) * in_h + out_h - 1) / out_h;
            let x0 = (ox * in_w) / out_w;
            let x1 = ((ox + 1) * in_w + out_w - 1) / out_w;
            let mut sum = 0.0f32;
            for y in y0..y1 {
                for x in x0..x1 {
                    sum += f32::cast_from(input[base + y * sh + x * sw]);
                }
            }
            sum / f32::cast_from((y1 - y0) * (x1 - x0))
        }
        ResizeMode::Bicubic => {
            let real_y = (f32::cast_from(in_h) / f32::cast_from(out_h)) * (f32::cast_from(oy) + 0.5) - 0.5;
            let real_x = (f32::cast_from(in_w) / f32::cast_from(out_w)) * (f32::cast_from(ox) + 0.5) - 0.5;
            let fy = f32::floor(real_y);
            let fx = f32::floor(real_x);
            let (ty, tx) = (real_y - fy, real_x - fx);
            let (iy, ix) = (i32::cast_from(fy), i32::cast_from(fx));
            let (max_y, max_x) = (in_h as i32 - 1, in_w as i32 - 1);
            let mut rows = Array::<f32>::new(4usize);
            #[unroll]
            for r in 0..4i32 {
                let y = usize::cast_from(clamp(iy - 1 + r, 0, max_y));
                let row = base + y * sh;
                let x0 = usize::cast_from(clamp(ix - 1, 0, max_x));
                let x1 = usize::cast_from(clamp(ix, 0, max_x));
                let x2 = usize::cast_from(clamp(ix + 1, 0, max_x));
                let x3 = usize::cast_from(clamp(ix + 2, 0, max_x));
                rows[r as usize] = f32::cast_from(input[row + x0 * sw]) * cubic_weight(tx, 0u32)
                    + f32::cast_from(input[row + x1 * sw]) * cubic_weight(tx, 1u32)
                    + f32::cast_from(input[row + x2 * sw]) * cubic_weight(tx, 2u32)
                    + f32::cast_from(input[row + x3 * sw]) * cubic_weight(tx, 3u32);
            }
            rows[0] * cubic_weight(ty, 0u32) + rows[1] * cubic_weight(ty, 1u32) + rows[2] * cubic_weight(ty, 2u32) + rows[3] * cubic_weight(ty, 3u32)
        }
    };
    let at = n * geometry[10] as usize + c * geometry[11] as usize + oy * geometry[12] as usize + ox * geometry[13] as usize;
    output[at] = E::cast_from(value);
}

/// Direct 2-D convolution with bias: `out[n, o, y, x] = bias[o] + Σ_{c, i, j}
/// w[o, c, i, j] · in[n, c, y·s − pad_t + i, x·s − pad_l + j]` (zero outside), f32 sums.
/// Geometry: `[cin, h, w, cout, kh, kw, stride, pad_t, pad_l, out_h, out_w, in_off, in_sn,
/// in_sc, in_sh, in_sw]`; weight dense `[cout, cin, kh, kw]`; output dense NCHW.
#[cube(launch_unchecked)]
pub fn conv2d<E: Numeric>(input: &Array<E>, weight: &Array<E>, bias: &Array<E>, output: &mut Array<E>, geometry: &Array<u32>, numel: u32, #[comptime] has_bias: bool) {
    let pos = ABSOLUTE_POS;
    if pos >= numel as usize {
        terminate!();
    }
    let (cin, h, w) = (geometry[0] as usize, geometry[1] as usize, geometry[2] as usize);
    let (cout, kh, kw) = (geometry[3] as usize, geometry[4] as usize, geometry[5] as usize);
    let stride = geometry[6] as usize;
    let (pad_t, pad_l) = (geometry[7] as usize, geometry[8] as usize);
    let (out_h, out_w) = (geometry[9] as usize, geometry[10] as usize);
    let ox = pos % out_w;
    let oy = (pos / out_w) % out_h;
    let o = (pos / (out_w * out_h)) % cout;
    let n = pos / (out_w * out_h * cout);
    let base = geometry[11] as usize + n * geometry[12] as usize;
    let (sc, sh, sw) = (geometry[13] as usize, geometry[14] as usize, geometry[15] as usize);
    let mut acc = 0.0f32;
    if comptime![has_bias] {
        acc = f32::cast_from(bias[o]);
    }
    for c in 0..cin {
        for i in 0..kh {
            // Unsigned coordinates: y = oy·s + i − pad_t is inside when oy·s + i >= pad_t.
            let yy = oy * stride + i;
            if yy >= pad_t && yy - pad_t < h {
                for j in 0..kw {
                    let xx = ox * stride + j;
                    if xx >= pad_l && xx - pad_l < w {
                        acc += f32::cast_from(weight[((o * cin + c) * kh + i) * kw + j])
                            * f32::cast_from(input[base + c * sc + (yy - pad_t) * sh + (xx - pad_l) * sw]);
                    }
                }
            }
        }
    }
    output[pos] = E::cast_from(acc);
}

/// GroupNorm over a dense NCHW input: one cube per (n, group), whose elements are
/// contiguous; mean, then variance of the deviations (two passes, f32), then the affine
/// map per channel and an optional SiLU.
#[cube(launch_unchecked)]
pub fn group_norm<E: Numeric>(
    input: &Array<E>,
    gamma: &Array<E>,
    beta: &Array<E>,
    output: &mut Array<E>,
    group_len: u32,
    spatial: u32,
    channels_per_group: u32,
    groups: u32,
    rows: u32,
    eps: f32,
    #[comptime] block: u32,
    #[comptime] silu: bool,
) {
    let row = CUBE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let n = group_len as usize;
    let base = row * n;
    let mut shared = SharedMemory::<f32>::new(comptime![block as usize]);
    let mut local = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < n {
        local += f32::cast_from(input[base + i]);
        i += block as usize;
    }
    let mean = crate::reduce::cube_sum(local, &mut shared, block) / f32::cast_from(n);
    local = 0.0;
    i = UNIT_POS as usize;
    while i < n {
        let d = f32::cast_from(input[base + i]) - mean;
        local += d * d;
        i += block as usize;
    }
    let inv_std = f32::inverse_sqrt(crate::reduce::cube_sum(local, &mut shared, block) / f32::cast_from(n) + eps);
    let first_channel = (row % groups as usize) * channels_per_group as usize;
    i = UNIT_POS as usize;
    while i < n {
        let c = first_channel + i / spatial as usize;
        let mut y = (f32::cast_from(input[base + i]) - mean) * inv_std * f32::cast_from(gamma[c]) + f32::cast_from(beta[c]);
        if comptime![silu] {
            y = y / (1.0 + f32::exp(-y));
        }
        output[base + i] = E::cast_from(y);
        i += block as usize;
    }
}

/// Nearest codes: for each row of `z [rows, dim]`, the `k` codes of `codebook [vocab, dim]`
/// with the smallest distance, ascending (first index wins ties). Plain form: squared L2.
/// Dual form (`split > 0`): the row's first `split` dims and the rest are L2-normalized
/// separately, the codebook is pre-normalized per branch, and the distance is
/// `w_sem·‖ẑ_s − ê_s‖² + w_pix·‖ẑ_p − ê_p‖²`. One unit per row.
#[cube(launch_unchecked)]
pub fn nearest_codes<E: Numeric>(
    z: &Array<E>,
    codebook: &Array<E>,
    indices: &mut Array<u32>,
    distances: &mut Array<f32>,
    rows: u32,
    vocab: u32,
    w_sem: f32,
    w_pix: f32,
    #[comptime] dim: usize,
    #[comptime] split: usize,
    #[comptime] k: usize,
) {
    let row = ABSOLUTE_POS;
    if row >= rows as usize {
        terminate!();
    }
    let mut zr = Array::<f32>::new(dim);
    #[unroll]
    for c in 0..dim {
        zr[c] = f32::cast_from(z[row * dim + c]);
    }
    if comptime![split > 0] {
        let mut ns = 0.0f32;
        let mut np = 0.0f32;
        #[unroll]
        for c in 0..dim {
            if comptime![c < split] {
                ns += zr[c] * zr[c];
            } else {
                np += zr[c] * zr[c];
            }
        }
        // F.normalize: x / max(‖x‖, 1e-12).
        let (is, ip) = (1.0 / f32::max(f32::sqrt(ns), 1e-12), 1.0 / f32::max(f32::sqrt(np), 1e-12));
        #[unroll]
        for c in 0..dim {
            if comptime![c < split] {
                zr[c] *= is;
            } else {
                zr[c] *= ip;
            }
        }
    }
    let mut best_d = Array::<f32>::new(k);
    let mut best_i = Array::<u32>::new(k);
    #[unroll]
    for t in 0..k {
        best_d[t] = f32::MAX;
        best_i[t] = vocab;
    }
    for v in 0..vocab as usize {
        let mut ds = 0.0f32;
        let mut dp = 0.0f32;
        #[unroll]
        for c in 0..dim {
            let diff = zr[c] - f32::cast_from(codebook[v * dim + c]);
            if comptime![split > 0 && c < split] {
                ds += diff * diff;
            } else {
                dp += diff * diff;
            }
        }
        let mut d = dp;
        if comptime![split > 0] {
            d = w_sem * ds + w_pix * dp;
        }
        // Insert into the sorted list; strict < keeps the earlier index on ties.
        if d < best_d[k - 1] {
            let mut cur_d = d;
            let mut cur_i = v as u32;
            #[unroll]
            for t in 0..k {
                if cur_d < best_d[t] {
                    let (od, oi) = (best_d[t], best_i[t]);
                    best_d[t] = cur_d;
                    best_i[t] = cur_i;
                    cur_d = od;
                    cur_i = oi;
                }
            }
        }
    }
    #[unroll]
    for t in 0..k {
        indices[row * k + t] = best_i[t];
        distances[row * k + t] = best_d[t];
    }
}
