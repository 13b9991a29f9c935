//! The tiny NextFlow model on our runtime against the PyTorch reference's golden tensors
//! (`tests/golden/nextflow-tiny`, made by `python tools/reference/make_golden.py` from the
//! exported `model/assets/nextflow-tiny`): MSRQ indices of the test image identical, the
//! decoder's image, per-layer outputs and teacher-forced code logits of every scale within
//! tolerance, and the seeded CFG generation (Philox sampler, the numpy port on the Python
//! side) identical on the CPU; on Vulkan the first scale where f32 rounding flips a draw,
//! if any, is reported. With CI=true a missing Vulkan adapter fails.

use nextflow::model::visual::from_rgb8;
use nextflow::model::{ImageOptions, NextFlow, Weights};
use nextflow_runtime::{DType, Device, Tensor};
use std::path::Path;

mod common;
use common::{devices, rel_err};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/model/assets/nextflow-tiny");
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/nextflow-tiny");


struct Golden {
    doc: serde_json::Value,
    w: Weights,
}

impl Golden {
    fn load() -> Golden {
        let doc = serde_json::from_str(&std::fs::read_to_string(format!("{GOLDEN}/golden.json")).unwrap()).unwrap();
        Golden { doc, w: Weights::open_file(&Path::new(GOLDEN).join("golden.safetensors")).unwrap() }
    }
    fn tensor(&self, name: &str) -> Vec<f32> {
        self.w.get_any(name, DType::F32, &Device::cpu()).unwrap().to_vec().unwrap()
    }
    fn ids(v: &serde_json::Value) -> Vec<u32> {
        v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    }
    fn per_scale(v: &serde_json::Value) -> Vec<Vec<u32>> {
        v.as_array().unwrap().iter().map(Golden::ids).collect()
    }
}


fn index_tensors(per_scale: &[Vec<u32>], device: &Device) -> Vec<Tensor> {
    per_scale.iter().map(|s| Tensor::from_slice(s, &[1, s.len()], device).unwrap()).collect()
}

/// The test image back to RGB8 (it was made as uint8 / 127.5 − 1).
fn golden_image(g: &Golden) -> Vec<u8> {
    let v = g.tensor("image");
    let n = 128 * 128;
    let mut rgb = vec![0u8; 3 * n];
    for p in 0..n {
        for c in 0..3 {
            rgb[p * 3 + c] = ((v[c * n + p] + 1.0) * 127.5).round() as u8;
        }
    }
    rgb
}

#[test]
fn tokenizer_indices_and_decoder_match_the_reference() {
    let g = Golden::load();
    let want = Golden::per_scale(&g.doc["msrq_indices"]["per_scale"]);
    for device in devices() {
        let model = NextFlow::load(Path::new(MODEL), DType::F32, &device).unwrap();
        let image = from_rgb8(&golden_image(&g), 128, DType::F32, &device).unwrap();
        let got: Vec<Vec<u32>> = model.encode_image(&image).unwrap().iter().map(|t| t.to_vec().unwrap()).collect();
        assert_eq!(got, want, "{device}: MSRQ indices of the test image");
        let decoded = model.tokenizer.decode(&index_tensors(&want, &device)).unwrap().to_vec::<f32>().unwrap();
        let clamped: Vec<f32> = decoded.iter().map(|x| x.clamp(-1.0, 1.0)).collect();
        let e = rel_err(&clamped, &g.tensor("decoded_image"));
        println!("{device}: MSRQ indices identical, decoder image rel err {e:.1e}");
        assert!(e <= 1e-4, "{device}: decoded image differs by {e:e}");
    }
}

#[test]
fn teacher_forced_layers_and_logits_match_the_reference() {
    let g = Golden::load();
    let indices = Golden::per_scale(&g.doc["msrq_indices"]["per_scale"]);
    let prompt = Golden::ids(&g.doc["prompt_ids"]);
    let rows: Vec<usize> = g.doc["code_logits"]["rows"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let per_scale: Vec<usize> = g.doc["code_logits"]["rows_per_scale"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    for device in devices() {
        let model = NextFlow::load(Path::new(MODEL), DType::F32, &device).unwrap();
        let seq = model.t2i_sequence(&prompt, &index_tensors(&indices, &device)).unwrap();
        let layers = g.tensor("sequence.layer_outputs");
        let (t, d) = (seq.len(), model.config.backbone.hidden_size);
        assert_eq!(t * d * model.transformer.num_layers(), layers.len(), "sequence length");
        let mut report = Vec::new();
        let hidden = model
            .forward_sequence(&seq, &mut |i, h| {
                let got = h.to_vec::<f32>().unwrap();
                let (name, e) = if i == usize::MAX {
                    ("final norm".to_string(), rel_err(&got, &g.tensor("sequence.final_norm")))
                } else {
                    (format!("layer {i}"), rel_err(&got, &layers[i * t * d..(i + 1) * t * d]))
                };
                report.push(format!("{name} {e:.1e}"));
                assert!(e <= 1e-4, "{device}: {name} differs by {e:e}");
                Ok(())
            })
            .unwrap();
        let all = model.transformer.logits(&hidden, model.parts().vocabulary.code_start()..model.config.vocab_size).unwrap().to_vec::<f32>().unwrap();
        let v = model.parts().vocabulary.codebook_size;
        let want = g.tensor("sequence.code_logits");
        let mut at = 0;
        for (k, &n) in per_scale.iter().enumerate() {
            let got: Vec<f32> = rows[at..at + n].iter().flat_map(|&r| all[r * v..(r + 1) * v].to_vec()).collect();
            let e = rel_err(&got, &want[at * v..(at + n) * v]);
            report.push(format!("scale {k} logits {e:.1e}"));
            assert!(e <= 1e-4, "{device}: scale {k} logits differ by {e:e}");
            at += n;
        }
        println!("{device}: {}", report.join(", "));
    }
}

#[test]
fn seeded_generation_matches_the_reference() {
    let g = Golden::load();
    let prompt = g.doc["prompt"].as_str().unwrap();
    for key in ["generation", "generation_greedy"] {
        let gen = &g.doc[key];
        let s = &gen["settings"];
        let want = Golden::per_scale(&gen["indices_per_scale"]);
        for device in devices() {
            let model = NextFlow::load(Path::new(MODEL), DType::F32, &device).unwrap();
            let opts = ImageOptions {
                cfg_scale: s["cfg_scale"].as_f64().unwrap() as f32,
                top_k: s["top_k"].as_u64().unwrap() as usize,
                top_p: s["top_p"].as_f64().unwrap() as f32,
                temperature: s["temperature"].as_f64().unwrap() as f32,
                seed: gen["seed"].as_u64().unwrap(),
                ..model.default_image_options()
            };
            let out = model.text_to_image(prompt, None, 1, &opts, &mut |_, _, _| {}).unwrap();
            let got: Vec<Vec<u32>> = out.indices.iter().map(|t| t.to_vec().unwrap()).collect();
            let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
            match first_diff {
                None => println!("{device} {key}: all {} scales identical", want.len()),
                Some(k) => {
                    let cells = got[k].iter().zip(&want[k]).filter(|(a, b)| a != b).count();
                    println!("{device} {key}: first differing scale {k} ({cells} of {} cells)", want[k].len());
                    assert!(!device.is_cpu(), "CPU {key}: scale {k} differs from the reference: {:?} vs {:?}", got[k], want[k]);
                }
            }
        }
    }
}
