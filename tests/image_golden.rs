//! Interpolation against values produced by PyTorch's `F.interpolate` itself.
//!
//! Golden file: `tests/golden/interpolate.json`, made by
//! `python tools/reference/make_golden_interpolate.py` (bicubic 3×3→4×4, 7×5→13×11,
//! 48→64, the 1:2 and 2:1 grids, area down and up, nearest ×2 and to any size).
//! Checked on every device, NCHW and NHWC, f32 (NMSE <= 1e-10: the same formulas in the same
//! order) and f16 (relative RMS <= 1e-2).

use nextflow_ops::{interpolate, interpolate_nhwc, Resize};
use nextflow_runtime::{discover, DType, Device, Tensor};

#[test]
fn interpolation_matches_pytorch_on_every_device() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/interpolate.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 13);
    let floats = |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
    let dims = |v: &serde_json::Value| -> Vec<usize> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect() };
    for info in &discover().devices {
        let device = Device::open_info(info).unwrap();
        for dtype in [DType::F32, DType::F16] {
            let mut worst: f64 = 0.0;
            for case in cases {
                let (shape, out) = (dims(&case["in_shape"]), dims(&case["out_hw"]));
                let mode = match case["mode"].as_str().unwrap() {
                    "bicubic" => Resize::Bicubic,
                    "area" => Resize::Area,
                    _ => Resize::Nearest,
                };
                let (input, want) = (floats(&case["input"]), floats(&case["output"]));
                let x = Tensor::from_f64(&input, dtype, &shape, &device).unwrap();
                let nchw = interpolate(&x, out[0], out[1], mode).unwrap().to_f64_vec().unwrap();
                let nhwc_in = nextflow_ops::contiguous(&x.permute(&[0, 2, 3, 1]).unwrap()).unwrap();
                let nhwc = interpolate_nhwc(&nhwc_in, out[0], out[1], mode).unwrap().permute(&[0, 3, 1, 2]).unwrap().to_f64_vec().unwrap();
                // f16 inputs are rounded: compare with PyTorch's answer for the rounded input
                // through the tolerance, not bit for bit.
                let limit = if dtype == DType::F32 { 1e-10 } else { 1e-4 };
                for (layout, got) in [("NCHW", &nchw), ("NHWC", &nhwc)] {
                    let err: f64 = got.iter().zip(&want).map(|(a, b)| (a - b) * (a - b)).sum();
                    let nmse = err / want.iter().map(|b| b * b).sum::<f64>();
                    worst = worst.max(nmse);
                    assert!(nmse <= limit, "{} {dtype} {layout} {}: NMSE {nmse:e}", info.spec(), case["name"]);
                }
            }
            println!("interpolate golden {} {dtype}: {} cases x NCHW/NHWC, worst NMSE {worst:.2e}", info.spec(), cases.len());
        }
    }
}
