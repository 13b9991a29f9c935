//! nextflow-compiler: the model writes ordinary tensor code over lazy tensors; realizing a
//! result compiles the graph into few, well-chosen kernel launches (ARCHITECTURE.md, "The
//! compiler"):
//! 1. fusion — chains of elementwise/broadcast ops (ending, possibly, in a cast) become one
//!    generic kernel specialised by a comptime op list; bias, activation and residual adds fold into matmul epilogues;
//!    RMSNorm written from primitives, and residual add + RMSNorm, map to their kernels;
//! 2. a memory plan — liveness, buffer reuse, in-place writes over dead inputs, peak bytes;
//! 3. kernel choice from an autotune cache keyed by (op, shape bucket, dtype, device),
//!    persisted as JSON in the user's cache dir;
//! 4. a plan cache keyed by graph signature, so a repeated step compiles once and replays.
//!
//! Eager mode ([`Graph::eager`]) runs each op as its own one-op graph. Setting
//! `NEXTFLOW_NO_FUSION=1` compiles every op to its own launch, and `NEXTFLOW_NO_ARENA=1`
//! makes every plan run allocate its buffers afresh, for comparison.

pub mod autotune;
mod counters;
mod graph;
mod plan;

/// Re-exported for `--json` output of the CLI (the autotune cache's own format).
pub use serde_json;

pub use counters::{counters, measure_memory, Cost, Counters};
pub use graph::{Graph, Lazy, Node, NodeId, Op, ViewOp};
pub use plan::{clear_plan_cache, Plan, PlanStats, Step, StepKind};

/// Every failure of the compiler layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] nextflow_runtime::Error),
    #[error("graph: {0}")]
    Graph(String),
    #[error("autotune cache {path}: {msg}")]
    Cache { path: String, msg: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// How graphs are compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Fuse elementwise chains, epilogues and norm patterns (off: one launch per op).
    pub fusion: bool,
    /// Time the candidates of an unknown autotune key (off: the cached or default kernel).
    pub autotune: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { fusion: true, autotune: false }
    }
}

/// Whether the switch `name` is set in the environment (to anything but empty or `0`).
pub(crate) fn env_on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

impl Options {
    /// `NEXTFLOW_NO_FUSION=1` disables fusion; `NEXTFLOW_AUTOTUNE=1` enables tuning.
    pub fn from_env() -> Options {
        Options { fusion: !env_on("NEXTFLOW_NO_FUSION"), autotune: env_on("NEXTFLOW_AUTOTUNE") }
    }

    /// What changes the plan (part of the graph signature).
    pub(crate) fn key(&self) -> bool {
        self.fusion
    }
}
