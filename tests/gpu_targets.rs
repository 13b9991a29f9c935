//! Proof of every GPU target without the GPU: the op-coverage suite runs on the recording
//! device (a wgpu adapter, here lavapipe, whose launches are also recorded: see
//! `nextflow_runtime::record`), its results checked against the CPU reference as on any
//! device; then every distinct kernel instance it launched, in every dtype, is compiled for
//! every target:
//!
//! - WGSL, what wgpu runs: parsed and validated by naga, then translated by naga to MSL
//!   (Metal), HLSL (DX12) and SPIR-V (Vulkan), each output validated where a validator exists
//!   (SPIR-V read back by naga, and by `spirv-val` when it is on PATH);
//! - CUDA: cubecl's CUDA C++ compiled by NVRTC for sm_80 and sm_90a, the PTX assembled by
//!   `ptxas` (registers and shared memory per kernel). NVRTC and ptxas come from the
//!   `nvidia-cuda-nvrtc` and `nvidia-cuda-nvcc` PyPI wheels (`.ci/run` installs them into its
//!   venv and names them with NEXTFLOW_NVRTC / NEXTFLOW_PTXAS);
//! - HIP: cubecl's HIP C++ compiled by hiprtc for gfx90a (CDNA2) and gfx1030 (RDNA2): Debian's
//!   ROCm 5.2 `libamdhip64-5` with its comgr, no GPU needed (`.ci/run` installs it).
//!
//! It prints one row per kernel instance (a column per target; registers and shared memory
//! under ptxas) and how many instances compiled per target, and fails on any error.
//! Outside CI a missing Vulkan adapter or CUDA tool is reported as skipped; with CI=true it fails.

#[path = "common/coverage.rs"]
mod coverage;
#[path = "common/targets.rs"]
mod targets;

use coverage::{run_device, run_image_ops, run_sampling_ops, run_transformer_ops, Checker};
use nextflow_runtime::record::{recorded, RecordedKernel};
use nextflow_runtime::{discover, set_poison_outputs, Backend, DType, Device};
use std::collections::{BTreeMap, BTreeSet};
use targets::TargetResult;

const CUDA_ARCHS: [&str; 2] = ["sm_80", "sm_90a"];
/// What ROCm 5.2's comgr knows: MI200 (CDNA2) and RDNA2; it predates gfx942 and gfx11.
const HIP_ARCHS: [&str; 2] = ["gfx90a", "gfx1030"];

/// A short, stable label for a kernel instance: the kernel's function name and its generics.
fn label(k: &RecordedKernel) -> String {
    // `nextflow_shaders::elementwise::binary::Binary<f32, …>` -> `elementwise::binary<f32, …>`
    let (path, generics) = match k.name.find('<') {
        Some(i) => (&k.name[..i], &k.name[i..]),
        None => (k.name, ""),
    };
    let parts: Vec<&str> = path.split("::").collect();
    let n = parts.len();
    let short = if n >= 3 { format!("{}::{}", parts[n - 3], parts[n - 2]) } else { path.to_string() };
    let generics = generics
        .replace(", nextflow_runtime::record::RecordRuntime", "")
        .replace("cubecl_core::frontend::element::", "")
        .replace("half::binary16::", "");
    format!("{short}{generics}")
}

#[test]
fn every_kernel_compiles_for_every_target() {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let found = discover();
    let Some(info) = found.devices.iter().find(|d| d.backend == Backend::Vulkan) else {
        let why = found.unavailable.iter().find(|u| u.backend == Backend::Vulkan).map(|u| u.reason.as_str()).unwrap_or("none found");
        assert!(!in_ci, "CI=true but no Vulkan adapter: {why}");
        println!("SKIPPED gpu targets: no Vulkan adapter to record on ({why})");
        return;
    };
    let device = Device::open_recording(info).unwrap();
    // cubecl opens wgpu devices with the adapter's own limits (wgpu's default binding limit is
    // 128 MiB, which lavapipe also reports: this tells them apart on real GPUs only).
    assert_eq!(Some(device.max_buffer_bytes()), info.max_binding_bytes, "the device's binding limit is not the adapter's");
    set_poison_outputs(true);
    let mut failures = Vec::new();
    for dtype in [DType::F32, DType::F16] {
        let mut ck = Checker { device: &device, covered: BTreeSet::new(), failures: Vec::new(), checks: 0 };
        run_device(&device, dtype, &mut ck);
        run_transformer_ops(&device, dtype, &mut ck);
        run_image_ops(&device, dtype, &mut ck);
        run_sampling_ops(&device, dtype, &mut ck);
        println!("recorded op-coverage {dtype}: {} ops, {} checks, {} failures", ck.covered.len(), ck.checks, ck.failures.len());
        failures.extend(ck.failures);
    }
    assert!(failures.is_empty(), "the recording device computed wrong results:\n{}", failures.join("\n"));

    let kernels = recorded();
    assert!(kernels.len() >= 20, "only {} kernel instances were recorded", kernels.len());

    let cuda = match (targets::Nvrtc::find(), targets::find_ptxas()) {
        (Ok(n), Ok(p)) => Some((n, p)),
        (n, p) => {
            let why = [n.err(), p.err()].into_iter().flatten().collect::<Vec<_>>().join("; ");
            assert!(!in_ci, "CI=true but the CUDA toolchain is missing: {why}");
            println!("SKIPPED CUDA targets: {why} (pip install nvidia-cuda-nvrtc nvidia-cuda-nvcc)");
            None
        }
    };
    if let Some((nvrtc, _)) = &cuda {
        let (major, minor) = nvrtc.version();
        println!("NVRTC {major}.{minor}");
    }
    let hiprtc = match targets::Hiprtc::find() {
        Ok(h) => {
            println!("hiprtc from {}, {}, headers {}", h.path.display(), h.comgr, h.headers);
            Some(h)
        }
        Err(why) => {
            assert!(!in_ci, "CI=true but hiprtc is missing: {why}");
            println!("SKIPPED hiprtc: {why} (apt-get install libamdhip64-5 libhiprtc-builtins5 libamd-comgr2 libamdhip64-dev)");
            None
        }
    };

    // Compile on every core: NVRTC takes a fraction of a second per kernel and architecture.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut rows: Vec<(usize, Vec<TargetResult>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(k) = kernels.get(i) else { break };
                        if let Some(dir) = std::env::var_os("NEXTFLOW_TARGETS_DUMP") {
                            // The sources too (best effort), named by the row number of the table.
                            let dir = std::path::PathBuf::from(dir);
                            let _ = std::fs::create_dir_all(&dir);
                            for (ext, src) in [("wgsl", &k.wgsl), ("cu", &k.cuda), ("hip", &k.hip)] {
                                if let Ok(src) = src {
                                    let _ = std::fs::write(dir.join(format!("k{i:03}.{ext}")), src);
                                }
                            }
                        }
                        let mut results = match &k.wgsl {
                            Ok(src) => targets::wgsl_targets(&format!("k{i:03}"), src),
                            Err(e) => vec![TargetResult { target: "wgsl", ok: false, detail: e.clone(), registers: None, shared_bytes: None }],
                        };
                        match &k.cuda {
                            Ok(src) => {
                                if let Some((nvrtc, ptxas)) = &cuda {
                                    results.extend(targets::cuda_targets(nvrtc, Some(ptxas), &format!("kernel{i}"), src, &CUDA_ARCHS));
                                }
                            }
                            Err(e) => results.push(TargetResult { target: "cuda c++", ok: false, detail: e.clone(), registers: None, shared_bytes: None }),
                        }
                        match (&k.hip, &hiprtc) {
                            (Ok(src), Some(h)) => results.extend(targets::hip_targets(h, &format!("kernel{i}"), src, &HIP_ARCHS)),
                            (Ok(src), None) => results.push(TargetResult { target: "hip c++", ok: true, detail: format!("{} B generated", src.len()), registers: None, shared_bytes: None }),
                            (Err(e), _) => results.push(TargetResult { target: "hip c++", ok: false, detail: e.clone(), registers: None, shared_bytes: None }),
                        }
                        done.push((i, results));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a compile worker panicked")).collect()
    });
    rows.sort_by_key(|(i, _)| *i);

    // One row per kernel instance: ok marks per target; ptxas columns give registers and shared
    // memory (static from ptxas + the dynamic shared memory cubecl-cuda launches it with).
    let columns: Vec<&'static str> = rows.first().map(|(_, r)| r.iter().map(|t| t.target).collect()).unwrap_or_default();
    print!("\n{:<4} {:<52}", "#", "kernel");
    for c in &columns {
        print!(" {c:>13}");
    }
    println!();
    let mut summary: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, results) in &rows {
        let k = &kernels[*i];
        let name = label(k);
        print!("{i:<4} {:<52}", if name.len() > 52 { &name[..52] } else { &name });
        for r in results {
            let entry = summary.entry(r.target).or_default();
            entry.0 += 1;
            if r.ok {
                entry.1 += 1;
            } else {
                errors.push(format!("{name} [{}] {}: {}", k.id, r.target, r.detail));
            }
            let cell = match (r.ok, r.registers) {
                (false, _) => "FAIL".to_string(),
                (true, Some(regs)) => format!("r{regs} s{}", r.shared_bytes.unwrap_or(0) as usize + k.cuda_dynamic_shared),
                (true, None) => "ok".to_string(),
            };
            print!(" {cell:>13}");
        }
        println!();
    }
    println!("\nGPU targets: {} kernel instances recorded on {} ({} and {} op suites)", kernels.len(), info.name, DType::F32, DType::F16);
    println!("{:<14} {:>9} {:>9}", "target", "compiled", "of");
    for target in &columns {
        let (total, ok) = summary[target];
        println!("{target:<14} {ok:>9} {total:>9}");
    }
    assert!(errors.is_empty(), "{} compile errors:\n{}", errors.len(), errors.join("\n\n"));
}
