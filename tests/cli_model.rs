//! The model commands as a person meets them: `generate` on the embedded model (a PNG, no
//! silent overwrite, clear errors), `chat` on an HF Qwen2 checkpoint (the ids and logits
//! transformers gives), and malformed checkpoints (truncated file, lying header, wrong
//! dtype, missing tensor, wrong shape), each one clear error and a non-zero exit code.

use std::path::{Path, PathBuf};

const QWEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/qwen2-tiny");

#[path = "common/cli.rs"]
mod cli_common;
use cli_common::{nextflow, scratch};

#[test]
fn generate_writes_a_png_and_never_overwrites_silently() {
    let dir = scratch("generate");
    let out = dir.join("shapes.png");
    let out_s = out.to_str().unwrap();
    let (code, stdout, stderr) = nextflow(&["generate", "--prompt", "a red circle above a blue square", "--out", out_s, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["images"][0]["path"], out_s);
    assert_eq!(report["images"][0]["seed"], 0);
    for key in ["nextflow", "model", "device", "dtype", "prompt", "size", "sampler", "seed", "batch"] {
        assert!(report.get(key).is_some(), "no `{key}` in {report}");
    }
    assert_eq!(report["timings_ms"]["scales"].as_array().unwrap().len(), 7, "{report}");
    assert!(stderr.contains("scale 7/7"), "progress per scale: {stderr}");
    let (rgb, size) = nextflow::shapeeval::load_png_rgb(&out).unwrap();
    assert_eq!(size, 128);
    assert!(rgb.chunks(3).any(|p| p != [rgb[0], rgb[1], rgb[2]]), "a blank image");

    // Same seed, same picture; an existing file needs --force.
    let before = std::fs::read(&out).unwrap();
    let (code, _, stderr) = nextflow(&["generate", "--prompt", "a red circle above a blue square", "--out", out_s]);
    assert_ne!(code, 0);
    assert!(stderr.contains("exists") && stderr.contains("--force"), "{stderr}");
    let (code, _, stderr) = nextflow(&["generate", "--prompt", "a red circle above a blue square", "--out", out_s, "--force"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(&out).unwrap(), before, "the same seed must give the same PNG");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
    assert!(leftovers.is_empty(), "temporary files left behind");

    // Several images follow the pattern.
    let pattern = dir.join("many-{i}.png");
    let (code, _, stderr) = nextflow(&["generate", "--prompt", "two stars", "--num-images", "2", "--out", pattern.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(dir.join("many-1.png").exists() && dir.join("many-2.png").exists(), "`{{i}}` counts from 1, as the -N suffix does");
    assert!(!dir.join("many-0.png").exists());
}

#[test]
fn generate_errors_are_clear() {
    let dir = scratch("errors");
    let out = dir.join("x.png");
    let cases: [(&[&str], &str); 4] = [
        (&["--prompt", "a purple dragon"], "dragon"),
        (&["--prompt", "a star", "--size", "100"], "--size 100"),
        (&["--prompt", "a star", "--cfg=-1"], "--cfg"),
        (&["--prompt", "a star", "--config", "nextflow-7b"], "--random-weights"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["generate", "--out", out.to_str().unwrap()];
        all.extend_from_slice(args);
        let (code, _, stderr) = nextflow(&all);
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains("error:") && stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!out.exists(), "nothing is written on error");
    }
    let (code, _, stderr) = nextflow(&["generate", "--prompt", "a star", "--out", "/no/such/folder/x.png"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn prompts_are_english_and_unknown_words_get_suggestions() {
    let dir = scratch("prompts");
    // Plurals, case and trailing punctuation: all accepted (a tiny 1-scale run keeps it quick).
    for (i, prompt) in ["two crosses", "A Red Circle.", "three stars!", "a blue square, please"].iter().enumerate() {
        let out = dir.join(format!("p{i}.png"));
        let (code, _, stderr) = nextflow(&["generate", "--prompt", prompt, "--out", out.to_str().unwrap(), "--force"]);
        if i < 3 {
            assert_eq!(code, 0, "{prompt:?}: {stderr}");
            assert!(out.exists(), "{prompt:?}");
        } else {
            // One line naming the unknown word; no suggestion when nothing is close.
            assert_ne!(code, 0);
            assert!(stderr.contains("\"please\"") && !stderr.contains("closest"), "{stderr}");
            assert_eq!(stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
        }
    }
    // A misspelling names the word and the closest known ones, on one line.
    let (code, _, stderr) = nextflow(&["generate", "--prompt", "a red crcle", "--out", dir.join("typo.png").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("\"crcle\"") && stderr.contains("closest known: circle"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{stderr}");
    // Control tokens cannot be typed.
    let (code, _, stderr) = nextflow(&["generate", "--prompt", "a red circle <boi>", "--out", dir.join("boi.png").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("<boi>") && stderr.contains("control token"), "{stderr}");
}

#[test]
fn chat_gives_transformers_ids_and_logits() {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("{QWEN}/golden.json")).unwrap()).unwrap();
    let ids: Vec<String> = doc["input_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let want: Vec<u64> = doc["greedy"]["new_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let dir = scratch("chat");
    let npy = dir.join("logits.npy");
    let (code, stdout, stderr) = nextflow(&[
        "chat", "--model", QWEN, "--prompt-ids", &ids.join(","), "--greedy", "--max-new-tokens", &want.len().to_string(), "--json", "--logits-out", npy.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let got: Vec<u64> = report["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(got, want);
    assert!(report["tokens_per_s"]["decode"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["decoding"], "greedy");
    let (logits, shape) = nextflow::model::npy::read_f32(&npy).unwrap();
    assert_eq!(shape, vec![want.len(), 300]);
    // Row 0 is the logits after the prompt: transformers' last prompt position.
    let golden = nextflow::model::Weights::open_file(&Path::new(QWEN).join("golden.safetensors")).unwrap();
    let all: Vec<f32> = golden.get_any("logits", nextflow_runtime::DType::F32, &nextflow_runtime::Device::cpu()).unwrap().to_vec().unwrap();
    let last = &all[all.len() - 300..];
    let scale = last.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = logits[..300].iter().zip(last).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
    assert!(err < 1e-4, "logits row 0 differs by {err:e}");

    // The chat template path streams text.
    let (code, stdout, stderr) = nextflow(&["chat", "--model", QWEN, "--prompt", "hello", "--max-new-tokens", "4"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("tok/s"), "{stderr}");
    let _ = stdout;
}

/// A copy of the Qwen2 checkpoint whose safetensors header `edit` rewrites (or whose bytes
/// `cut` truncates).
fn broken(name: &str, edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>), cut: usize) -> PathBuf {
    let dir = scratch(name);
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(Path::new(QWEN).join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(Path::new(QWEN).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_vec(&header).unwrap();
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..bytes.len() - cut]);
    std::fs::write(dir.join("model.safetensors"), out).unwrap();
    dir
}

#[test]
fn malformed_checkpoints_fail_with_one_clear_error() {
    let name = "model.layers.1.mlp.up_proj.weight";
    let cases: Vec<(&str, PathBuf, Vec<&str>)> = vec![
        ("truncated", broken("truncated", |_| {}, 1000), vec!["past the data", "truncated"]),
        (
            "lying offsets",
            broken("offsets", |h| h[name]["data_offsets"][1] = serde_json::json!(h[name]["data_offsets"][1].as_u64().unwrap() + 4), 0),
            vec![name, "data_offsets"],
        ),
        ("wrong dtype", broken("dtype", |h| h[name]["dtype"] = serde_json::json!("I32"), 0), vec![name, "I32"]),
        ("missing tensor", broken("missing", |h| drop(h.remove(name)), 0), vec![name, "missing"]),
        ("wrong shape", broken("shape", |h| h[name]["shape"] = serde_json::json!([64, 128]), 0), vec![name, "expected shape [128, 64]", "found [64, 128]"]),
    ];
    for (what, dir, needles) in cases {
        let (code, _, stderr) = nextflow(&["chat", "--model", dir.to_str().unwrap(), "--prompt-ids", "1,2,3", "--max-new-tokens", "2"]);
        assert_ne!(code, 0, "{what}: must fail");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{what}: one error line, got {stderr}");
        for n in needles {
            assert!(errors[0].contains(n), "{what}: `{n}` missing from {:?}", errors[0]);
        }
        println!("{what}: {}", errors[0]);
    }
}

#[test]
fn named_configs_have_the_real_shapes() {
    use nextflow::model::Config;
    let c = Config::named("nextflow-7b").unwrap();
    let p = c.nextflow.as_ref().unwrap();
    assert_eq!(p.tokenizer.tokens(), 10084, "the 1024² schedule's token count (spec §1.4)");
    assert_eq!(p.vocabulary.code_start(), 152064);
    let params = c.transformer_parameters() as f64 / 1e9;
    assert!((7.0..8.0).contains(&params), "Qwen2.5-7B backbone: {params} B");
    let q = Config::named("qwen2-0.5b").unwrap();
    assert!((0.45..0.55).contains(&(q.transformer_parameters() as f64 / 1e9)));
    assert!(Config::named("gpt-5").unwrap_err().to_string().contains("known: nextflow-tiny"));
    let (code, stdout, _) = nextflow(&["inspect", "--config", "nextflow-7b", "--random-weights"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("18 scales") && stdout.contains("10084 tokens"), "{stdout}");
}

#[test]
fn chat_on_the_nextflow_model_answers_in_words() {
    let (code, stdout, stderr) = nextflow(&["chat", "--prompt", "a red circle", "--max-new-tokens", "8", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(v["text"].is_string() && v["images"].is_array(), "{v}");
}

#[test]
fn bench_image_times_whole_generations_per_stage() {
    let (code, stdout, stderr) = nextflow(&["bench", "image", "--warmup", "1", "--reps", "2", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["runs_ms"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["warmup_ms"].as_array().unwrap().len(), 1, "{report}");
    let run = &report["runs_ms"][0];
    assert_eq!(run["scales"].as_array().unwrap().len(), 7, "{report}");
    let stages: f64 = run["prefill"].as_f64().unwrap() + run["scales"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).sum::<f64>() + run["decoder"].as_f64().unwrap();
    let total = run["total"].as_f64().unwrap();
    assert!(total > 0.0 && (stages - total).abs() < 0.5, "stages {stages} ms vs total {total} ms: {report}");
    assert!(report["median_ms"]["total"].as_f64().unwrap() >= report["min_ms"]["total"].as_f64().unwrap());
    // A config that ships no weights needs --random-weights, said plainly.
    let (code, _, stderr) = nextflow(&["bench", "image", "--config", "7b"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--random-weights"), "{stderr}");
}
