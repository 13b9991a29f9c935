//! Index-driven copies.

use cubecl::prelude::*;

/// Embedding lookup: `out[r, c] = table[ids[r], c]` for a `[vocab, dim]` table; rows whose
/// id is out of range are written as zeros (ids from the host are range-checked first).
#[cube(launch_unchecked)]
pub fn embedding<E: Numeric, I: Numeric>(
    table: &Array<E>,
    ids: &Array<I>,
    output: &mut Array<E>,
    vocab: u32,
    dim: u32,
    numel: u32,
) {
    let pos = ABSOLUTE_POS;
    if pos >= numel as usize {
        terminate!();
    }
    let dim = dim as usize;
    let row = pos / dim;
    let col = pos % dim;
    let id = u32::cast_from(ids[row]);
    if id < vocab {
        output[pos] = table[id as usize * dim + col];
    } else {
        output[pos] = E::from_int(0);
    }
}
