//! Command-line front end: argument parsing and the text each subcommand prints.

pub mod bench;
pub mod devices;

use clap::{Parser, Subcommand};

const DEVICE_HELP: &str = "Device to run on: auto (the best GPU, else the CPU; never a software \
rasterizer), cpu, cuda[:N], hip[:N], vulkan[:N], metal[:N] or dx12[:N]. `nextflow devices` lists them.";

/// NextFlow-rs: unified multimodal generation (text token by token, images scale by scale)
/// on NVIDIA, AMD and Apple GPUs, Vulkan, and the CPU, from one pure-Rust binary.
#[derive(Debug, Parser)]
#[command(name = "nextflow", version, about, long_about = None)]
pub struct Cli {
    #[arg(long, global = true, env = "NEXTFLOW_DEVICE", default_value = "auto", help = DEVICE_HELP)]
    pub device: String,

    /// Print what the compiler ran on exit: kernel launches, bytes read and written, FLOPs,
    /// plans compiled and replayed.
    #[arg(long, global = true)]
    pub stats: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every device this machine offers, with backend, memory and f16/bf16/plane
    /// support, and mark the one `--device auto` would choose.
    ///
    /// With `--device X`, open that device (compiling nothing) and report it, so you can
    /// check a selection before a long run.
    Devices,
    /// Time every candidate kernel of every op family at a config's shapes and save the
    /// winners in the autotune cache (`bench kernels --config tiny|7b [--json]`).
    Bench(bench::BenchArgs),
}
