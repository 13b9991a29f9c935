//! Big weights on wgpu. A weight above the device's storage-binding limit is loaded as row
//! blocks (`ops::Weight`): the embedding gathers from every block into one output, and each
//! matmul block writes its columns of one output. This binary lowers the limit to 8 MiB
//! (`NEXTFLOW_MAX_BINDING_MB`, set before any device is opened) so that Qwen2-0.5B's shapes
//! split on lavapipe, and checks the split run against the unsplit CPU run.
//! Outside CI a missing Vulkan adapter is reported as skipped; with CI=true it fails.

use nextflow::model::{Cache, Config, Transformer, Weights};
use nextflow_ops::{matmul, text_positions, Activation, Epilogue, Weight};
use nextflow_runtime::{DType, Device, Tensor};

mod common;
use common::rel_err;

const LIMIT_MB: u64 = 8;

/// The Vulkan device with the binding limit lowered, or None (skipped outside CI).
fn vulkan() -> Option<Device> {
    // Read once per process, at the first limit query; no device has been asked before this.
    std::env::set_var("NEXTFLOW_MAX_BINDING_MB", LIMIT_MB.to_string());
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    match Device::open("vulkan") {
        Ok(d) => {
            assert_eq!(d.max_buffer_bytes(), LIMIT_MB << 20, "NEXTFLOW_MAX_BINDING_MB was not applied");
            Some(d)
        }
        Err(why) => {
            assert!(!in_ci, "CI=true but no Vulkan adapter: {why}");
            println!("SKIPPED vulkan: {why}");
            None
        }
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

#[test]
fn split_weights_match_the_unsplit_cpu_run() {
    let Some(gpu) = vulkan() else { return };
    let cpu = Device::cpu();

    // Ops level: a [70, 33] weight as blocks of 30 and 40 rows; bias, activation and a residual
    // narrowed per block; and an embedding whose ids fall in both blocks.
    let (rows, cols) = (70, 33);
    let w = values(rows * cols, 1);
    let x = values(2 * 5 * cols, 2);
    let bias = values(rows, 3);
    let residual = values(2 * 5 * rows, 4);
    let on = |d: &Device| {
        let t = |v: &[f32], s: &[usize]| Tensor::from_slice(v, s, d).unwrap();
        (t(&w, &[rows, cols]), t(&x, &[2, 5, cols]), t(&bias, &[rows]), t(&residual, &[2, 5, rows]))
    };
    let (w_cpu, x_cpu, b_cpu, r_cpu) = on(&cpu);
    let ep = |b, r| Epilogue { bias: Some(b), activation: Activation::GeluErf, residual: Some(r) };
    let want = matmul(&x_cpu, &w_cpu.transpose(0, 1).unwrap(), ep(&b_cpu, &r_cpu)).unwrap().to_vec::<f32>().unwrap();
    let (w_gpu, x_gpu, b_gpu, r_gpu) = on(&gpu);
    let split = Weight::from_blocks(vec![w_gpu.narrow(0, 0, 30).unwrap(), nextflow_ops::contiguous(&w_gpu.narrow(0, 30, 40).unwrap()).unwrap()]).unwrap();
    let got = split.matmul_t(&x_gpu, ep(&b_gpu, &r_gpu)).unwrap().to_vec::<f32>().unwrap();
    let e = rel_err(&got, &want);
    assert!(e <= 1e-5, "blocked matmul differs from the CPU by {e:e}");
    let ids = [0u32, 29, 30, 69, 5, 45, 30];
    let emb = |weight: &Weight, d: &Device| weight.embedding(&Tensor::from_slice(&ids, &[1, ids.len()], d).unwrap()).unwrap().to_vec::<f32>().unwrap();
    let want = emb(&Weight::from(w_cpu), &cpu);
    assert_eq!(emb(&split, &gpu), want, "blocked embedding differs from the CPU");

    // Model level: Qwen2-0.5B's shapes (2 of its 24 layers), random weights, f32.
    let mut cfg = Config::named("qwen2-0.5b").unwrap();
    cfg.backbone.num_hidden_layers = 2;
    let weights = Weights::random(7);
    let half = cfg.backbone.head_dim() / 2;
    let load = |d: &Device| Transformer::load(&weights, &cfg.backbone, cfg.vocab_size, &[half], DType::F32, d).unwrap();
    let (a, b) = (load(&cpu), load(&gpu));
    assert_eq!(a.embed_tokens.blocks().len(), 1, "the CPU keeps one block");
    let blocks = b.embed_tokens.blocks().len();
    let limit = LIMIT_MB << 20;
    assert!(blocks > 1 && b.embed_tokens.blocks().iter().all(|t| (t.numel() * 4) as u64 <= limit), "the embedding must split under {LIMIT_MB} MiB");
    let input: Vec<u32> = vec![9707, 11, 1879, 0, 151935, 42, 1000, 77];
    let t = input.len();
    let run = |m: &Transformer, d: &Device| {
        let x = m.embed(&Tensor::from_slice(&input, &[1, t], d).unwrap()).unwrap();
        let mut cache = Cache::new(m, 1, t).unwrap();
        let mut layers = Vec::new();
        let h = m
            .forward_layers(&x, &text_positions(0, t, d).unwrap(), &vec![1; t], &mut cache, &mut |_, h| {
                layers.push(h.to_vec::<f32>().unwrap());
                Ok(())
            })
            .unwrap();
        // The last row's logits over the whole vocabulary (one row keeps the output small).
        let last = h.narrow(1, t - 1, 1).unwrap();
        (x.to_vec::<f32>().unwrap(), layers, m.logits(&last, 0..cfg.vocab_size).unwrap().to_vec::<f32>().unwrap())
    };
    let (xa, la, ga) = run(&a, &cpu);
    let (xb, lb, gb) = run(&b, &gpu);
    assert_eq!(xb, xa, "embeddings differ");
    for (i, (p, q)) in la.iter().zip(&lb).enumerate() {
        let e = rel_err(q, p);
        assert!(e <= 1e-4, "layer output {i} differs by {e:e}");
    }
    let e = rel_err(&gb, &ga);
    println!("qwen2-0.5b shapes, 2 layers, {LIMIT_MB} MiB bindings: embedding/head in {blocks} blocks; logits {e:.1e} relative to the CPU");
    assert!(e <= 1e-4, "logits differ by {e:e} relative");
}
