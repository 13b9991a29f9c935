//! The text path against HF transformers: a tiny random Qwen2 checkpoint and its golden
//! tensors (`tests/golden/qwen2-tiny`, made by `python tools/reference/make_golden.py`).
//! Per-layer outputs and logits within 1e-4 relative (f32) on the CPU and on Vulkan, the
//! greedy 32-token continuation identical to `model.generate`, the sharded copy loading to
//! the same model, the tokenizer's ids and the chat template's text.
//! Outside CI a missing Vulkan adapter is reported as skipped; with CI=true it fails.

use nextflow::model::text::{generate, TextOptions};
use nextflow::model::{Cache, Config, Message, StreamDecoder, TextTokenizer, Transformer, Weights};
use nextflow_ops::text_positions;
use nextflow_runtime::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::path::Path;

mod common;
use common::{devices, rel_err};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/qwen2-tiny");
const SHARDED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/qwen2-tiny-sharded");


fn golden() -> (serde_json::Value, Weights) {
    let doc = serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/golden.json")).unwrap()).unwrap();
    (doc, Weights::open_file(&Path::new(DIR).join("golden.safetensors")).unwrap())
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn load(dir: &str, device: &Device) -> (Config, Transformer, Weights) {
    let cfg = Config::load(Path::new(dir)).unwrap();
    let w = Weights::open(Path::new(dir)).unwrap();
    let half = cfg.backbone.head_dim() / 2;
    let t = Transformer::load(&w, &cfg.backbone, cfg.vocab_size, &[half], DType::F32, device).unwrap();
    (cfg, t, w)
}


#[test]
fn logits_and_layers_match_transformers() {
    let (doc, g) = golden();
    let input = ids(&doc["input_ids"]);
    let cpu = Device::cpu();
    let want = |name: &str| g.get_any(name, DType::F32, &cpu).unwrap().to_vec::<f32>().unwrap();
    for device in devices() {
        let (cfg, model, w) = load(DIR, &device);
        assert!(w.unused().is_empty(), "unused tensors: {:?}", w.unused());
        let t = input.len();
        let x = model.embed(&Tensor::from_slice(&input, &[1, t], &device).unwrap()).unwrap();
        let e = rel_err(&x.to_vec::<f32>().unwrap(), &want("embeddings"));
        assert!(e <= 1e-6, "{device}: embeddings differ by {e:e}");
        let mut cache = Cache::new(&model, 1, t).unwrap();
        let layers = want("layer_outputs");
        let d = cfg.backbone.hidden_size;
        let mut report = Vec::new();
        let hidden = model
            .forward_layers(&x, &text_positions(0, t, &device).unwrap(), &vec![1; t], &mut cache, &mut |i, h| {
                let got = h.to_vec::<f32>().unwrap();
                let (name, e) = if i == usize::MAX {
                    ("final_norm".to_string(), rel_err(&got, &want("final_norm")))
                } else {
                    (format!("layer {i}"), rel_err(&got, &layers[i * t * d..(i + 1) * t * d]))
                };
                report.push(format!("{name} {e:.1e}"));
                assert!(e <= 1e-4, "{device}: {name} differs by {e:e} relative");
                Ok(())
            })
            .unwrap();
        let logits = model.logits(&hidden, 0..cfg.vocab_size).unwrap().to_vec::<f32>().unwrap();
        let e = rel_err(&logits, &want("logits"));
        println!("{device}: {} logits {e:.1e}", report.join(", "));
        assert!(e <= 1e-4, "{device}: logits differ by {e:e} relative");
    }
}

#[test]
fn greedy_continuation_matches_generate() {
    let (doc, _) = golden();
    let input = ids(&doc["input_ids"]);
    let want = ids(&doc["greedy"]["new_ids"]);
    for device in devices() {
        let (cfg, model, _) = load(DIR, &device);
        let opts = TextOptions { max_new_tokens: want.len(), stop_tokens: cfg.eos_token_ids.clone(), ..Default::default() };
        let mut streamed = Vec::new();
        let out = generate(&model, &input, &opts, &mut |id| {
            streamed.push(id);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(out.ids, want, "{device}: greedy continuation differs from transformers' generate");
        assert_eq!(streamed, want, "{device}: streamed ids");
    }
}

#[test]
fn sharded_checkpoint_loads_the_same_model() {
    let cpu = Device::cpu();
    let (_, a, _) = load(DIR, &cpu);
    let (_, b, w) = load(SHARDED, &cpu);
    assert!(w.unused().is_empty());
    assert_eq!(a.lm_head.joined().unwrap().to_vec::<f32>().unwrap(), b.lm_head.joined().unwrap().to_vec::<f32>().unwrap());
    let (doc, _) = golden();
    let input = ids(&doc["input_ids"]);
    let opts = TextOptions { max_new_tokens: 8, ..Default::default() };
    let ga = generate(&a, &input, &opts, &mut |_| ControlFlow::Continue(())).unwrap();
    let gb = generate(&b, &input, &opts, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(ga.ids, gb.ids);
}

#[test]
fn tokenizer_and_chat_template_match_transformers() {
    let (doc, _) = golden();
    let tok = TextTokenizer::load(Path::new(DIR)).unwrap();
    for case in doc["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&case["ids"]), "ids of {text:?}");
        // Streaming gives the full decode, piece by piece, without broken characters.
        let mut stream = StreamDecoder::new(&tok, false);
        let mut pieces = String::new();
        for id in ids(&case["ids"]) {
            let piece = stream.push(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "half a character streamed for {text:?}");
            pieces.push_str(&piece);
        }
        pieces.push_str(&stream.finish().unwrap());
        assert_eq!(pieces, tok.decode(&ids(&case["ids"]), false).unwrap(), "streamed text of {text:?}");
    }
    let chat = &doc["chat"];
    let messages: Vec<Message> = chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message { role: m["role"].as_str().unwrap().into(), content: m["content"].as_str().unwrap().into() })
        .collect();
    let text = tok.apply_chat_template(&messages, true).unwrap();
    assert_eq!(text, chat["text"].as_str().unwrap());
    assert_eq!(tok.encode(&text, false).unwrap(), ids(&chat["ids"]));
}
