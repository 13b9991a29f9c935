//! Strided elementwise kernels: each thread owns one logical element of the output.
//!
//! Views are described by a `layout` array of u32 so that one kernel serves every
//! broadcast, permuted or narrowed operand: `[offset of each operand…]` followed, per dim
//! from the innermost outwards, by `[size, stride of each operand…]`.

use cubecl::prelude::*;

pub const OP_COPY: u32 = 0;
pub const OP_NEG: u32 = 1;
pub const OP_EXP: u32 = 2;
pub const OP_SQRT: u32 = 3;
pub const OP_RSQRT: u32 = 4;
pub const OP_TANH: u32 = 5;
pub const OP_SILU: u32 = 6;
pub const OP_GELU_ERF: u32 = 7;

pub const OP_ADD: u32 = 0;
pub const OP_SUB: u32 = 1;
pub const OP_MUL: u32 = 2;
pub const OP_DIV: u32 = 3;
pub const OP_MAX: u32 = 4;
/// SwiGLU: `silu(a) · b`, always evaluated in f32.
pub const OP_SILU_MUL: u32 = 5;

/// A float unary function, evaluated in f32.
#[cube]
pub fn unary_f32(x: f32, #[comptime] op: u32) -> f32 {
    let mut y = x;
    if comptime![op == OP_NEG] {
        y = -x;
    }
    if comptime![op == OP_EXP] {
        y = f32::exp(x);
    }
    if comptime![op == OP_SQRT] {
        y = f32::sqrt(x);
    }
    if comptime![op == OP_RSQRT] {
        y = f32::inverse_sqrt(x);
    }
    if comptime![op == OP_TANH] {
        // tanh(x) = 1 - 2/(exp(2x)+1): finite for every x, unlike backends' exp-ratio forms.
        y = 1.0 - 2.0 / (f32::exp(2.0 * x) + 1.0);
    }
    if comptime![op == OP_SILU] {
        y = x / (1.0 + f32::exp(-x));
    }
    if comptime![op == OP_GELU_ERF] {
        y = 0.5 * x * (1.0 + Erf::erf(x * 0.70710677));
    }
    y
}

/// A binary function in the compute type `A` (f32 for floats, the int type for ints).
#[cube]
pub fn binary_op<A: Numeric>(a: A, b: A, #[comptime] op: u32) -> A {
    let mut y = a;
    if comptime![op == OP_ADD] {
        y = a + b;
    }
    if comptime![op == OP_SUB] {
        y = a - b;
    }
    if comptime![op == OP_MUL] {
        y = a * b;
    }
    if comptime![op == OP_DIV] {
        y = a / b;
    }
    if comptime![op == OP_MAX] {
        y = select(a > b, a, b);
    }
    if comptime![op == OP_SILU_MUL] {
        let x = f32::cast_from(a);
        y = A::cast_from(x / (1.0 + f32::exp(-x)) * f32::cast_from(b));
    }
    y
}

/// `out[view] = op(input[view])`; `OP_COPY` converts `I` to `O` directly (exact for ints),
/// every other op goes through f32. Layout: `[in_off, out_off, (size, in_stride, out_stride)…]`.
#[cube(launch_unchecked)]
pub fn unary_strided<I: Numeric, O: Numeric>(
    input: &Array<I>,
    output: &mut Array<O>,
    layout: &Array<u32>,
    numel: u32,
    #[comptime] rank: usize,
    #[comptime] op: u32,
) {
    let pos = ABSOLUTE_POS;
    if pos >= numel as usize {
        terminate!();
    }
    let mut rem = pos;
    let mut in_at = layout[0] as usize;
    let mut out_at = layout[1] as usize;
    #[unroll]
    for d in 0..rank {
        let size = layout[2 + 3 * d] as usize;
        let coord = rem % size;
        rem /= size;
        in_at += coord * layout[3 + 3 * d] as usize;
        out_at += coord * layout[4 + 3 * d] as usize;
    }
    if comptime![op == OP_COPY] {
        output[out_at] = O::cast_from(input[in_at]);
    } else {
        output[out_at] = O::cast_from(unary_f32(f32::cast_from(input[in_at]), op));
    }
}

/// `out = op(lhs, rhs)` over broadcast views, computed in `A`.
/// Layout: `[lhs_off, rhs_off, out_off, (size, lhs_stride, rhs_stride, out_stride)…]`.
#[cube(launch_unchecked)]
pub fn binary_strided<E: Numeric, A: Numeric>(
    lhs: &Array<E>,
    rhs: &Array<E>,
    output: &mut Array<E>,
    layout: &Array<u32>,
    numel: u32,
    #[comptime] rank: usize,
    #[comptime] op: u32,
) {
    let pos = ABSOLUTE_POS;
    if pos >= numel as usize {
        terminate!();
    }
    let mut rem = pos;
    let mut a_at = layout[0] as usize;
    let mut b_at = layout[1] as usize;
    let mut out_at = layout[2] as usize;
    #[unroll]
    for d in 0..rank {
        let size = layout[3 + 4 * d] as usize;
        let coord = rem % size;
        rem /= size;
        a_at += coord * layout[4 + 4 * d] as usize;
        b_at += coord * layout[5 + 4 * d] as usize;
        out_at += coord * layout[6 + 4 * d] as usize;
    }
    let y = binary_op::<A>(A::cast_from(lhs[a_at]), A::cast_from(rhs[b_at]), op);
    output[out_at] = E::cast_from(y);
}
