//! The CLI as a person meets it: the `devices` table, device-selection errors, exit codes.

use nextflow::cli::devices::render;
use nextflow_runtime::{discover, Backend, DeviceInfo, DeviceKind, DeviceSpec, Discovery, Unavailable};
use std::process::Command;

fn nextflow(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nextflow"))
        .args(args)
        .env_remove("NEXTFLOW_DEVICE")
        .output()
        .expect("the binary runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn machine() -> Discovery {
    let gib = 1u64 << 30;
    Discovery {
        devices: vec![
            DeviceInfo::described(Backend::Cpu, 0, "AMD EPYC (2 threads)", DeviceKind::NativeCpu, Some(24 * gib), true, true, false),
            DeviceInfo::described(Backend::Vulkan, 0, "llvmpipe (LLVM 15.0.6, 256 bits)", DeviceKind::SoftwareRasterizer, None, true, false, true)
                .with_max_binding(128 << 20),
        ],
        unavailable: vec![
            Unavailable { backend: Backend::Cuda, reason: "libcuda.so.1 not found".into() },
            Unavailable { backend: Backend::Hip, reason: "libamdhip64.so not found".into() },
        ],
    }
}

#[test]
fn devices_table_marks_the_auto_choice() {
    // lavapipe is listed but auto keeps the native CPU.
    insta::assert_snapshot!("devices_cpu_and_lavapipe", render(&machine()));
    let mut with_gpu = machine();
    with_gpu.devices.push(DeviceInfo::described(Backend::Cuda, 0, "NVIDIA H200", DeviceKind::DiscreteGpu, Some(141 << 30), true, true, true));
    with_gpu.unavailable.remove(0);
    insta::assert_snapshot!("devices_with_cuda", render(&with_gpu));
}

#[test]
fn device_selection_errors_read_well() {
    let d = machine();
    let messages: Vec<String> = ["gpu", "cuda", "cuda:x", "vulkan:2", "cpu:1", "auto:0"]
        .iter()
        .map(|s| match s.parse::<DeviceSpec>().and_then(|spec| d.select(&spec).map(|i| i.spec())) {
            Ok(spec) => format!("{s} -> {spec}"),
            Err(e) => format!("{s} -> error: {e}"),
        })
        .collect();
    insta::assert_snapshot!("device_selection_errors", messages.join("\n"));
    assert_eq!(d.select(&"vulkan".parse().unwrap()).unwrap().spec(), "vulkan:0");
    assert_eq!(d.select(&"auto".parse().unwrap()).unwrap().spec(), "cpu");
}

#[test]
fn devices_command_lists_the_cpu_and_every_adapter() {
    let (code, stdout, stderr) = nextflow(&["devices"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("* cpu") || l.starts_with("  cpu")), "{stdout}");
    for d in &discover().devices {
        assert!(stdout.contains(&d.spec()), "{} missing from:\n{stdout}", d.spec());
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        assert!(stdout.contains("vulkan:0"), "CI must see the lavapipe adapter:\n{stdout}");
    }
}

#[test]
fn a_missing_backend_is_one_line_and_a_nonzero_exit() {
    for backend in [Backend::Cuda, Backend::Hip] {
        if discover().devices.iter().any(|d| d.backend == backend) {
            println!("SKIPPED {backend}: this machine has one");
            continue;
        }
        let (code, stdout, stderr) = nextflow(&["--device", backend.name(), "devices"]);
        assert_ne!(code, 0);
        assert!(stdout.is_empty(), "nothing but the error: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line, got:\n{stderr}");
        assert!(lines[0].starts_with(&format!("error: {backend} is not available: ")), "{stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
    }
    let (code, _, stderr) = nextflow(&["--device", "tpu", "devices"]);
    assert_ne!(code, 0);
    assert!(stderr.starts_with("error: unknown device 'tpu'"), "{stderr}");
}

#[test]
fn nextflow_device_env_var_selects_like_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_nextflow"))
        .arg("devices")
        .env("NEXTFLOW_DEVICE", "nonsense")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device 'nonsense'"));
}
