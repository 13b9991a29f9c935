//! `GET /metrics`: Prometheus text exposition of what the server did.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const LATENCY_BUCKETS: [f64; 12] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];
const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], x: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (c, b) in self.counts.iter_mut().zip(bounds) {
            if x <= *b {
                *c += 1;
            }
        }
        self.sum += x;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in bounds.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}", self.counts.get(i).copied().unwrap_or(0));
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct State {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: BTreeMap<&'static str, Histogram>,
    batch: Histogram,
    images: u64,
    image_seconds: f64,
    tokens: u64,
    token_seconds: f64,
    cancelled: u64,
    panics: u64,
    rejected_full: u64,
    /// Seconds per image of the last batches (exponentially weighted), for Retry-After.
    seconds_per_image: f64,
}

/// Counters shared by the handlers and the model thread.
pub struct Metrics {
    state: Mutex<State>,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { state: Mutex::new(State::default()), started: Instant::now() }
    }
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic while the lock is held cannot leave the counters inconsistent in a way
        // that matters; keep counting.
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    pub fn request(&self, endpoint: &'static str, status: u16, took: Duration) {
        self.with(|s| {
            *s.requests.entry((endpoint, status)).or_default() += 1;
            s.latency.entry(endpoint).or_default().observe(&LATENCY_BUCKETS, took.as_secs_f64());
            if status == 429 {
                s.rejected_full += 1;
            }
        });
    }

    /// One forward batch of `images` images that took `took`.
    pub fn batch(&self, images: usize, took: Duration) {
        self.with(|s| {
            s.batch.observe(&BATCH_BUCKETS, images as f64);
            s.images += images as u64;
            s.image_seconds += took.as_secs_f64();
            let per = took.as_secs_f64() / images.max(1) as f64;
            s.seconds_per_image = if s.seconds_per_image == 0.0 { per } else { 0.8 * s.seconds_per_image + 0.2 * per };
        });
    }

    pub fn tokens(&self, n: usize, took: Duration) {
        self.with(|s| {
            s.tokens += n as u64;
            s.token_seconds += took.as_secs_f64();
        });
    }

    pub fn cancelled(&self) {
        self.with(|s| s.cancelled += 1);
    }

    pub fn panicked(&self) {
        self.with(|s| s.panics += 1);
    }

    /// Seconds until `queued` waiting images of batches of `max_batch` are likely done.
    pub fn retry_after(&self, queued: usize, max_batch: usize) -> u64 {
        let per = self.with(|s| s.seconds_per_image);
        let waves = queued.div_ceil(max_batch.max(1)) as f64 + 1.0;
        ((per * max_batch as f64 * waves).ceil() as u64).clamp(1, 600)
    }

    pub fn render(&self, queue_depth: usize, running: usize) -> String {
        let mut out = String::new();
        let up = self.started.elapsed().as_secs_f64();
        self.with(|s| {
            let _ = writeln!(out, "# HELP nextflow_requests_total HTTP requests by endpoint and status.\n# TYPE nextflow_requests_total counter");
            for ((e, code), n) in &s.requests {
                let _ = writeln!(out, "nextflow_requests_total{{endpoint=\"{e}\",status=\"{code}\"}} {n}");
            }
            let _ = writeln!(out, "# HELP nextflow_request_duration_seconds Time from request to response headers.\n# TYPE nextflow_request_duration_seconds histogram");
            for (e, h) in &s.latency {
                h.render(&mut out, "nextflow_request_duration_seconds", &format!("endpoint=\"{e}\""), &LATENCY_BUCKETS);
            }
            let _ = writeln!(out, "# HELP nextflow_queue_depth Requests waiting for the model.\n# TYPE nextflow_queue_depth gauge\nnextflow_queue_depth {queue_depth}");
            let _ = writeln!(out, "# HELP nextflow_running Requests the model is working on.\n# TYPE nextflow_running gauge\nnextflow_running {running}");
            let _ = writeln!(out, "# HELP nextflow_batch_images Images per forward batch.\n# TYPE nextflow_batch_images histogram");
            s.batch.render(&mut out, "nextflow_batch_images", "", &BATCH_BUCKETS);
            let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
            let _ = writeln!(out, "# HELP nextflow_images_total Images generated.\n# TYPE nextflow_images_total counter\nnextflow_images_total {}", s.images);
            let _ = writeln!(out, "# HELP nextflow_images_per_second Images per second of model time.\n# TYPE nextflow_images_per_second gauge\nnextflow_images_per_second {:.4}", rate(s.images, s.image_seconds));
            let _ = writeln!(out, "# HELP nextflow_tokens_total Text tokens generated.\n# TYPE nextflow_tokens_total counter\nnextflow_tokens_total {}", s.tokens);
            let _ = writeln!(out, "# HELP nextflow_tokens_per_second Tokens per second of model time.\n# TYPE nextflow_tokens_per_second gauge\nnextflow_tokens_per_second {:.4}", rate(s.tokens, s.token_seconds));
            let _ = writeln!(out, "# HELP nextflow_cancelled_total Requests dropped because the client left or the deadline passed.\n# TYPE nextflow_cancelled_total counter\nnextflow_cancelled_total {}", s.cancelled);
            let _ = writeln!(out, "# HELP nextflow_model_panics_total Requests that failed with a panic inside the model (each a 500; the server goes on).\n# TYPE nextflow_model_panics_total counter\nnextflow_model_panics_total {}", s.panics);
            let _ = writeln!(out, "# HELP nextflow_rejected_queue_full_total Requests refused with 429 because the queue was full.\n# TYPE nextflow_rejected_queue_full_total counter\nnextflow_rejected_queue_full_total {}", s.rejected_full);
            let _ = writeln!(out, "# HELP nextflow_uptime_seconds Seconds since the server started.\n# TYPE nextflow_uptime_seconds gauge\nnextflow_uptime_seconds {up:.1}");
        });
        out
    }
}
