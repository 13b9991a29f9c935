//! GPU kernel launches of two model workloads, counted by the ops layer (every kernel the
//! engine launches, inside a compiled plan or not), for comparing engine versions:
//!
//!   cargo run --release --example launches [-- DEVICE]      (default vulkan)
//!
//! 1. one 128 px image of the embedded nextflow-tiny (the README prompt, its CFG batch);
//! 2. one decode step of a 7B-shaped decoder layer (NextFlow-7B's Qwen2-7B dims, random
//!    weights, a 16-token prompt cached first), plus the final norm.

use nextflow::model::config::Config;
use nextflow::model::{embedded, Cache, NextFlow, TextTokenizer, Transformer, Weights};
use nextflow::ops;
use nextflow::runtime::{DType, Device, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "vulkan".into());
    let device = Device::open(&spec)?;
    let config = Config::named("nextflow-tiny")?;
    let weights = Weights::from_static(embedded::NAME, embedded::WEIGHTS)?;
    let text = TextTokenizer::from_bytes(embedded::TOKENIZER, None)?;
    let model = NextFlow::from_parts(config, &weights, Some(text), DType::F32, &device)?;
    let opts = model.default_image_options();
    model.text_to_image("a red circle above a blue square", None, 1, &opts, &mut |_, _, _| {})?; // warm-up
    device.sync()?;
    let before = ops::gpu_launches();
    model.text_to_image("a red circle above a blue square", None, 1, &opts, &mut |_, _, _| {})?;
    device.sync()?;
    println!("{spec}: tiny image (128 px, cfg {}): {} launches", opts.cfg_scale, ops::gpu_launches() - before);

    // One decoder layer of NextFlow-7B's backbone (Qwen2-7B dims).
    let mut b = Config::named("nextflow-7b")?.backbone;
    b.num_hidden_layers = 1;
    let vocab = 256; // the head is not run; a small table keeps the load light
    let t = Transformer::load(&Weights::random(0), &b, vocab, &[64], DType::F32, &device)?;
    let mut cache = Cache::new(&t, 1, 64)?;
    let step = |cache: &mut Cache, start: usize, n: usize| -> Result<u64, Box<dyn std::error::Error>> {
        let x = Tensor::from_f64(&vec![0.01; n * 3584], DType::F32, &[1, n, 3584], &device)?;
        let pos = ops::text_positions(start, n, &device)?;
        let before = ops::gpu_launches();
        t.forward(&x, &pos, &vec![1; n], cache)?;
        device.sync()?;
        Ok(ops::gpu_launches() - before)
    };
    step(&mut cache, 0, 16)?;
    step(&mut cache, 16, 1)?; // warm-up of the decode step
    let n = step(&mut cache, 17, 1)?;
    println!("{spec}: 7B-shaped layer decode step (1 token over 17 cached, f32, + final norm): {n} launches");
    Ok(())
}
