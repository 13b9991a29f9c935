//! The tiny ShapeWorld NextFlow model compiled into the binary: the default of every
//! command, so `nextflow generate` works with no files (see its MODEL_CARD.md).

pub const CONFIG: &str = include_str!("../assets/nextflow-tiny/config.json");
pub const TOKENIZER: &[u8] = include_bytes!("../assets/nextflow-tiny/tokenizer.json");
pub const WEIGHTS: &[u8] = include_bytes!("../assets/nextflow-tiny/model.safetensors");
pub const MODEL_CARD: &str = include_str!("../assets/nextflow-tiny/MODEL_CARD.md");

/// The label errors and `inspect` use for it.
pub const NAME: &str = "<embedded nextflow-tiny>";
