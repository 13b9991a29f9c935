//! The op-coverage suite: every op of the table on one device, compared with the f64 CPU
//! reference. Shared by the op-coverage test (every device) and the GPU-targets test (the
//! recording device, whose kernel instances it then compiles for every target).
#![allow(dead_code)]

use nextflow_ops::reference::{self as r, HostArray};
use nextflow_ops::matmul::{cmma_available, matmul_with, MatmulKernel, MATMUL_TILES};
use nextflow_ops::{Activation, AttentionOptions, BinaryOp, Epilogue, KvCache, Mask, ReduceOp, Rope, UnaryOp};
use nextflow_runtime::{DType, Device, Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;

/// Row lengths and element counts: 1, 7, 33 and above 1000 (not multiples of cube sizes).
const ROW_SHAPES: &[&[usize]] = &[&[1], &[7], &[3, 33], &[2, 1031]];

pub struct Checker<'a> {
    pub device: &'a Device,
    pub covered: BTreeSet<&'static str>,
    pub failures: Vec<String>,
    pub checks: usize,
}

impl Checker<'_> {
    fn compare(&mut self, op: &'static str, label: &str, dtype: DType, got: Result<Tensor>, want: &HostArray) {
        self.covered.insert(op);
        self.checks += 1;
        let what = format!("{op} [{label}] {dtype} on {}", self.device.info().spec());
        // Launches return before errors surface: sync so a failed compile or launch is named.
        let got = got.and_then(|t| self.device.sync().map(|_| t));
        let got = match got.and_then(|t| {
            if !t.device().same(self.device) {
                panic!("{what}: result left the device");
            }
            Ok((t.shape().to_vec(), t.dtype(), t.to_f64_vec()?))
        }) {
            Ok(v) => v,
            Err(e) => return self.failures.push(format!("{what}: error {e}")),
        };
        let (shape, out_dtype, values) = got;
        if shape != want.shape {
            return self.failures.push(format!("{what}: shape {shape:?}, expected {:?}", want.shape));
        }
        if !out_dtype.is_float() {
            if let Some(i) = (0..values.len()).find(|&i| values[i] != want.data[i]) {
                self.failures.push(format!("{what}: element {i} is {}, expected {}", values[i], want.data[i]));
            }
            return;
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return self.failures.push(format!("{what}: element {i} is {} (unwritten or overflow)", values[i]));
        }
        let err: f64 = values.iter().zip(&want.data).map(|(a, b)| (a - b) * (a - b)).sum();
        let norm: f64 = want.data.iter().map(|b| b * b).sum::<f64>().max(1e-30);
        // f16 cannot hold values below its smallest normal to 1e-2: measure those absolutely.
        let norm = if out_dtype == DType::F32 { norm } else { norm.max(values.len() as f64 * 6.1e-5 * 6.1e-5) };
        let nmse = err / norm;
        let limit = match out_dtype {
            DType::F32 => 1e-7,
            _ => 1e-4, // (1e-2 relative RMS)²
        };
        if nmse > limit {
            self.failures.push(format!("{what}: NMSE {nmse:.3e} > {limit:.0e}"));
        }
    }
}

fn random(rng: &mut StdRng, shape: &[usize], dtype: DType, lo: f64, hi: f64, device: &Device) -> (Tensor, HostArray) {
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    let t = Tensor::from_f64(&values, dtype, shape, device).unwrap();
    // The reference sees exactly the values the device holds (rounded to dtype).
    let h = r::cast(&HostArray::new(shape, values), dtype);
    (t, h)
}

/// A non-contiguous view with the given logical shape: a narrowed, transposed parent.
fn strided(rng: &mut StdRng, shape: &[usize], dtype: DType, lo: f64, hi: f64, device: &Device) -> (Tensor, HostArray) {
    let mut parent_shape: Vec<usize> = shape.iter().rev().copied().collect();
    parent_shape[0] += 2;
    let (parent, _) = random(rng, &parent_shape, dtype, lo, hi, device);
    let rank = shape.len();
    let view = parent.narrow(0, 1, shape[rank - 1]).unwrap().permute(&(0..rank).rev().collect::<Vec<_>>()).unwrap();
    assert!(rank == 1 || !view.is_contiguous());
    let h = HostArray::of(&view).unwrap();
    (view, h)
}

fn unary_range(op: UnaryOp) -> (f64, f64) {
    match op {
        UnaryOp::Sqrt | UnaryOp::Rsqrt => (0.05, 9.0),
        UnaryOp::Exp => (-6.0, 6.0),
        UnaryOp::Tanh | UnaryOp::Silu | UnaryOp::GeluErf => (-8.0, 8.0),
        UnaryOp::Neg => (-3.0, 3.0),
    }
}

fn unary_name(op: UnaryOp) -> &'static str {
    match op {
        UnaryOp::Neg => "neg",
        UnaryOp::Exp => "exp",
        UnaryOp::Sqrt => "sqrt",
        UnaryOp::Rsqrt => "rsqrt",
        UnaryOp::Tanh => "tanh",
        UnaryOp::Silu => "silu",
        UnaryOp::GeluErf => "gelu_erf",
    }
}

pub fn run_device(device: &Device, dtype: DType, ck: &mut Checker) {
    let mut rng = StdRng::seed_from_u64(0x5eed ^ dtype.size() as u64);
    let d = device;
    for &shape in ROW_SHAPES {
        let label = format!("{shape:?}");
        for op in UnaryOp::ALL {
            let (lo, hi) = unary_range(op);
            let (x, hx) = random(&mut rng, shape, dtype, lo, hi, d);
            ck.compare(unary_name(op), &label, dtype, nextflow_ops::unary(&x, op), &r::unary(op, &hx));
            let (x, hx) = strided(&mut rng, shape, dtype, lo, hi, d);
            ck.compare(unary_name(op), &format!("{label} strided"), dtype, nextflow_ops::unary(&x, op), &r::unary(op, &hx));
        }
        let (x, hx) = strided(&mut rng, shape, dtype, -100.0, 100.0, d);
        ck.compare("contiguous", &label, dtype, nextflow_ops::contiguous(&x), &hx);
        for to in [DType::F32, DType::F16, DType::BF16, DType::U32, DType::I32, DType::U8] {
            // Float → int truncates; keep values in every target's range.
            let (lo, hi) = if to.is_float() { (-300.0, 300.0) } else { (0.0, 250.0) };
            let (x, hx) = strided(&mut rng, shape, dtype, lo, hi, d);
            ck.compare("cast", &format!("{label} -> {to}"), to, nextflow_ops::cast(&x, to), &r::cast(&hx, to));
        }
        for op in BinaryOp::ALL {
            let name = ["add", "sub", "mul", "div", "max"][op as usize];
            let (a, ha) = random(&mut rng, shape, dtype, -4.0, 4.0, d);
            let (b, hb) = random(&mut rng, shape, dtype, 0.5, 3.0, d);
            ck.compare(name, &label, dtype, nextflow_ops::binary(&a, &b, op), &r::binary(op, &ha, &hb));
            // Broadcast: a row vector against a column, and a strided lhs.
            let n = *shape.last().unwrap();
            let (row, hrow) = random(&mut rng, &[n], dtype, 0.5, 3.0, d);
            let (col, hcol) = random(&mut rng, &[5, 1], dtype, -4.0, 4.0, d);
            ck.compare(name, &format!("[5,1]x[{n}]"), dtype, nextflow_ops::binary(&col, &row, op), &r::binary(op, &hcol, &hrow));
            let (s, hs) = strided(&mut rng, shape, dtype, -4.0, 4.0, d);
            ck.compare(name, &format!("{label} strided x [{n}]"), dtype, nextflow_ops::binary(&s, &row, op), &r::binary(op, &hs, &hrow));
        }
        for op in ReduceOp::ALL {
            let name = ["sum", "reduce_max", "mean"][op as usize];
            let (x, hx) = random(&mut rng, shape, dtype, -3.0, 3.0, d);
            ck.compare(name, &label, dtype, nextflow_ops::reduce(&x, op), &r::reduce(op, &hx));
            let (x, hx) = strided(&mut rng, shape, dtype, -3.0, 3.0, d);
            ck.compare(name, &format!("{label} strided"), dtype, nextflow_ops::reduce(&x, op), &r::reduce(op, &hx));
        }
        let (x, hx) = random(&mut rng, shape, dtype, -3.0, 3.0, d);
        ck.compare("argmax", &label, DType::U32, nextflow_ops::argmax(&x), &r::argmax(&hx));
        // Ties: many equal maxima, the first index must win.
        let n = *shape.last().unwrap();
        let tied: Vec<f64> = (0..x.numel()).map(|i| ((i % n) % 3) as f64).collect();
        let (t, ht) = (Tensor::from_f64(&tied, dtype, shape, d).unwrap(), HostArray::new(shape, tied.clone()));
        ck.compare("argmax", &format!("{label} ties"), DType::U32, nextflow_ops::argmax(&t), &r::argmax(&ht));
        let (x, hx) = random(&mut rng, shape, dtype, -30.0, 30.0, d);
        ck.compare("softmax", &label, dtype, nextflow_ops::softmax(&x), &r::softmax(&hx));
        let (x, hx) = strided(&mut rng, shape, dtype, -3.0, 3.0, d);
        ck.compare("softmax", &format!("{label} strided"), dtype, nextflow_ops::softmax(&x), &r::softmax(&hx));
        let (x, hx) = random(&mut rng, shape, dtype, -3.0, 3.0, d);
        let (w, hw) = random(&mut rng, &[n], dtype, 0.5, 1.5, d);
        ck.compare("rms_norm", &label, dtype, nextflow_ops::rms_norm(&x, &w, 1e-6), &r::rms_norm(&hx, &hw, 1e-6));
    }
    for (vocab, dim, ids) in [(1usize, 7usize, vec![0u32]), (33, 7, vec![5, 0, 32, 5, 17]), (1031, 33, (0..40).map(|i| (i * 97) % 1031).collect())] {
        let (table, htable) = random(&mut rng, &[vocab, dim], dtype, -2.0, 2.0, d);
        let shape = [ids.len()];
        let hids = HostArray::new(&shape, ids.iter().map(|&i| i as f64).collect());
        let label = format!("[{vocab},{dim}] x {} ids", ids.len());
        let want = r::embedding(&htable, &hids);
        let u = Tensor::from_slice(&ids, &shape, d).unwrap();
        ck.compare("embedding", &format!("{label} u32"), dtype, nextflow_ops::embedding(&table, &u), &want);
        let signed: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        let s = Tensor::from_slice(&signed, &shape, d).unwrap();
        ck.compare("embedding", &format!("{label} i32"), dtype, nextflow_ops::embedding(&table, &s), &want);
    }
    for (shapes, dim) in [(vec![[1usize, 7], [3, 7], [33, 7]], 0usize), (vec![[5, 1], [5, 33], [5, 1031]], 1)] {
        let parts: Vec<(Tensor, HostArray)> = shapes.iter().map(|s| random(&mut rng, s, dtype, -5.0, 5.0, d)).collect();
        let tensors: Vec<&Tensor> = parts.iter().map(|p| &p.0).collect();
        let hosts: Vec<HostArray> = parts.iter().map(|p| p.1.clone()).collect();
        ck.compare("concat", &format!("{shapes:?} dim {dim}"), dtype, nextflow_ops::concat(&tensors, dim), &r::concat(&hosts, dim));
    }
    // A strided part (a transposed view) joins dense ones.
    let (a, ha) = random(&mut rng, &[4, 9], dtype, -5.0, 5.0, d);
    let (b, hb) = strided(&mut rng, &[4, 3], dtype, -5.0, 5.0, d);
    ck.compare("concat", "[4,9] + strided [4,3] dim 1", dtype, nextflow_ops::concat(&[&a, &b], 1), &r::concat(&[ha, hb], 1));
}

/// The transformer kernels: matmul family, attention with its masks and cache, RoPE,
/// SwiGLU, fused add + RMSNorm.
pub fn run_transformer_ops(device: &Device, dtype: DType, ck: &mut Checker) {
    let mut rng = StdRng::seed_from_u64(0xa77e ^ dtype.size() as u64);
    let d = device;
    let none = Activation::None;
    // Matmul: odd shapes, every tile candidate, transposed operands, batched and shared B.
    for &(m, k, n) in &[(5usize, 7usize, 33usize), (33, 65, 17), (70, 130, 66)] {
        let (a, ha) = random(&mut rng, &[m, k], dtype, -1.0, 1.0, d);
        let (b, hb) = random(&mut rng, &[k, n], dtype, -1.0, 1.0, d);
        let want = r::matmul(&ha, &hb, None, none, None);
        for tile in MATMUL_TILES {
            let got = matmul_with(&a, &b, Epilogue::default(), MatmulKernel::Tiled(*tile));
            ck.compare("matmul", &format!("{m}x{k}x{n} {}", tile.name()), dtype, got, &want);
        }
        if dtype == DType::F16 && cmma_available(d) {
            let got = matmul_with(&a, &b, Epilogue::default(), MatmulKernel::Cmma);
            ck.compare("matmul", &format!("{m}x{k}x{n} cmma"), dtype, got, &want);
        }
        // Transposed storage: A stored [k, m], B stored [n, k] (an HF weight).
        let (at, hat) = random(&mut rng, &[k, m], dtype, -1.0, 1.0, d);
        let (bt, hbt) = random(&mut rng, &[n, k], dtype, -1.0, 1.0, d);
        let ha_t = HostArray::of(&Tensor::from_f64(&hat.data, DType::F32, &[k, m], &Device::cpu()).unwrap().transpose(0, 1).unwrap()).unwrap();
        let hb_t = HostArray::of(&Tensor::from_f64(&hbt.data, DType::F32, &[n, k], &Device::cpu()).unwrap().transpose(0, 1).unwrap()).unwrap();
        let got = nextflow_ops::matmul(&at.transpose(0, 1).unwrap(), &bt.transpose(0, 1).unwrap(), Epilogue::default());
        ck.compare("matmul", &format!("{m}x{k}x{n} aᵀ·bᵀ"), dtype, got, &r::matmul(&ha_t, &hb_t, None, none, None));
        // Epilogue: bias, SiLU, residual, through `linear`-style weights.
        let (bias, hbias) = random(&mut rng, &[n], dtype, -1.0, 1.0, d);
        let (res, hres) = random(&mut rng, &[m, n], dtype, -1.0, 1.0, d);
        let ep = Epilogue { bias: Some(&bias), activation: Activation::Silu, residual: Some(&res) };
        let got = nextflow_ops::matmul(&a, &bt.transpose(0, 1).unwrap(), ep);
        ck.compare("matmul", &format!("{m}x{k}x{n} +bias silu +res"), dtype, got, &r::matmul(&ha, &hb_t, Some(&hbias), Activation::Silu, Some(&hres)));
        let got = nextflow_ops::linear(&a, &bt, Some(&bias));
        ck.compare("linear", &format!("{m}x{k} · [{n},{k}]ᵀ + bias"), dtype, got, &r::matmul(&ha, &hb_t, Some(&hbias), none, None));
    }
    // Batched A against a shared or per-batch B, gelu epilogue.
    let (a, ha) = random(&mut rng, &[3, 9, 20], dtype, -1.0, 1.0, d);
    let (b, hb) = random(&mut rng, &[20, 11], dtype, -1.0, 1.0, d);
    let (b3, hb3) = random(&mut rng, &[3, 20, 11], dtype, -1.0, 1.0, d);
    let gelu = Epilogue { activation: Activation::GeluErf, ..Default::default() };
    ck.compare("matmul", "[3,9,20]·[20,11] gelu", dtype, nextflow_ops::matmul(&a, &b, gelu), &r::matmul(&ha, &hb, None, Activation::GeluErf, None));
    ck.compare("matmul", "[3,9,20]·[3,20,11]", dtype, nextflow_ops::matmul(&a, &b3, Epilogue::default()), &r::matmul(&ha, &hb3, None, none, None));
    // GEMV: one row (and four) against both weight layouts, k up to 1031.
    for &(m, k, n) in &[(1usize, 1031usize, 33usize), (4, 64, 7), (1, 7, 1)] {
        let (x, hx) = random(&mut rng, &[m, k], dtype, -1.0, 1.0, d);
        let (w, hw) = random(&mut rng, &[n, k], dtype, -1.0, 1.0, d);
        let (wn, hwn) = random(&mut rng, &[k, n], dtype, -1.0, 1.0, d);
        let hw_t = HostArray::of(&Tensor::from_f64(&hw.data, DType::F32, &[n, k], &Device::cpu()).unwrap().transpose(0, 1).unwrap()).unwrap();
        let (bias, hbias) = random(&mut rng, &[n], dtype, -1.0, 1.0, d);
        let ep = Epilogue { bias: Some(&bias), ..Default::default() };
        let got = matmul_with(&x, &w.transpose(0, 1).unwrap(), ep, MatmulKernel::Gemv);
        ck.compare("matmul_gemv", &format!("{m}x{k}·[{n},{k}]ᵀ"), dtype, got, &r::matmul(&hx, &hw_t, Some(&hbias), none, None));
        let got = matmul_with(&x, &wn, Epilogue::default(), MatmulKernel::Gemv);
        ck.compare("matmul_gemv", &format!("{m}x{k}·[{k},{n}]"), dtype, got, &r::matmul(&hx, &hwn, None, none, None));
    }

    // Attention: GQA 7:1 and 4:1, head dims 16..128, every mask, prefill / block / decode.
    let prefix_then_blocks: Vec<usize> = std::iter::repeat_n(1, 7).chain([1, 4, 9, 16]).collect();
    let skv: usize = prefix_then_blocks.iter().sum(); // 37
    for &(hq, hkv, hd) in &[(7usize, 1usize, 16usize), (8, 2, 64), (4, 1, 128)] {
        for (mask, label) in [(Mask::None, "none"), (Mask::Causal, "causal"), (Mask::Segments(prefix_then_blocks.clone()), "7 causal + 1,4,9,16")] {
            for sq in [skv, 16, 1] {
                let (q, hq_) = random(&mut rng, &[2, hq, sq, hd], dtype, -1.0, 1.0, d);
                let (k, hk) = random(&mut rng, &[2, hkv, skv, hd], dtype, -1.0, 1.0, d);
                let (v, hv) = random(&mut rng, &[2, hkv, skv, hd], dtype, -1.0, 1.0, d);
                // No mask: right padding of row 1; masks: left padding of row 1 (a shorter
                // prompt left-aligned in a batch, as CFG's unconditional row is).
                let (ranges, opts) = if mask == Mask::None {
                    (vec![(0, skv), (0, 20)], AttentionOptions { mask: Some(mask.clone()), kv_lens: Some(vec![skv, 20]), ..Default::default() })
                } else {
                    (vec![(0, skv), (5, skv)], AttentionOptions { mask: Some(mask.clone()), kv_starts: Some(vec![0, 5]), ..Default::default() })
                };
                let want = r::attention(&hq_, &hk, &hv, &mask, Some(&ranges), 1.0 / (hd as f64).sqrt());
                let what = format!("GQA {hq}:{hkv} d{hd} {label} q{sq}/kv{skv} keys {ranges:?}");
                ck.compare("attention", &what, dtype, nextflow_ops::attention(&q, &k, &v, &opts), &want);
            }
        }
    }
    // Long causal sequences: several query blocks, with and without a cached prefix.
    for sq in [300, 150] {
        let (q, hq_) = random(&mut rng, &[1, 4, sq, 32], dtype, -1.0, 1.0, d);
        let (k, hk) = random(&mut rng, &[1, 2, 300, 32], dtype, -1.0, 1.0, d);
        let (v, hv) = random(&mut rng, &[1, 2, 300, 32], dtype, -1.0, 1.0, d);
        let opts = AttentionOptions { mask: Some(Mask::Causal), ..Default::default() };
        let want = r::attention(&hq_, &hk, &hv, &Mask::Causal, None, 1.0 / 32f64.sqrt());
        ck.compare("attention", &format!("GQA 4:2 d32 causal q{sq}/kv300"), dtype, nextflow_ops::attention(&q, &k, &v, &opts), &want);
    }
    // KV cache: a causal prefix then scale blocks appended step by step equals one call.
    let (hq, hkv, hd) = (8, 2, 32);
    let (q, hq_) = random(&mut rng, &[1, hq, skv, hd], dtype, -1.0, 1.0, d);
    let (k, hk) = random(&mut rng, &[1, hkv, skv, hd], dtype, -1.0, 1.0, d);
    let (v, hv) = random(&mut rng, &[1, hkv, skv, hd], dtype, -1.0, 1.0, d);
    let full_mask = Mask::Segments(prefix_then_blocks.clone());
    let want = r::attention(&hq_, &hk, &hv, &full_mask, None, 1.0 / (hd as f64).sqrt());
    let mut cache = KvCache::new(d, dtype, 1, hkv, hd, 64).unwrap();
    let mut steps: Vec<Tensor> = Vec::new();
    let mut segments: Vec<usize> = Vec::new();
    let mut start = 0;
    for &len in std::iter::once(&7).chain(&[1, 4, 9, 16]) {
        let seg_lens: Vec<usize> = if start == 0 { vec![1; 7] } else { vec![len] };
        segments.extend(seg_lens);
        cache.append(&k.narrow(2, start, len).unwrap(), &v.narrow(2, start, len).unwrap()).unwrap();
        let opts = AttentionOptions { mask: Some(Mask::Segments(segments.clone())), ..Default::default() };
        let out = nextflow_ops::attention(&q.narrow(2, start, len).unwrap(), &cache.keys().unwrap(), &cache.values().unwrap(), &opts).unwrap();
        steps.push(nextflow_ops::contiguous(&out).unwrap());
        start += len;
    }
    let joined = nextflow_ops::concat(&steps.iter().collect::<Vec<_>>(), 2);
    ck.compare("kv_cache", "prefix 7 + blocks 1,4,9,16, step by step", dtype, joined, &want);
    assert!(cache.append(&k.narrow(2, 0, 30).unwrap(), &v.narrow(2, 0, 30).unwrap()).is_err(), "capacity is enforced");

    // RoPE: 1D (Qwen2) and multi-scale 3D with fractional positions (spec §4.2).
    for (sections, hd) in [(vec![8usize], 16usize), (vec![2, 3, 3], 16), (vec![16, 24, 24], 128)] {
        let rope = Rope::new(hd, 10000.0, &sections).unwrap();
        let s = 13;
        let (x, hx) = strided(&mut rng, &[2, 3, s, hd], dtype, -1.0, 1.0, d);
        let pos: Vec<f64> = (0..2 * s * 3).map(|i| ((i * 7919) % 97) as f64 * 0.37).collect();
        let p = Tensor::from_f64(&pos, DType::F32, &[2, s, 3], d).unwrap();
        let hp = HostArray::new(&[2, s, 3], pos.iter().map(|&v| v as f32 as f64).collect());
        let want = r::rope(&hx, &hp, rope.inv_freq(), rope.axis());
        ck.compare("rope", &format!("sections {sections:?} d{hd} fractional"), dtype, rope.apply(&x, &p), &want);
    }

    for &shape in ROW_SHAPES {
        let (g, hg) = random(&mut rng, shape, dtype, -4.0, 4.0, d);
        let (u, hu) = strided(&mut rng, shape, dtype, -2.0, 2.0, d);
        let want = r::binary(BinaryOp::Mul, &r::unary(UnaryOp::Silu, &hg), &hu);
        ck.compare("swiglu", &format!("{shape:?}"), dtype, nextflow_ops::swiglu(&g, &u), &want);
        let n = *shape.last().unwrap();
        let (x, hx) = random(&mut rng, shape, dtype, -2.0, 2.0, d);
        let (res, hres) = random(&mut rng, shape, dtype, -2.0, 2.0, d);
        let (w, hw) = random(&mut rng, &[n], dtype, 0.5, 1.5, d);
        let sum = r::cast(&r::binary(BinaryOp::Add, &hx, &hres), dtype);
        let both = nextflow_ops::add_rms_norm(&x, &res, &w, 1e-6);
        let (got_sum, got_norm) = match both {
            Ok((a, b)) => (Ok(a), Ok(b)),
            Err(e) => (Err(nextflow_runtime::Error::Device { device: "-".into(), msg: e.to_string() }), Err(e)),
        };
        ck.compare("add_rms_norm", &format!("{shape:?} sum"), dtype, got_sum, &sum);
        ck.compare("add_rms_norm", &format!("{shape:?} normed"), dtype, got_norm, &r::rms_norm(&sum, &hw, 1e-6));
    }
}

/// Image-side kernels: interpolation, conv2d, GroupNorm, spatial attention, code search.
/// (Interpolation is also checked against PyTorch's own values in `image_golden.rs`.)
pub fn run_image_ops(device: &Device, dtype: DType, ck: &mut Checker) {
    use nextflow_ops::msrq::Codebook;
    use nextflow_ops::{Conv2d, Resize};
    let mut rng = StdRng::seed_from_u64(0x1a6e ^ dtype.size() as u64);
    let d = device;
    for (mode, name) in [(Resize::Nearest, "nearest"), (Resize::Area, "area"), (Resize::Bicubic, "bicubic")] {
        for &((h, w), (oh, ow)) in &[((3, 3), (4, 4)), ((7, 5), (13, 11)), ((13, 11), (7, 5)), ((1, 2), (4, 8)), ((4, 3), (8, 6))] {
            let (x, hx) = random(&mut rng, &[2, 3, h, w], dtype, -2.0, 2.0, d);
            let want = r::interpolate(&hx, oh, ow, mode);
            ck.compare("interpolate", &format!("{name} {h}x{w}->{oh}x{ow}"), dtype, nextflow_ops::interpolate(&x, oh, ow, mode), &want);
            // Channels-last: the same values stored [n, h, w, c].
            let nhwc = nextflow_ops::contiguous(&x.permute(&[0, 2, 3, 1]).unwrap()).unwrap();
            let got = nextflow_ops::interpolate_nhwc(&nhwc, oh, ow, mode).and_then(|t| t.permute(&[0, 3, 1, 2]));
            ck.compare("interpolate", &format!("{name} {h}x{w}->{oh}x{ow} NHWC"), dtype, got, &want);
        }
    }
    for (label, (kh, kw), p, bias) in [
        ("3x3 pad 1", (3, 3), Conv2d::same(3), true),
        ("1x1", (1, 1), Conv2d::same(1), true),
        ("3x3 stride 2 pad right/bottom", (3, 3), Conv2d::downsample(), false),
    ] {
        // (32, 8, 40, 40): several CPU tiles (a 288-row patch matrix is cut every 224 pixels);
        // (64, 32, 8, 8): one tile, so the CPU splits the output channels across threads.
        for &(cin, cout, h, w) in &[(3usize, 5usize, 7usize, 9usize), (8, 4, 8, 8), (32, 8, 40, 40), (64, 32, 8, 8)] {
            let (x, hx) = strided(&mut rng, &[2, cin, h, w], dtype, -1.0, 1.0, d);
            let (wt, hw) = random(&mut rng, &[cout, cin, kh, kw], dtype, -0.5, 0.5, d);
            let (b, hb) = random(&mut rng, &[cout], dtype, -0.5, 0.5, d);
            let got = nextflow_ops::conv2d(&x, &wt, bias.then_some(&b), p);
            ck.compare("conv2d", &format!("{label} {cin}->{cout} {h}x{w}"), dtype, got, &r::conv2d(&hx, &hw, bias.then_some(&hb), p));
        }
    }
    // Fused forms: nearest ×2 upsampling first (the CPU's sub-pixel path for 3×3 "same",
    // the generic one otherwise) and a residual added, against upsample, conv, add in f64.
    for (label, (kh, kw), p, bias, residual) in [
        ("up2x 3x3 pad 1", (3, 3), Conv2d::same(3), true, false),
        ("up2x 3x3 pad 1 + residual", (3, 3), Conv2d::same(3), true, true),
        ("up2x 3x3 no bias", (3, 3), Conv2d::same(3), false, false),
        ("up2x 1x1", (1, 1), Conv2d::same(1), true, false),
    ] {
        for &(cin, cout, h, w) in &[(3usize, 5usize, 4usize, 5usize), (16, 8, 8, 8), (20, 40, 9, 7)] {
            let (x, hx) = strided(&mut rng, &[2, cin, h, w], dtype, -1.0, 1.0, d);
            let (wt, hw) = random(&mut rng, &[cout, cin, kh, kw], dtype, -0.5, 0.5, d);
            let (b, hb) = random(&mut rng, &[cout], dtype, -0.5, 0.5, d);
            let (res, hres) = random(&mut rng, &[2, cout, 2 * h, 2 * w], dtype, -1.0, 1.0, d);
            let fusion = nextflow_ops::ConvFusion { upsample2x: true, residual: residual.then_some(&res) };
            let got = nextflow_ops::conv2d_fused(&x, &wt, bias.then_some(&b), p, fusion);
            let mut want = r::conv2d(&r::interpolate(&hx, 2 * h, 2 * w, Resize::Nearest), &hw, bias.then_some(&hb), p);
            if residual {
                want.data.iter_mut().zip(&hres.data).for_each(|(a, b)| *a += b);
            }
            ck.compare("conv2d", &format!("{label} {cin}->{cout} {h}x{w}"), dtype, got, &want);
        }
    }
    for (label, p) in [("3x3 + residual", Conv2d::same(3)), ("stride 2 + residual", Conv2d::downsample())] {
        let (x, hx) = strided(&mut rng, &[1, 6, 9, 8], dtype, -1.0, 1.0, d);
        let (wt, hw) = random(&mut rng, &[7, 6, 3, 3], dtype, -0.5, 0.5, d);
        let want0 = r::conv2d(&hx, &hw, None, p);
        let (res, hres) = random(&mut rng, &want0.shape, dtype, -1.0, 1.0, d);
        let fusion = nextflow_ops::ConvFusion { upsample2x: false, residual: Some(&res) };
        let got = nextflow_ops::conv2d_fused(&x, &wt, None, p, fusion);
        let mut want = want0;
        want.data.iter_mut().zip(&hres.data).for_each(|(a, b)| *a += b);
        ck.compare("conv2d", &format!("{label} 6->7 9x8"), dtype, got, &want);
    }
    for &(c, groups, h, w, silu) in &[(8usize, 4usize, 5usize, 7usize, false), (32, 8, 9, 9, true), (6, 1, 33, 33, true)] {
        let (x, hx) = random(&mut rng, &[2, c, h, w], dtype, -2.0, 3.0, d);
        let (g, hg) = random(&mut rng, &[c], dtype, 0.5, 1.5, d);
        let (b, hb) = random(&mut rng, &[c], dtype, -0.5, 0.5, d);
        let got = nextflow_ops::group_norm(&x, groups, &g, &b, 1e-6, silu);
        ck.compare("group_norm", &format!("c{c} g{groups} {h}x{w} silu {silu}"), dtype, got, &r::group_norm(&hx, groups, &hg, &hb, 1e-6, silu));
    }
    for &(c, h, w) in &[(16usize, 3usize, 5usize), (8, 4, 4), (300, 2, 3)] {
        let (q, hq_) = random(&mut rng, &[1, c, h, w], dtype, -1.0, 1.0, d);
        let (k, hk) = random(&mut rng, &[1, c, h, w], dtype, -1.0, 1.0, d);
        let (v, hv) = random(&mut rng, &[1, c, h, w], dtype, -1.0, 1.0, d);
        let as_rows = |a: &HostArray| {
            let t = Tensor::from_f64(&a.data, DType::F32, &[c, h * w], &Device::cpu()).unwrap();
            let data = t.transpose(0, 1).unwrap().to_f64_vec().unwrap();
            HostArray::new(&[1, 1, h * w, c], data)
        };
        let att = r::attention(&as_rows(&hq_), &as_rows(&hk), &as_rows(&hv), &Mask::None, None, 1.0 / (c as f64).sqrt());
        let back = Tensor::from_f64(&att.data, DType::F32, &[h * w, c], &Device::cpu()).unwrap();
        let want = HostArray::new(&[1, c, h, w], back.transpose(0, 1).unwrap().to_f64_vec().unwrap());
        ck.compare("spatial_attention", &format!("c{c} {h}x{w}"), dtype, nextflow_ops::spatial_attention(&q, &k, &v), &want);
    }
    // Code search: indices must match the f64 reference, or tie with it to 1e-5.
    for (dual, k) in [(false, 1), (false, 4), (true, 1), (true, 3)] {
        let (table, _) = random(&mut rng, &[37, 12], dtype, -1.0, 1.0, d);
        let book = if dual {
            Codebook::dual(&table.narrow(1, 0, 8).unwrap(), &table.narrow(1, 8, 4).unwrap(), 1.0, 0.5).unwrap()
        } else {
            Codebook::plain(&table).unwrap()
        };
        let (z, hz) = random(&mut rng, &[70, 12], dtype, -1.0, 1.0, d);
        let label = format!("{} k{k} 70 rows x 37 codes", if dual { "dual" } else { "plain" });
        ck.covered.insert("nearest_codes");
        ck.checks += 1;
        let table64 = book.table().to_f64_vec().unwrap();
        let got = book.nearest(&z, k).and_then(|n| Ok((n.indices.to_vec::<u32>()?, n.distances.to_vec::<f32>()?)));
        match got {
            Err(e) => ck.failures.push(format!("nearest_codes [{label}] {dtype}: {e}")),
            Ok((idx, dist)) => {
                for (row, zr) in hz.data.chunks(12).enumerate() {
                    let (want_i, want_d) = book.nearest_row::<f64>(zr, &table64, k);
                    let near = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs().max(1e-3);
                    for t in 0..k {
                        let (gi, wi) = (idx[row * k + t], want_i[t]);
                        // The chosen code's own distance (recomputed in f64) and the reported
                        // one must both equal the best; a different index is then a tie.
                        let own = (gi as usize) < 37 && near(book.nearest_row::<f64>(zr, &table64[gi as usize * 12..][..12], 1).1[0], want_d[t]);
                        if !own || !near(dist[row * k + t] as f64, want_d[t]) {
                            ck.failures.push(format!("nearest_codes [{label}] {dtype}: row {row} #{t}: {gi} ({}) vs {wi} ({})", dist[row * k + t], want_d[t]));
                        }
                    }
                }
            }
        }
    }
}

/// Sampling must pick the very same ids as the CPU backend (bit-identical arithmetic;
/// the statistics of the draws are tested in `sampling.rs`).
pub fn run_sampling_ops(device: &Device, dtype: DType, ck: &mut Checker) {
    use nextflow_ops::sampling::{sample, SamplerConfig};
    let mut rng = StdRng::seed_from_u64(0x5a3b ^ dtype.size() as u64);
    let cpu = Device::cpu();
    let (cond, _) = random(&mut rng, &[33, 1031], dtype, -6.0, 6.0, device);
    let (uncond, _) = random(&mut rng, &[33, 1031], dtype, -6.0, 6.0, device);
    let (cond_cpu, uncond_cpu) = (cond.to_device(&cpu).unwrap(), uncond.to_device(&cpu).unwrap());
    let configs = [
        ("plain", SamplerConfig::default(), false),
        ("top-k 50 top-p 0.6 cfg 3", SamplerConfig { cfg_scale: 3.0, top_k: 50, top_p: 0.6, ..Default::default() }, true),
        ("ids 7..900 T 0.7", SamplerConfig { temperature: 0.7, id_range: Some((7, 900)), ..Default::default() }, false),
        ("greedy", SamplerConfig { temperature: 0.0, ..Default::default() }, false),
    ];
    for (label, cfg, with_uncond) in configs {
        let want = sample(&cond_cpu, with_uncond.then_some(&uncond_cpu), &cfg, 42, 3).unwrap();
        let got = sample(&cond, with_uncond.then_some(&uncond), &cfg, 42, 3);
        ck.compare("sample", &format!("{label} 33x1031 vs CPU"), DType::U32, got, &HostArray::of(&want).unwrap());
    }
}

