//! Shared by the model parity tests.
#![allow(dead_code)]

use nextflow_runtime::Device;

/// The CPU and, where a driver exists, Vulkan. Outside CI a missing Vulkan adapter is
/// reported as skipped; with CI=true it fails.
pub fn devices() -> Vec<Device> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let mut out = vec![Device::cpu()];
    match Device::open("vulkan") {
        Ok(d) => out.push(d),
        Err(why) => {
            assert!(!in_ci, "CI=true but no Vulkan adapter: {why}");
            println!("SKIPPED vulkan: {why}");
        }
    }
    out
}

/// max |got − want| / max |want|.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
    got.iter().zip(want).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs())) / scale.max(1e-30)
}
