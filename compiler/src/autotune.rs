//! Kernel choice: each op family declares its candidates and a key (op, shape bucket,
//! dtype, device). The first use of an unknown key times the candidates when tuning is on
//! (else the default runs); winners persist as JSON in the user's cache dir
//! (`$NEXTFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/nextflow`, else `~/.cache/nextflow`) and
//! can be exported and imported to ship a warm cache.

use crate::{Error, Result};
use nextflow_ops::matmul::{cmma_available, matmul_with, MatmulKernel, GEMV_MAX_ROWS, MATMUL_TILES};
use nextflow_ops::Epilogue;
use nextflow_runtime::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

const VERSION: u32 = 1;
static CACHE: Mutex<Option<TuneCache>> = Mutex::new(None);

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

pub fn matmul_key(device: &Device, m: usize, n: usize, k: usize, dtype: DType) -> String {
    format!("matmul|m{}n{n}k{k}|{dtype}|{}", bucket(m), device_id(device))
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
    let (m, k) = (a.shape()[a.rank() - 2], a.shape()[a.rank() - 1]);
    let n = b.shape()[b.rank() - 1];
    let mut entry = TuneEntry::default();
    let mut best = f64::INFINITY;
    for (name, kernel) in matmul_candidates(device, a.dtype(), m) {
        let secs = time(device, reps, || matmul_with(a, b, *ep, kernel).map(drop).map_err(Error::from))?;
        entry.timings_us.insert(name.clone(), secs * 1e6);
        if secs < best {
            best = secs;
            entry.choice = name;
        }
    }
    record(&matmul_key(device, m, n, k, a.dtype()), entry.clone())?;
    Ok(entry)
}

/// The kernel for a matmul: the cached winner, else (tuning on) the winner of a timing
/// run, else the default.
pub fn matmul_kernel(a: &Tensor, b: &Tensor, ep: &Epilogue, tune: bool) -> Result<MatmulKernel> {
    let device = a.device();
    if device.is_cpu() {
        return Ok(MatmulKernel::Auto);
    }
    let (m, k) = (a.shape()[a.rank() - 2], a.shape()[a.rank() - 1]);
    let n = b.shape()[b.rank() - 1];
    let key = matmul_key(device, m, n, k, a.dtype());
    let choice = match lookup(&key)? {
        Some(e) => e.choice,
        None if tune => tune_matmul(a, b, ep, 3)?.choice,
        None => return Ok(MatmulKernel::Auto),
    };
    Ok(matmul_candidates(device, a.dtype(), m).into_iter().find(|(name, _)| *name == choice).map_or(MatmulKernel::Auto, |(_, k)| k))
}
