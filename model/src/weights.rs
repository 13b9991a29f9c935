//! Safetensors checkpoints through `memmap2`: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Headers are validated when the directory is opened (a
//! truncated file or a header that lies about offsets is an error naming the tensor);
//! tensors are converted from f32/f16/bf16 on disk to the device dtype on load, their
//! shapes checked against what the model expects, and every tensor the model does not ask
//! for is reported by [`Weights::unused`]. PyTorch checkpoints (`torch.save`, zip format) open
//! into the same `Weights` through [`Weights::open_torch`] (see `torch_file.rs`).

use crate::torch_file::TorchNotes;
use crate::{Error, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use nextflow_ops::Weight;
use nextflow_runtime::{DType, Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Element types a checkpoint may hold (the float ones can be loaded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskDType {
    F32,
    F16,
    BF16,
    Other(&'static str, usize),
}

impl DiskDType {
    fn parse(s: &str) -> Option<DiskDType> {
        Some(match s {
            "F32" => DiskDType::F32,
            "F16" => DiskDType::F16,
            "BF16" => DiskDType::BF16,
            "F64" => DiskDType::Other("F64", 8),
            "I64" => DiskDType::Other("I64", 8),
            "U64" => DiskDType::Other("U64", 8),
            "I32" => DiskDType::Other("I32", 4),
            "U32" => DiskDType::Other("U32", 4),
            "I16" => DiskDType::Other("I16", 2),
            "U16" => DiskDType::Other("U16", 2),
            "I8" => DiskDType::Other("I8", 1),
            "U8" => DiskDType::Other("U8", 1),
            "BOOL" => DiskDType::Other("BOOL", 1),
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            DiskDType::F32 => 4,
            DiskDType::F16 | DiskDType::BF16 => 2,
            DiskDType::Other(_, n) => n,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DiskDType::F32 => "F32",
            DiskDType::F16 => "F16",
            DiskDType::BF16 => "BF16",
            DiskDType::Other(n, _) => n,
        }
    }
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: DiskDType,
    pub shape: Vec<usize>,
    pub(crate) file: usize,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// The bytes behind one checkpoint file.
pub(crate) enum Backing {
    Map(Mmap),
    /// Compiled into the binary (the embedded default model).
    Static(&'static [u8]),
    /// Read into memory (tests, fuzzing, checkpoints handed over as bytes).
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Static(s) => s,
            Backing::Owned(v) => v,
        }
    }
}

/// An opened checkpoint directory, an embedded checkpoint, or random weights.
pub struct Weights {
    dir: PathBuf,
    files: Vec<(PathBuf, Backing)>,
    /// Random weights: every tensor asked for is drawn from this seed (no files).
    random: Option<u64>,
    tensors: BTreeMap<String, TensorInfo>,
    used: Mutex<BTreeSet<String>>,
    /// What a PyTorch checkpoint held besides the state dict.
    torch: Option<TorchNotes>,
}

/// `path` memory-mapped, read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    // SAFETY: the map is read-only; a checkpoint changed on disk while we run is the
    // one case this cannot guard against, as with every mmap-based loader.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::Io { path: path.to_path_buf(), source: e })
}

pub(crate) fn bad(file: &Path, msg: impl Into<String>) -> Error {
    Error::Checkpoint { file: file.to_path_buf(), msg: msg.into() }
}

/// Parses and checks one safetensors header; returns the tensors (offsets absolute in the file).
fn read_header(path: &Path, bytes: &[u8], file: usize) -> Result<BTreeMap<String, TensorInfo>> {
    if bytes.len() < 8 {
        return Err(bad(path, format!("{} bytes: too short for a safetensors header (truncated file?)", bytes.len())));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if n > bytes.len() - 8 || n > 100 << 20 {
        return Err(bad(path, format!("header length {n} exceeds the file ({} bytes): truncated or not a safetensors file", bytes.len())));
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| bad(path, format!("header is not valid JSON: {e}")))?;
    let data_start = 8 + n;
    let data_len = bytes.len() - data_start;
    let mut out = BTreeMap::new();
    for (name, entry) in header {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| entry.get(k).ok_or_else(|| bad(path, format!("tensor `{name}`: header entry has no `{k}`")));
        let dtype_name = field("dtype")?.as_str().unwrap_or("?");
        let dtype = DiskDType::parse(dtype_name).ok_or_else(|| bad(path, format!("tensor `{name}`: unknown dtype {dtype_name}")))?;
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| bad(path, format!("tensor `{name}`: shape is not a list of sizes")))?;
        let offsets: Vec<usize> = field("data_offsets")?
            .as_array()
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|x| x as usize)).collect())
            .filter(|v: &Vec<usize>| v.len() == 2)
            .ok_or_else(|| bad(path, format!("tensor `{name}`: data_offsets must be [begin, end]")))?;
        let (begin, end) = (offsets[0], offsets[1]);
        let want = shape
            .iter()
            .try_fold(dtype.size(), |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(path, format!("tensor `{name}`: shape {shape:?} holds more elements than any file can")))?;
        if end < begin || end - begin != want {
            return Err(bad(path, format!("tensor `{name}`: data_offsets [{begin}, {end}] hold {} bytes but {:?} {} needs {want}", end.saturating_sub(begin), shape, dtype.name())));
        }
        if end > data_len {
            return Err(bad(path, format!("tensor `{name}`: data_offsets end {end} lies past the data ({data_len} bytes): truncated file or lying header")));
        }
        out.insert(name, TensorInfo { dtype, shape, file, start: data_start + begin, end: data_start + end });
    }
    Ok(out)
}

/// `name` (from a file the model directory holds) as a path that stays inside `dir`: no
/// absolute path, no `..`, and no symlink that leads out of it. The one exception is the
/// Hugging Face cache layout, whose `snapshots/REV/` files link into the repository's
/// `blobs/` folder.
pub fn inside(dir: &Path, name: &str, named_in: &Path) -> Result<PathBuf> {
    let rel = Path::new(name);
    let plain = !name.is_empty() && rel.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(bad(named_in, format!("`{name}` is not a file name inside the model directory (absolute paths and `..` are refused)")));
    }
    let path = dir.join(rel);
    let (Ok(real), Ok(root)) = (path.canonicalize(), dir.canonicalize()) else {
        return Ok(path); // missing: opening it reports the path
    };
    let hub_blobs = root.parent().filter(|p| p.file_name().is_some_and(|n| n == "snapshots")).and_then(Path::parent).map(|repo| repo.join("blobs"));
    if real.starts_with(&root) || hub_blobs.is_some_and(|b| real.starts_with(b)) {
        Ok(path)
    } else {
        Err(bad(named_in, format!("`{name}` leads outside the model directory (to {}); refused", real.display())))
    }
}

impl Weights {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Weights> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let names: Vec<PathBuf> = if index.exists() {
            let index = inside(dir, "model.safetensors.index.json", dir)?;
            let text = std::fs::read_to_string(&index).map_err(|e| Error::Io { path: index.clone(), source: e })?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&index, format!("not valid JSON: {e}")))?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad(&index, "no `weight_map` object"))?;
            let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
            if files.is_empty() {
                return Err(bad(&index, "`weight_map` names no files"));
            }
            files.into_iter().map(|f| inside(dir, f, &index)).collect::<Result<_>>()?
        } else if single.exists() {
            vec![inside(dir, "model.safetensors", dir)?]
        } else {
            return Err(Error::Checkpoint { file: dir.to_path_buf(), msg: "no model.safetensors or model.safetensors.index.json here".into() });
        };
        Weights::open_files(dir, names)
    }

    /// Opens one safetensors file (golden vectors, or a file outside the HF layout).
    pub fn open_file(path: &Path) -> Result<Weights> {
        Weights::open_files(path.parent().unwrap_or(Path::new(".")), vec![path.to_path_buf()])
    }

    fn open_files(dir: &Path, names: Vec<PathBuf>) -> Result<Weights> {
        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        for (i, path) in names.into_iter().enumerate() {
            let map = map_file(&path)?;
            for (name, info) in read_header(&path, &map, i)? {
                if tensors.insert(name.clone(), info).is_some() {
                    return Err(bad(&path, format!("tensor `{name}` appears in two shards")));
                }
            }
            files.push((path, Backing::Map(map)));
        }
        Ok(Weights::from_parts(dir, files, tensors, None))
    }

    /// Weights over `files` (each tensor's `file` indexes them).
    pub(crate) fn from_parts(dir: &Path, files: Vec<(PathBuf, Backing)>, tensors: BTreeMap<String, TensorInfo>, torch: Option<TorchNotes>) -> Weights {
        Weights { dir: dir.to_path_buf(), files, random: None, tensors, used: Mutex::new(BTreeSet::new()), torch }
    }

    /// A safetensors image compiled into the binary; `name` labels errors.
    pub fn from_static(name: &str, bytes: &'static [u8]) -> Result<Weights> {
        let path = PathBuf::from(name);
        let tensors = read_header(&path, bytes, 0)?;
        Ok(Weights::from_parts(Path::new(name), vec![(path, Backing::Static(bytes))], tensors, None))
    }

    /// A safetensors file held in memory; `name` labels errors.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Weights> {
        let path = PathBuf::from(name);
        let tensors = read_header(&path, &bytes, 0)?;
        Ok(Weights::from_parts(Path::new(name), vec![(path, Backing::Owned(bytes))], tensors, None))
    }

    /// Random weights for speed measurements where no checkpoint exists: any tensor asked
    /// for exists, uniform with std 0.02 (norm weights 1, biases 0), drawn from `seed` and
    /// the tensor's name.
    pub fn random(seed: u64) -> Weights {
        Weights { random: Some(seed), ..Weights::from_parts(Path::new("<random weights>"), Vec::new(), BTreeMap::new(), None) }
    }

    /// The files behind these weights with their sizes in bytes (none for random weights).
    pub fn files(&self) -> Vec<(&Path, u64)> {
        self.files.iter().map(|(p, b)| (p.as_path(), b.len() as u64)).collect()
    }

    /// A fingerprint of the weights (16 hex digits, FNV-1a 64): of every byte when the files
    /// hold at most 256 MiB, else of each file's length, its safetensors header and 64 KiB at
    /// 64 evenly spaced places, so that it stays instant on a 7B checkpoint. It names the
    /// weights an image was painted with (PNG metadata); it is not a checksum against tampering.
    pub fn fingerprint(&self) -> String {
        const FULL: usize = 256 << 20;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        if let Some(seed) = self.random {
            feed(b"random");
            feed(&seed.to_le_bytes());
        }
        let total: usize = self.files.iter().map(|(_, b)| b.len()).sum();
        for (_, bytes) in &self.files {
            let bytes: &[u8] = bytes;
            feed(&(bytes.len() as u64).to_le_bytes());
            if total <= FULL {
                feed(bytes);
                continue;
            }
            let header = bytes.get(..8).map_or(0, |n| u64::from_le_bytes(n.try_into().expect("8 bytes")) as usize);
            // (A zip checkpoint has no such header: at most 100 MiB, read_header's limit.)
            feed(&bytes[..8usize.saturating_add(header.min(100 << 20)).min(bytes.len())]);
            const CHUNK: usize = 64 << 10;
            for i in 0..64 {
                let at = (bytes.len().saturating_sub(CHUNK)) / 63 * i;
                feed(&bytes[at..(at + CHUNK).min(bytes.len())]);
            }
        }
        format!("{h:016x}")
    }

    pub fn is_random(&self) -> bool {
        self.random.is_some()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }
    pub fn contains(&self, name: &str) -> bool {
        self.random.is_some() || self.tensors.contains_key(name)
    }
    /// The bytes of `name` as stored (row-major, little-endian, its [`DiskDType`]), of any
    /// dtype; not marked used.
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        let info = self.tensors.get(name)?;
        self.files.get(info.file).map(|(_, b)| &b[info.start..info.end])
    }
    /// Writes every tensor, as stored, to a safetensors file at `path` (streamed through a
    /// temporary file beside it, renamed at the end: an interrupted write leaves nothing).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let io = |e: std::io::Error| Error::Io { path: path.to_path_buf(), source: e };
        let mut header = serde_json::Map::new();
        let mut at = 0usize;
        for (name, info) in &self.tensors {
            let n = info.end - info.start;
            header.insert(name.clone(), serde_json::json!({"dtype": info.dtype.name(), "shape": info.shape, "data_offsets": [at, at + n]}));
            at += n;
        }
        let mut text = serde_json::Value::Object(header).to_string().into_bytes();
        text.resize(text.len().div_ceil(8) * 8, b' ');
        let temp = path.with_extension("safetensors.partial");
        let result = (|| -> Result<()> {
            let mut f = std::io::BufWriter::with_capacity(8 << 20, File::create(&temp).map_err(io)?);
            f.write_all(&(text.len() as u64).to_le_bytes()).map_err(io)?;
            f.write_all(&text).map_err(io)?;
            for info in self.tensors.values() {
                f.write_all(&self.files[info.file].1[info.start..info.end]).map_err(io)?;
            }
            f.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
            std::fs::rename(&temp, path).map_err(io)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// For a PyTorch checkpoint: which dict was taken as the state dict and what was left out.
    pub fn torch_notes(&self) -> Option<&TorchNotes> {
        self.torch.as_ref()
    }

    /// Bytes of all tensors per on-disk dtype.
    pub fn disk_dtypes(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for t in self.tensors.values() {
            *m.entry(t.dtype.name()).or_default() += t.end - t.start;
        }
        m
    }

    /// Loads `name` at whatever shape it has, as `dtype` on `device`.
    pub fn get_any(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let shape = self.tensors.get(name).ok_or_else(|| Error::MissingTensor { name: name.into(), dir: self.dir.clone() })?.shape.clone();
        self.get(name, &shape, dtype, device)
    }

    /// Loads `name`, checking it is `shape`, as `dtype` on `device`.
    pub fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        if let Some(seed) = self.random {
            return random_tensor(seed, name, shape, dtype, device);
        }
        let (info, path, map) = self.stored(name, shape)?;
        let bytes = &map[info.start..info.end];
        let host = convert(bytes, info.dtype, dtype).map_err(|msg| bad(path, format!("tensor `{name}`: {msg}")))?;
        Ok(Tensor::from_bytes(&host, dtype, shape, device)?)
    }

    /// Loads the `[rows, cols]` matrix `name` as `dtype` on `device`, as row blocks when it is
    /// larger than one binding of the device ([`Device::max_buffer_bytes`]; a 7B embedding on
    /// wgpu). Each block is converted and uploaded alone: the whole matrix is never one buffer.
    pub fn get_weight(&self, name: &str, shape: [usize; 2], dtype: DType, device: &Device) -> Result<Weight> {
        let [rows, cols] = shape;
        let row_bytes = (cols * dtype.size()).max(1) as u64;
        let limit = device.max_buffer_bytes();
        if rows as u64 * row_bytes <= limit {
            return Ok(Weight::from(self.get(name, &shape, dtype, device)?));
        }
        // As many rows as fit, a multiple of 64 when that leaves any (aligned tiles).
        let fit = (limit / row_bytes) as usize;
        let per_block = if fit >= 64 { fit / 64 * 64 } else { fit };
        if per_block == 0 {
            return Err(Error::Input(format!(
                "tensor `{name}`: one row of {row_bytes} bytes exceeds the {limit}-byte binding limit of {}",
                device.info().spec()
            )));
        }
        let mut blocks = Vec::with_capacity(rows.div_ceil(per_block));
        for start in (0..rows).step_by(per_block) {
            let n = per_block.min(rows - start);
            blocks.push(self.get_rows(name, shape, start, n, dtype, device)?);
        }
        Ok(Weight::from_blocks(blocks)?)
    }

    /// Rows `start..start + n` of the `[rows, cols]` matrix `name`.
    fn get_rows(&self, name: &str, shape: [usize; 2], start: usize, n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let cols = shape[1];
        if let Some(seed) = self.random {
            return random_tensor_from(seed, name, start * cols, &[n, cols], dtype, device);
        }
        let (info, path, map) = self.stored(name, &shape)?;
        let row_bytes = (info.end - info.start) / shape[0];
        let bytes = &map[info.start + start * row_bytes..info.start + (start + n) * row_bytes];
        let host = convert(bytes, info.dtype, dtype).map_err(|msg| bad(path, format!("tensor `{name}`: {msg}")))?;
        Ok(Tensor::from_bytes(&host, dtype, &[n, cols], device)?)
    }

    /// The stored tensor `name`, checked to be `shape` and marked used, with its file.
    fn stored(&self, name: &str, shape: &[usize]) -> Result<(&TensorInfo, &Path, &Backing)> {
        let info = self.tensors.get(name).ok_or_else(|| Error::MissingTensor { name: name.into(), dir: self.dir.clone() })?;
        if info.shape != shape {
            return Err(Error::TensorShape { name: name.into(), expected: shape.to_vec(), found: info.shape.clone() });
        }
        self.used.lock().expect("not poisoned").insert(name.to_string());
        let (path, map) = &self.files[info.file];
        Ok((info, path, map))
    }

    /// Tensors in the checkpoint that nothing asked for.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().expect("not poisoned");
        self.tensors.keys().filter(|n| !used.contains(*n)).cloned().collect()
    }
}

/// Disk bytes of one dtype to host bytes of another.
fn convert(bytes: &[u8], from: DiskDType, to: DType) -> std::result::Result<Vec<u8>, String> {
    let floats: Vec<f32> = match from {
        DiskDType::F32 if to == DType::F32 => return Ok(bytes.to_vec()),
        DiskDType::F16 if to == DType::F16 => return Ok(bytes.to_vec()),
        DiskDType::BF16 if to == DType::BF16 => return Ok(bytes.to_vec()),
        // Indices (goldens, buffers): u32, or i32 without negative values.
        DiskDType::Other("U32", 4) if to == DType::U32 => return Ok(bytes.to_vec()),
        DiskDType::Other("I32", 4) if to == DType::U32 => {
            return match bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4"))).find(|&v| v < 0) {
                Some(v) => Err(format!("i32 value {v} cannot be loaded as u32")),
                None => Ok(bytes.to_vec()),
            };
        }
        DiskDType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
        DiskDType::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DiskDType::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DiskDType::Other(name, _) => return Err(format!("dtype {name} cannot be loaded as a float weight")),
    };
    Ok(match to {
        DType::F32 => bytemuck::cast_slice(&floats).to_vec(),
        DType::F16 => floats.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        DType::BF16 => floats.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
        other => return Err(format!("cannot load weights as {other:?}")),
    })
}

/// One random tensor (see [`Weights::random`]): xorshift draws seeded by the seed and an
/// FNV hash of the name, generated in parallel chunks.
fn random_tensor(seed: u64, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    random_tensor_from(seed, name, 0, shape, dtype, device)
}

/// The elements `first..first + numel(shape)` of the random tensor `name` (a row block of it
/// holds the same values as those rows of the whole).
fn random_tensor_from(seed: u64, name: &str, first: usize, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let constant = if name.ends_with("norm.weight") {
        Some(1.0f32)
    } else if name.ends_with(".bias") {
        Some(0.0)
    } else {
        None
    };
    let key = name.bytes().fold(0xcbf29ce484222325u64 ^ seed, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let amplitude = 0.02 * 3f32.sqrt();
    let value = |i: usize| -> f32 {
        if let Some(c) = constant {
            return c;
        }
        let mut x = key ^ ((first + i) as u64).wrapping_mul(0x9E3779B97F4A7C15);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
        x ^= x >> 33;
        ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amplitude
    };
    let bytes: Vec<u8> = match dtype {
        DType::F32 => {
            let mut v = vec![0f32; n];
            nextflow_ops::pool::chunks_mut(&mut v, 1 << 16, &|start, c| c.iter_mut().enumerate().for_each(|(j, o)| *o = value(start + j)));
            bytemuck::cast_slice(&v).to_vec()
        }
        DType::F16 | DType::BF16 => {
            let mut v = vec![0u16; n];
            let half = dtype == DType::F16;
            let bits = |i: usize| if half { f16::from_f32(value(i)).to_bits() } else { bf16::from_f32(value(i)).to_bits() };
            nextflow_ops::pool::chunks_mut(&mut v, 1 << 16, &|start, c| c.iter_mut().enumerate().for_each(|(j, o)| *o = bits(start + j)));
            bytemuck::cast_slice(&v).to_vec()
        }
        other => return Err(Error::Input(format!("random weights cannot be {other:?}"))),
    };
    Ok(Tensor::from_bytes(&bytes, dtype, shape, device)?)
}
