//! Per-thread counters of what realized plans did: kernel launches, bytes read and written
//! in device memory, FLOPs, plans compiled and replayed. Each plan step adds its static
//! cost (see `plan`), so counting costs one addition per launch. The CPU backend counts
//! one launch per op pass.

use std::cell::Cell;

/// The static cost of one plan step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub launches: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub flops: u64,
}

/// A snapshot of this thread's counters; subtract two to measure a region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub launches: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub flops: u64,
    /// Plans compiled (plan-cache misses).
    pub compiles: u64,
    /// Plans fetched from the cache.
    pub plan_hits: u64,
    /// Plans run.
    pub realizes: u64,
    /// The largest memory plan run so far: peak bytes of its intermediates alive at once
    /// (a high-water mark, so a difference of two snapshots keeps the later one's).
    pub peak_plan_bytes: u64,
    /// With [`measure_memory`] on: the largest peak of intermediate buffers actually alive
    /// at once in a plan run (distinct buffers, inputs excluded), and the plan runs whose
    /// measured peak differed from their memory plan's.
    pub measured_peak_plan_bytes: u64,
    pub peak_mismatches: u64,
    /// Buffers plan runs allocated fresh, and those their plans' arenas served again.
    pub buffers_allocated: u64,
    pub buffers_reused: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            launches: self.launches - o.launches,
            bytes_read: self.bytes_read - o.bytes_read,
            bytes_written: self.bytes_written - o.bytes_written,
            flops: self.flops - o.flops,
            compiles: self.compiles - o.compiles,
            plan_hits: self.plan_hits - o.plan_hits,
            realizes: self.realizes - o.realizes,
            peak_plan_bytes: self.peak_plan_bytes,
            measured_peak_plan_bytes: self.measured_peak_plan_bytes,
            peak_mismatches: self.peak_mismatches - o.peak_mismatches,
            buffers_allocated: self.buffers_allocated - o.buffers_allocated,
            buffers_reused: self.buffers_reused - o.buffers_reused,
        }
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} launches, {:.3} MB read, {:.3} MB written, {:.3} GFLOP; {} plans run, {} compiled, {} replayed from the cache; largest plan peak {:.3} MB",
            self.launches,
            self.bytes_read as f64 / 1e6,
            self.bytes_written as f64 / 1e6,
            self.flops as f64 / 1e9,
            self.realizes,
            self.compiles,
            self.plan_hits,
            self.peak_plan_bytes as f64 / 1e6
        )?;
        write!(f, "; {} buffers allocated, {} reused from plan arenas", self.buffers_allocated, self.buffers_reused)?;
        if self.measured_peak_plan_bytes > 0 {
            write!(f, " (measured {:.3} MB; {} plan runs measured otherwise than planned)", self.measured_peak_plan_bytes as f64 / 1e6, self.peak_mismatches)?;
        }
        Ok(())
    }
}

thread_local! {
    static COUNTERS: Cell<Counters> = Cell::new(Counters::default());
    static MEASURE: Cell<bool> = const { Cell::new(false) };
}

/// Measure each plan run's real peak of live intermediate buffers on this thread (off by
/// default: it walks the plan's values after every step). `--stats` and tests turn it on.
pub fn measure_memory(on: bool) {
    MEASURE.with(|m| m.set(on));
}

pub(crate) fn measuring() -> bool {
    MEASURE.with(|m| m.get())
}

pub(crate) fn measured(reported: u64, measured: u64) {
    update(|c| {
        c.measured_peak_plan_bytes = c.measured_peak_plan_bytes.max(measured);
        c.peak_mismatches += (reported != measured) as u64;
    });
}

/// This thread's counters so far.
pub fn counters() -> Counters {
    COUNTERS.with(|c| c.get())
}

fn update(f: impl FnOnce(&mut Counters)) {
    COUNTERS.with(|c| {
        let mut v = c.get();
        f(&mut v);
        c.set(v);
    });
}

pub(crate) fn record(cost: &Cost) {
    update(|c| {
        c.launches += cost.launches;
        c.bytes_read += cost.bytes_read;
        c.bytes_written += cost.bytes_written;
        c.flops += cost.flops;
    });
}

pub(crate) fn buffers(allocated: u64, reused: u64) {
    update(|c| {
        c.buffers_allocated += allocated;
        c.buffers_reused += reused;
    });
}

pub(crate) fn compiled() {
    update(|c| c.compiles += 1);
}

pub(crate) fn plan_hit() {
    update(|c| c.plan_hits += 1);
}

pub(crate) fn realized(peak_bytes: u64) {
    update(|c| {
        c.realizes += 1;
        c.peak_plan_bytes = c.peak_plan_bytes.max(peak_bytes);
    });
}
