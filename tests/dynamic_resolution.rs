//! Dynamic resolution against the PyTorch reference (`tests/golden/nextflow-dynres`, made by
//! `python tools/reference/make_golden.py dynres`): a small random NextFlow with the embedded
//! model's switches (accumulated inputs; canvases 64x64, 48x48, 48x96, 96x48, each with its own
//! schedule and scale-length embedding) generates the reference's seeded Philox indices at
//! every scale of every canvas, identical on the CPU, and decodes them to the reference's
//! image at the canvas's size. On Vulkan the first scale where f32 rounding flips a draw, if
//! any, is reported. The CLI refuses a canvas the model does not offer before generating.

use nextflow::model::{ImageOptions, NextFlow, Weights};
use nextflow_runtime::{DType, Device};
use std::path::Path;
use std::process::Command;

mod common;
use common::{devices, rel_err};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/nextflow-dynres");

fn golden() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/golden.json")).unwrap()).unwrap()
}

fn scales(v: &serde_json::Value) -> Vec<[usize; 2]> {
    v.as_array().unwrap().iter().map(|s| [s[0].as_u64().unwrap() as usize, s[1].as_u64().unwrap() as usize]).collect()
}

#[test]
fn every_canvas_generates_the_reference_indices_and_image() {
    let doc = golden();
    let images = Weights::open_file(&Path::new(DIR).join("golden.safetensors")).unwrap();
    let prompt = doc["prompt"].as_str().unwrap();
    let s = &doc["sampler"];
    for device in devices() {
        let model = NextFlow::load(Path::new(DIR), DType::F32, &device).unwrap();
        for case in doc["cases"].as_array().unwrap() {
            let (h, w) = (case["canvas"][0].as_u64().unwrap() as usize, case["canvas"][1].as_u64().unwrap() as usize);
            let opts = ImageOptions {
                cfg_scale: s["cfg_scale"].as_f64().unwrap() as f32,
                top_k: s["top_k"].as_u64().unwrap() as usize,
                top_p: s["top_p"].as_f64().unwrap() as f32,
                temperature: s["temperature"].as_f64().unwrap() as f32,
                seed: doc["seed"].as_u64().unwrap(),
                scales: Some(scales(&case["scales"])),
                ..model.default_image_options()
            };
            let out = model.text_to_image(prompt, None, 1, &opts, &mut |_, _, _| {}).unwrap();
            assert_eq!(out.images.shape(), [1, 3, h, w], "{device} {h}x{w}: image shape");
            let want: Vec<Vec<u32>> = case["indices_per_scale"].as_array().unwrap().iter().map(|s| s.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()).collect();
            let got: Vec<Vec<u32>> = out.indices.iter().map(|t| t.to_vec().unwrap()).collect();
            match got.iter().zip(&want).position(|(a, b)| a != b) {
                None => {
                    // The reference's decode clamps to [-1, 1]; ours clamps when converting to pixels.
                    let image: Vec<f32> = out.images.to_vec::<f32>().unwrap().iter().map(|v| v.clamp(-1.0, 1.0)).collect();
                    let reference: Vec<f32> = images.get_any(&format!("{h}x{w}"), DType::F32, &Device::cpu()).unwrap().to_vec().unwrap();
                    let err = rel_err(&image, &reference);
                    println!("{device} {h}x{w}: all {} scales identical, image rel err {err:.2e}", want.len());
                    assert!(err < 1e-4, "{device} {h}x{w}: decoded image differs from the reference (rel err {err:.2e})");
                }
                Some(k) => {
                    println!("{device} {h}x{w}: first differing scale {k}");
                    assert!(!device.is_cpu(), "CPU {h}x{w}: scale {k} differs from the reference: {:?} vs {:?}", got[k], want[k]);
                }
            }
        }
    }
}

#[test]
fn the_cli_offers_exactly_the_trained_canvases() {
    let dir = std::env::temp_dir().join(format!("nextflow-dynres-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_nextflow")).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (size, aspect, w, h) in [(None, None, 64, 64), (Some("48"), None, 48, 48), (None, Some("2:1"), 96, 48), (None, Some("1:2"), 48, 96), (Some("48"), Some("2:1"), 96, 48)] {
        let path = dir.join(format!("{w}x{h}.png"));
        let mut args = vec!["generate", "--model", DIR, "--prompt", "a red circle", "--out", path.to_str().unwrap(), "--force"];
        if let Some(s) = size {
            args.extend(["--size", s]);
        }
        if let Some(a) = aspect {
            args.extend(["--aspect", a]);
        }
        let (code, stderr) = run(&args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let info = decoder.read_info().unwrap().info().clone();
        assert_eq!((info.width as usize, info.height as usize), (w, h), "{args:?}");
    }
    for bad in [&["--size", "32"][..], &["--aspect", "3:1"], &["--size", "64", "--aspect", "2:1"], &["--aspect", "wide"]] {
        let path = dir.join("bad.png");
        let mut args = vec!["generate", "--model", DIR, "--prompt", "a red circle", "--out", path.to_str().unwrap()];
        args.extend_from_slice(bad);
        let (code, stderr) = run(&args);
        assert_ne!(code, 0, "{bad:?}");
        assert!(stderr.contains("error:") && !stderr.contains("loaded in"), "{bad:?}: refused before the model loads: {stderr}");
        assert!(!path.exists());
    }
    // ShapeEval on a non-square canvas (the scores of a random model mean nothing; the canvas does).
    let out = Command::new(env!("CARGO_BIN_EXE_nextflow"))
        .args(["eval", "shapes", "--model", DIR, "--aspect", "2:1", "--n", "1", "--n-other", "0", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["canvas"], "96x48");
    assert_eq!(report["correct"].as_array().unwrap().len(), 6);
    std::fs::remove_dir_all(&dir).ok();
}
