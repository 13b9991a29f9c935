use crate::DType;

/// Every failure of the runtime layer. Caller mistakes are values of this type, never panics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown device '{spec}': expected auto, cpu, cuda[:N], hip[:N], vulkan[:N], metal[:N] or dx12[:N]")]
    UnknownDeviceSpec { spec: String },

    #[error("{backend} is not available: {reason}")]
    BackendUnavailable { backend: &'static str, reason: String },

    #[error("{backend}:{index} does not exist ({count} {backend} device(s) found)")]
    NoSuchDevice { backend: &'static str, index: usize, count: usize },

    #[error("{op}: shape {shape:?} has {expected} elements but {found} values were given")]
    DataLength { op: &'static str, shape: Vec<usize>, expected: usize, found: usize },

    #[error("{op}: expected dtype {expected}, found {found}")]
    DTypeMismatch { op: &'static str, expected: DType, found: DType },

    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    #[error("{op}: dimension {dim} is out of range for a tensor of rank {rank}")]
    DimOutOfRange { op: &'static str, dim: usize, rank: usize },

    #[error("{op}: tensors are on different devices ({lhs} and {rhs})")]
    DeviceMismatch { op: &'static str, lhs: String, rhs: String },

    #[error("{op} is not supported for dtype {dtype} on {device}")]
    Unsupported { op: &'static str, dtype: DType, device: String },

    #[error("a buffer of {bytes} bytes exceeds {device}'s limit of {limit} bytes per buffer")]
    BufferTooLarge { device: String, bytes: usize, limit: u64 },

    #[error("device error on {device}: {msg}")]
    Device { device: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;
