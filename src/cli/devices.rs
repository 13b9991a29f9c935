//! `nextflow devices`.

use nextflow_runtime::{DeviceInfo, Discovery};

fn memory(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        None => "-".into(),
    }
}

/// A binding limit: MiB below 1 GiB, else GiB.
fn binding(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{} MiB", b >> 20),
        None => "-".into(),
    }
}

fn yes(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}

/// What `nextflow devices --json` prints.
pub fn report(discovery: &Discovery) -> super::report::DevicesReport {
    let auto = discovery.auto();
    super::report::DevicesReport {
        nextflow: env!("CARGO_PKG_VERSION"),
        devices: discovery
            .devices
            .iter()
            .map(|d| super::report::DeviceEntry {
                spec: d.spec(),
                backend: d.backend.name().into(),
                kind: d.kind.name().into(),
                name: d.name.clone(),
                memory_bytes: d.memory_bytes,
                max_binding_bytes: d.max_binding_bytes,
                f16: d.f16,
                bf16: d.bf16,
                planes: d.planes,
            })
            .collect(),
        auto: auto.spec(),
        unavailable: discovery.unavailable.iter().map(|u| super::report::Unavailable { backend: u.backend.to_string(), reason: u.reason.clone() }).collect(),
    }
}

/// The table `nextflow devices` prints: one row per device, `*` on the one auto picks,
/// then each backend that could not be used and why. BINDING is the largest buffer a kernel
/// can bind on a wgpu adapter; larger weights load as blocks.
pub fn render(discovery: &Discovery) -> String {
    let auto = discovery.auto();
    let is_auto = |d: &DeviceInfo| d.backend == auto.backend && d.index == auto.index;
    let rows: Vec<[String; 9]> = discovery
        .devices
        .iter()
        .map(|d| {
            [
                format!("{} {}", if is_auto(d) { "*" } else { " " }, d.spec()),
                d.backend.name().into(),
                d.kind.name().into(),
                memory(d.memory_bytes),
                binding(d.max_binding_bytes),
                yes(d.f16).into(),
                yes(d.bf16).into(),
                yes(d.planes).into(),
                d.name.clone(),
            ]
        })
        .collect();
    let header = ["  DEVICE", "BACKEND", "KIND", "MEMORY", "BINDING", "F16", "BF16", "PLANES", "NAME"].map(String::from);
    let mut widths = [0usize; 9];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str("\n* = chosen by --device auto (software rasterizers are never chosen)\n");
    if !discovery.unavailable.is_empty() {
        out.push_str("\nunavailable:\n");
        for u in &discovery.unavailable {
            out.push_str(&format!("  {}: {}\n", u.backend, u.reason));
        }
    }
    out
}
