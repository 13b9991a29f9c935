use crate::device::{Client, Device};
use crate::{Error, Result};
use cubecl::server::Handle;
use std::sync::atomic::{AtomicBool, Ordering};

/// Host memory of the CPU backend: 4-byte aligned so f32/u32/f16 views need no copy.
#[derive(Clone, Debug)]
pub struct CpuBuffer {
    words: Vec<u32>,
    len: usize,
}

impl CpuBuffer {
    pub fn from_bytes(bytes: &[u8]) -> CpuBuffer {
        let mut words = vec![0u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        CpuBuffer { words, len: bytes.len() }
    }

    /// Takes f32 values without copying them.
    pub fn from_f32_vec(values: Vec<f32>) -> CpuBuffer {
        let len = values.len() * 4;
        let mut values = std::mem::ManuallyDrop::new(values);
        // SAFETY: f32 and u32 have the same size and alignment, and every bit pattern is a
        // valid u32; the allocation moves over with its length and capacity unchanged.
        let words = unsafe { Vec::from_raw_parts(values.as_mut_ptr() as *mut u32, values.len(), values.capacity()) };
        CpuBuffer { words, len }
    }

    pub fn filled(len: usize, byte: u8) -> CpuBuffer {
        let word = u32::from_ne_bytes([byte; 4]);
        match arena_take_cpu(len.div_ceil(4)) {
            Some(mut words) => {
                words.fill(word);
                CpuBuffer { words, len }
            }
            None => CpuBuffer { words: vec![word; len.div_ceil(4)], len },
        }
    }

    /// `n` f32 values for a caller that writes every one of them: a buffer of the running
    /// plan's arena as it was left (no zero fill), else a new zeroed one.
    pub fn scratch_f32(n: usize) -> Vec<f32> {
        arena_take_cpu(n).map_or_else(|| vec![0f32; n], |words| words_as_f32(words, n))
    }

    /// A buffer of `len` bytes for a caller that writes all of them (see [`Self::scratch_f32`]).
    pub fn scratch(len: usize) -> CpuBuffer {
        let words = arena_take_cpu(len.div_ceil(4)).unwrap_or_else(|| vec![0; len.div_ceil(4)]);
        CpuBuffer { words, len }
    }

    /// An empty f32 vector with room for exactly `n` values, from the running plan's arena
    /// where it has one: the caller writes all `n` (through raw pointers) and sets the length.
    pub fn reserve_f32(n: usize) -> Vec<f32> {
        arena_take_cpu(n).map_or_else(|| Vec::with_capacity(n), |words| words_as_f32(words, 0))
    }

    /// `n` zeroed f32 values, in a buffer of the running plan's arena where one is free.
    pub fn zeros_f32(n: usize) -> Vec<f32> {
        match arena_take_cpu(n) {
            Some(words) => {
                let mut v = words_as_f32(words, n);
                v.fill(0.0);
                v
            }
            None => vec![0f32; n],
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }

    /// The buffer as elements of `T` (len must be a multiple of `T`'s size).
    pub fn as_slice<T: bytemuck::Pod>(&self) -> &[T] {
        bytemuck::cast_slice(self.bytes())
    }

    pub fn as_mut_slice<T: bytemuck::Pod>(&mut self) -> &mut [T] {
        bytemuck::cast_slice_mut(self.bytes_mut())
    }
}

/// The words of an arena buffer as f32 values, the first `len` of them kept (the allocation
/// moves over whole; `len` is at most its length).
fn words_as_f32(words: Vec<u32>, len: usize) -> Vec<f32> {
    assert!(len <= words.len());
    let mut words = std::mem::ManuallyDrop::new(words);
    // SAFETY: f32 and u32 have the same size and alignment and every u32 bit pattern is a
    // valid f32; the first `len` values are initialised (they are the words' own).
    unsafe { Vec::from_raw_parts(words.as_mut_ptr() as *mut f32, len, words.capacity()) }
}

/// A device buffer: a cubecl handle and its length in bytes.
#[derive(Clone, Debug)]
pub struct GpuBuffer {
    pub handle: Handle,
    pub bytes: usize,
}

#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(CpuBuffer),
    Gpu(GpuBuffer),
}

static POISON: AtomicBool = AtomicBool::new(false);

/// Buffers a compiled plan keeps from one run to the next: the values it frees return here
/// (by exact size) and its later allocations take them back, so a replayed plan allocates
/// only its outputs. Installed for the length of a run ([`with_arena`]).
#[derive(Debug, Default)]
pub struct Arena {
    cpu: std::collections::HashMap<usize, Vec<Vec<u32>>>,
    gpu: std::collections::HashMap<usize, Vec<GpuBuffer>>,
    /// Bytes it holds.
    held: u64,
    /// Per buffer kind and size (`(gpu, bytes or words)`): requests in the current run, and
    /// the most in any run. It keeps no more buffers of a size than one run asks for, so
    /// values allocated elsewhere (an op's own vector) go back to the allocator instead of
    /// piling up here.
    asked: std::collections::HashMap<(bool, usize), (u32, u32)>,
    /// Allocations it could not serve (made fresh) and those it served, while installed.
    pub fresh: u64,
    pub reused: u64,
}

/// Bytes all arenas of a thread may hold; a buffer beyond it is freed, not kept (plans of
/// many prompt lengths would otherwise each keep their prefill's buffers).
const ARENA_BUDGET: u64 = 512 << 20;

thread_local! {
    static ARENA: std::cell::RefCell<Option<Arena>> = const { std::cell::RefCell::new(None) };
    static HELD: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs `f` with `arena` serving this thread's buffer allocations (the previous arena, if
/// any, is restored after); returns what `f` returns and the arena.
pub fn with_arena<R>(mut arena: Arena, f: impl FnOnce() -> R) -> (R, Arena) {
    arena.asked.values_mut().for_each(|(now, _)| *now = 0);
    let previous = ARENA.with(|a| a.borrow_mut().replace(arena));
    let r = f();
    let arena = ARENA.with(|a| std::mem::replace(&mut *a.borrow_mut(), previous)).expect("installed above");
    (r, arena)
}

/// Gives the buffer of `t` to the installed arena when `t` is its last handle (else, or
/// with no arena or over budget, just drops it).
pub fn reclaim(t: crate::Tensor) {
    let Some(storage) = t.into_storage() else { return };
    ARENA.with(|a| {
        let mut a = a.borrow_mut();
        let Some(arena) = a.as_mut() else { return };
        let (key, bytes) = match &storage {
            Storage::Cpu(b) => ((false, b.words.len()), b.words.len() as u64 * 4),
            Storage::Gpu(g) => ((true, g.bytes), g.bytes as u64),
        };
        let wanted = arena.asked.get(&key).map_or(0, |&(_, most)| most) as usize;
        let held = match key {
            (false, words) => arena.cpu.get(&words).map_or(0, Vec::len),
            (true, bytes) => arena.gpu.get(&bytes).map_or(0, Vec::len),
        };
        if held >= wanted || HELD.with(|h| h.get()) + bytes > ARENA_BUDGET {
            return;
        }
        HELD.with(|h| h.set(h.get() + bytes));
        arena.held += bytes;
        match storage {
            Storage::Cpu(b) => arena.cpu.entry(b.words.len()).or_default().push(b.words),
            Storage::Gpu(g) => arena.gpu.entry(g.bytes).or_default().push(g),
        }
    });
}

impl Drop for Arena {
    fn drop(&mut self) {
        let held = self.held;
        let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(held)));
    }
}

/// Counts an allocation against the installed arena, serving it from `take` when it can.
fn from_arena<T>(key: (bool, usize), take: impl FnOnce(&mut Arena) -> Option<(T, u64)>) -> Option<T> {
    ARENA.with(|a| {
        let mut a = a.borrow_mut();
        let arena = a.as_mut()?;
        let (now, most) = arena.asked.entry(key).or_default();
        *now += 1;
        *most = (*most).max(*now);
        match take(arena) {
            Some((t, bytes)) => {
                arena.reused += 1;
                arena.held -= bytes;
                HELD.with(|h| h.set(h.get() - bytes));
                Some(t)
            }
            None => {
                arena.fresh += 1;
                None
            }
        }
    })
}

fn arena_take_cpu(words: usize) -> Option<Vec<u32>> {
    from_arena((false, words), |a| a.cpu.get_mut(&words).and_then(Vec::pop).map(|w| (w, words as u64 * 4)))
}

fn arena_take_gpu(bytes: usize) -> Option<GpuBuffer> {
    from_arena((true, bytes), |a| a.gpu.get_mut(&bytes).and_then(Vec::pop).map(|g| (g, bytes as u64)))
}

/// When on, every output buffer is filled with 0xFF bytes (NaN for floats, MAX for ints)
/// before a kernel writes it, so that an element a kernel forgets to write fails a test.
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

pub fn poison_outputs() -> bool {
    POISON.load(Ordering::SeqCst)
}

/// `NEXTFLOW_MAX_BINDING_MB`, read once: a lower binding limit for GPUs than they report.
fn binding_cap() -> Option<u64> {
    static CAP: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        let v = std::env::var("NEXTFLOW_MAX_BINDING_MB").ok()?;
        match v.trim().parse::<u64>() {
            Ok(mb) if mb > 0 => Some(mb << 20),
            _ => {
                eprintln!("warning: NEXTFLOW_MAX_BINDING_MB must be a whole number of MiB above 0, got {v:?}; ignored");
                None
            }
        }
    })
}

// wgpu binds buffers in 4-byte words; keep every allocation a multiple of 4.
fn padded(bytes: usize) -> usize {
    bytes.div_ceil(4).max(1) * 4
}

impl Device {
    /// The largest single buffer this device binds (kernels bind whole buffers): the
    /// adapter's own storage-binding limit as cubecl requested it (wgpu: `adapter.limits()`,
    /// 128 MiB on lavapipe), capped by `NEXTFLOW_MAX_BINDING_MB` on GPUs (tests simulate small
    /// devices with it). Weights above it are loaded as row blocks (`ops::Weight`).
    pub fn max_buffer_bytes(&self) -> u64 {
        let limit = match self.client() {
            Client::Cpu => return u64::MAX,
            Client::Wgpu(c) => c.properties().memory.max_page_size,
            Client::Cuda(c) => c.properties().memory.max_page_size,
            Client::Hip(c) => c.properties().memory.max_page_size,
            Client::Record(c) => c.properties().memory.max_page_size,
        };
        binding_cap().map_or(limit, |cap| limit.min(cap))
    }

    /// Refuses a buffer the backend would abort on (cubecl panics in its device thread).
    fn check_size(&self, bytes: usize) -> Result<()> {
        let limit = self.max_buffer_bytes();
        if padded(bytes) as u64 > limit {
            return Err(Error::BufferTooLarge { device: self.info().spec(), bytes, limit });
        }
        Ok(())
    }

    /// Uploads bytes to a new buffer on this device.
    pub fn upload(&self, bytes: &[u8]) -> Result<Storage> {
        self.check_size(bytes.len())?;
        let gpu = |handle| Storage::Gpu(GpuBuffer { handle, bytes: bytes.len() });
        Ok(match self.client() {
            Client::Cpu => Storage::Cpu(CpuBuffer::from_bytes(bytes)),
            Client::Wgpu(c) => gpu(c.create_from_slice(&pad(bytes))),
            Client::Cuda(c) => gpu(c.create_from_slice(&pad(bytes))),
            Client::Hip(c) => gpu(c.create_from_slice(&pad(bytes))),
            Client::Record(c) => gpu(c.create_from_slice(&pad(bytes))),
        })
    }

    /// A new output buffer of `bytes` bytes (poisoned when [`set_poison_outputs`] is on).
    pub fn alloc(&self, bytes: usize) -> Result<Storage> {
        self.check_size(bytes)?;
        if poison_outputs() {
            return match self.client() {
                Client::Cpu => Ok(Storage::Cpu(CpuBuffer::filled(bytes, 0xFF))),
                _ => {
                    let mut s = self.upload(&vec![0xFF; padded(bytes)])?;
                    if let Storage::Gpu(g) = &mut s {
                        g.bytes = bytes;
                    }
                    Ok(s)
                }
            };
        }
        if !self.is_cpu() {
            if let Some(g) = arena_take_gpu(bytes) {
                return Ok(Storage::Gpu(g));
            }
        }
        let gpu = |handle| Storage::Gpu(GpuBuffer { handle, bytes });
        Ok(match self.client() {
            Client::Cpu => Storage::Cpu(CpuBuffer::filled(bytes, 0)),
            Client::Wgpu(c) => gpu(c.empty(padded(bytes))),
            Client::Cuda(c) => gpu(c.empty(padded(bytes))),
            Client::Hip(c) => gpu(c.empty(padded(bytes))),
            Client::Record(c) => gpu(c.empty(padded(bytes))),
        })
    }

    /// Reads a whole buffer back to the host.
    pub fn download(&self, storage: &Storage) -> Result<Vec<u8>> {
        let err = |e: String| Error::Device { device: self.to_string(), msg: e };
        let (bytes, n) = match (self.client(), storage) {
            (_, Storage::Cpu(b)) => return Ok(b.bytes().to_vec()),
            (Client::Wgpu(c), Storage::Gpu(g)) => (c.read_one(g.handle.clone()).map_err(|e| err(format!("{e:?}")))?, g.bytes),
            (Client::Cuda(c), Storage::Gpu(g)) => (c.read_one(g.handle.clone()).map_err(|e| err(format!("{e:?}")))?, g.bytes),
            (Client::Hip(c), Storage::Gpu(g)) => (c.read_one(g.handle.clone()).map_err(|e| err(format!("{e:?}")))?, g.bytes),
            (Client::Record(c), Storage::Gpu(g)) => (c.read_one(g.handle.clone()).map_err(|e| err(format!("{e:?}")))?, g.bytes),
            (Client::Cpu, Storage::Gpu(_)) => return Err(err("a device buffer reached the CPU backend".into())),
        };
        Ok(bytes[..n].to_vec())
    }
}

fn pad(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(padded(bytes.len()), 0);
    v
}
