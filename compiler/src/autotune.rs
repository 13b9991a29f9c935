//! Kernel choice: each op family declares its candidates and a key (op, shape bucket,
//! dtype, device). The first use of an unknown key times the candidates when tuning is on
//! (else the default runs); winners persist as JSON in the user's cache dir
//! (`$NEXTFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/nextflow`, else `~/.cache/nextflow`) and
//! can be exported and imported to ship a warm cache.

use crate::{Error, Result};
use nextflow_ops::matmul::{cmma_available, matmul_with, MatmulKernel, GEMV_MAX_ROWS, MATMUL_TILES};
use nextflow_ops::{attention_with, AttentionKernel, AttentionOptions, Epilogue, NormKernel};
use nextflow_runtime::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// One tuned key: the chosen candidate and what each candidate took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TuneEntry {
    pub choice: String,
    pub timings_us: BTreeMap<String, f64>,
}

/// The persisted cache.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TuneCache {
    pub version: u32,
    pub entries: BTreeMap<String, TuneEntry>,
}

/// 2: matmul keys name the batch (a CFG batch of two runs twice the rows of one lane).
const VERSION: u32 = 2;
static CACHE: Mutex<Option<TuneCache>> = Mutex::new(None);
/// Cache winners used by realized plans in this process: key → launches.
static USED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
/// Keys timed in this process (tuning on, or `bench kernels`).
static TIMED: AtomicU64 = AtomicU64::new(0);
/// GPU matmul, attention and norm launches without a cache winner (the default kernel ran).
static DEFAULTS: AtomicU64 = AtomicU64::new(0);
/// Kernels requested while [`trace`] runs: key → the largest shape of that key.
static TRACE: Mutex<Option<BTreeMap<String, Traced>>> = Mutex::new(None);
static TRACING: AtomicBool = AtomicBool::new(false);

/// Where the cache lives.
pub fn cache_path() -> PathBuf {
    let dir = std::env::var_os("NEXTFLOW_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("nextflow")
    });
    dir.join("autotune.json")
}

fn cache_err(path: &Path, msg: impl ToString) -> Error {
    Error::Cache { path: path.display().to_string(), msg: msg.to_string() }
}

/// Reads a cache file (a missing file is an empty cache).
pub fn load(path: &Path) -> Result<TuneCache> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let cache: TuneCache = serde_json::from_str(&text).map_err(|e| cache_err(path, e))?;
            if cache.version != VERSION {
                return Ok(TuneCache { version: VERSION, ..Default::default() });
            }
            Ok(cache)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TuneCache { version: VERSION, ..Default::default() }),
        Err(e) => Err(cache_err(path, e)),
    }
}

/// Writes a cache file atomically (temporary file, then rename).
pub fn save(cache: &TuneCache, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| cache_err(path, e))?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(cache).map_err(|e| cache_err(path, e))?;
    std::fs::write(&tmp, text).map_err(|e| cache_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| cache_err(path, e))
}

fn with_cache<T>(f: impl FnOnce(&mut TuneCache) -> T) -> Result<T> {
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(load(&cache_path())?);
    }
    Ok(f(guard.as_mut().expect("loaded")))
}

/// The cached entry of a key.
pub fn lookup(key: &str) -> Result<Option<TuneEntry>> {
    with_cache(|c| c.entries.get(key).cloned())
}

/// Records a winner and saves the cache.
pub fn record(key: &str, entry: TuneEntry) -> Result<()> {
    TIMED.fetch_add(1, Ordering::Relaxed);
    let snapshot = with_cache(|c| {
        c.version = VERSION;
        c.entries.insert(key.to_string(), entry);
        c.clone()
    })?;
    save(&snapshot, &cache_path())
}

/// Forgets the in-memory copy (the next lookup reloads the file; tests move the dir).
pub fn reload() {
    *CACHE.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Writes the current cache to `path` (to ship a warm cache).
pub fn export(path: &Path) -> Result<usize> {
    let snapshot = with_cache(|c| c.clone())?;
    save(&snapshot, path)?;
    Ok(snapshot.entries.len())
}

/// The cache as the JSON text [`export`] writes, and its entry count (for callers that
/// write the file themselves, e.g. without replacing an existing one).
pub fn export_json() -> Result<(String, usize)> {
    let snapshot = with_cache(|c| c.clone())?;
    let text = serde_json::to_string_pretty(&snapshot).map_err(|e| cache_err(Path::new("autotune cache"), e))?;
    Ok((text, snapshot.entries.len()))
}

/// Merges the entries of `path` into the cache (they win) and saves it.
pub fn import(path: &Path) -> Result<usize> {
    // A missing file is an error here (for the user's own cache it means "empty").
    if let Err(e) = std::fs::metadata(path) {
        return Err(cache_err(path, e));
    }
    let other = load(path)?;
    let n = other.entries.len();
    let snapshot = with_cache(|c| {
        c.version = VERSION;
        c.entries.extend(other.entries);
        c.clone()
    })?;
    save(&snapshot, &cache_path())?;
    Ok(n)
}

/// The device part of a key.
pub fn device_id(device: &Device) -> String {
    format!("{} {}", device.info().spec(), device.info().name)
}

/// Rows bucketed to the next power of two (sequence lengths vary step to step).
pub fn bucket(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// The key of `[batch, m, k] · [k, n]` (`batch` 1 for plain matrices).
pub fn matmul_key(device: &Device, batch: usize, m: usize, n: usize, k: usize, dtype: DType) -> String {
    format!("matmul|b{batch}m{}n{n}k{k}|{dtype}|{}", bucket(m), device_id(device))
}

/// One matmul as a model runs it: what `bench kernels --model` times again on random
/// operands of the same shapes, layout and epilogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dtype: DType,
    /// `b` is the transposed view of an `[n, k]` weight (how linear layers store it).
    pub b_transposed: bool,
    pub bias: bool,
    pub activation: nextflow_ops::Activation,
    pub residual: bool,
}

impl MatmulShape {
    fn of(a: &Tensor, b: &Tensor, ep: &Epilogue) -> MatmulShape {
        let (ra, rb) = (a.rank(), b.rank());
        let batch = a.shape()[..ra - 2].iter().product::<usize>().max(b.shape()[..rb - 2].iter().product());
        MatmulShape {
            batch,
            m: a.shape()[ra - 2],
            n: b.shape()[rb - 1],
            k: a.shape()[ra - 1],
            dtype: a.dtype(),
            b_transposed: b.strides()[rb - 2] == 1 && b.shape()[rb - 1] > 1,
            bias: ep.bias.is_some(),
            activation: ep.activation,
            residual: ep.residual.is_some(),
        }
    }

    pub fn key(&self, device: &Device) -> String {
        matmul_key(device, self.batch, self.m, self.n, self.k, self.dtype)
    }
}

/// One attention as a model runs it (`q [batch, heads, sq, d]` over `k`/`v
/// [batch, kv_heads, skv, d]`): what `bench kernels --model` times again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub sq: usize,
    pub skv: usize,
    pub head_dim: usize,
    pub dtype: DType,
}

impl AttentionShape {
    fn of(q: &Tensor, k: &Tensor) -> AttentionShape {
        let (b, hq, sq, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
        AttentionShape { batch: b, heads: hq, kv_heads: k.shape()[1], sq, skv: k.shape()[2], head_dim: d, dtype: q.dtype() }
    }

    /// Queries and keys bucketed (both grow from step to step).
    pub fn key(&self, device: &Device) -> String {
        format!("attention|b{}q{}kv{}h{}/{}d{}|{}|{}", self.batch, bucket(self.sq), bucket(self.skv), self.heads, self.kv_heads, self.head_dim, self.dtype, device_id(device))
    }
}

/// Which norm kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    Rms,
    /// Residual add + RMSNorm (two outputs).
    AddRms,
    /// GroupNorm (a row is one group of one image).
    Group,
}

/// One norm as a model runs it: `rows` independent rows of `n` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormShape {
    pub kind: NormKind,
    pub rows: usize,
    pub n: usize,
    pub dtype: DType,
}

impl NormShape {
    pub fn key(&self, device: &Device) -> String {
        format!("norm|{:?}|rows{}n{}|{}|{}", self.kind, bucket(self.rows), self.n, self.dtype, device_id(device))
    }
}

/// A traced kernel request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Traced {
    Matmul(MatmulShape),
    Attention(AttentionShape),
    Norm(NormShape),
}

impl Traced {
    /// Its size within its key's bucket: rows, or queries × keys.
    fn size(&self) -> usize {
        match self {
            Traced::Matmul(s) => s.m,
            Traced::Attention(s) => s.sq * s.skv,
            Traced::Norm(s) => s.rows,
        }
    }
}

/// Runs `f` and returns every key it asked a kernel for, with the largest shape of each
/// (the rows the key's bucket must serve). Tracing is process-wide; one at a time.
pub fn trace<T>(device: &Device, f: impl FnOnce() -> T) -> (T, BTreeMap<String, Traced>) {
    *TRACE.lock().unwrap_or_else(|e| e.into_inner()) = Some(BTreeMap::new());
    TRACING.store(true, Ordering::SeqCst);
    let out = f();
    TRACING.store(false, Ordering::SeqCst);
    let mut seen = TRACE.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    seen.retain(|key, _| key.ends_with(&device_id(device)));
    (out, seen)
}

fn traced(key: &str, shape: Traced) {
    let mut guard = TRACE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(seen) = guard.as_mut() {
        let entry = seen.entry(key.to_string()).or_insert_with(|| shape.clone());
        if shape.size() > entry.size() {
            *entry = shape;
        }
    }
}

/// What kernel choice did so far in this process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Cache winners that realized plans launched: key → launches.
    pub used: BTreeMap<String, u64>,
    /// GPU matmul and attention launches that found no winner in the cache and ran the
    /// default kernel.
    pub defaults: u64,
    /// Keys timed (tuning on, or `bench kernels`).
    pub timed: u64,
}

impl Usage {
    pub fn launches(&self) -> u64 {
        self.used.values().sum()
    }
}

pub fn usage() -> Usage {
    Usage {
        used: USED.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        defaults: DEFAULTS.load(Ordering::Relaxed),
        timed: TIMED.load(Ordering::Relaxed),
    }
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "matmul, attention and norm kernels: {} launches ran {} tuned kernels from the autotune cache, {} ran the default kernel; {} shapes timed now",
            self.launches(),
            self.used.len(),
            self.defaults,
            self.timed
        )
    }
}

/// The matmul candidates for a device, dtype and row count, by name.
pub fn matmul_candidates(device: &Device, dtype: DType, m: usize) -> Vec<(String, MatmulKernel)> {
    if device.is_cpu() {
        return vec![("gemm (cpu)".into(), MatmulKernel::Auto)];
    }
    let mut out: Vec<(String, MatmulKernel)> = MATMUL_TILES.iter().map(|t| (t.name(), MatmulKernel::Tiled(*t))).collect();
    if m <= 4 * GEMV_MAX_ROWS {
        out.push(("gemv".into(), MatmulKernel::Gemv));
    }
    if dtype == DType::F16 && cmma_available(device) {
        out.push(("cmma 16x16x16".into(), MatmulKernel::Cmma));
    }
    out
}

/// The default choice, as `MatmulKernel::Auto` resolves it.
pub fn matmul_default(m: usize) -> &'static str {
    if m <= GEMV_MAX_ROWS {
        "gemv"
    } else {
        "tiled 64x64x16 / 4x4"
    }
}

/// Mean seconds per run of `f` over `reps` runs after one warm-up, synced.
pub fn time(device: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    device.sync()?;
    let start = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    device.sync()?;
    Ok(start.elapsed().as_secs_f64() / reps.max(1) as f64)
}

/// Times every candidate of a matmul key and records the fastest.
pub fn tune_matmul(a: &Tensor, b: &Tensor, ep: &Epilogue, reps: usize) -> Result<TuneEntry> {
    let device = a.device();
    let candidates = matmul_candidates(device, a.dtype(), a.shape()[a.rank() - 2]);
    tune(&MatmulShape::of(a, b, ep).key(device), device, reps, candidates, |kernel| matmul_with(a, b, *ep, kernel).map(drop).map_err(Error::from))
}

/// Times `run` with each of `candidates` and records the fastest under `key`.
fn tune<K: Copy>(key: &str, device: &Device, reps: usize, candidates: Vec<(String, K)>, run: impl Fn(K) -> Result<()>) -> Result<TuneEntry> {
    let mut entry = TuneEntry::default();
    let mut best = f64::INFINITY;
    for (name, kernel) in candidates {
        let secs = time(device, reps, || run(kernel))?;
        entry.timings_us.insert(name.clone(), secs * 1e6);
        if secs < best {
            best = secs;
            entry.choice = name;
        }
    }
    record(key, entry.clone())?;
    Ok(entry)
}

/// The kernel for a matmul: the cached winner, else (tuning on) the winner of a timing
/// run, else the default. A winner used is counted in [`usage`].
pub fn matmul_kernel(a: &Tensor, b: &Tensor, ep: &Epilogue, tune: bool) -> Result<MatmulKernel> {
    let device = a.device();
    let shape = MatmulShape::of(a, b, ep);
    let key = shape.key(device);
    if TRACING.load(Ordering::Relaxed) {
        traced(&key, Traced::Matmul(shape.clone()));
    }
    if device.is_cpu() {
        return Ok(MatmulKernel::Auto);
    }
    let candidates = || matmul_candidates(device, a.dtype(), shape.m);
    Ok(choose(&key, candidates, || Ok(tune_matmul(a, b, ep, 3)?.choice), tune)?.unwrap_or(MatmulKernel::Auto))
}

/// The cached (or, tuning on, just timed) winner of `key` among `candidates`, counted in
/// [`usage`]; `None` (counted as a default) when there is none.
fn choose<K>(key: &str, candidates: impl Fn() -> Vec<(String, K)>, tune_now: impl FnOnce() -> Result<String>, tune: bool) -> Result<Option<K>> {
    let choice = match with_cache(|c| c.entries.get(key).map(|e| e.choice.clone()))? {
        Some(choice) => choice,
        None if tune => tune_now()?,
        None => {
            DEFAULTS.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
    };
    match candidates().into_iter().find(|(name, _)| *name == choice) {
        Some((_, kernel)) => {
            *USED.lock().unwrap_or_else(|e| e.into_inner()).entry(key.to_string()).or_default() += 1;
            Ok(Some(kernel))
        }
        // A winner this build no longer offers: the default.
        None => {
            DEFAULTS.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
    }
}

/// The norm candidates of a GPU, by name (the CPU has one path).
pub fn norm_candidates(device: &Device) -> Vec<(String, NormKernel)> {
    if device.is_cpu() {
        return vec![("rows (cpu)".into(), NormKernel::default())];
    }
    NormKernel::CANDIDATES.iter().map(|k| (k.name(), *k)).collect()
}

/// Times `run` with every norm candidate of `shape` and records the fastest.
pub fn tune_norm(shape: &NormShape, device: &Device, reps: usize, run: &dyn Fn(NormKernel) -> Result<()>) -> Result<TuneEntry> {
    tune(&shape.key(device), device, reps, norm_candidates(device), run)
}

/// The kernel for a norm of `shape`: the cached winner, else (tuning on) the winner of
/// timing `run`, else the default.
pub fn norm_kernel(shape: NormShape, device: &Device, tune: bool, run: &dyn Fn(NormKernel) -> Result<()>) -> Result<NormKernel> {
    let key = shape.key(device);
    if TRACING.load(Ordering::Relaxed) {
        traced(&key, Traced::Norm(shape.clone()));
    }
    if device.is_cpu() {
        return Ok(NormKernel::default());
    }
    Ok(choose(&key, || norm_candidates(device), || Ok(tune_norm(&shape, device, 3, run)?.choice), tune)?.unwrap_or_default())
}

/// The attention candidates of a GPU, by name (the CPU has one path).
pub fn attention_candidates(device: &Device) -> Vec<(String, AttentionKernel)> {
    if device.is_cpu() {
        return vec![("blocked (cpu)".into(), AttentionKernel::default())];
    }
    AttentionKernel::CANDIDATES.iter().map(|k| (k.name(), *k)).collect()
}

/// Times every attention candidate of a shape and records the fastest.
pub fn tune_attention(q: &Tensor, k: &Tensor, v: &Tensor, options: &AttentionOptions, reps: usize) -> Result<TuneEntry> {
    let device = q.device();
    tune(&AttentionShape::of(q, k).key(device), device, reps, attention_candidates(device), |kernel| attention_with(q, k, v, options, kernel).map(drop).map_err(Error::from))
}

/// The kernel for an attention: the cached winner, else (tuning on) the winner of a timing
/// run, else the default.
pub fn attention_kernel(q: &Tensor, k: &Tensor, v: &Tensor, options: &AttentionOptions, tune: bool) -> Result<AttentionKernel> {
    let device = q.device();
    let shape = AttentionShape::of(q, k);
    let key = shape.key(device);
    if TRACING.load(Ordering::Relaxed) {
        traced(&key, Traced::Attention(shape));
    }
    if device.is_cpu() {
        return Ok(AttentionKernel::default());
    }
    Ok(choose(&key, || attention_candidates(device), || Ok(tune_attention(q, k, v, options, 3)?.choice), tune)?.unwrap_or_default())
}
