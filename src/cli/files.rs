//! Every file the program writes goes through here: it never replaces an existing file
//! unless `--force`, and the refusal happens in the final step itself, so two concurrent
//! runs can never both succeed on one name. The bytes go to a temporary file in the target
//! folder first, which becomes the output by a hard link (`link(2)` fails when the name
//! exists) or, with `--force`, by a rename; a half-written output is never visible.
//! Temporary files are removed on every exit path, SIGINT and SIGTERM included
//! ([`install_signal_cleanup`]). Errors name the path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Temporary files that exist right now (removed by the signal thread on SIGINT/SIGTERM).
static TEMPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn temps() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    TEMPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary file beside its destination, removed when dropped unless kept.
struct Temp {
    path: PathBuf,
}

impl Temp {
    fn create(dest: &Path, bytes: &[u8]) -> Result<Temp> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dest.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
        // Created under the registry's lock, so the signal thread either sees the file or
        // holds the lock until the process ends and the file is never created.
        let file = {
            let mut registry = temps();
            let file = std::fs::File::options().write(true).create_new(true).open(&path).map_err(|e| io_error(dest, "cannot write", e))?;
            registry.push(path.clone());
            file
        };
        let temp = Temp { path };
        let mut file = file;
        file.write_all(bytes).and_then(|()| file.sync_data()).map_err(|e| io_error(dest, "cannot write", e))?;
        Ok(temp)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        temps().retain(|p| p != &self.path);
    }
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> Box<dyn std::error::Error> {
    format!("{}: {what}: {e}", path.display()).into()
}

/// The folder a path lives in ("." for a bare name).
pub fn folder(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Refuses before any work starts: an existing file (unless `force`) or a missing folder.
pub fn check_new(path: &Path, force: bool) -> Result<()> {
    if path.is_dir() {
        return Err(format!("{} is a folder; give a file name", path.display()).into());
    }
    if !force && (path.exists() || path.is_symlink()) {
        return Err(format!("{} exists; pass --force to overwrite it", path.display()).into());
    }
    let dir = folder(path);
    if !dir.is_dir() {
        return Err(format!("{}: the folder {} does not exist", path.display(), dir.display()).into());
    }
    Ok(())
}

/// Writes `bytes` to `path`: a new file, or with `force` a replacement. Without `force` an
/// existing name is refused at the moment of creation (race-free), naming the path.
pub fn write_new(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    let temp = Temp::create(path, bytes)?;
    if force {
        return std::fs::rename(&temp.path, path).map_err(|e| io_error(path, "cannot write", e));
    }
    match std::fs::hard_link(&temp.path, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(format!("{} exists (another process created it during this run); nothing was written: pass --force to overwrite it", path.display()).into())
        }
        // File systems without hard links: exclusive creation still refuses an existing name.
        Err(_) => {
            let mut f = std::fs::File::options().write(true).create_new(true).open(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    format!("{} exists (another process created it during this run); nothing was written: pass --force to overwrite it", path.display()).into()
                } else {
                    io_error(path, "cannot create", e)
                }
            })?;
            f.write_all(bytes).map_err(|e| io_error(path, "cannot write", e))
        }
    }
}

/// Writes `bytes` under the first name of `candidates` that is free at the moment of
/// creation (default output names: nextflow.png, nextflow-2.png, ...); returns it.
pub fn write_free(candidates: impl IntoIterator<Item = PathBuf>, bytes: &[u8]) -> Result<PathBuf> {
    for path in candidates.into_iter().take(1_000_000) {
        if path.exists() || path.is_symlink() {
            continue;
        }
        match write_new(&path, bytes, false) {
            Ok(()) => return Ok(path),
            Err(_) if path.exists() => {} // taken in the meantime: try the next name
            Err(e) => return Err(e),
        }
    }
    Err("no free output name among a million candidates".into())
}

/// PNG bytes of an RGB8 image.
pub fn png_bytes(rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(rgb)?;
    w.finish()?;
    Ok(out)
}

/// From now on SIGINT, SIGTERM and SIGHUP remove this process's temporary files before it
/// ends with the signal's conventional status; a closed stdout (SIGPIPE) ends the program
/// quietly as it does `cat`. Call first in `main`, before any thread starts: the signals are
/// blocked in every thread and taken by one thread with `sigwait`.
pub fn install_signal_cleanup() {
    #[cfg(unix)]
    // SAFETY: plain libc calls on a local, zero-initialised signal set; called before any
    // other thread exists, so every later thread inherits the mask.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        let spawned = std::thread::Builder::new().name("nextflow-signals".into()).spawn(move || loop {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            // The lock is held until the process ends: no temporary file appears after this.
            let registry = temps();
            for path in registry.iter() {
                let _ = std::fs::remove_file(path);
            }
            eprintln!();
            // Die by the signal itself, so the caller sees the conventional status.
            libc::signal(sig, libc::SIG_DFL);
            let mut one: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut one);
            libc::sigaddset(&mut one, sig);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
            libc::raise(sig);
            libc::_exit(128 + sig);
        });
        if spawned.is_err() {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}
