//! Index-driven copies.

use cubecl::prelude::*;

/// Embedding lookup over one row block of a `[vocab, dim]` table (the whole table is the block
/// `first = 0, rows = vocab`): `out[r, c] = block[ids[r] - first, c]` for ids in
/// `[first, first + rows)`; other ids leave their row alone, except that the block at
/// `first = 0` writes zeros for ids at or past `vocab` (ids from the host are range-checked
/// first). Launched once per block, every output row is written exactly once.
#[cube(launch_unchecked)]
pub fn embedding<E: Numeric, I: Numeric>(
    table: &Array<E>,
    ids: &Array<I>,
    output: &mut Array<E>,
    first: u32,
    rows: u32,
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
    if id >= first && id - first < rows {
        output[pos] = table[(id - first) as usize * dim + col];
    } else if first == 0 && id >= vocab {
        output[pos] = E::from_int(0);
    }
}
