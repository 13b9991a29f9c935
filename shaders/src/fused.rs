//! One generic elementwise kernel for every fused chain: the chain is a comptime program
//! (a register machine) that cubecl specialises into a kernel per distinct program.
//!
//! Each [`Instr`] defines the next register (see its variants). `out_regs[k]` names the
//! register stored to output `k` (dense). Values live in f32 registers; inputs load type
//! `I` and outputs store type `O`.
//!
//! Layout: `[numel, offset of each input…, then per dim from the innermost outwards:
//! size, stride of each input…]`.

use crate::elementwise::{binary_op, unary_f32, Binary, Unary};
use cubecl::prelude::*;

/// The half type a register is rounded to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Half {
    F16,
    Bf16,
}

/// One instruction of a fused program (a comptime kernel argument); each defines the next
/// register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Instr {
    /// `Load(i)`: input `i` at its strided view.
    Load(usize),
    /// `Scalar(i)`: `scalars[i]`.
    Scalar(usize),
    /// `Unary(op, a)`: `op` of register `a`.
    Unary(Unary, usize),
    /// `Binary(op, a, b)`: `op` of registers `a` and `b`.
    Binary(Binary, usize, usize),
    /// `Round(half, a)`: register `a` rounded to `half` as storing it would round it (casts,
    /// and ops whose values a graph holds in a half type).
    Round(Half, usize),
}

#[cube(launch_unchecked)]
#[allow(clippy::needless_range_loop)] // comptime indices into the program, unrolled
pub fn fused_elementwise<I: Float, O: Float>(
    inputs: &Sequence<Array<I>>,
    outputs: &mut Sequence<Array<O>>,
    scalars: &Array<f32>,
    layout: &Array<u32>,
    #[comptime] rank: usize,
    #[comptime] n_inputs: usize,
    #[comptime] program: Vec<Instr>,
    #[comptime] out_regs: Vec<usize>,
) {
    let pos = ABSOLUTE_POS;
    if pos >= layout[0] as usize {
        terminate!();
    }
    let mut regs = Sequence::<f32>::new();
    let n_instr = comptime![program.len()];
    #[unroll]
    for pc in 0..n_instr {
        let instr = comptime![program[pc]];
        match instr {
            Instr::Load(input_at) => {
                let mut rem = pos;
                let mut at = layout[1 + input_at] as usize;
                #[unroll]
                for d in 0..rank {
                    let base = comptime![1 + n_inputs + d * (1 + n_inputs)];
                    let size = layout[base] as usize;
                    let coord = rem % size;
                    rem /= size;
                    at += coord * layout[base + 1 + input_at] as usize;
                }
                let input = inputs.index(input_at);
                regs.push(f32::cast_from(input[at]));
            }
            Instr::Scalar(scalar_at) => {
                regs.push(scalars[scalar_at]);
            }
            Instr::Unary(op, src) => {
                let x = *regs.index(src);
                regs.push(unary_f32(x, op));
            }
            Instr::Round(Half::F16, src) => {
                let x = *regs.index(src);
                regs.push(f32::cast_from(half::f16::cast_from(x)));
            }
            Instr::Round(Half::Bf16, src) => {
                let x = *regs.index(src);
                regs.push(f32::cast_from(half::bf16::cast_from(x)));
            }
            Instr::Binary(op, lhs, rhs) => {
                let x = *regs.index(lhs);
                let y = *regs.index(rhs);
                regs.push(binary_op::<f32>(x, y, op));
            }
        }
    }
    let n_out = comptime![out_regs.len()];
    #[unroll]
    for k in 0..n_out {
        let r = comptime![out_regs[k]];
        let output = outputs.index_mut(k);
        output[pos] = O::cast_from(*regs.index(r));
    }
}
