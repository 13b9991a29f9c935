//! Matrix multiplication: a register-blocked tiled GEMM and a GEMV for one-row activations.
//!
//! `out[b, i, j] = act(Σ_p A[b, i, p]·B[b, p, j] + bias[j]) + residual[b, i, j]`, f32
//! accumulation whatever the element type. Operands are strided views (a transpose is a
//! stride, a shared weight has batch stride 0), described by the `geometry` array:
//! `[m, n, k, a_off, a_sb, a_sm, a_sk, b_off, b_sb, b_sk, b_sn, r_off, r_sb, r_sm, r_sn,
//! o_off, o_sb, o_sm]`; the output's columns are dense and its rows strided, so a matmul can
//! write its column block of a wider output (a weight split by output rows, ops/src/blocked.rs).

use cubecl::prelude::*;

/// Slots of the `geometry` array (ops/src/matmul.rs writes it in this order): the sizes, then
/// each operand's offset and batch / row / column strides (`a`, `b`, residual `r`, output `o`,
/// whose column stride is 1).
pub mod geo {
    pub const M: usize = 0;
    pub const N: usize = 1;
    pub const K: usize = 2;
    pub const A_OFFSET: usize = 3;
    pub const A_BATCH: usize = 4;
    pub const A_ROW: usize = 5;
    pub const A_COL: usize = 6;
    pub const B_OFFSET: usize = 7;
    pub const B_BATCH: usize = 8;
    pub const B_ROW: usize = 9;
    pub const B_COL: usize = 10;
    pub const R_OFFSET: usize = 11;
    pub const R_BATCH: usize = 12;
    pub const R_ROW: usize = 13;
    pub const R_COL: usize = 14;
    pub const O_OFFSET: usize = 15;
    pub const O_BATCH: usize = 16;
    pub const O_ROW: usize = 17;
    /// Slots in all.
    pub const LEN: usize = 18;
}
use geo::*;

/// The activation of the epilogue — a comptime kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    None,
    Silu,
    GeluErf,
}

/// The fused epilogue: bias, then activation, then residual add.
#[cube]
fn epilogue<E: Numeric>(
    acc: f32,
    i: usize,
    j: usize,
    batch: usize,
    bias: &Array<E>,
    residual: &Array<E>,
    geometry: &Array<u32>,
    #[comptime] has_bias: bool,
    #[comptime] act: Activation,
    #[comptime] has_residual: bool,
) -> E {
    let mut v = acc;
    if comptime![has_bias] {
        v += f32::cast_from(bias[j]);
    }
    match act {
        Activation::None => {}
        Activation::Silu => {
            v = v / (1.0 + f32::exp(-v));
        }
        Activation::GeluErf => {
            v = 0.5 * v * (1.0 + Erf::erf(v * 0.70710677));
        }
    }
    if comptime![has_residual] {
        let at = geometry[R_OFFSET] as usize + batch * geometry[R_BATCH] as usize + i * geometry[R_ROW] as usize + j * geometry[R_COL] as usize;
        v += f32::cast_from(residual[at]);
    }
    E::cast_from(v)
}

/// Tiled GEMM: a cube computes a `bm × bn` output tile, each unit a `tm × tn` block held in
/// registers; `bk`-deep slices of A and B are staged in shared memory (as f32).
/// Cube: `(bm/tm)·(bn/tn)` units; grid: (n tiles, m tiles, batch).
/// `a_m_fast` / `b_k_fast` pick the load order that walks memory contiguously.
#[cube(launch_unchecked)]
pub fn matmul_tiled<E: Numeric>(
    a: &Array<E>,
    b: &Array<E>,
    bias: &Array<E>,
    residual: &Array<E>,
    out: &mut Array<E>,
    geometry: &Array<u32>,
    #[comptime] bm: usize,
    #[comptime] bn: usize,
    #[comptime] bk: usize,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[comptime] a_m_fast: bool,
    #[comptime] b_k_fast: bool,
    #[comptime] has_bias: bool,
    #[comptime] act: Activation,
    #[comptime] has_residual: bool,
) {
    let m = geometry[M] as usize;
    let n = geometry[N] as usize;
    let k = geometry[K] as usize;
    let batch = CUBE_POS_Z as usize;
    let m0 = CUBE_POS_Y as usize * bm;
    let n0 = CUBE_POS_X as usize * bn;
    let threads = comptime![(bm / tm) * (bn / tn)];
    let unit = UNIT_POS as usize;
    let tx = unit % comptime![bn / tn];
    let ty = unit / comptime![bn / tn];

    let a_base = geometry[A_OFFSET] as usize + batch * geometry[A_BATCH] as usize;
    let (a_sm, a_sk) = (geometry[A_ROW] as usize, geometry[A_COL] as usize);
    let b_base = geometry[B_OFFSET] as usize + batch * geometry[B_BATCH] as usize;
    let (b_sk, b_sn) = (geometry[B_ROW] as usize, geometry[B_COL] as usize);

    let mut tile_a = SharedMemory::<f32>::new(comptime![bm * bk]);
    let mut tile_b = SharedMemory::<f32>::new(comptime![bk * bn]);
    let mut acc = Array::<f32>::new(comptime![tm * tn]);
    #[unroll]
    for t in 0..tm * tn {
        acc[t] = 0.0;
    }
    let mut a_frag = Array::<f32>::new(tm);
    let mut b_frag = Array::<f32>::new(tn);

    let mut k0 = 0usize.runtime();
    while k0 < k {
        // Stage A[m0.., k0..] as tile_a[r * bk + c] and B[k0.., n0..] as tile_b[r * bn + c].
        let mut e = unit;
        while e < comptime![bm * bk] {
            let (r, c) = if comptime![a_m_fast] { (e % bm, e / bm) } else { (e / bk, e % bk) };
            let (gi, gk) = (m0 + r, k0 + c);
            let mut v = 0.0f32;
            if gi < m && gk < k {
                v = f32::cast_from(a[a_base + gi * a_sm + gk * a_sk]);
            }
            tile_a[r * bk + c] = v;
            e += threads;
        }
        e = unit;
        while e < comptime![bk * bn] {
            let (r, c) = if comptime![b_k_fast] { (e % bk, e / bk) } else { (e / bn, e % bn) };
            let (gk, gj) = (k0 + r, n0 + c);
            let mut v = 0.0f32;
            if gk < k && gj < n {
                v = f32::cast_from(b[b_base + gk * b_sk + gj * b_sn]);
            }
            tile_b[r * bn + c] = v;
            e += threads;
        }
        sync_cube();
        #[unroll]
        for kk in 0..bk {
            #[unroll]
            for i in 0..tm {
                a_frag[i] = tile_a[(ty * tm + i) * bk + kk];
            }
            #[unroll]
            for j in 0..tn {
                b_frag[j] = tile_b[kk * bn + tx * tn + j];
            }
            #[unroll]
            for i in 0..tm {
                #[unroll]
                for j in 0..tn {
                    acc[i * tn + j] += a_frag[i] * b_frag[j];
                }
            }
        }
        sync_cube();
        k0 += bk;
    }

    let out_base = geometry[O_OFFSET] as usize + batch * geometry[O_BATCH] as usize;
    let o_sm = geometry[O_ROW] as usize;
    #[unroll]
    for i in 0..tm {
        #[unroll]
        for j in 0..tn {
            let (gi, gj) = (m0 + ty * tm + i, n0 + tx * tn + j);
            if gi < m && gj < n {
                out[out_base + gi * o_sm + gj] =
                    epilogue::<E>(acc[i * tn + j], gi, gj, batch, bias, residual, geometry, has_bias, act, has_residual);
            }
        }
    }
}

/// GEMV for few-row activations against a k-contiguous B (weights stored `[n, k]`): a cube
/// reduces one output element over k. Grid: (n, m, batch).
#[cube(launch_unchecked)]
pub fn gemv_k_contiguous<E: Numeric>(
    a: &Array<E>,
    b: &Array<E>,
    bias: &Array<E>,
    residual: &Array<E>,
    out: &mut Array<E>,
    geometry: &Array<u32>,
    #[comptime] block: u32,
    #[comptime] has_bias: bool,
    #[comptime] act: Activation,
    #[comptime] has_residual: bool,
) {
    let k = geometry[K] as usize;
    let (j, i, batch) = (CUBE_POS_X as usize, CUBE_POS_Y as usize, CUBE_POS_Z as usize);
    let a_row = geometry[A_OFFSET] as usize + batch * geometry[A_BATCH] as usize + i * geometry[A_ROW] as usize;
    let a_sk = geometry[A_COL] as usize;
    let b_col = geometry[B_OFFSET] as usize + batch * geometry[B_BATCH] as usize + j * geometry[B_COL] as usize;
    let b_sk = geometry[B_ROW] as usize;
    let mut partial = 0.0f32;
    let mut p = UNIT_POS as usize;
    while p < k {
        partial += f32::cast_from(a[a_row + p * a_sk]) * f32::cast_from(b[b_col + p * b_sk]);
        p += block as usize;
    }
    let mut shared = SharedMemory::<f32>::new(comptime![block as usize]);
    let total = crate::reduce::cube_sum(partial, &mut shared, block);
    if UNIT_POS == 0 {
        let o = geometry[O_OFFSET] as usize + batch * geometry[O_BATCH] as usize + i * geometry[O_ROW] as usize + j;
        out[o] = epilogue::<E>(total, i, j, batch, bias, residual, geometry, has_bias, act, has_residual);
    }
}

/// GEMV against an n-contiguous B (`[k, n]`): one unit per output element walks k, so
/// neighbouring units read neighbouring columns. Grid: (n / block, m, batch).
#[cube(launch_unchecked)]
pub fn gemv_n_contiguous<E: Numeric>(
    a: &Array<E>,
    b: &Array<E>,
    bias: &Array<E>,
    residual: &Array<E>,
    out: &mut Array<E>,
    geometry: &Array<u32>,
    #[comptime] has_bias: bool,
    #[comptime] act: Activation,
    #[comptime] has_residual: bool,
) {
    let (n, k) = (geometry[N] as usize, geometry[K] as usize);
    let j = ABSOLUTE_POS_X as usize;
    let (i, batch) = (CUBE_POS_Y as usize, CUBE_POS_Z as usize);
    if j >= n {
        terminate!();
    }
    let a_row = geometry[A_OFFSET] as usize + batch * geometry[A_BATCH] as usize + i * geometry[A_ROW] as usize;
    let a_sk = geometry[A_COL] as usize;
    let b_col = geometry[B_OFFSET] as usize + batch * geometry[B_BATCH] as usize + j * geometry[B_COL] as usize;
    let b_sk = geometry[B_ROW] as usize;
    let mut acc = 0.0f32;
    for p in 0..k {
        acc += f32::cast_from(a[a_row + p * a_sk]) * f32::cast_from(b[b_col + p * b_sk]);
    }
    let o = geometry[O_OFFSET] as usize + batch * geometry[O_BATCH] as usize + i * geometry[O_ROW] as usize + j;
    out[o] = epilogue::<E>(acc, i, j, batch, bias, residual, geometry, has_bias, act, has_residual);
}

/// Tensor-core GEMM for f16 operands (f32 accumulation): one plane per 16×16 output tile,
/// 16×16 slices of A and B staged in shared memory as f16, multiplied with `cmma`.
/// Launch only where the device reports an f16×f16→f32 16×16×16 MMA.
/// Cube: 32 units; grid: (n / 16, m / 16, batch). Geometry as [`matmul_tiled`].
#[cube(launch_unchecked)]
pub fn matmul_cmma(
    a: &Array<half::f16>,
    b: &Array<half::f16>,
    bias: &Array<half::f16>,
    residual: &Array<half::f16>,
    out: &mut Array<half::f16>,
    geometry: &Array<u32>,
    #[comptime] has_bias: bool,
    #[comptime] act: Activation,
    #[comptime] has_residual: bool,
) {
    let (m, n, k) = (geometry[M] as usize, geometry[N] as usize, geometry[K] as usize);
    let batch = CUBE_POS_Z as usize;
    let (m0, n0) = (CUBE_POS_Y as usize * 16, CUBE_POS_X as usize * 16);
    let a_base = geometry[A_OFFSET] as usize + batch * geometry[A_BATCH] as usize;
    let (a_sm, a_sk) = (geometry[A_ROW] as usize, geometry[A_COL] as usize);
    let b_base = geometry[B_OFFSET] as usize + batch * geometry[B_BATCH] as usize;
    let (b_sk, b_sn) = (geometry[B_ROW] as usize, geometry[B_COL] as usize);
    let unit = UNIT_POS as usize;
    let mut tile_a = SharedMemory::<half::f16>::new(256usize);
    let mut tile_b = SharedMemory::<half::f16>::new(256usize);
    let mut tile_c = SharedMemory::<f32>::new(256usize);
    let acc = cmma::Matrix::<f32>::from_value(cmma::MatrixIdent::Accumulator, 16usize, 16usize, 16usize, cmma::MatrixLayout::Undefined, 0.0);
    let mut k0 = 0usize.runtime();
    while k0 < k {
        #[unroll]
        for t in 0..8usize {
            let e = unit + t * 32;
            let (r, c) = (e / 16, e % 16);
            let mut va = half::f16::from_int(0);
            if m0 + r < m && k0 + c < k {
                va = a[a_base + (m0 + r) * a_sm + (k0 + c) * a_sk];
            }
            tile_a[e] = va;
            let mut vb = half::f16::from_int(0);
            if k0 + r < k && n0 + c < n {
                vb = b[b_base + (k0 + r) * b_sk + (n0 + c) * b_sn];
            }
            tile_b[e] = vb;
        }
        sync_cube();
        let frag_a = cmma::Matrix::<half::f16>::from_slice(cmma::MatrixIdent::A, 16usize, 16usize, 16usize, cmma::MatrixLayout::RowMajor, &tile_a.to_slice(), 16);
        let frag_b = cmma::Matrix::<half::f16>::from_slice(cmma::MatrixIdent::B, 16usize, 16usize, 16usize, cmma::MatrixLayout::RowMajor, &tile_b.to_slice(), 16);
        cmma::execute::<half::f16, half::f16, f32, f32>(&frag_a, &frag_b, &acc, &acc);
        sync_cube();
        k0 += 16;
    }
    cmma::store(&mut tile_c.to_slice_mut(), &acc, 16, cmma::MatrixLayout::RowMajor);
    sync_cube();
    #[unroll]
    for t in 0..8usize {
        let e = unit + t * 32;
        let (i, j) = (m0 + e / 16, n0 + e % 16);
        if i < m && j < n {
            let o = geometry[O_OFFSET] as usize + batch * geometry[O_BATCH] as usize + i * geometry[O_ROW] as usize + j;
            out[o] = epilogue::<half::f16>(tile_c[e], i, j, batch, bias, residual, geometry, has_bias, act, has_residual);
        }
    }
}
