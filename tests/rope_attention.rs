//! Attention over a multi-scale 3D-RoPE'd block equals the unfused reference
//! (RoPE, matmul, additive mask, softmax, matmul), on every device, f32 and f16.
//!
//! The sequence is the spec §4.2 layout: 5 text tokens at (t,t,t), `<boi>` at 5, then a
//! 2×2 map (p_s = 6) and a 3×3 map (p_s = 7) with fractional spatial positions; text is
//! causal and each map is one bidirectional block.

use nextflow_ops::reference::{self as r, HostArray};
use nextflow_ops::{attention, grid_positions, AttentionOptions, BinaryOp, Epilogue, Mask, Rope};
use nextflow_runtime::{discover, DType, Device, Tensor};

fn nmse(got: &[f64], want: &[f64]) -> f64 {
    let err: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    err / want.iter().map(|b| b * b).sum::<f64>()
}

#[test]
fn fused_attention_of_a_3d_roped_block_equals_the_unfused_reference() {
    let (heads, kv_heads, d) = (4, 2, 16);
    let text = 6; // 5 words + <boi>
    let mut pos: Vec<f32> = (0..text).flat_map(|t| [t as f32; 3]).collect();
    pos.extend(grid_positions(6.0, 2, 2, 8.0));
    pos.extend(grid_positions(7.0, 3, 3, 8.0));
    let s = text + 4 + 9;
    let segments: Vec<usize> = std::iter::repeat_n(1, text).chain([4, 9]).collect();
    let rope = Rope::new(d, 10000.0, &[2, 3, 3]).unwrap();
    let values = |seed: usize, n: usize| -> Vec<f64> { (0..n).map(|i| (((i * 7919 + seed * 104729) % 2000) as f64 / 1000.0) - 1.0).collect() };

    for info in &discover().devices {
        let device = Device::open_info(info).unwrap();
        for dtype in [DType::F32, DType::F16] {
            let q = Tensor::from_f64(&values(1, heads * s * d), dtype, &[1, heads, s, d], &device).unwrap();
            let k = Tensor::from_f64(&values(2, kv_heads * s * d), dtype, &[1, kv_heads, s, d], &device).unwrap();
            let v = Tensor::from_f64(&values(3, kv_heads * s * d), dtype, &[1, kv_heads, s, d], &device).unwrap();
            let positions = Tensor::from_slice(&pos, &[1, s, 3], &device).unwrap();
            let (q_r, k_r) = (rope.apply(&q, &positions).unwrap(), rope.apply(&k, &positions).unwrap());
            let mask = Mask::Segments(segments.clone());
            let fused = attention(&q_r, &k_r, &v, &AttentionOptions { mask: Some(mask.clone()), ..Default::default() }).unwrap();

            // Unfused, with the same ops a framework would use: kv heads repeated for GQA.
            let repeat = |t: &Tensor| {
                let e = t.unsqueeze(2).unwrap().broadcast_to(&[1, kv_heads, heads / kv_heads, s, d]).unwrap();
                nextflow_ops::contiguous(&e).unwrap().reshape(&[1, heads, s, d]).unwrap()
            };
            let (k_full, v_full) = (repeat(&k_r), repeat(&v));
            let scores = nextflow_ops::matmul(&q_r, &k_full.transpose(2, 3).unwrap(), Epilogue::default()).unwrap();
            let scale = Tensor::from_f64(&[1.0 / (d as f64).sqrt()], dtype, &[1], &device).unwrap();
            let segment: Vec<usize> = segments.iter().enumerate().flat_map(|(i, &n)| std::iter::repeat_n(i, n)).collect();
            let additive: Vec<f64> = (0..s * s).map(|i| if segment[i % s] <= segment[i / s] { 0.0 } else { -6e4 }).collect();
            let additive = Tensor::from_f64(&additive, dtype, &[s, s], &device).unwrap();
            let scores = nextflow_ops::binary(&nextflow_ops::binary(&scores, &scale, BinaryOp::Mul).unwrap(), &additive, BinaryOp::Add).unwrap();
            let probs = nextflow_ops::softmax(&scores).unwrap();
            let unfused = nextflow_ops::matmul(&probs, &v_full, Epilogue::default()).unwrap();

            let (f, u) = (fused.to_f64_vec().unwrap(), unfused.to_f64_vec().unwrap());
            let hq = HostArray::of(&q).unwrap();
            let hk = HostArray::of(&k).unwrap();
            let hv = HostArray::of(&v).unwrap();
            let hp = HostArray::new(&[1, s, 3], pos.iter().map(|&p| p as f64).collect());
            let want = r::attention(
                &r::rope(&hq, &hp, rope.inv_freq(), rope.axis()),
                &r::rope(&hk, &hp, rope.inv_freq(), rope.axis()),
                &hv,
                &mask,
                None,
                1.0 / (d as f64).sqrt(),
            );
            let limit = if dtype == DType::F32 { 1e-7 } else { 1e-4 };
            let (fu, fw) = (nmse(&f, &u), nmse(&f, &want.data));
            println!("{} {dtype}: fused vs unfused NMSE {fu:.2e}, fused vs f64 reference {fw:.2e} (limit {limit:.0e})", info.spec());
            assert!(fu <= limit && fw <= limit, "{} {dtype}: {fu:e} / {fw:e}", info.spec());
        }
    }
}

/// Every GPU attention kernel setting the autotune cache may choose computes what the
/// default computes, bit for bit (the queries per cube change, not the arithmetic of one
/// query), over query counts that fill, underfill and straddle every block size.
#[test]
fn every_attention_kernel_candidate_computes_the_default_result() {
    use nextflow_ops::{attention_with, AttentionKernel};
    for info in &discover().devices {
        let device = Device::open_info(info).unwrap();
        if device.is_cpu() {
            continue; // one CPU path
        }
        for &(sq, skv) in &[(1usize, 9usize), (5, 5), (70, 90), (130, 140)] {
            let mut seed = 11u64;
            let mut t = |shape: &[usize]| {
                let n: usize = shape.iter().product();
                let v: Vec<f64> = (0..n)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((seed >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
                    })
                    .collect();
                Tensor::from_f64(&v, DType::F32, shape, &device).unwrap()
            };
            let (q, k, v) = (t(&[2, 4, sq, 32]), t(&[2, 2, skv, 32]), t(&[2, 2, skv, 32]));
            let segments: Vec<usize> = [skv - sq, sq].into_iter().filter(|&n| n > 0).collect();
            let opts = AttentionOptions { mask: Some(Mask::Segments(segments)), kv_starts: Some(vec![0, 1]), ..Default::default() };
            let want = attention(&q, &k, &v, &opts).unwrap().to_vec::<f32>().unwrap();
            for kernel in AttentionKernel::CANDIDATES {
                let got = attention_with(&q, &k, &v, &opts, kernel).unwrap().to_vec::<f32>().unwrap();
                assert_eq!(got, want, "{}: {} over {sq} queries x {skv} keys", info.spec(), kernel.name());
            }
        }
    }
}

/// Every GPU norm kernel setting (threads per row) the autotune cache may choose matches the
/// CPU result (NMSE <= 1e-10: the reduction order changes, not the formula), for RMSNorm,
/// add + RMSNorm and GroupNorm over rows shorter and longer than every block.
#[test]
fn every_norm_kernel_candidate_matches_the_cpu() {
    use nextflow_ops::{add_rms_norm_with, group_norm_with, rms_norm_with, NormKernel};
    let cpu = Device::cpu();
    for info in &discover().devices {
        let device = Device::open_info(info).unwrap();
        if device.is_cpu() {
            continue; // one CPU path: the reference
        }
        for &n in &[7usize, 96, 1000] {
            let mut seed = n as u64;
            let mut values = |len: usize| -> Vec<f64> {
                (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((seed >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
                    })
                    .collect()
            };
            let (xv, rv, wv, gv) = (values(6 * n), values(6 * n), values(n), values(6));
            let on = |v: &[f64], shape: &[usize], d: &Device| Tensor::from_f64(v, DType::F32, shape, d).unwrap();
            let f64s = |t: Tensor| t.to_f64_vec().unwrap();
            let want_rms = f64s(nextflow_ops::rms_norm(&on(&xv, &[6, n], &cpu), &on(&wv, &[n], &cpu), 1e-6).unwrap());
            let want_add = f64s(nextflow_ops::add_rms_norm(&on(&xv, &[6, n], &cpu), &on(&rv, &[6, n], &cpu), &on(&wv, &[n], &cpu), 1e-6).unwrap().1);
            let want_group = f64s(nextflow_ops::group_norm(&on(&xv, &[1, 6, n], &cpu), 3, &on(&gv, &[6], &cpu), &on(&gv, &[6], &cpu), 1e-6, true).unwrap());
            for kernel in NormKernel::CANDIDATES {
                let (x, r, w, g) = (on(&xv, &[6, n], &device), on(&rv, &[6, n], &device), on(&wv, &[n], &device), on(&gv, &[6], &device));
                let what = format!("{}: {} over rows of {n}", info.spec(), kernel.name());
                assert!(nmse(&f64s(rms_norm_with(&x, &w, 1e-6, kernel).unwrap()), &want_rms) <= 1e-10, "rms_norm {what}");
                assert!(nmse(&f64s(add_rms_norm_with(&x, &r, &w, 1e-6, kernel).unwrap().1), &want_add) <= 1e-10, "add_rms_norm {what}");
                let grouped = group_norm_with(&on(&xv, &[1, 6, n], &device), 3, &g, &g, 1e-6, true, kernel).unwrap();
                assert!(nmse(&f64s(grouped), &want_group) <= 1e-10, "group_norm {what}");
            }
        }
    }
}
