//! The memory check before any allocation: what a run will need (weights at the compute
//! dtype, the KV cache, the activation peak) against what this process may use, refused
//! with one line that gives both numbers and the dtype that would fit.

use nextflow_model::Config;
use nextflow_runtime::{Backend, DType, Device};

/// Bytes a run needs, by part.
#[derive(Clone, Copy, Debug, Default)]
pub struct Need {
    pub weights: u64,
    pub kv_cache: u64,
    pub activations: u64,
}

impl Need {
    pub fn total(&self) -> u64 {
        self.weights.saturating_add(self.kv_cache).saturating_add(self.activations)
    }
}

/// What one run will hold: `rows` sequences (CFG rows included) of `positions` positions,
/// `images` decoded images, `parameters` weights (elements).
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub parameters: u64,
    pub rows: u64,
    pub positions: u64,
    pub images: u64,
}

fn size_of(dtype: DType) -> u64 {
    match dtype {
        DType::F32 => 4,
        _ => 2,
    }
}

/// An estimate on the high side: weights at `dtype`; K and V for every layer, row and
/// position; and the largest live activations (a prefill or last-scale block of hidden,
/// MLP and logits rows in f32, one head of attention scores, and the decoder's
/// full-resolution feature maps). Editing's context image is counted by the caller in
/// `positions`.
pub fn need(config: &Config, run: Run, dtype: DType) -> Need {
    let b = &config.backbone;
    let d = size_of(dtype);
    let m = |x: u64, y: u64| x.saturating_mul(y);
    let kv = m(m(m(2, b.num_hidden_layers as u64), m(b.num_key_value_heads as u64, b.head_dim() as u64)), m(m(run.rows, run.positions), d));
    // (rows of the largest forward block, rows that get logits, logit width)
    let (block, logit_rows, width) = match &config.nextflow {
        Some(p) => {
            let [h, w] = p.tokenizer.scales.last().copied().unwrap_or([1, 1]);
            let cells = (h * w).max(1) as u64;
            (cells.max(64), cells, p.vocabulary.codebook_size as u64)
        }
        None => (run.positions.min(4096), 1, config.vocab_size as u64),
    };
    // At the MLP: the block's input and output rows, gate and up; and the logits.
    let per_row = 2 * b.hidden_size as u64 + 2 * b.intermediate_size as u64;
    let mut act = m(m(run.rows, block), m(per_row, 4));
    act = act.saturating_add(m(m(run.rows, logit_rows), m(width, 4)));
    act = act.saturating_add(m(m(run.rows, block), m(run.positions, 4)));
    if let Some(p) = &config.nextflow {
        let t = &p.tokenizer;
        let px = (t.image_size * t.image_size) as u64;
        let ch = (t.ch * t.ch_mult.first().copied().unwrap_or(1)) as u64;
        // Three full-resolution feature maps live at once in a decoder res block.
        act = act.saturating_add(m(m(run.images, px), m(3 * ch.max(8), 4)));
    }
    Need { weights: m(run.parameters, d), kv_cache: kv, activations: act }
}

/// Bytes this process may still allocate on the host: the least of the kernel's
/// MemAvailable, the cgroup's memory.max headroom and the address-space limit (`ulimit -v`)
/// headroom; None where none of them can be read.
pub fn host_available() -> Option<u64> {
    let mut known: Vec<u64> = Vec::new();
    let kb = |text: &str, key: &str| -> Option<u64> {
        text.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse::<u64>().ok().map(|k| k * 1024)
    };
    if let Ok(text) = std::fs::read_to_string("/proc/meminfo") {
        known.extend(kb(&text, "MemAvailable:"));
    }
    let read_u64 = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let (Some(max), Some(cur)) = (read_u64("/sys/fs/cgroup/memory.max"), read_u64("/sys/fs/cgroup/memory.current")) {
        known.push(max.saturating_sub(cur));
    }
    #[cfg(unix)]
    {
        // SAFETY: getrlimit writes one plain struct.
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0 && lim.rlim_cur != libc::RLIM_INFINITY {
            let used = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| kb(&s, "VmSize:")).unwrap_or(0);
            // Threads and the GPU driver reserve address space they never touch: keep a margin.
            known.push((lim.rlim_cur as u64).saturating_sub(used).saturating_mul(3) / 4);
        }
    }
    known.into_iter().min()
}

/// Memory the device's buffers may use: the host's for the CPU and for a GPU API implemented
/// on the CPU (lavapipe keeps its buffers in host memory), the adapter's for a GPU (when it
/// reports it).
pub fn device_available(device: &Device) -> Option<u64> {
    match (device.backend(), device.info().kind) {
        (Backend::Cpu, _) | (_, nextflow_runtime::DeviceKind::SoftwareRasterizer) => host_available(),
        _ => device.info().memory_bytes,
    }
}

pub fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", (b / (1u64 << 20) as f64).max(1.0))
    }
}

/// Refuses a run that will not fit (unless `force`), in one line naming both numbers and
/// the smaller dtype that would fit.
pub fn check(config: &Config, run: Run, dtype: DType, device: &Device, force: bool) -> Result<(), String> {
    let Some(available) = device_available(device) else { return Ok(()) };
    let n = need(config, run, dtype);
    if force || n.total() <= available {
        return Ok(());
    }
    let alternative = [DType::BF16, DType::F16]
        .into_iter()
        .filter(|&t| t != dtype && size_of(t) < size_of(dtype) && device.supports(t))
        .map(|t| (t, need(config, run, t).total()))
        .find(|&(_, bytes)| bytes <= available);
    let hint = match alternative {
        Some((t, bytes)) => format!("--dtype {} would need {}", format!("{t:?}").to_lowercase(), gib(bytes)),
        None => "no smaller dtype fits either; fewer images per batch (--max-batch) or a smaller model would".into(),
    };
    Err(format!(
        "this run needs about {} ({:?}: weights {}, KV cache {}, activations {}) but {device} has {} available; {hint}; --force runs anyway",
        gib(n.total()),
        dtype,
        gib(n.weights),
        gib(n.kv_cache),
        gib(n.activations),
        gib(available)
    ))
}

/// Images per batch when `--max-batch` is not given: what fits in half the memory left
/// after the weights, at most 32 and at least 1.
pub fn default_batch(config: &Config, parameters: u64, positions: u64, dtype: DType, device: &Device) -> usize {
    let Some(available) = device_available(device) else { return 8 };
    let weights = need(config, Run { parameters, rows: 0, positions, images: 0 }, dtype).total();
    let one = need(config, Run { parameters: 0, rows: 2, positions, images: 1 }, dtype).total().max(1);
    (available.saturating_sub(weights) / 2 / one).clamp(1, 32) as usize
}
