//! The sampler's CPU path against its numpy port (tools/reference/philox_sampler.py): the same
//! Philox uniforms and, case by case, the same ids from the same logits, settings, seed and
//! scale. Golden files: `tests/golden/sampler/{cases.json, logits.f32}`, made by
//! `python tools/reference/make_golden.py sampler` (536 rows: top-k, top-p, temperature, greedy,
//! CFG with uncond, −inf masks, ties, id ranges, vocab 97 to 2100). The other devices are held to
//! the CPU path by `sampling.rs`.

use nextflow_ops::sampling::{philox4x32_10, sample, uniform, SamplerConfig};
use nextflow_runtime::{Device, Tensor};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/sampler");

fn int(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("`{key}` is not an unsigned integer: {v}"))
}

fn float(v: &serde_json::Value, key: &str) -> f32 {
    v[key].as_f64().unwrap_or_else(|| panic!("`{key}` is not a number: {v}")) as f32
}

#[test]
fn cpu_sampler_draws_the_ids_of_the_python_port() {
    let text = std::fs::read_to_string(format!("{DIR}/cases.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let bytes = std::fs::read(format!("{DIR}/logits.f32")).unwrap();
    let logits: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();

    for u in doc["uniforms"].as_array().unwrap() {
        let (seed, scale, position) = (int(u, "seed"), int(u, "scale") as u32, int(u, "position") as u32);
        let bits = philox4x32_10([position, scale, 0, 0], [seed as u32, (seed >> 32) as u32])[0];
        assert_eq!(bits as u64, int(u, "bits"), "philox bits of seed {seed} scale {scale} position {position}");
        assert_eq!(uniform(seed, scale, position), float(u, "uniform"), "uniform({seed}, {scale}, {position})");
    }

    let cpu = Device::cpu();
    let cases = doc["cases"].as_array().unwrap();
    let mut rows_checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (rows, vocab) = (int(case, "rows") as usize, int(case, "vocab") as usize);
        let tensor = |key: &str| {
            case.get(key).map(|offset| {
                let at = offset.as_u64().unwrap() as usize;
                Tensor::from_slice(&logits[at..at + rows * vocab], &[rows, vocab], &cpu).unwrap()
            })
        };
        let cond = tensor("cond_offset").expect("every case has cond logits");
        let uncond = tensor("uncond_offset");
        let id_range = case["id_range"].as_array().map(|r| (r[0].as_u64().unwrap() as usize, r[1].as_u64().unwrap() as usize));
        let cfg = SamplerConfig {
            cfg_scale: float(case, "cfg_scale"),
            temperature: float(case, "temperature"),
            top_k: int(case, "top_k") as usize,
            top_p: float(case, "top_p"),
            id_range,
        };
        let (seed, scale) = (int(case, "seed"), int(case, "scale") as u32);
        let got = sample(&cond, uncond.as_ref(), &cfg, seed, scale).unwrap().to_vec::<u32>().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(got, want, "{name} ({cfg:?}, seed {seed}, scale {scale}): {differ} of {rows} rows differ");
        rows_checked += rows;
    }
    println!("sampler golden: {} cases, {rows_checked} rows identical to tools/reference/philox_sampler.py", cases.len());
}
