//! Transformer-kernel benchmarks, side by side with peers in one run.
//!
//! `cargo bench --bench transformer [-- --device DEV] [--no-peers]`
//!
//! - matmul GFLOP/s at 256³, 1024³, 2048³ and the 1×3584×18944 GEMV of a 7B decode step,
//!   against numpy (OpenBLAS) on the same shapes, each peer timed right after ours (the
//!   GEMV also with the weight stored `[n, k]`, as checkpoints hold it);
//! - causal attention 1×8×1024×64 against PyTorch `scaled_dot_product_attention` (CPU).
//!
//! The peers run through `python3 benches/peers.py` (numpy, torch from pip). On lavapipe
//! the figures only show the kernels run: they are not speed.

mod common;

use common::*;
use nextflow_ops::{attention, matmul, AttentionOptions, Epilogue, Mask};
use std::process::Command;


/// One number from the peer script, or None if python or the package is missing.
fn peer(args: &[&str]) -> Option<String> {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peers.py"))
        .args(args)
        // Some machines set these for old OpenBLAS builds; they slow a current one.
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}


fn main() {
    let device = device_from_args();
    let peers = !has_flag("--no-peers");
    let threads = rayon::current_num_threads();
    println!("device {device}; rayon threads {threads}");
    if peers {
        println!("peer: {}", peer(&["info"]).unwrap_or_else(|| "numpy/threadpoolctl unavailable".into()));
    }
    // (m, k, n, weight stored [n, k] as HF checkpoints do)
    let shapes: &[(usize, usize, usize, bool)] = if device.is_cpu() {
        &[(256, 256, 256, false), (1024, 1024, 1024, false), (2048, 2048, 2048, false), (1, 3584, 18944, false), (1, 3584, 18944, true)]
    } else {
        // 18944 columns exceed wgpu's per-buffer floor (128 MiB); a quarter still shows the path.
        &[(256, 256, 256, false), (1, 3584, 18944, false), (1, 3584, 4736, false), (1, 3584, 4736, true)]
    };
    println!("\n{:<18} {:>12} {:>12} {:>8}", "matmul f32 MxKxN", "ours GFLOP/s", "numpy", "ratio");
    for &(m, k, n, weight) in shapes {
        if (k * n * 4) as u64 > device.max_buffer_bytes() {
            println!("{:<18} skipped: B exceeds this device's per-buffer limit", format!("{m}x{k}x{n}"));
            continue;
        }
        let a = random(&[m, k], &device);
        let b = if weight { random(&[n, k], &device).transpose(0, 1).unwrap() } else { random(&[k, n], &device) };
        let reps = if m * k * n > 1 << 31 { 3 } else { 10 };
        let t = best_of(reps, || {
            let c = matmul(&a, &b, Epilogue::default()).unwrap();
            device.sync().unwrap();
            std::hint::black_box(c);
        });
        let ours = 2.0 * (m * n * k) as f64 / t / 1e9;
        let theirs = if peers { peer(&[if weight { "matmul_wt" } else { "matmul" }, &m.to_string(), &k.to_string(), &n.to_string()]).and_then(|s| s.parse::<f64>().ok()) } else { None };
        let (t_s, r_s) = theirs.map_or(("-".into(), "-".into()), |p| (format!("{p:.1}"), format!("{:.2}x", ours / p)));
        println!("{:<18} {ours:>12.1} {t_s:>12} {r_s:>8}", format!("{m}x{k}x{n}{}", if weight { " Wᵀ" } else { "" }));
    }

    let (b, h, s, d) = (1, 8, if device.is_cpu() { 1024 } else { 256 }, 64);
    let (q, k, v) = (random(&[b, h, s, d], &device), random(&[b, h, s, d], &device), random(&[b, h, s, d], &device));
    let opts = AttentionOptions { mask: Some(Mask::Causal), ..Default::default() };
    let t = best_of(10, || {
        let o = attention(&q, &k, &v, &opts).unwrap();
        device.sync().unwrap();
        std::hint::black_box(o);
    });
    let theirs = if peers && device.is_cpu() { peer(&["sdpa", &b.to_string(), &h.to_string(), &s.to_string(), &d.to_string()]).and_then(|s| s.parse::<f64>().ok()) } else { None };
    println!("\n{:<28} {:>10} {:>14} {:>8}", "attention causal f32", "ours ms", "torch sdpa ms", "speedup");
    let (t_s, r_s) = theirs.map_or(("-".into(), "-".into()), |p| (format!("{p:.3}"), format!("{:.2}x", p / (t * 1e3))));
    println!("{:<28} {:>10.3} {t_s:>14} {r_s:>8}", format!("{b}x{h}x{s}x{d}"), t * 1e3);
}
