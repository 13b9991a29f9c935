//! Image-side benchmarks: the CPU convolution algorithms side by side (tiled is the
//! default), and the decoder-shaped GroupNorm and interpolation.
//!
//! `cargo bench --bench image [-- --device DEV]` (lavapipe figures are not speed).

mod common;

use common::*;
use nextflow_ops::{conv2d_with, group_norm, interpolate, Conv2d, ConvAlgorithm, ConvFusion, Resize};




fn main() {
    let device = device_from_args();
    println!("device {device}");
    println!("{:<34} {:>10} {:>10} {:>10} {:>10}", "conv2d f32", "direct ms", "im2col ms", "tiled ms", "GFLOP/s*");
    for &(cin, cout, hw, k, p) in &[(64usize, 64usize, 64usize, 3usize, Conv2d::same(3)), (128, 128, 32, 3, Conv2d::same(3)), (64, 64, 64, 1, Conv2d::same(1)), (64, 64, 64, 3, Conv2d::downsample())] {
        let x = random(&[1, cin, hw, hw], &device);
        let w = random(&[cout, cin, k, k], &device);
        let b = random(&[cout], &device);
        let time = |alg| best_of(5, || {
            let y = conv2d_with(&x, &w, Some(&b), p, ConvFusion::default(), alg).unwrap();
            device.sync().unwrap();
            std::hint::black_box(y);
        });
        let (direct, im2col, tiled) = (time(ConvAlgorithm::Direct), time(ConvAlgorithm::Im2col), time(ConvAlgorithm::Tiled));
        let out = conv2d_with(&x, &w, Some(&b), p, ConvFusion::default(), ConvAlgorithm::Tiled).unwrap();
        let flops = 2.0 * (cout * cin * k * k * out.shape()[2] * out.shape()[3]) as f64;
        println!(
            "{:<34} {:>10.2} {:>10.2} {:>10.2} {:>10.1}",
            format!("{cin}->{cout} {hw}x{hw} k{k} s{}", p.stride),
            direct * 1e3,
            im2col * 1e3,
            tiled * 1e3,
            flops / direct.min(im2col).min(tiled) / 1e9
        );
    }
    let x = random(&[1, 256, 64, 64], &device);
    let (g, b) = (random(&[256], &device), random(&[256], &device));
    let t = best_of(5, || std::hint::black_box(group_norm(&x, 32, &g, &b, 1e-6, true).unwrap()).device().sync().unwrap());
    println!("\ngroup_norm+silu [1,256,64,64] g32: {:.2} ms ({:.1} GB/s)", t * 1e3, 2.0 * 4.0 * x.numel() as f64 / t / 1e9);
    let m = random(&[1, 8, 48, 48], &device);
    let t = best_of(5, || std::hint::black_box(interpolate(&m, 64, 64, Resize::Bicubic).unwrap()).device().sync().unwrap());
    println!("bicubic [1,8,48,48]->64x64: {:.3} ms", t * 1e3);
    println!("* of the faster algorithm");
}
