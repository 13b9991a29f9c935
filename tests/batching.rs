//! Images of different prompts and seeds sharing one batch (what `nextflow serve` does with
//! concurrent requests) have the pixels each has alone.

use nextflow::model::nextflow::{NextFlow, Sequence};
use nextflow::model::{Config, TextTokenizer, Weights};
use nextflow_runtime::{DType, Device};

fn embedded_model() -> NextFlow {
    let config = Config::from_json(nextflow::model::embedded::CONFIG).unwrap();
    let w = Weights::from_static(nextflow::model::embedded::NAME, nextflow::model::embedded::WEIGHTS).unwrap();
    let text = TextTokenizer::from_bytes(nextflow::model::embedded::TOKENIZER, None).unwrap();
    NextFlow::from_parts(config, &w, Some(text), DType::F32, &Device::cpu()).unwrap()
}

#[test]
fn mixed_prompts_in_one_batch_paint_what_each_paints_alone() {
    let model = embedded_model();
    let opts = model.default_image_options();
    // Prompts of different lengths (left padding) and negative prompts, seeds out of order.
    let requests = [("a red circle", None, 7u64), ("two stars", Some("blue"), 3), ("a green cross above a yellow square", None, 7), ("a red circle", None, 8)];
    let mut conds = Vec::new();
    let mut unconds = Vec::new();
    let mut seeds = Vec::new();
    let mut alone = Vec::new();
    for &(prompt, negative, seed) in &requests {
        let (c, u): (Sequence, Sequence) = model.text_prompts(prompt, negative).unwrap();
        let one = model.generate_seeded(std::slice::from_ref(&c), std::slice::from_ref(&u), &[seed], &opts, &mut |_, _, _| {}).unwrap();
        alone.push(one);
        conds.push(c);
        unconds.push(u);
        seeds.push(seed);
    }
    let batch = model.generate_seeded(&conds, &unconds, &seeds, &opts, &mut |_, _, _| {}).unwrap();
    for (i, one) in alone.iter().enumerate() {
        for (k, idx) in one.indices.iter().enumerate() {
            assert_eq!(batch.indices[k].narrow(0, i, 1).unwrap().to_vec::<u32>().unwrap(), idx.to_vec::<u32>().unwrap(), "request {i}, scale {k}: codes differ from the request alone");
        }
        let pixels = batch.images.narrow(0, i, 1).unwrap().to_vec::<f32>().unwrap();
        assert_eq!(pixels, one.images.to_vec::<f32>().unwrap(), "request {i}: pixels differ from the request alone");
    }
    // The same seed and prompt twice in a batch: the same image.
    assert_eq!(batch.images.narrow(0, 0, 1).unwrap().to_vec::<f32>().unwrap(), alone[0].images.to_vec::<f32>().unwrap());
}
