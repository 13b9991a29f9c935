//! Weights larger than one GPU binding, stored as row blocks.
//!
//! wgpu binds a buffer only up to the adapter's storage-binding limit (128 MiB on lavapipe,
//! 2–4 GiB on desktop GPUs), and kernels bind whole buffers: a 7B model's embedding table and
//! output head (~1 GiB each in f16) cannot be one buffer there. A [`Weight`] is an HF-layout
//! `[rows, cols]` matrix kept as consecutive row blocks, each its own buffer within the limit:
//! the embedding gathers from every block into one output (each row written by the block
//! holding its id), and `x·Wᵀ` runs one matmul per block, each writing its column range of one
//! output ([`crate::matmul::matmul_into`]). One block is the plain tensor and the plain path.
//! The loader makes the blocks (`nextflow_model::weights`); nothing else needs to know.

use crate::matmul::{matmul, matmul_into, Epilogue};
use crate::{check_same, concat, contiguous, gpu, on_gpu};
use nextflow_runtime::{DType, Device, Error, Result, Tensor};

/// An HF-layout `[rows, cols]` weight as consecutive row blocks (see the module docs).
#[derive(Clone, Debug)]
pub struct Weight {
    blocks: Vec<Tensor>,
    rows: usize,
    cols: usize,
}

impl From<Tensor> for Weight {
    /// One block. Panics unless `t` is 2-D (a weight matrix).
    fn from(t: Tensor) -> Weight {
        assert_eq!(t.rank(), 2, "a Weight is a [rows, cols] matrix, got {:?}", t.shape());
        let (rows, cols) = (t.shape()[0], t.shape()[1]);
        Weight { blocks: vec![t], rows, cols }
    }
}

impl Weight {
    /// Row blocks, in order: same column count, dtype and device.
    pub fn from_blocks(blocks: Vec<Tensor>) -> Result<Weight> {
        let err = |msg: String| Err(Error::Shape { op: "weight blocks", msg });
        let Some(first) = blocks.first() else { return err("no blocks".into()) };
        for b in &blocks {
            check_same("weight blocks", first, b)?;
            if b.rank() != 2 || b.shape()[1] != first.shape()[1] {
                return err(format!("blocks must be [rows, {}], got {:?}", first.shape().get(1).unwrap_or(&0), b.shape()));
            }
        }
        let rows = blocks.iter().map(|b| b.shape()[0]).sum();
        let cols = first.shape()[1];
        Ok(Weight { blocks, rows, cols })
    }

    /// The blocks of several weights stacked by rows (fused projections), without a copy.
    pub fn stack(parts: &[&Weight]) -> Result<Weight> {
        Weight::from_blocks(parts.iter().flat_map(|w| w.blocks.iter().cloned()).collect())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    pub fn dtype(&self) -> DType {
        self.blocks[0].dtype()
    }

    pub fn device(&self) -> &Device {
        self.blocks[0].device()
    }

    pub fn blocks(&self) -> &[Tensor] {
        &self.blocks
    }

    /// The weight as one tensor when it is one block.
    pub fn single(&self) -> Option<&Tensor> {
        (self.blocks.len() == 1).then(|| &self.blocks[0])
    }

    /// The whole matrix as one tensor: the block itself, or the blocks joined (a copy; for
    /// tests, and for devices without split-aware kernels).
    pub fn joined(&self) -> Result<Tensor> {
        match self.single() {
            Some(t) => Ok(t.clone()),
            None => concat(&self.blocks.iter().collect::<Vec<_>>(), 0),
        }
    }

    /// Applies `f` to every block (e.g. re-laying out CPU weights).
    pub fn map(self, f: impl Fn(Tensor) -> Result<Tensor>) -> Result<Weight> {
        Weight::from_blocks(self.blocks.into_iter().map(f).collect::<Result<_>>()?)
    }

    /// Rows `start..start + len` (views into the blocks that hold them).
    pub fn narrow_rows(&self, start: usize, len: usize) -> Result<Weight> {
        if start + len > self.rows || len == 0 {
            return Err(Error::Shape { op: "weight rows", msg: format!("rows {start}..{} of a [{}, {}] weight", start + len, self.rows, self.cols) });
        }
        if start == 0 && len == self.rows {
            return Ok(self.clone());
        }
        let mut parts = Vec::new();
        let mut first = 0;
        for b in &self.blocks {
            let n = b.shape()[0];
            let (lo, hi) = (start.max(first), (start + len).min(first + n));
            if lo < hi {
                parts.push(b.narrow(0, lo - first, hi - lo)?);
            }
            first += n;
        }
        Weight::from_blocks(parts)
    }

    /// `x·Wᵀ` with the epilogue (`bias [rows]`, `residual [.., rows]`): one matmul per block,
    /// each writing its columns of one output.
    pub fn matmul_t(&self, x: &Tensor, ep: Epilogue) -> Result<Tensor> {
        if let Some(w) = self.single() {
            return matmul(x, &w.transpose(0, 1)?, ep);
        }
        let last = x.rank().saturating_sub(1);
        let block_ep = |start: usize, n: usize| -> Result<(Option<Tensor>, Option<Tensor>)> {
            let bias = ep.bias.map(|b| b.narrow(0, start, n)).transpose()?;
            let residual = ep.residual.map(|r| r.narrow(last, start, n)).transpose()?;
            Ok((bias, residual))
        };
        if x.device().is_cpu() || !on_gpu(x.device(), &[x.dtype()]) {
            // No kernels write into views here: compute each block's columns, then join them.
            let mut outs = Vec::with_capacity(self.blocks.len());
            let mut start = 0;
            for b in &self.blocks {
                let n = b.shape()[0];
                let (bias, residual) = block_ep(start, n)?;
                outs.push(matmul(x, &b.transpose(0, 1)?, Epilogue { bias: bias.as_ref(), activation: ep.activation, residual: residual.as_ref() })?);
                start += n;
            }
            return concat(&outs.iter().collect::<Vec<_>>(), last);
        }
        if x.rank() < 2 {
            return Err(Error::Shape { op: "matmul", msg: format!("input needs rank >= 2, got {:?}", x.shape()) });
        }
        let mut shape = x.shape().to_vec();
        shape[last] = self.rows;
        let out = gpu::empty(x.device(), x.dtype(), &shape)?;
        let mut start = 0;
        for b in &self.blocks {
            let n = b.shape()[0];
            let (bias, residual) = block_ep(start, n)?;
            let ep = Epilogue { bias: bias.as_ref(), activation: ep.activation, residual: residual.as_ref() };
            matmul_into(x, &b.transpose(0, 1)?, ep, &out.narrow(last, start, n)?)?;
            start += n;
        }
        Ok(out)
    }

    /// Embedding rows of token ids (`u32`/`i32`, any shape): `[.., cols]`.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        if let Some(w) = self.single() {
            return crate::embedding(w, ids);
        }
        if self.device().is_cpu() || !on_gpu(self.device(), &[self.dtype()]) {
            return crate::embedding(&self.joined()?, ids);
        }
        crate::check_embedding_ids(self.device(), ids)?;
        let blocks: Vec<Tensor> = self.blocks.iter().map(contiguous).collect::<Result<_>>()?;
        gpu::embedding_blocks(&blocks.iter().collect::<Vec<_>>(), &contiguous(ids)?)
    }
}
