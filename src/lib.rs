//! NextFlow-rs: one decoder-only transformer that writes text token by token and paints
//! images scale by scale, on CUDA, HIP, Vulkan, Metal and the CPU from one binary.
//!
//! This crate is the CLI and a facade over the layers below it.

pub use nextflow_compiler as compiler;
pub use nextflow_model as model;
pub use nextflow_ops as ops;
pub use nextflow_runtime as runtime;

pub mod cli;
pub mod shapeeval;
