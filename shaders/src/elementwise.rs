//! Strided elementwise kernels: each thread owns one logical element of the output.
//!
//! Views are described by a `layout` array of u32 so that one kernel serves every
//! broadcast, permuted or narrowed operand: `[offset of each operand…]` followed, per dim
//! from the innermost outwards, by `[size, stride of each operand…]`.

use cubecl::prelude::*;

/// Float functions of one argument, evaluated in f32 (`nextflow_ops::UnaryOp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Sqrt,
    Rsqrt,
    Tanh,
    Silu,
    GeluErf,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 7] =
        [UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Sqrt, UnaryOp::Rsqrt, UnaryOp::Tanh, UnaryOp::Silu, UnaryOp::GeluErf];
}

/// What a unary kernel applies — a comptime kernel argument: `Copy` converts the input type
/// to the output type directly (exact for ints); `F` is a float function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    Copy,
    F(UnaryOp),
}

/// A function of two operands in the compute type — a comptime kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    /// SwiGLU: `silu(a) · b`, always evaluated in f32.
    SiluMul,
}

/// A float unary function, evaluated in f32.
#[cube]
pub fn unary_f32(x: f32, #[comptime] op: Unary) -> f32 {
    match op {
        Unary::Copy => x,
        Unary::F(f) => float_fn(x, f),
    }
}

#[cube]
fn float_fn(x: f32, #[comptime] op: UnaryOp) -> f32 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => f32::exp(x),
        UnaryOp::Sqrt => f32::sqrt(x),
        UnaryOp::Rsqrt => f32::inverse_sqrt(x),
        // tanh(x) = 1 - 2/(exp(2x)+1): finite for every x, unlike backends' exp-ratio forms.
        UnaryOp::Tanh => 1.0 - 2.0 / (f32::exp(2.0 * x) + 1.0),
        UnaryOp::Silu => x / (1.0 + f32::exp(-x)),
        UnaryOp::GeluErf => 0.5 * x * (1.0 + Erf::erf(x * 0.70710677)),
    }
}

/// A binary function in the compute type `A` (f32 for floats, the int type for ints).
#[cube]
pub fn binary_op<A: Numeric>(a: A, b: A, #[comptime] op: Binary) -> A {
    match op {
        Binary::Add => a + b,
        Binary::Sub => a - b,
        Binary::Mul => a * b,
        Binary::Div => a / b,
        Binary::Max => select(a > b, a, b),
        Binary::SiluMul => {
            let x = f32::cast_from(a);
            A::cast_from(x / (1.0 + f32::exp(-x)) * f32::cast_from(b))
        }
    }
}

/// `out[view] = op(input[view])`; `Unary::Copy` converts `I` to `O` directly (exact for ints),
/// every other op goes through f32. Layout: `[in_off, out_off, (size, in_stride, out_stride)…]`.
#[cube(launch_unchecked)]
pub fn unary_strided<I: Numeric, O: Numeric>(
    input: &Array<I>,
    output: &mut Array<O>,
    layout: &Array<u32>,
    numel: u32,
    #[comptime] rank: usize,
    #[comptime] op: Unary,
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
    match op {
        Unary::Copy => {
            output[out_at] = O::cast_from(input[in_at]);
        }
        _ => {
            output[out_at] = O::cast_from(unary_f32(f32::cast_from(input[in_at]), op));
        }
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
    #[comptime] op: Binary,
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
