//! Fused flash attention and rotary embedding.
//!
//! Attention never materializes the score matrix: each unit owns one query row, keeps
//! its running max, normalizer and output accumulator in registers (online softmax, f32),
//! and the cube streams tiles of keys and values through shared memory.

use cubecl::prelude::*;

/// Which keys a query sees — a comptime kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskKind {
    /// Every valid key.
    None,
    /// Key `j` is visible to the query at absolute position `p` iff `j <= p`.
    Causal,
    /// Iff `segment[j] <= segment[p]`: bidirectional inside a segment, causal across them.
    Segments,
}

/// `out[b, h, i, :] = softmax(scale · q[b, h, i] · K[b, h/g]ᵀ + mask) · V[b, h/g]`.
/// Geometry: `[sq, hq, group, q_pos0, q_off, q_sb, q_sh, q_ss, k_off, k_sb, k_sh, k_ss,
/// v_off, v_sb, v_sh, v_ss, o_sb, o_sh, o_ss]` (the last dim of every operand has stride 1);
/// keys `kv_ranges[2b] .. kv_ranges[2b+1]` are valid in batch row `b` (left and right
/// padding); query `i` sits at absolute key position
/// `q_pos0 + i`. Grid: (query blocks, hq, batch); cube: `block_q` units.
#[cube(launch_unchecked)]
pub fn flash_attention<E: Numeric>(
    q: &Array<E>,
    k: &Array<E>,
    v: &Array<E>,
    out: &mut Array<E>,
    segments: &Array<u32>,
    kv_ranges: &Array<u32>,
    geometry: &Array<u32>,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] block_q: u32,
    #[comptime] block_kv: usize,
    #[comptime] mask: MaskKind,
) {
    let sq = geometry[0] as usize;
    let group = geometry[2] as usize;
    let q_pos0 = geometry[3] as usize;
    let (head, batch) = (CUBE_POS_Y as usize, CUBE_POS_Z as usize);
    let kv_head = head / group;
    let first_q = CUBE_POS_X as usize * block_q as usize;
    let qi = first_q + UNIT_POS as usize;
    let active = qi < sq;
    let q_pos = q_pos0 + qi;

    let mut q_row = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    let q_at = geometry[4] as usize + batch * geometry[5] as usize + head * geometry[6] as usize + qi * geometry[7] as usize;
    #[unroll]
    for c in 0..head_dim {
        acc[c] = 0.0;
        q_row[c] = 0.0;
    }
    if active {
        #[unroll]
        for c in 0..head_dim {
            q_row[c] = f32::cast_from(q[q_at + c]) * scale;
        }
    }
    let mut row_max = f32::MIN.runtime();
    let mut row_sum = 0.0f32.runtime();

    // Keys past the valid length, or (causal) past the cube's last query, are never loaded.
    let mut kv_end = kv_ranges[2 * batch + 1] as usize;
    match mask {
        MaskKind::Causal => {
            let last_q = min(first_q + block_q as usize, sq) - 1;
            kv_end = min(kv_end, q_pos0 + last_q + 1);
        }
        MaskKind::None | MaskKind::Segments => {}
    }
    let k_base = geometry[8] as usize + batch * geometry[9] as usize + kv_head * geometry[10] as usize;
    let v_base = geometry[12] as usize + batch * geometry[13] as usize + kv_head * geometry[14] as usize;
    let (k_ss, v_ss) = (geometry[11] as usize, geometry[15] as usize);
    let mut tile_k = SharedMemory::<f32>::new(comptime![block_kv * head_dim]);
    let mut tile_v = SharedMemory::<f32>::new(comptime![block_kv * head_dim]);

    let mut t0 = kv_ranges[2 * batch] as usize;
    while t0 < kv_end {
        let mut e = UNIT_POS as usize;
        while e < comptime![block_kv * head_dim] {
            let (r, c) = (e / head_dim, e % head_dim);
            let key = t0 + r;
            let mut kv = 0.0f32;
            let mut vv = 0.0f32;
            if key < kv_end {
                kv = f32::cast_from(k[k_base + key * k_ss + c]);
                vv = f32::cast_from(v[v_base + key * v_ss + c]);
            }
            tile_k[e] = kv;
            tile_v[e] = vv;
            e += block_q as usize;
        }
        sync_cube();
        if active {
            let rows = min(block_kv, kv_end - t0);
            for r in 0..rows {
                let key = t0 + r;
                let mut visible = true;
                match mask {
                    MaskKind::None => {}
                    MaskKind::Causal => {
                        visible = key <= q_pos;
                    }
                    MaskKind::Segments => {
                        visible = segments[key] <= segments[q_pos];
                    }
                }
                if visible {
                    let mut score = 0.0f32;
                    #[unroll]
                    for c in 0..head_dim {
                        score += q_row[c] * tile_k[r * head_dim + c];
                    }
                    let new_max = f32::max(row_max, score);
                    let correction = f32::exp(row_max - new_max);
                    let p = f32::exp(score - new_max);
                    row_sum = row_sum * correction + p;
                    #[unroll]
                    for c in 0..head_dim {
                        acc[c] = acc[c] * correction + p * tile_v[r * head_dim + c];
                    }
                    row_max = new_max;
                }
            }
        }
        sync_cube();
        t0 += block_kv;
    }
    if active {
        // A row that sees no key (all masked) is written as zeros.
        let inv = select(row_sum > 0.0, 1.0 / row_sum, 0.0);
        let o_at = batch * geometry[16] as usize + head * geometry[17] as usize + qi * geometry[18] as usize;
        #[unroll]
        for c in 0..head_dim {
            out[o_at + c] = E::cast_from(acc[c] * inv);
        }
    }
}

/// Rotary embedding, rotate-half convention (Qwen2 / HF): for frequency `i < half`,
/// `out[i] = x[i]·cos − x[i+half]·sin`, `out[i+half] = x[i+half]·cos + x[i]·sin`, with the
/// angle `pos[axis(i)] · inv_freq[i]` computed in f32 (positions may be fractional).
/// Positions are `[batch, seq, 3]` (batch stride `pos_sb`, 0 to share); 1D RoPE is the case
/// of three equal coordinates. Geometry: `[heads, seq, x_off, x_sb, x_sh, x_ss, pos_sb]`;
/// output dense `[batch, heads, seq, 2·half]`. One unit per (b, h, s, i).
#[cube(launch_unchecked)]
pub fn rope<E: Numeric>(
    x: &Array<E>,
    out: &mut Array<E>,
    positions: &Array<f32>,
    inv_freq: &Array<f32>,
    axis: &Array<u32>,
    geometry: &Array<u32>,
    numel: u32,
    #[comptime] half: usize,
) {
    let pos = ABSOLUTE_POS;
    if pos >= numel as usize {
        terminate!();
    }
    let (heads, seq) = (geometry[0] as usize, geometry[1] as usize);
    let i = pos % half;
    let row = pos / half;
    let s = row % seq;
    let h = (row / seq) % heads;
    let b = row / (seq * heads);
    let at = geometry[2] as usize + b * geometry[3] as usize + h * geometry[4] as usize + s * geometry[5] as usize;
    let p = positions[b * geometry[6] as usize + s * 3 + axis[i] as usize];
    let angle = p * inv_freq[i];
    let (cos, sin) = (f32::cos(angle), f32::sin(angle));
    let x1 = f32::cast_from(x[at + i]);
    let x2 = f32::cast_from(x[at + i + half]);
    let o = row * comptime![2 * half];
    out[o + i] = E::cast_from(x1 * cos - x2 * sin);
    out[o + i + half] = E::cast_from(x2 * cos + x1 * sin);
}
