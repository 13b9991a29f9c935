//! What every benchmark binary shares: timing, the `--device` argument, inputs.
#![allow(dead_code)]

use nextflow_runtime::{Device, Tensor};
use std::time::Instant;

/// Best wall time of `reps` runs after one warm-up (the least noisy single figure).
pub fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The device named by `--device X` (default cpu); exits with the error otherwise.
pub fn device_from_args() -> Device {
    let args: Vec<String> = std::env::args().collect();
    let spec = args.iter().position(|a| a == "--device").and_then(|i| args.get(i + 1)).map(String::as_str).unwrap_or("cpu");
    Device::open(spec).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    })
}

pub fn has_flag(flag: &str) -> bool {
    std::env::args().any(|a| a == flag)
}

/// Deterministic values in [-1, 1).
pub fn random(shape: &[usize], device: &Device) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0).collect();
    Tensor::from_slice(&v, shape, device).unwrap()
}
