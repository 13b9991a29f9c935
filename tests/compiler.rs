//! The compiler: lazy graphs, fusion, memory plan, plan cache and counters, on the CPU and
//! (when present) Vulkan. Outside CI a missing Vulkan adapter is reported as skipped.

use nextflow_ops::fused::{fused_elementwise, FusedInstr, FusedProgram};
use nextflow_ops::{BinaryOp, UnaryOp};
use nextflow_runtime::{Device, Tensor};

fn devices() -> Vec<Device> {
    let mut out = vec![Device::cpu()];
    match Device::open("vulkan") {
        Ok(d) => out.push(d),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("CI needs Vulkan: {e}"),
        Err(e) => eprintln!("SKIPPED vulkan: {e}"),
    }
    out
}

#[test]
fn fused_kernel_runs_a_program_over_broadcast_inputs() {
    for device in devices() {
        let a = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5, 4.0, -1.0], &[2, 3], &device).unwrap();
        let b = Tensor::from_slice(&[10.0f32, 20.0, 30.0], &[3], &device).unwrap();
        let program = FusedProgram {
            instrs: vec![
                FusedInstr::Load(0),
                FusedInstr::Load(1),
                FusedInstr::Binary(BinaryOp::Add, 0, 1),
                FusedInstr::Scalar(0),
                FusedInstr::Binary(BinaryOp::Mul, 2, 3),
                FusedInstr::Unary(UnaryOp::Neg, 4),
            ],
            outputs: vec![5, 2],
            scalars: vec![0.5],
        };
        let out = fused_elementwise(&[a.transpose(0, 1).unwrap().transpose(0, 1).unwrap(), b], &[2, 3], &program, nextflow_runtime::DType::F32, vec![]).unwrap();
        device.sync().unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), vec![-5.5, -9.0, -16.5, -5.25, -12.0, -14.5], "{device}");
        assert_eq!(out[1].to_vec::<f32>().unwrap(), vec![11.0, 18.0, 33.0, 10.5, 24.0, 29.0], "{device}");
    }
}

use nextflow_compiler::{counters, Counters, Graph, Lazy, Options};
use nextflow_ops::{AttentionOptions, Mask, Rope};
use nextflow_runtime::DType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn options(fusion: bool) -> Options {
    Options { fusion, autotune: false }
}

fn random_tensor(rng: &mut StdRng, shape: &[usize], scale: f64, device: &Device) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_f64(&v, DType::F32, shape, device).unwrap()
}

/// Normalized mean squared error of `got` against `want`.
fn nmse(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    assert!(g.iter().all(|v| v.is_finite()), "non-finite values");
    let err: f64 = g.iter().zip(&w).map(|(a, b)| (a - b) * (a - b)).sum();
    err / w.iter().map(|b| b * b).sum::<f64>().max(1e-30)
}

/// A random program of `ops` mixed ops (elementwise with broadcasts and scalars, views,
/// matmul with bias, norms, softmax, reductions, swiglu) over `[rows, cols]` values.
/// Returns the values the program leaves (every fifth value and the last ones).
fn random_program(g: &Graph, inputs: &[Tensor], seed: u64, ops: usize) -> Vec<Lazy> {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = g.input(&inputs[0]).unwrap(); // [rows, cols]
    let y = g.input(&inputs[1]).unwrap(); // [rows, cols]
    let row = g.input(&inputs[2]).unwrap(); // [cols]
    let col = g.input(&inputs[3]).unwrap(); // [rows, 1]
    let w = g.input(&inputs[4]).unwrap(); // [cols, cols]
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let mut pool: Vec<Lazy> = vec![x, y];
    let mut kept = Vec::new();
    for i in 0..ops {
        let a = pool[rng.random_range(0..pool.len())].clone();
        let b = pool[rng.random_range(0..pool.len())].clone();
        // Values stay bounded: most ops are followed by tanh now and then.
        let v = match rng.random_range(0..17) {
            16 if a.dtype() == DType::F32 => a.cast(DType::F16).and_then(|h| h.tanh()).and_then(|h| h.cast(DType::F32)),
            0 => a.add(&b),
            1 => a.sub(&row),
            2 => a.mul(&b),
            3 => a.maximum(&col),
            4 => a.tanh(),
            5 => a.silu(),
            6 => a.gelu(),
            7 => a.scale(0.5).and_then(|s| s.add_scalar(0.25)),
            8 => a.div(&b.tanh().unwrap().add_scalar(2.0).unwrap()),
            9 => a.exp().and_then(|e| e.sqrt()).and_then(|s| s.tanh()),
            10 => a.matmul(&w).and_then(|m| m.add(&row)).and_then(|m| m.tanh()),
            11 => a.rms_norm(&row, 1e-5),
            12 => a.softmax().and_then(|s| s.scale(cols as f32)),
            13 => a.mean().and_then(|m| m.unsqueeze(1)).and_then(|m| a.sub(&m)),
            14 => a.swiglu(&b),
            _ => a.transpose(0, 1).and_then(|t| t.neg()).and_then(|t| t.transpose(0, 1)),
        }
        .unwrap();
        assert_eq!(v.shape(), [rows, cols]);
        if i % 5 == 0 {
            kept.push(v.clone());
        }
        pool.push(v);
    }
    kept.extend(pool.iter().rev().take(3).cloned());
    kept
}

#[test]
fn a_random_program_of_50_ops_gives_the_same_values_fused_and_unfused() {
    for device in devices() {
        for seed in 0..3u64 {
            let mut rng = StdRng::seed_from_u64(100 + seed);
            let (rows, cols) = (5, 37);
            let inputs = vec![
                random_tensor(&mut rng, &[rows, cols], 1.0, &device),
                random_tensor(&mut rng, &[rows, cols], 1.0, &device),
                random_tensor(&mut rng, &[cols], 1.0, &device),
                random_tensor(&mut rng, &[rows, 1], 1.0, &device),
                random_tensor(&mut rng, &[cols, cols], 0.3, &device),
            ];
            let mut results = Vec::new();
            for (label, graph) in [
                ("fused", Graph::with_options(&device, options(true))),
                ("unfused", Graph::with_options(&device, options(false))),
                ("eager", Graph::eager(&device)),
            ] {
                // Eager mode runs each op as it is recorded: count from the start.
                let (before, gpu_before) = (counters(), nextflow_ops::gpu_launches());
                let outs = random_program(&graph, &inputs, seed, 50);
                let refs: Vec<&Lazy> = outs.iter().collect();
                let values = if graph.is_eager() { outs.iter().map(|o| o.realize().unwrap()).collect() } else { graph.realize(&refs).unwrap() };
                device.sync().unwrap();
                let used = counters() - before;
                if !device.is_cpu() {
                    assert_eq!(nextflow_ops::gpu_launches() - gpu_before, used.launches, "{label}: counted launches differ from real ones");
                }
                let stats = if graph.is_eager() { None } else { Some(graph.compile(&refs).unwrap().stats) };
                println!("{} seed {seed} {label}: {used}{}", device.info().spec(), stats.map(|s| format!("\n    plan: {s}")).unwrap_or_default());
                results.push((label, values, used));
            }
            let (_, fused, fused_used) = &results[0];
            for (label, other, used) in &results[1..] {
                for (k, (a, b)) in fused.iter().zip(other).enumerate() {
                    let e = nmse(a, b);
                    assert!(e <= 1e-7, "{} seed {seed}: output {k} fused vs {label}: NMSE {e:.3e}", device.info().spec());
                }
                if *label == "unfused" {
                    assert!(fused_used.launches < used.launches, "fusion saved no launch: {fused_used} vs {used}");
                }
            }
        }
    }
}

struct BlockWeights {
    ln1: Tensor,
    ln2: Tensor,
    q: (Tensor, Tensor),
    k: (Tensor, Tensor),
    v: (Tensor, Tensor),
    o: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

#[derive(Clone, Copy)]
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inter: usize,
}

const TINY: Dims = Dims { hidden: 192, heads: 6, kv_heads: 2, head_dim: 32, inter: 512 };
const QWEN_7B: Dims = Dims { hidden: 3584, heads: 28, kv_heads: 4, head_dim: 128, inter: 18944 };

impl BlockWeights {
    fn random(d: Dims, device: &Device, rng: &mut StdRng) -> BlockWeights {
        let s = 1.0 / (d.hidden as f64).sqrt();
        let mut lin = |o: usize, i: usize, sc: f64| random_tensor(rng, &[o, i], sc, device);
        let (q, k, v) = (lin(d.heads * d.head_dim, d.hidden, s), lin(d.kv_heads * d.head_dim, d.hidden, s), lin(d.kv_heads * d.head_dim, d.hidden, s));
        let (o, gate, up) = (lin(d.hidden, d.heads * d.head_dim, s), lin(d.inter, d.hidden, s), lin(d.inter, d.hidden, s));
        let down = lin(d.hidden, d.inter, 1.0 / (d.inter as f64).sqrt());
        let mut vecn = |n: usize, c: f64| {
            let v: Vec<f64> = (0..n).map(|_| c + rng.random_range(-0.1..0.1)).collect();
            Tensor::from_f64(&v, DType::F32, &[n], device).unwrap()
        };
        BlockWeights {
            ln1: vecn(d.hidden, 1.0),
            ln2: vecn(d.hidden, 1.0),
            q: (q, vecn(d.heads * d.head_dim, 0.0)),
            k: (k, vecn(d.kv_heads * d.head_dim, 0.0)),
            v: (v, vecn(d.kv_heads * d.head_dim, 0.0)),
            o,
            gate,
            up,
            down,
        }
    }
}

/// HF-style RMSNorm from primitives: `x · rsqrt(mean(x²) + eps) · w`.
fn rms_norm(x: &Lazy, w: &Lazy) -> Lazy {
    let var = x.mul(x).unwrap().mean().unwrap().unsqueeze(x.rank() - 1).unwrap();
    x.mul(&var.add_scalar(1e-6).unwrap().rsqrt().unwrap()).unwrap().mul(w).unwrap()
}

/// One Qwen2 decoder layer written as ordinary tensor code (as HF's modeling file reads):
/// returns the layer output and the rotated keys and values (for the KV cache).
fn block(d: Dims, w: [&Lazy; 13], x: &Lazy, positions: &Lazy, rope: &Arc<Rope>) -> [Lazy; 3] {
    let [ln1, ln2, wq, bq, wk, bk, wv, bv, wo, wg, wu, wd, _] = w;
    let (b, s) = (x.shape()[0], x.shape()[1]);
    let h = rms_norm(x, ln1);
    let heads = |w: &Lazy, bias: &Lazy, n: usize| h.linear(w, Some(bias)).unwrap().reshape(&[b, s, n, d.head_dim]).unwrap().transpose(1, 2).unwrap();
    let q = heads(wq, bq, d.heads).rope(rope, positions).unwrap();
    let k = heads(wk, bk, d.kv_heads).rope(rope, positions).unwrap();
    let v = heads(wv, bv, d.kv_heads);
    let attn = q.attention(&k, &v, &AttentionOptions { mask: Some(Mask::Causal), ..Default::default() }).unwrap();
    let attn = attn.transpose(1, 2).unwrap().reshape(&[b, s, d.heads * d.head_dim]).unwrap();
    let x = attn.linear(wo, None).unwrap().add(x).unwrap();
    let h = rms_norm(&x, ln2);
    let act = h.linear(wg, None).unwrap().silu().unwrap().mul(&h.linear(wu, None).unwrap()).unwrap();
    let out = act.linear(wd, None).unwrap().add(&x).unwrap();
    [out, k, v]
}

fn bind_block(g: &Graph, wt: &BlockWeights) -> Vec<Lazy> {
    [&wt.ln1, &wt.ln2, &wt.q.0, &wt.q.1, &wt.k.0, &wt.k.1, &wt.v.0, &wt.v.1, &wt.o, &wt.gate, &wt.up, &wt.down, &wt.ln1]
        .iter()
        .map(|t| g.input(t).unwrap())
        .collect()
}

fn placeholder_block(g: &Graph, d: Dims, f: DType) -> Vec<Lazy> {
    let (qd, kvd) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    [
        vec![d.hidden],
        vec![d.hidden],
        vec![qd, d.hidden],
        vec![qd],
        vec![kvd, d.hidden],
        vec![kvd],
        vec![kvd, d.hidden],
        vec![kvd],
        vec![d.hidden, qd],
        vec![d.inter, d.hidden],
        vec![d.inter, d.hidden],
        vec![d.hidden, d.inter],
        vec![d.hidden],
    ]
    .iter()
    .map(|s| g.placeholder(s, f))
    .collect()
}

fn as13(v: &[Lazy]) -> [&Lazy; 13] {
    std::array::from_fn(|i| &v[i])
}

#[test]
fn a_transformer_block_realizes_with_at_most_half_the_launches_of_eager_mode() {
    for device in devices() {
        let mut rng = StdRng::seed_from_u64(7);
        let d = TINY;
        let seq = 7;
        let wt = BlockWeights::random(d, &device, &mut rng);
        let x = random_tensor(&mut rng, &[1, seq, d.hidden], 1.0, &device);
        let pos = nextflow_ops::text_positions(0, seq, &device).unwrap();
        let rope = Arc::new(Rope::new(d.head_dim, 10000.0, &[d.head_dim / 2]).unwrap());
        let mut outs = Vec::new();
        let mut used: Vec<Counters> = Vec::new();
        for graph in [Graph::eager(&device), Graph::with_options(&device, options(true))] {
            let w = bind_block(&graph, &wt);
            let (xl, pl) = (graph.input(&x).unwrap(), graph.input(&pos).unwrap());
            let (before, gpu_before) = (counters(), nextflow_ops::gpu_launches());
            let [out, k, v] = block(d, as13(&w), &xl, &pl, &rope);
            let values = graph.realize(&[&out, &k, &v]).unwrap();
            device.sync().unwrap();
            used.push(counters() - before);
            if !device.is_cpu() {
                // The compiler's count is the kernels the ops really launched.
                assert_eq!(nextflow_ops::gpu_launches() - gpu_before, used.last().unwrap().launches);
            }
            if !graph.is_eager() {
                println!("{} plan:\n{}", device.info().spec(), graph.compile(&[&out, &k, &v]).unwrap().describe());
            }
            outs.push(values);
        }
        println!("{} tiny block, seq {seq}: eager {} | fused {}", device.info().spec(), used[0], used[1]);
        for (a, b) in outs[0].iter().zip(&outs[1]) {
            let e = nmse(&outs[1][0], &outs[0][0]).max(nmse(b, a));
            assert!(e <= 1e-7, "fused vs eager NMSE {e:.3e}");
        }
        assert!(2 * used[1].launches <= used[0].launches, "fused {} launches vs eager {}", used[1].launches, used[0].launches);
    }
}

/// The launch counts and bytes per layer step that the note quotes (compiled only: the 7B
/// layer needs no memory). Run with `--nocapture` to read them.
#[test]
fn layer_step_counts_for_the_tiny_and_7b_shapes() {
    for device in devices() {
        for (name, d) in [("tiny", TINY), ("7B", QWEN_7B)] {
            for (seq, dtype) in [(1usize, DType::F32), (16, DType::F32), (1, DType::F16)] {
                let mut line = format!("{} {name} layer step, {seq} new token(s), {dtype}:", device.info().spec());
                let mut launches = Vec::new();
                for fusion in [false, true] {
                    let g = Graph::with_options(&device, options(fusion));
                    let w = placeholder_block(&g, d, dtype);
                    let x = g.placeholder(&[1, seq, d.hidden], dtype);
                    let pos = g.placeholder(&[1, seq, 3], DType::F32);
                    let rope = Arc::new(Rope::new(d.head_dim, 1e6, &[d.head_dim / 2]).unwrap());
                    let [out, k, v] = block(d, as13(&w), &x, &pos, &rope);
                    nextflow_compiler::clear_plan_cache();
                    let t = std::time::Instant::now();
                    let stats = g.compile(&[&out, &k, &v]).unwrap().stats;
                    let compile_us = t.elapsed().as_secs_f64() * 1e6;
                    let t = std::time::Instant::now();
                    g.compile(&[&out, &k, &v]).unwrap();
                    let hit_us = t.elapsed().as_secs_f64() * 1e6;
                    line += &format!(
                        "\n    {}: {stats}\n      compile {compile_us:.0} us, cached plan lookup {hit_us:.0} us",
                        if fusion { "fused" } else { "eager" }
                    );
                    launches.push(stats.launches);
                }
                println!("{line}");
                assert!(2 * launches[1] <= launches[0], "{name}: fused {} vs eager {}", launches[1], launches[0]);
            }
        }
    }
}

#[test]
fn a_repeated_step_compiles_once_and_replays() {
    for device in devices() {
        let mut rng = StdRng::seed_from_u64(3);
        let before = counters();
        let mut first: Option<Vec<f64>> = None;
        for _ in 0..10 {
            // Same code, new graph and new input tensors each step.
            let x = random_tensor(&mut rng, &[4, 33], 1.0, &device);
            let x = Tensor::from_f64(&vec![0.5; 4 * 33], DType::F32, &[4, 33], &device).unwrap().reshape(x.shape()).unwrap();
            let g = Graph::with_options(&device, options(true));
            let xl = g.input(&x).unwrap();
            let y = xl.silu().unwrap().mul(&xl).unwrap().add_scalar(1.0).unwrap().softmax().unwrap();
            let v = y.realize().unwrap().to_f64_vec().unwrap();
            if let Some(f) = &first {
                assert_eq!(f, &v);
            }
            first = Some(v);
        }
        let used = counters() - before;
        assert_eq!((used.compiles, used.plan_hits, used.realizes), (1, 9, 10), "{used}");
        assert_eq!(used.launches, 20, "one fused chain and one softmax per step: {used}");
    }
}

#[test]
fn the_memory_plan_frees_dead_values_and_writes_in_place() {
    for device in devices() {
        let mut rng = StdRng::seed_from_u64(5);
        let x = random_tensor(&mut rng, &[8, 64], 1.0, &device);
        let g = Graph::with_options(&device, options(true));
        let xl = g.input(&x).unwrap();
        // softmax → fused chain over a dead softmax output (in place) → softmax → chain …
        let mut v = xl.clone();
        for _ in 0..4 {
            v = v.softmax().unwrap().scale(3.0).unwrap().tanh().unwrap();
        }
        let plan = g.compile(&[&v]).unwrap();
        let s = plan.stats;
        println!("{}: {s}\n{}", device.info().spec(), plan.describe());
        assert_eq!(s.launches, 8);
        assert_eq!(s.in_place, 4, "each chain overwrites the softmax output it reads");
        let one = 8 * 64 * 4;
        assert_eq!(s.total_alloc_bytes, 4 * one as u64);
        // A softmax needs its input and output at once; nothing else stays alive.
        assert_eq!((s.peak_bytes, s.buffers), (2 * one as u64, 2));
        // In place is exact: same values as the unfused plan.
        let fused = v.realize().unwrap();
        let g2 = Graph::with_options(&device, options(false));
        let mut u = g2.input(&x).unwrap();
        for _ in 0..4 {
            u = u.softmax().unwrap().scale(3.0).unwrap().tanh().unwrap();
        }
        assert!(nmse(&fused, &u.realize().unwrap()) <= 1e-12);
    }
}

#[test]
fn matmul_epilogues_and_norm_patterns_fold_into_their_kernels() {
    let device = Device::cpu();
    let g = Graph::with_options(&device, options(true));
    let mut rng = StdRng::seed_from_u64(9);
    let x = g.input(&random_tensor(&mut rng, &[3, 16], 1.0, &device)).unwrap();
    let w = g.input(&random_tensor(&mut rng, &[8, 16], 1.0, &device)).unwrap();
    let b = g.input(&random_tensor(&mut rng, &[8], 1.0, &device)).unwrap();
    let r = g.input(&random_tensor(&mut rng, &[3, 8], 1.0, &device)).unwrap();
    let n = g.input(&random_tensor(&mut rng, &[8], 1.0, &device)).unwrap();
    let y = x.linear(&w, Some(&b)).unwrap().gelu().unwrap().add(&r).unwrap();
    let z = rms_norm(&y, &n);
    let plan = g.compile(&[&z]).unwrap();
    assert_eq!(plan.stats.launches, 2, "{}", plan.describe());
    assert_eq!(plan.stats.matmul_epilogues, 1);
}

#[test]
fn a_random_program_in_f16_gives_the_same_values_fused_and_unfused() {
    for device in devices() {
        if !device.supports(DType::F16) {
            eprintln!("SKIPPED f16 on {}", device.info().spec());
            continue;
        }
        let mut rng = StdRng::seed_from_u64(11);
        let inputs: Vec<Tensor> = [[5usize, 37].as_slice(), &[5, 37], &[37], &[5, 1], &[37, 37]]
            .iter()
            .map(|s| nextflow_ops::cast(&random_tensor(&mut rng, s, 0.5, &device), DType::F16).unwrap())
            .collect();
        let mut results = Vec::new();
        for fusion in [true, false] {
            let g = Graph::with_options(&device, options(fusion));
            let outs = random_program(&g, &inputs, 4, 50);
            let refs: Vec<&Lazy> = outs.iter().collect();
            results.push(g.realize(&refs).unwrap());
        }
        for (k, (a, b)) in results[0].iter().zip(&results[1]).enumerate() {
            let e = nmse(a, b);
            // The op contract allows f16 1e-2 relative RMS error (NMSE 1e-4); fused kernels
            // round half values in registers as storing them would, so they match unfused
            // far closer than that (bit-identical here).
            assert!(e <= 1e-7, "{}: f16 output {k} fused vs unfused NMSE {e:.3e}", device.info().spec());
        }
    }
}

#[test]
fn autotune_times_unknown_keys_once_and_the_cache_exports_and_imports() {
    let dir = std::env::temp_dir().join(format!("nextflow-autotune-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::env::set_var("NEXTFLOW_CACHE_DIR", dir.join("user"));
    nextflow_compiler::autotune::reload();
    use nextflow_compiler::autotune;
    for device in devices() {
        let mut rng = StdRng::seed_from_u64(1);
        let (x, w) = (random_tensor(&mut rng, &[3, 40], 1.0, &device), random_tensor(&mut rng, &[24, 40], 1.0, &device));
        let key = autotune::matmul_key(&device, 1, 3, 24, 40, DType::F32);
        let mut values = Vec::new();
        for tune in [true, true, false] {
            let g = Graph::with_options(&device, Options { fusion: true, autotune: tune });
            let y = g.input(&x).unwrap().linear(&g.input(&w).unwrap(), None).unwrap();
            values.push(y.realize().unwrap());
        }
        assert!(nmse(&values[0], &values[2]) <= 1e-7);
        let entry = autotune::lookup(&key).unwrap();
        if device.is_cpu() {
            assert!(entry.is_none(), "the CPU backend has one matmul path: nothing to tune");
            let e = autotune::tune_matmul(&x, &w.transpose(0, 1).unwrap(), &Default::default(), 1).unwrap();
            assert_eq!(e.choice, "gemm (cpu)");
        } else {
            let entry = entry.expect("the first realize timed the candidates");
            assert!(entry.timings_us.len() >= 4, "{entry:?}");
            assert!(entry.timings_us.contains_key(&entry.choice));
        }
    }
    let shipped = dir.join("shipped.json");
    let n = autotune::export(&shipped).unwrap();
    assert!(n >= 1);
    // A fresh user cache, warmed by importing the shipped file.
    std::env::set_var("NEXTFLOW_CACHE_DIR", dir.join("other"));
    autotune::reload();
    assert_eq!(autotune::import(&shipped).unwrap(), n);
    autotune::reload();
    let cache = autotune::load(&autotune::cache_path()).unwrap();
    assert_eq!(cache.entries.len(), n);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `nextflow bench kernels` completes, writes the cache, and a second run reuses it.
#[test]
fn bench_kernels_writes_the_cache_and_a_second_run_reuses_it() {
    let mut specs = vec!["cpu"];
    if Device::open("vulkan").is_ok() {
        specs.push("vulkan");
    }
    for spec in specs {
        let dir = std::env::temp_dir().join(format!("nextflow-bench-test-{}-{spec}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let run = |extra: &[&str]| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_nextflow"))
                .args(["bench", "kernels", "--device", spec, "--config", "tiny", "--reps", "1"])
                .args(extra)
                .env("NEXTFLOW_CACHE_DIR", &dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
        };
        let (table, progress) = run(&[]);
        assert!(table.contains("CANDIDATE") && table.contains("GFLOP/s") && table.contains(" 0 reused"), "{table}");
        assert!(progress.contains("] 30/30 done") || progress.contains("done"), "{progress}");
        assert!(dir.join("autotune.json").exists());
        let (json, _) = run(&["--json"]);
        let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["timed"], 0, "second run re-timed: {json}");
        assert!(doc["reused"].as_u64().unwrap() > 0);
        assert!(doc["rows"].as_array().unwrap().iter().all(|r| r["cached"] == true));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn constants_casts_and_integer_ops_run_alike_fused_and_unfused() {
    for device in devices() {
        let mut results = Vec::new();
        for fusion in [true, false] {
            let g = Graph::with_options(&device, options(fusion));
            let x = g.input(&Tensor::from_slice(&[1.0f32, -2.0, 3.5, 0.25, -0.5, 8.0], &[2, 3], &device).unwrap()).unwrap();
            // A chain over constants alone, then into a tensor chain.
            let c = g.constant(2.0, DType::F32).unwrap().neg().unwrap().add(&g.constant(0.5, DType::F32).unwrap()).unwrap();
            let y = x.mul(&c).unwrap().tanh().unwrap();
            // A cast between two fused chains, an integer op, and a broadcast view.
            let h = y.cast(DType::F16).unwrap().silu().unwrap().cast(DType::F32).unwrap().add(&x).unwrap();
            let ids = g.input(&Tensor::from_slice(&[3u32, 4, 5], &[3], &device).unwrap()).unwrap();
            let ids = ids.add(&ids).unwrap();
            let z = h.add(&x.narrow(0, 0, 1).unwrap().broadcast_to(&[2, 3]).unwrap()).unwrap();
            let out = g.realize(&[&c, &y, &z, &ids]).unwrap();
            let plan = g.compile(&[&c, &y, &z, &ids]).unwrap();
            if fusion {
                // neg over a constant; + 0.5; mul+tanh; the f16 cast alone (y leaves its
                // group); silu + cast to f32 in one kernel (the cast closes the silu group);
                // the two adds; the integer add.
                assert_eq!(plan.stats.launches, 7, "{}", plan.describe());
            }
            results.push(out.iter().map(|t| t.to_f64_vec().unwrap()).collect::<Vec<_>>());
        }
        assert_eq!(results[0][0], vec![-1.5]);
        assert_eq!(results[0][3], vec![6.0, 8.0, 10.0]);
        assert_eq!(results[0][..2], results[1][..2], "{}", device.info().spec());
        let err: f64 = results[0][2].iter().zip(&results[1][2]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(err < 1e-3, "{err}");
    }
}

/// Decode steps over a growing KV cache: the cache views are dynamic inputs, so the step's
/// plan compiles once and replays at every length.
#[test]
fn decode_steps_over_a_growing_kv_cache_compile_once() {
    for device in devices() {
        let mut rng = StdRng::seed_from_u64(21);
        let (hq, hkv, hd) = (6, 2, 32);
        let mut cache = nextflow_ops::KvCache::new(&device, DType::F32, 1, hkv, hd, 16).unwrap();
        let before = counters();
        for step in 0..10 {
            let (k, v) = (random_tensor(&mut rng, &[1, hkv, 1, hd], 1.0, &device), random_tensor(&mut rng, &[1, hkv, 1, hd], 1.0, &device));
            cache.append(&k, &v).unwrap();
            let q = random_tensor(&mut rng, &[1, hq, 1, hd], 1.0, &device);
            let opts = AttentionOptions { mask: Some(Mask::Causal), ..Default::default() };
            let g = Graph::with_options(&device, options(true));
            let (ql, kl, vl) = (g.input(&q).unwrap(), g.input_dynamic(&cache.keys().unwrap(), 2).unwrap(), g.input_dynamic(&cache.values().unwrap(), 2).unwrap());
            let out = ql.attention(&kl, &vl, &opts).unwrap().transpose(1, 2).unwrap().reshape(&[1, 1, hq * hd]).unwrap().silu().unwrap();
            let got = out.realize().unwrap();
            let want = nextflow_ops::attention(&q, &cache.keys().unwrap(), &cache.values().unwrap(), &opts).unwrap();
            let want = nextflow_ops::unary(&want.transpose(1, 2).unwrap().reshape(&[1, 1, hq * hd]).unwrap(), UnaryOp::Silu).unwrap();
            assert!(nmse(&got, &want) <= 1e-12, "{} step {step}", device.info().spec());
        }
        let used = counters() - before;
        assert_eq!((used.compiles, used.plan_hits), (1, 9), "{used}");
        // Anything but attention reading a dynamic input is refused.
        let g = Graph::with_options(&device, options(true));
        let k = g.input_dynamic(&cache.keys().unwrap(), 2).unwrap().exp().unwrap();
        assert!(k.realize().is_err());
    }
}

/// The CLI with `NEXTFLOW_CACHE_DIR=dir`; stdout and stderr of a successful run.
fn nextflow_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nextflow")).args(args).env("NEXTFLOW_CACHE_DIR", dir).envs(env.iter().copied()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(out.status.success(), "nextflow {args:?}: {stderr}");
    (stdout, stderr)
}

/// `--stats`' autotune line: (launches from cache winners, distinct winners, launches of the
/// default kernel, shapes timed).
fn autotune_stats(stderr: &str) -> [u64; 4] {
    let line = stderr.lines().find(|l| l.starts_with("stats: matmul, attention and norm kernels:")).unwrap_or_else(|| panic!("no autotune stats in {stderr}"));
    let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).map(|w| w.parse().unwrap()).collect();
    numbers[..4].try_into().unwrap()
}

/// A cache entry naming a non-default kernel for a shape the embedded model runs is what
/// `generate` launches; after `bench kernels` (traced from the model's own runs) a tuning
/// `generate` times nothing and every matmul takes a winner from the cache.
#[test]
fn generate_takes_its_kernels_from_the_autotune_cache() {
    let Ok(device) = Device::open("vulkan") else {
        println!("SKIPPED: no Vulkan device (the CPU has one matmul path, nothing to choose)");
        return;
    };
    use nextflow_compiler::autotune;
    let dir = std::env::temp_dir().join(format!("nextflow-autotune-generate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("x.png");
    let png = png.to_str().unwrap();
    let generate = ["--stats", "generate", "--device", "vulkan", "-p", "a red circle above a blue square", "-o", png, "--force"];

    // The second scale's fused QKV projection (2x2 tokens; the first scale's token is part
    // of the prefill): CFG batch 2, 4 rows, hidden 192 -> (6 + 2·2)·32.
    let default = autotune::matmul_default(4);
    let (other, _) = autotune::matmul_candidates(&device, DType::F32, 4).into_iter().find(|(n, _)| n != default && n.starts_with("tiled")).unwrap();
    let key = autotune::matmul_key(&device, 2, 4, 320, 192, DType::F32);
    let cache = autotune::TuneCache { version: autotune::load(&dir.join("none.json")).unwrap().version, entries: [(key.clone(), autotune::TuneEntry { choice: other.clone(), timings_us: Default::default() })].into() };
    autotune::save(&cache, &dir.join("autotune.json")).unwrap();
    let (_, stderr) = nextflow_in(&dir, &generate, &[]);
    let [from_cache, winners, defaults, timed] = autotune_stats(&stderr);
    let layers = nextflow_model::Config::named("nextflow-tiny").unwrap().backbone.num_hidden_layers as u64;
    assert_eq!((winners, timed), (1, 0), "{stderr}");
    assert_eq!(from_cache, layers, "one launch per layer at the second scale ran {other}: {stderr}");
    assert!(defaults > 0, "{stderr}");

    // bench kernels over the model's traced shapes, then a generate that would time any
    // shape it does not find.
    std::fs::remove_file(dir.join("autotune.json")).unwrap();
    let (json, _) = nextflow_in(&dir, &["bench", "kernels", "--device", "vulkan", "--reps", "1", "--json"], &[]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let tuned = autotune::load(&dir.join("autotune.json")).unwrap();
    let matmuls = tuned.entries.keys().filter(|k| k.starts_with("matmul|")).count();
    let attentions = tuned.entries.keys().filter(|k| k.starts_with("attention|")).count();
    let norms = tuned.entries.keys().filter(|k| k.starts_with("norm|")).count();
    let all = matmuls + attentions + norms;
    assert!(matmuls >= 10 && attentions >= 3 && norms >= 3 && doc["timed"].as_u64().unwrap() as usize >= all, "{json}");
    let (_, stderr) = nextflow_in(&dir, &generate, &[("NEXTFLOW_AUTOTUNE", "1")]);
    let [from_cache, winners, defaults, timed] = autotune_stats(&stderr);
    assert_eq!((defaults, timed), (0, 0), "generate after bench re-timed or fell back: {stderr}");
    assert!(from_cache > 0 && winners as usize > matmuls && winners as usize <= all, "{stderr}");
    println!("vulkan: bench kernels timed {matmuls} matmul, {attentions} attention and {norms} norm shapes; generate then ran {from_cache} launches on {winners} of them, none timed or default");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One path: every kernel that generate, understand and edit launch belongs to a compiled
/// plan (the model records graphs; it never calls a kernel itself).
#[test]
fn the_model_launches_no_kernel_outside_a_compiled_plan() {
    if Device::open("vulkan").is_err() {
        println!("SKIPPED: no Vulkan device (CPU ops launch no GPU kernels to attribute)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("nextflow-one-path-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (png, edited) = (dir.join("x.png"), dir.join("e.png"));
    let (png, edited) = (png.to_str().unwrap(), edited.to_str().unwrap());
    let runs: [&[&str]; 3] = [
        &["--stats", "generate", "--device", "vulkan", "-p", "a red circle above a blue square", "-o", png, "--force"],
        &["--stats", "understand", "--device", "vulkan", "-i", png, "-p", "what color is the circle?"],
        &["--stats", "edit", "--device", "vulkan", "-i", png, "-p", "make the circle green", "-o", edited, "--force"],
    ];
    for args in runs {
        let (_, stderr) = nextflow_in(&dir, args, &[]);
        let line = stderr.lines().find(|l| l.contains("GPU kernel launches")).unwrap_or_else(|| panic!("no launch stats in {stderr}"));
        let numbers: Vec<u64> = line.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).map(|w| w.parse().unwrap()).collect();
        let [launches, outside] = numbers[..2].try_into().unwrap();
        println!("vulkan {}: {launches} kernel launches, {outside} outside compiled plans", args[1]);
        assert!(launches > 0, "{args:?} launched nothing on the GPU: {stderr}");
        assert_eq!(outside, 0, "{args:?}: kernels launched outside compiled plans: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The memory plan's peak is what a run holds: over a tiny generation and an answer on every
/// device, every plan run's measured peak of live intermediate buffers equals its reported
/// peak.
#[test]
fn every_plan_run_holds_exactly_its_reported_peak() {
    use nextflow_model::{embedded, nextflow::NextFlow, Config, TextTokenizer, Weights};
    for device in devices() {
        let config = Config::from_json(embedded::CONFIG).unwrap();
        let w = Weights::from_static(embedded::NAME, embedded::WEIGHTS).unwrap();
        let text = TextTokenizer::from_bytes(embedded::TOKENIZER, None).unwrap();
        let model = NextFlow::from_parts(config, &w, Some(text), DType::F32, &device).unwrap();
        nextflow_compiler::measure_memory(true);
        let before = counters();
        let g = model.text_to_image("a red circle above a blue square", None, 1, &model.default_image_options(), &mut |_, _, _| {}).unwrap();
        let answer = model.answer_word(&g.indices, "what color is the circle?").unwrap();
        let used = counters() - before;
        nextflow_compiler::measure_memory(false);
        println!(
            "{}: {} plan runs, largest peak {} B planned, {} B measured; answer id {answer}",
            device.info().spec(),
            used.realizes,
            used.peak_plan_bytes,
            used.measured_peak_plan_bytes
        );
        assert!(used.realizes > 50, "{}: the model ran {} plans", device.info().spec(), used.realizes);
        assert_eq!(used.peak_mismatches, 0, "{}: plan runs whose measured peak differs from the plan's", device.info().spec());
        assert_eq!(used.peak_plan_bytes, used.measured_peak_plan_bytes, "{}", device.info().spec());
    }
}

/// The plan is what runs: a replayed plan takes every intermediate buffer from its arena and
/// allocates only its output, and computes the same values.
#[test]
fn a_replayed_plan_allocates_only_its_output() {
    for device in devices() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut t = |shape: &[usize]| Tensor::from_f64(&(0..shape.iter().product::<usize>()).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<_>>(), DType::F32, shape, &device).unwrap();
        let (x, w1, b1, w2, norm) = (t(&[8, 32]), t(&[32, 64]), t(&[64]), t(&[64, 32]), t(&[32]));
        let run = || -> (Vec<f32>, Counters) {
            let before = counters();
            let g = Graph::new(&device);
            let h = g.input(&x).unwrap().matmul(&g.input(&w1).unwrap()).unwrap().add(&g.input(&b1).unwrap()).unwrap().gelu().unwrap();
            let y = h.matmul(&g.input(&w2).unwrap()).unwrap().silu().unwrap().mul(&h.narrow(1, 0, 32).unwrap()).unwrap();
            let out = y.rms_norm(&g.input(&norm).unwrap(), 1e-6).unwrap().realize().unwrap();
            (out.to_vec().unwrap(), counters() - before)
        };
        let runs: Vec<(Vec<f32>, Counters)> = (0..3).map(|_| run()).collect();
        let first = &runs[0].1;
        println!("{}: buffers per run (allocated, reused): {:?}", device.info().spec(), runs.iter().map(|(_, c)| (c.buffers_allocated, c.buffers_reused)).collect::<Vec<_>>());
        assert!(first.buffers_allocated >= 2, "{}: the first run allocates its intermediates: {first:?}", device.info().spec());
        for (values, used) in &runs[1..] {
            assert_eq!(used.buffers_allocated, 1, "{}: a replay allocated more than its output: {used:?}", device.info().spec());
            assert_eq!(used.buffers_reused, first.buffers_allocated + first.buffers_reused - 1, "{}", device.info().spec());
            assert_eq!(values, &runs[0].0, "{}: a replay computed other values", device.info().spec());
        }
    }
}

/// One shape rule per op: a lazy graph refuses bad operands of matmul, concat and RMSNorm
/// with the eager op's own message.
#[test]
fn lazy_and_eager_ops_refuse_bad_shapes_alike() {
    for device in devices() {
        let t = |shape: &[usize]| Tensor::from_f64(&vec![0.0; shape.iter().product()], DType::F32, shape, &device).unwrap();
        let g = Graph::new(&device);
        let l = |x: &Tensor| g.input(x).unwrap();
        let cases: Vec<(String, String)> = vec![
            (nextflow_ops::matmul(&t(&[2, 3]), &t(&[4, 5]), Default::default()).unwrap_err().to_string(), l(&t(&[2, 3])).matmul(&l(&t(&[4, 5]))).unwrap_err().to_string()),
            (
                nextflow_ops::matmul(&t(&[2, 2, 3]), &t(&[3, 3, 5]), Default::default()).unwrap_err().to_string(),
                l(&t(&[2, 2, 3])).matmul(&l(&t(&[3, 3, 5]))).unwrap_err().to_string(),
            ),
            (nextflow_ops::matmul(&t(&[3]), &t(&[3, 5]), Default::default()).unwrap_err().to_string(), l(&t(&[3])).matmul(&l(&t(&[3, 5]))).unwrap_err().to_string()),
            (nextflow_ops::concat(&[&t(&[2, 3]), &t(&[2, 4])], 0).unwrap_err().to_string(), Lazy::concat(&[&l(&t(&[2, 3])), &l(&t(&[2, 4]))], 0).unwrap_err().to_string()),
            (nextflow_ops::concat(&[&t(&[2, 3])], 2).unwrap_err().to_string(), Lazy::concat(&[&l(&t(&[2, 3]))], 2).unwrap_err().to_string()),
            (nextflow_ops::rms_norm(&t(&[2, 3]), &t(&[4]), 1e-6).unwrap_err().to_string(), l(&t(&[2, 3])).rms_norm(&l(&t(&[4])), 1e-6).unwrap_err().to_string()),
            (nextflow_ops::rms_norm(&t(&[2, 3]), &t(&[3]), f32::NAN).unwrap_err().to_string(), l(&t(&[2, 3])).rms_norm(&l(&t(&[3])), f32::NAN).unwrap_err().to_string()),
        ];
        for (eager, lazy) in cases {
            assert_eq!(eager, lazy);
            assert!(eager.contains("matmul") || eager.contains("concat") || eager.contains("rms_norm"), "{eager}");
        }
    }
}

/// A weight split into row blocks is one matmul per block joined along the last dim; on a
/// GPU each matmul writes its columns into the joined output, so the join launches nothing.
#[test]
fn matmuls_joined_along_the_last_dim_write_into_the_join() {
    for device in devices() {
        let mut rng = StdRng::seed_from_u64(5);
        let x = random_tensor(&mut rng, &[2, 3, 40], 1.0, &device);
        let (w1, w2) = (random_tensor(&mut rng, &[24, 40], 0.1, &device), random_tensor(&mut rng, &[8, 40], 0.1, &device));
        let res = random_tensor(&mut rng, &[2, 3, 32], 1.0, &device);
        let g = Graph::new(&device);
        let (xl, rl) = (g.input(&x).unwrap(), g.input(&res).unwrap());
        let a = xl.linear(&g.input(&w1).unwrap(), None).unwrap().add(&rl.narrow(2, 0, 24).unwrap()).unwrap();
        let b = xl.linear(&g.input(&w2).unwrap(), None).unwrap().add(&rl.narrow(2, 24, 8).unwrap()).unwrap();
        let joined = Lazy::concat(&[&a, &b], 2).unwrap();
        let plan = g.compile(&[&joined]).unwrap();
        let gpu_before = nextflow_ops::gpu_launches();
        let got = joined.realize().unwrap();
        device.sync().unwrap();
        let launched = nextflow_ops::gpu_launches() - gpu_before;
        let eager = |w: &Tensor, r: Tensor| nextflow_ops::matmul(&x, &w.transpose(0, 1).unwrap(), nextflow_ops::Epilogue { residual: Some(&r), ..Default::default() }).unwrap();
        let want = nextflow_ops::concat(&[&eager(&w1, res.narrow(2, 0, 24).unwrap()), &eager(&w2, res.narrow(2, 24, 8).unwrap())], 2).unwrap();
        assert!(nmse(&got, &want) <= 1e-10, "{}", device.info().spec());
        if device.is_cpu() {
            assert_eq!(plan.stats.launches, 3, "{}", plan.describe());
        } else {
            assert_eq!(plan.stats.launches, 2, "{}", plan.describe());
            assert_eq!(launched, 2, "{}", plan.describe());
        }
    }
}
