//! nextflow-shaders: every `#[cube]` kernel of NextFlow-rs, and nothing else.
//!
//! Kernels are written once and compiled by cubecl for CUDA, HIP and wgpu (Vulkan, Metal,
//! DX12). Launch code, argument checks and CPU references live in `nextflow-ops`.
//! Float kernels load their element type, compute in f32 and store their element type.

pub mod attention;
pub mod elementwise;
pub mod fused;
pub mod gather;
pub mod image;
pub mod matmul;
pub mod reduce;
pub mod sampling;

/// Threads per cube for one-element-per-thread kernels.
pub const ELEMENTWISE_CUBE: u32 = 256;
/// Threads per cube for one-row-per-cube kernels (reductions, softmax, norms).
pub const ROW_CUBE: u32 = 128;
