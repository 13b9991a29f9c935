//! nextflow-runtime: devices, buffers and strided tensors.
//!
//! The lowest layer: it knows how to find and open a device, move bytes to and from it and
//! describe views of those bytes. It launches no kernels; `nextflow-ops` does.

mod device;
mod dtype;
mod error;
mod layout;
pub mod probe;
pub mod record;
mod storage;
mod tensor;

pub use device::{discover, Backend, Client, CudaRuntime, Device, DeviceInfo, DeviceKind, DeviceSpec, Discovery, HipRuntime, Unavailable, WgpuRuntime};
pub use record::RecordRuntime;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use layout::{broadcast_shape, contiguous_strides, Layout};
pub use storage::{poison_outputs, reclaim, set_poison_outputs, with_arena, Arena, CpuBuffer, GpuBuffer, Storage};
pub use tensor::Tensor;

/// Re-exported so upper layers name cubecl through one pinned version.
pub use cubecl;
pub use half;
