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
        CpuBuffer { words: vec![u32::from_ne_bytes([byte; 4]); len.div_ceil(4)], len }
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
