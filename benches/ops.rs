//! First-op-set benchmark: bandwidth-bound ops against the machine's copy bandwidth.
//!
//! `cargo bench --bench ops [-- --device DEV]`. For each op it reports GB/s moved (bytes
//! read + written) and the ratio to a plain host `memcpy` of the same bytes measured in the
//! same run — the limit a bandwidth-bound op can reach on the CPU. On lavapipe the numbers
//! only show the kernels run; they are not speed.

mod common;

use common::*;
use nextflow_ops::{BinaryOp, ReduceOp, UnaryOp};
use nextflow_runtime::{DType, Tensor};


fn main() {
    let device = device_from_args();
    let (rows, n) = if device.is_cpu() { (4096, 1024) } else { (256, 1024) };
    let numel = rows * n;
    let bytes = (numel * 4) as f64;
    let src = vec![1.5f32; numel];
    let mut dst = vec![0f32; numel];
    let memcpy = best_of(10, || {
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
    });
    println!("device {device}; {rows}x{n} f32; host memcpy {:.1} GB/s (read+write)", 2.0 * bytes / memcpy / 1e9);
    let x = Tensor::from_slice(&src, &[rows, n], &device).unwrap();
    let y = Tensor::from_slice(&src, &[rows, n], &device).unwrap();
    let w = Tensor::from_slice(&vec![1.0f32; n], &[n], &device).unwrap();
    let sync = |t: Tensor| {
        device.sync().unwrap();
        std::hint::black_box(t);
    };
    let cases: Vec<(&str, f64, Box<dyn Fn() -> Tensor>)> = vec![
        ("silu", 2.0, Box::new(|| nextflow_ops::unary(&x, UnaryOp::Silu).unwrap())),
        ("add", 3.0, Box::new(|| nextflow_ops::binary(&x, &y, BinaryOp::Add).unwrap())),
        ("add row-broadcast", 2.0, Box::new(|| nextflow_ops::binary(&x, &w, BinaryOp::Add).unwrap())),
        ("cast f32->f16", 1.5, Box::new(|| nextflow_ops::cast(&x, DType::F16).unwrap())),
        ("transpose copy", 2.0, Box::new(|| nextflow_ops::contiguous(&x.transpose(0, 1).unwrap()).unwrap())),
        ("sum rows", 1.0, Box::new(|| nextflow_ops::reduce(&x, ReduceOp::Sum).unwrap())),
        ("softmax rows", 2.0, Box::new(|| nextflow_ops::softmax(&x).unwrap())),
        ("rms_norm rows", 2.0, Box::new(|| nextflow_ops::rms_norm(&x, &w, 1e-6).unwrap())),
    ];
    println!("{:<20} {:>10} {:>10} {:>12}", "op", "ms", "GB/s", "vs memcpy");
    for (name, passes, op) in cases {
        let t = best_of(10, || sync(op()));
        let gbs = passes * bytes / t / 1e9;
        println!("{name:<20} {:>10.3} {gbs:>10.1} {:>11.2}x", t * 1e3, gbs / (2.0 * bytes / memcpy / 1e9));
    }
}
