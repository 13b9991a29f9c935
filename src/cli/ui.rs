//! What the CLI tells the person watching, on stderr: progress bars and spinners (indicatif)
//! on a terminal, one plain line per stage when stderr is a file or a pipe (logs stay
//! readable: no carriage returns, no redraws), nothing but errors with `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no progress, notes or timings (errors and stdout results stay).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

fn terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A line on stderr (a note, a summary) unless `--quiet`.
pub fn note(line: std::fmt::Arguments) {
    if !quiet() {
        eprintln!("{line}");
    }
}

/// Bytes as KiB / MiB / GiB.
pub fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", n / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", n / 1024.0)
    }
}

/// A stage of unknown length (loading weights): a spinner with the elapsed time on a
/// terminal, else one line when it starts; [`Spinner::done`] prints the outcome line.
pub struct Spinner {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Spinner {
    pub fn start(what: String) -> Spinner {
        let bar = if quiet() {
            None
        } else if terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"));
            bar.set_message(what);
            bar.enable_steady_tick(Duration::from_millis(100));
            Some(bar)
        } else {
            eprintln!("{what}");
            None
        };
        Spinner { bar, started: Instant::now() }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the stage with its summary line.
    pub fn done(self, line: String) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if !quiet() {
            eprintln!("{line}");
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Steps of known count (scales of an image, tokens of an answer): a bar with rate and ETA
/// on a terminal, else one line per step.
pub struct Steps {
    bar: Option<ProgressBar>,
    label: String,
    plain: bool,
}

impl Steps {
    pub fn new(label: &str, total: usize, unit: &str) -> Steps {
        let (bar, plain) = if quiet() {
            (None, false)
        } else if terminal() {
            let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{elapsed}} elapsed, ETA {{eta}}");
            bar.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
            bar.set_message(label.to_string());
            (Some(bar), false)
        } else {
            (None, true)
        };
        Steps { bar, label: label.into(), plain }
    }

    /// Step `k` (from 0) of `total` finished; `what` describes it (e.g. "8x8, 3.1 ms").
    pub fn step(&self, k: usize, total: usize, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(k as u64 + 1);
            if k + 1 >= total {
                bar.finish_and_clear();
            }
        } else if self.plain {
            eprintln!("{} {}/{total} {what}", self.label, k + 1);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A counter line that may repeat (evaluation progress): redrawn on a terminal by a bar, one
/// line each otherwise.
pub fn status(line: std::fmt::Arguments) {
    if quiet() {
        return;
    }
    if terminal() {
        eprint!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}

/// Ends a run of [`status`] lines.
pub fn end_status() {
    if !quiet() && terminal() {
        eprintln!();
    }
}
