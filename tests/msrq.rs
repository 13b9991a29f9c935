//! Multi-scale residual quantization end to end on every device: encode a feature map,
//! decode the indices, check the residual shrinks scale by scale and that
//! decode(encode(x)) equals the loop's own f_hat bit for bit (same ops, same order).

use nextflow::model::msrq::{decode, encode};
use nextflow_ops::msrq::{Codebook, Phi};
use std::sync::Arc;
use nextflow_ops::{interpolate, Resize};
use nextflow_runtime::{discover, DType, Device, Tensor};

fn values(seed: u64, n: usize) -> Vec<f64> {
    // A small LCG: deterministic on every machine.
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn msrq_encode_decode_round_trip_on_every_device() {
    for info in &discover().devices {
        let device = Device::open_info(info).unwrap();
        let dtype = DType::F32;
        // A smooth map (a bicubic-upsampled 3×3 field) plus a little detail, 4 channels.
        let coarse = Tensor::from_f64(&values(1, 2 * 4 * 9), dtype, &[2, 4, 3, 3], &device).unwrap();
        let detail = Tensor::from_f64(&values(2, 2 * 4 * 64).iter().map(|v| v * 0.1).collect::<Vec<_>>(), dtype, &[2, 4, 8, 8], &device).unwrap();
        let f = nextflow_ops::binary(&interpolate(&coarse, 8, 8, Resize::Bicubic).unwrap(), &detail, nextflow_ops::BinaryOp::Add).unwrap();
        let table = Tensor::from_f64(&values(3, 512 * 4), dtype, &[512, 4], &device).unwrap();
        let book = Arc::new(Codebook::plain(&table).unwrap());
        let schedule = [(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8)];
        let enc = encode(&f, &book, &schedule, None).unwrap();
        let start = f.to_f64_vec().unwrap().iter().map(|v| v * v).sum::<f64>().sqrt();
        let mut previous = start;
        for (k, &n) in enc.residual_norms.iter().enumerate() {
            assert!(n < previous, "{}: residual grew at scale {k}: {previous} -> {n}", info.spec());
            previous = n;
        }
        let dec = decode(&enc.indices, &book, &schedule, (8, 8), None).unwrap();
        assert_eq!(dec.to_vec::<f32>().unwrap(), enc.f_hat.to_vec::<f32>().unwrap(), "{}: decode != f_hat", info.spec());
        println!(
            "msrq {} plain 1,2,3,4,6,8: |f| {start:.3}, residual per scale {:?}",
            info.spec(),
            enc.residual_norms.iter().map(|n| (n * 1000.0).round() / 1000.0).collect::<Vec<_>>()
        );

        // Dual codebook, a non-square (1:2) schedule and VAR's phi blend.
        let f2 = Tensor::from_f64(&values(4, 6 * 4 * 8), dtype, &[1, 6, 4, 8], &device).unwrap();
        let sem = Tensor::from_f64(&values(5, 64 * 4), dtype, &[64, 4], &device).unwrap();
        let pix = Tensor::from_f64(&values(6, 64 * 2), dtype, &[64, 2], &device).unwrap();
        let dual = Arc::new(Codebook::dual(&sem, &pix, 1.0, 1.0).unwrap());
        let convs = (0..4)
            .map(|i| {
                let w = Tensor::from_f64(&values(10 + i, 6 * 6 * 9).iter().map(|v| v * 0.1).collect::<Vec<_>>(), dtype, &[6, 6, 3, 3], &device).unwrap();
                let b = Tensor::from_f64(&values(20 + i, 6).iter().map(|v| v * 0.1).collect::<Vec<_>>(), dtype, &[6], &device).unwrap();
                (w, b)
            })
            .collect();
        let phi = Phi { convs, ratio: 0.5 };
        let wide = [(1, 2), (2, 4), (3, 6), (4, 8)];
        let enc = encode(&f2, &dual, &wide, Some(&phi)).unwrap();
        let dec = decode(&enc.indices, &dual, &wide, (4, 8), Some(&phi)).unwrap();
        // Bit for bit on the CPU; a GPU compiler may contract the blend's multiply-adds into
        // FMAs differently in the two graphs' fused kernels (they group the adds differently).
        let (dec, f_hat) = (dec.to_vec::<f32>().unwrap(), enc.f_hat.to_vec::<f32>().unwrap());
        let worst = dec.iter().zip(&f_hat).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let bound = if device.is_cpu() { 0.0 } else { 1e-5 };
        assert!(worst <= bound, "{}: dual/phi decode differs from f_hat by {worst} (allowed {bound})", info.spec());
        assert_eq!(enc.indices.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>(), vec![vec![1, 2], vec![1, 8], vec![1, 18], vec![1, 32]]);
    }
}

#[test]
fn phi_selection_matches_vars_tables() {
    let phi = |n| Phi { convs: vec![(Tensor::from_slice(&[0f32], &[1], &Device::cpu()).unwrap(), Tensor::from_slice(&[0f32], &[1], &Device::cpu()).unwrap()); n], ratio: 0.5 };
    let table = |k: usize| (0..k).map(|i| phi(4).select(i, k)).collect::<Vec<_>>();
    // Spec §1.2 (numpy's answers, ties included).
    assert_eq!(table(10), vec![0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);
    assert_eq!(table(14), vec![0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]);
    assert_eq!(table(18), vec![0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3]);
    // Other conv counts use `linspace(1/2n, 1 − 1/2n, n)` (VAR's PhiPartiallyShared and
    // PhiNonShared), over 10 scales.
    let table = |n: usize| (0..10).map(|i| phi(n).select(i, 10)).collect::<Vec<_>>();
    assert_eq!(table(2), vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1]);
    assert_eq!(table(3), vec![0, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
    assert_eq!(table(5), vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
    assert_eq!(table(10), (0..10).collect::<Vec<_>>());
}

#[test]
fn bad_msrq_input_is_an_error() {
    let cpu = Device::cpu();
    let table = Tensor::from_f64(&values(3, 16 * 4), DType::F32, &[16, 4], &cpu).unwrap();
    let book = Arc::new(Codebook::plain(&table).unwrap());
    let f = Tensor::from_f64(&values(1, 4 * 16), DType::F32, &[1, 4, 4, 4], &cpu).unwrap();
    assert!(encode(&f, &book, &[], None).is_err());
    assert!(encode(&f, &book, &[(8, 8)], None).is_err());
    let wrong_dim = Tensor::from_f64(&values(1, 3 * 16), DType::F32, &[1, 3, 4, 4], &cpu).unwrap();
    assert!(encode(&wrong_dim, &book, &[(4, 4)], None).is_err());
    let z = Tensor::from_f64(&values(1, 8), DType::F32, &[2, 4], &cpu).unwrap();
    assert!(book.nearest(&z, 0).is_err() && book.nearest(&z, 17).is_err());
}
