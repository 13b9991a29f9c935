//! The op-coverage test: walks the whole op table on every available device and compares
//! each op with the f64 CPU reference (`nextflow_ops::reference`), on random inputs with
//! odd sizes, contiguous and strided, f32 and f16, outputs poisoned before every run.
//!
//! Tolerances (ARCHITECTURE.md, the op contract): f32 NMSE <= 1e-7; f16 normalized RMS
//! error <= 1e-2 against the f32/f64 reference; integer outputs exact.
//! Outside CI a missing Vulkan adapter is reported as skipped; with CI=true it fails.

#[path = "common/coverage.rs"]
mod coverage;

use coverage::{run_device, run_image_ops, run_sampling_ops, run_transformer_ops, Checker};
use nextflow_ops::matmul::cmma_available;
use nextflow_ops::OP_TABLE;
use nextflow_runtime::{discover, set_poison_outputs, Backend, DType, Device};
use std::collections::BTreeSet;

#[test]
fn op_coverage_every_device() {
    set_poison_outputs(true);
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let found = discover();
    let has_vulkan = found.devices.iter().any(|d| d.backend == Backend::Vulkan);
    if !has_vulkan {
        let why = found.unavailable.iter().find(|u| u.backend == Backend::Vulkan).map(|u| u.reason.as_str()).unwrap_or("none found");
        assert!(!in_ci, "CI=true but no Vulkan adapter: {why}");
        println!("SKIPPED vulkan: {why}");
    }
    let mut failures = Vec::new();
    for info in &found.devices {
        let device = Device::open_info(info).unwrap();
        for dtype in [DType::F32, DType::F16] {
            let mut ck = Checker { device: &device, covered: BTreeSet::new(), failures: Vec::new(), checks: 0 };
            let fallback: Vec<&str> =
                DType::ALL.iter().filter(|&&t| !device.supports(t)).map(|t| t.name()).collect();
            if !device.is_cpu() && dtype == DType::F16 && !cmma_available(&device) {
                println!("matmul cmma: SKIPPED on {} (the device reports no f16 16x16x16 MMA)", info.spec());
            }
            let path = match (device.is_cpu(), device.supports(dtype)) {
                (true, _) => "the native CPU backend".to_string(),
                (false, false) => "CPU fallback: this device has no kernels for this dtype".to_string(),
                (false, true) if fallback.is_empty() => "kernels".to_string(),
                (false, true) => format!("kernels (casts to {} via CPU fallback)", fallback.join(", ")),
            };
            let started = std::time::Instant::now();
            run_device(&device, dtype, &mut ck);
            run_transformer_ops(&device, dtype, &mut ck);
            run_image_ops(&device, dtype, &mut ck);
            run_sampling_ops(&device, dtype, &mut ck);
            let missing: Vec<&str> = OP_TABLE.iter().map(|e| e.name).filter(|n| !ck.covered.contains(n)).collect();
            assert!(missing.is_empty(), "ops in the table without a coverage case: {missing:?}");
            println!(
                "op-coverage {:<9} {dtype}: {} ops, {} checks, {} failures, via {path} ({:.1}s) on {}",
                info.spec(),
                ck.covered.len(),
                ck.checks,
                ck.failures.len(),
                started.elapsed().as_secs_f64(),
                info.name
            );
            failures.extend(ck.failures);
        }
    }
    assert!(failures.is_empty(), "{} op-coverage failures:\n{}", failures.len(), failures.join("\n"));
}
