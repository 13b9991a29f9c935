//! VAR against the official code (FoundationVision/VAR), on every device: small random models
//! saved exactly as published (`torch.save(state_dict())`, read by our pickle-free reader)
//! with the real 256 px schedule, and golden tensors from running the official classes on
//! them (`tools/reference/make_var_golden.py`, see `tests/golden/var/README.md`):
//! VQVAE encode indices of a test image, teacher-forced logits of every scale, greedy
//! (`top_k = 1`) generations at cfg 0 and 4 (indices of every scale, `f_hat`, the image), and
//! the same for a shared-AdaLN model.

use nextflow::model::var::net::{Var, VarOptions};
use nextflow::model::var::{part_of, ModelConfig, Part};
use nextflow::model::Weights;
use nextflow_runtime::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

mod common;
use common::{devices, rel_err};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/var");

fn golden() -> Weights {
    Weights::open_file(&Path::new(GOLDEN).join("golden.safetensors")).unwrap()
}

fn f32s(g: &Weights, name: &str) -> Vec<f32> {
    g.get_any(name, DType::F32, &Device::cpu()).unwrap_or_else(|e| panic!("{name}: {e}")).to_vec().unwrap()
}

/// An int32 golden tensor (stored as I32) as u32 values.
fn ids(g: &Weights, name: &str) -> (Vec<u32>, Vec<usize>) {
    let t = g.get_any(name, DType::U32, &Device::cpu()).unwrap_or_else(|e| panic!("{name}: {e}"));
    (t.to_vec().unwrap(), t.shape().to_vec())
}

/// The model in `dir`: its two `.pth` files, told apart by their keys.
fn load(dir: &str, device: &Device) -> Var {
    let files: Vec<PathBuf> = std::fs::read_dir(Path::new(GOLDEN).join(dir)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "pth")).collect();
    let (mut t, mut v) = (None, None);
    for f in files {
        let w = Weights::open_torch(&f).unwrap();
        match part_of(&w) {
            Some(Part::Transformer) => t = Some(w),
            Some(Part::Vae) => v = Some(w),
            None => panic!("{}: neither part of VAR", f.display()),
        }
    }
    let (t, v) = (t.expect("transformer file"), v.expect("VQVAE file"));
    let cfg = ModelConfig::infer(&t, &v).unwrap();
    Var::load(&t, &v, &cfg, DType::F32, device).unwrap()
}

#[test]
fn the_configuration_is_read_off_the_published_files() {
    let m = load("model", &Device::cpu());
    let c = &m.cfg;
    assert_eq!((c.var.depth, c.var.width, c.var.heads, c.var.num_classes, c.var.vocab_size, c.var.code_dim), (2, 64, 2, 1000, 512, 32));
    assert_eq!(c.var.patch_nums, vec![1, 2, 3, 4, 5, 6, 8, 10, 13, 16]);
    assert!(!c.var.shared_adaln && c.var.attn_l2_norm);
    assert_eq!((c.vae.ch, c.vae.ch_mult.len(), c.image_size), (32, 5, 256));
    assert!(load("model-shared", &Device::cpu()).cfg.var.shared_adaln);
}

#[test]
fn vae_encode_gives_the_official_indices() {
    let g = golden();
    let png = image::open(Path::new(GOLDEN).join("test_image.png")).unwrap().to_rgb8();
    let (w, h) = png.dimensions();
    for device in devices() {
        let m = load("model", &device);
        // ToTensor (x/255), then x·2 − 1, in f32.
        let mut v = vec![0f64; 3 * (w * h) as usize];
        for (i, p) in png.pixels().enumerate() {
            for ch in 0..3 {
                v[ch * (w * h) as usize + i] = ((p.0[ch] as f32 / 255.0) * 2.0 - 1.0) as f64;
            }
        }
        let image = Tensor::from_f64(&v, DType::F32, &[1, 3, h as usize, w as usize], &device).unwrap();
        let got = m.vae.encode(&image, &m.cfg.var.patch_nums).unwrap();
        for (k, t) in got.iter().enumerate() {
            let (want, shape) = ids(&g, &format!("encode_idx_{k}"));
            assert_eq!(t.shape(), shape.as_slice());
            let got: Vec<u32> = t.to_vec().unwrap();
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{}: scale {k}: {differ} of {} indices differ from the official encode", device.info().spec(), want.len());
        }
    }
}

#[test]
fn teacher_forced_logits_match_the_official_forward() {
    let g = golden();
    let label = ids(&g, "tf_label").0[0] as usize;
    let want = f32s(&g, "tf_logits");
    for device in devices() {
        let m = load("model", &device);
        let k = m.cfg.var.patch_nums.len();
        let indices: Vec<Tensor> = (0..k)
            .map(|i| {
                let (v, shape) = ids(&g, &format!("encode_idx_{i}"));
                Tensor::from_slice(&v, &shape, &device).unwrap()
            })
            .collect();
        let logits = m.teacher_logits(&[label], &indices).unwrap();
        let got: Vec<f32> = logits.iter().flat_map(|l| l.to_vec::<f32>().unwrap()).collect();
        let err = rel_err(&got, &want);
        println!("{}: teacher-forced logits, max abs error / max |logit| = {err:.2e}", device.info().spec());
        assert!(err <= 1e-4, "{}: teacher-forced logits differ by {err:.2e} (relative) from the official forward", device.info().spec());
    }
}

fn greedy(dir: &str, prefix: &str, cfg: f32) {
    let g = golden();
    for device in devices() {
        let m = load(dir, &device);
        let opts = VarOptions { cfg, top_k: 1, top_p: 0.0, seed: 0 };
        let out = m.generate(&[207, 3], &opts, &mut |_, _| {}).unwrap();
        for (k, t) in out.indices.iter().enumerate() {
            let (want, shape) = ids(&g, &format!("{prefix}_idx_{k}"));
            assert_eq!(t.shape(), shape.as_slice());
            let got: Vec<u32> = t.to_vec().unwrap();
            let differ: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
            assert!(differ.is_empty(), "{} {prefix}: scale {k}: {} of {} greedy indices differ from the official ones (first at {})", device.info().spec(), differ.len(), want.len(), differ[0]);
        }
        let name = format!("{prefix}_image");
        if g.contains(&name) {
            let want = f32s(&g, &name);
            let got: Vec<f32> = out.images.to_vec().unwrap();
            let mae = got.iter().zip(&want).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / want.len() as f64;
            println!("{} {prefix}: image mean abs difference {mae:.2e}", device.info().spec());
            assert!(mae <= 1.0 / 255.0, "{} {prefix}: image differs by {mae} on average", device.info().spec());
        }
    }
}

#[test]
fn greedy_generation_without_guidance_matches_the_official_code() {
    greedy("model", "gen_cfg0", 0.0);
}

#[test]
fn greedy_generation_with_cfg_4_matches_the_official_code() {
    greedy("model", "gen_cfg4", 4.0);
}

#[test]
fn shared_adaln_greedy_generation_matches_the_official_code() {
    greedy("model-shared", "shared_gen_cfg4", 4.0);
}

#[path = "common/cli.rs"]
mod cli_common;

/// The published files in a folder under other names, and nothing else: `generate --class`
/// paints the official greedy image (class 207, cfg 4), `inspect` reads the configuration,
/// and the commands a class model cannot run say so in one line.
#[test]
fn generate_class_runs_from_the_published_files_alone() {
    use cli_common::{nextflow, scratch};
    let dir = scratch("var-model");
    std::fs::copy(Path::new(GOLDEN).join("model/vae_ch32v512z32.pth"), dir.join("tokenizer.bin")).unwrap();
    std::fs::copy(Path::new(GOLDEN).join("model/var_d2.pth"), dir.join("model.pt")).unwrap();
    let d = dir.to_str().unwrap();
    let out = dir.join("dog.png");
    let (code, stdout, stderr) = nextflow(&["generate", "--model", d, "--class", "golden retriever", "--top-k", "1", "--out", out.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((report["class"].as_u64(), report["sampler"]["cfg"].as_f64()), (Some(207), Some(4.0)), "{report}");
    let (got, size) = nextflow::shapeeval::load_png_rgb(&out).unwrap();
    let (want, _) = nextflow::shapeeval::load_png_rgb(Path::new(GOLDEN).join("gen_cfg4_0.png")).unwrap();
    assert_eq!(size, 256);
    let mae = got.iter().zip(&want).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>() / want.len() as f64;
    assert!(mae <= 1.0, "the PNG differs from the official one by {mae} levels on average");

    // `convert` writes safetensors + config.json, which load to the same image.
    let st = dir.join("converted");
    let (code, _, stderr) = nextflow(&["convert", d, "--out", st.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let again = dir.join("again.png");
    let (code, _, stderr) = nextflow(&["generate", "--model", st.to_str().unwrap(), "--class", "207", "--top-k", "1", "--out", again.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(nextflow::shapeeval::load_png_rgb(&again).unwrap().0, got, "the converted model paints another image");
    let (code, _, stderr) = nextflow(&["convert", d, "--out", st.to_str().unwrap()]);
    assert!(code != 0 && stderr.contains("--force"), "{stderr}");

    let (code, stdout, stderr) = nextflow(&["inspect", "--model", d]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("depth 2, width 64, heads 2") && stdout.contains("256x256"), "{stdout}");
    for (args, says) in [
        (vec!["generate", "--model", d, "--prompt", "a dog"], "no text prompts"),
        (vec!["generate", "--model", d, "--class", "golden retreiver"], "closest: \"golden retriever\""),
        (vec!["generate", "--model", d, "--class", "1000"], "out of range"),
        (vec!["generate", "--model", d, "--class", "3", "--temperature", "0.5"], "no temperature"),
        (vec!["understand", "--model", d, "--image", out.to_str().unwrap(), "--prompt", "what is it?"], "cannot answer questions"),
        (vec!["chat", "--model", d, "--prompt", "hi"], "no text to chat in"),
        (vec!["generate", "--class", "3"], "give --prompt"),
    ] {
        let (code, _, stderr) = nextflow(&args);
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains(says) && stderr.lines().count() == 1, "{args:?}: {stderr}");
    }
}
