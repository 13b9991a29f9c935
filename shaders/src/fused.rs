//! One generic elementwise kernel for every fused chain: the chain is a comptime program
//! (a register machine) that cubecl specialises into a kernel per distinct program.
//!
//! Each instruction is four u32, `[kind, op, a, b]`, and defines the next register:
//! `FUSED_LOAD` reads input `a` at its strided view, `FUSED_SCALAR` reads `scalars[a]`,
//! `FUSED_UNARY` applies unary `op` to register `a`, `FUSED_BINARY` applies binary `op` to
//! registers `a` and `b`, `FUSED_ROUND` rounds register `a` to f16 (`op` 1) or bf16 (`op` 2)
//! as storing it would (casts, and ops whose values a graph holds in a half type).
//! `out_regs[k]` names the register stored to output `k` (dense). Values live in f32
//! registers; inputs load type `I` and outputs store type `O`.
//!
//! Layout: `[numel, offset of each input…, then per dim from the innermost outwards:
//! size, stride of each input…]`.

use crate::elementwise::{binary_op, unary_f32};
use cubecl::prelude::*;

pub const FUSED_LOAD: u32 = 0;
pub const FUSED_SCALAR: u32 = 1;
pub const FUSED_UNARY: u32 = 2;
pub const FUSED_BINARY: u32 = 3;
pub const FUSED_ROUND: u32 = 4;
pub const ROUND_F16: u32 = 1;
pub const ROUND_BF16: u32 = 2;

#[cube(launch_unchecked)]
#[allow(clippy::needless_range_loop)] // comptime indices into the program, unrolled
pub fn fused_elementwise<I: Float, O: Float>(
    inputs: &Sequence<Array<I>>,
    outputs: &mut Sequence<Array<O>>,
    scalars: &Array<f32>,
    layout: &Array<u32>,
    #[comptime] rank: usize,
    #[comptime] n_inputs: usize,
    #[comptime] program: Vec<u32>,
    #[comptime] out_regs: Vec<u32>,
) {
    let pos = ABSOLUTE_POS;
    if pos >= layout[0] as usize {
        terminate!();
    }
    let mut regs = Sequence::<f32>::new();
    let n_instr = comptime![program.len() / 4];
    #[unroll]
    for pc in 0..n_instr {
        let kind = comptime![program[4 * pc]];
        let op = comptime![program[4 * pc + 1]];
        let a = comptime![program[4 * pc + 2] as usize];
        let b = comptime![program[4 * pc + 3] as usize];
        if comptime![kind == FUSED_LOAD] {
            let mut rem = pos;
            let mut at = layout[1 + a] as usize;
            #[unroll]
            for d in 0..rank {
                let base = comptime![1 + n_inputs + d * (1 + n_inputs)];
                let size = layout[base] as usize;
                let coord = rem % size;
                rem /= size;
                at += coord * layout[base + 1 + a] as usize;
            }
            let input = inputs.index(a);
            regs.push(f32::cast_from(input[at]));
        }
        if comptime![kind == FUSED_SCALAR] {
            regs.push(scalars[a]);
        }
        if comptime![kind == FUSED_UNARY] {
            let x = *regs.index(a);
            regs.push(unary_f32(x, op));
        }
        if comptime![kind == FUSED_ROUND && op == ROUND_F16] {
            let x = *regs.index(a);
            regs.push(f32::cast_from(half::f16::cast_from(x)));
        }
        if comptime![kind == FUSED_ROUND && op == ROUND_BF16] {
            let x = *regs.index(a);
            regs.push(f32::cast_from(half::bf16::cast_from(x)));
        }
        if comptime![kind == FUSED_BINARY] {
            let x = *regs.index(a);
            let y = *regs.index(b);
            regs.push(binary_op::<f32>(x, y, op));
        }
    }
    let n_out = comptime![out_regs.len()];
    #[unroll]
    for k in 0..n_out {
        let r = comptime![out_regs[k] as usize];
        let output = outputs.index_mut(k);
        output[pos] = O::cast_from(*regs.index(r));
    }
}
