//! nextflow-model: configuration, safetensors and PyTorch weights, the text tokenizer, the Qwen2
//! transformer with multi-scale 3D RoPE, text generation, and (for NextFlow checkpoints)
//! the visual tokenizer and the next-scale image pipelines.

pub mod config;
pub mod embedded;
pub mod msrq;
pub mod nextflow;
pub mod npy;
pub mod pickle;
pub mod text;
pub mod tokenizer;
pub mod torch_file;
pub mod transformer;
pub mod var;
pub mod visual;
pub mod weights;

pub use config::{Config, ModelType};
pub use nextflow::{ImageOptions, NextFlow, Piece, Sequence};
pub use tokenizer::{Message, StreamDecoder, TextTokenizer};
pub use torch_file::{is_torch_zip, pickle_globals, TorchNotes};
pub use transformer::{Cache, Linear, Transformer};
pub use weights::Weights;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] nextflow_runtime::Error),
    #[error(transparent)]
    Compiler(#[from] nextflow_compiler::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config: {0}")]
    Config(String),
    #[error("{}: {msg}", file.display())]
    Checkpoint { file: PathBuf, msg: String },
    #[error("tensor `{name}` is missing from the checkpoint in {}", dir.display())]
    MissingTensor { name: String, dir: PathBuf },
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    TensorShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, Error>;
