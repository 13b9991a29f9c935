//! The CPU kernels' fork-join pool: `for_each(n, f)` runs `f(0..n)` on this thread and
//! the pool's workers, which take task indices from one shared counter.
//!
//! Why not rayon for these: a generation issues thousands of small parallel ops (a tiny
//! model's matmul is ~50 µs), separated by short serial stretches. Rayon's idle workers
//! yield a few dozen times and then sleep, so nearly every op paid a futex wake-up and two
//! context switches (`perf stat`: ~3,000 per 128 px image on a 2-vCPU VM). Here an idle
//! worker spins (with `spin_loop` hints, yielding now and then) for [`SPIN`] after its
//! last task before it parks, so back-to-back ops find it awake, and a pool left idle
//! still goes to sleep within milliseconds.
//!
//! One job at a time: a call that finds the pool busy (another thread's op, or a nested
//! call from inside a task) runs its tasks inline, so there is no deadlock and no
//! oversubscription. `NEXTFLOW_THREADS` sets the thread count (default: the machine's).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker keeps polling for the next job before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// The job being run: a type-erased `&dyn Fn(usize)` and its task counter.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
}

struct Pool {
    workers: usize,
    /// Serializes jobs; `try_lock` failing means "busy: run inline".
    submit: Mutex<()>,
    /// The current job, withdrawn (None) once its submitter finished its own share.
    job: Mutex<Option<JobPtr>>,
    /// Bumped once per job; workers compare it with the last one they served.
    generation: AtomicUsize,
    next: AtomicUsize,
    /// Workers still inside the current job.
    active: AtomicUsize,
    wake: Condvar,
    sleepers: Mutex<usize>,
    /// Set by a worker whose task panicked; the submitter re-raises it.
    panicked: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the job outlives every access: `for_each` waits for `active == 0` before the
// job (on its stack) is dropped, and workers only touch it between joining and leaving.
unsafe impl Send for JobPtr {}
unsafe impl Sync for JobPtr {}

thread_local! {
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Most CPU threads `NEXTFLOW_THREADS` may ask for.
pub const MAX_THREADS: usize = 256;

/// The thread count `NEXTFLOW_THREADS` (else `RAYON_NUM_THREADS`) asks for: `Ok(None)` when
/// neither is set, an error naming the variable for 0, a non-number or more than
/// [`MAX_THREADS`]. Front ends call this first so a bad value is refused before any work.
pub fn threads_from_env() -> Result<Option<usize>, String> {
    for var in ["NEXTFLOW_THREADS", "RAYON_NUM_THREADS"] {
        let Some(value) = std::env::var_os(var) else { continue };
        let text = value.to_string_lossy();
        return match text.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(Some(n)),
            _ => Err(format!("{var}={text}: expected a whole number of CPU threads from 1 to {MAX_THREADS}")),
        };
    }
    Ok(None)
}

fn threads() -> usize {
    threads_from_env()
        .ok()
        .flatten()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS))
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers,
            submit: Mutex::new(()),
            job: Mutex::new(None),
            generation: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            wake: Condvar::new(),
            sleepers: Mutex::new(0),
            panicked: std::sync::atomic::AtomicBool::new(false),
        }));
        for i in 0..workers {
            std::thread::Builder::new()
                .name(format!("nextflow-cpu-{i}"))
                .spawn(move || worker(pool))
                .expect("spawn a CPU worker thread");
        }
        pool
    })
}

/// Threads `for_each` runs on (this one included).
pub fn threads_in_pool() -> usize {
    pool().workers + 1
}

fn run_tasks(pool: &Pool, job: &Job) {
    // SAFETY: see JobPtr.
    let f = unsafe { &*job.f };
    loop {
        let i = pool.next.fetch_add(1, Ordering::AcqRel);
        if i >= job.tasks {
            break;
        }
        f(i);
    }
}

fn worker(pool: &'static Pool) {
    IN_TASK.with(|t| t.set(true));
    let mut seen = 0usize;
    loop {
        // Spin, then park, until a new generation appears.
        let start = Instant::now();
        let mut spins = 0u32;
        while pool.generation.load(Ordering::Acquire) == seen {
            spins += 1;
            if spins.is_multiple_of(64) {
                if start.elapsed() > SPIN {
                    let mut sleepers = pool.sleepers.lock().unwrap();
                    *sleepers += 1;
                    while pool.generation.load(Ordering::Acquire) == seen {
                        sleepers = pool.wake.wait(sleepers).unwrap();
                    }
                    *sleepers -= 1;
                    break;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        seen = pool.generation.load(Ordering::Acquire);
        // Join the job if it is still on; `active` was raised for us by the submitter.
        let job = *pool.job.lock().unwrap();
        if let Some(JobPtr(job)) = job {
            // SAFETY: see JobPtr.
            let job = unsafe { &*job };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(pool, job))).is_err() {
                pool.panicked.store(true, Ordering::Release);
            }
        }
        pool.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `f(i)` for every `i < n`, spread over the pool's threads; returns when all ran.
/// Tasks should be big enough to pay for a thread (tens of microseconds); `n == 1`, a
/// single-thread pool, or a busy pool run them here, in order.
pub fn for_each(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    let nested = IN_TASK.with(|t| t.get());
    let guard = if n > 1 && pool.workers > 0 && !nested { pool.submit.try_lock().ok() } else { None };
    let Some(_guard) = guard else {
        (0..n).for_each(f);
        return;
    };
    // SAFETY: only the lifetime is erased; the job is withdrawn and every worker has left
    // it before this function returns (the wait on `active` below).
    let f: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f) };
    let job = Job { f, tasks: n };
    pool.next.store(0, Ordering::Release);
    pool.active.store(pool.workers, Ordering::Release);
    *pool.job.lock().unwrap() = Some(JobPtr(&job));
    pool.generation.fetch_add(1, Ordering::AcqRel);
    if *pool.sleepers.lock().unwrap() > 0 {
        pool.wake.notify_all();
    }
    IN_TASK.with(|t| t.set(true));
    let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(pool, &job)));
    IN_TASK.with(|t| t.set(false));
    // Withdraw the job so late workers skip it, then wait for those inside it.
    *pool.job.lock().unwrap() = None;
    let mut spins = 0u32;
    while pool.active.load(Ordering::Acquire) > 0 {
        spins += 1;
        if spins.is_multiple_of(64) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    if let Err(payload) = mine {
        std::panic::resume_unwind(payload);
    }
    if pool.panicked.swap(false, Ordering::AcqRel) {
        panic!("a task of a parallel CPU op panicked on a worker thread");
    }
}

/// `f(first_index, chunk)` over `chunk`-sized pieces of `out`, in parallel.
pub fn chunks_mut<T: Send>(out: &mut [T], chunk: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let chunk = chunk.max(1);
    let len = out.len();
    let base = SendPtr(out.as_mut_ptr());
    for_each(len.div_ceil(chunk), &|i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: task i alone owns elements start..end of `out`, which outlives the call.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(start, piece);
    });
}

/// `f(i)` for every `i < n`, in order, computed in parallel `chunk` indices per task.
pub fn map<T: Send + Default + Clone>(n: usize, chunk: usize, f: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    let mut out = vec![T::default(); n];
    chunks_mut(&mut out, chunk, &|start, o| o.iter_mut().enumerate().for_each(|(j, slot)| *slot = f(start + j)));
    out
}

/// A raw pointer the tasks of one call share, each using a disjoint part.
pub struct SendPtr<T>(pub *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole Sync wrapper).
    pub fn get(self) -> *mut T {
        self.0
    }
}
// SAFETY: users hand disjoint parts of the pointee to different tasks.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_task_runs_once_also_nested_and_from_many_threads() {
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        super::for_each(1000, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
            // Nested calls run inline.
            super::for_each(2, &|_| {});
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let sum = AtomicUsize::new(0);
                        super::for_each(37, &|i| {
                            sum.fetch_add(i, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), 36 * 37 / 2);
                    }
                });
            }
        });
        let mut v = vec![0usize; 1001];
        super::chunks_mut(&mut v, 100, &|start, c| c.iter_mut().enumerate().for_each(|(k, x)| *x = start + k));
        assert!(v.iter().enumerate().all(|(i, &x)| i == x));
    }
}
