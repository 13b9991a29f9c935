//! PyTorch checkpoints (`torch.save`, the zip format of PyTorch ≥ 1.6) as [`Weights`], read
//! without Python and without executing anything.
//!
//! The file is a zip archive of stored (uncompressed) entries under one root folder of any
//! name: `<root>/data.pkl` pickles the object that was saved, `<root>/data/<key>` holds the raw
//! little-endian bytes of each storage, `<root>/byteorder` (when present) says `little`. The
//! zip reader here handles zip64 (checkpoints past 4 GB) and finds each entry's data through
//! its *local* header (torch aligns data to 64 bytes with the local extra field); compressed
//! or encrypted entries, other byte orders and the pre-1.6 format are clear errors.
//!
//! `data.pkl` goes through [`crate::pickle`], which names only tensors, storages and plain
//! containers and refuses any other global, so a checkpoint that would run code when loaded
//! with `torch.load` is refused here instead. From the pickled object the state dict is taken:
//! the root dict when its values are mostly tensors, else the first of its entries `ema`,
//! `model`, `state_dict`, `module`, `net` that is one ([`TorchNotes`] lists what was left
//! out). Each tensor is checked to lie inside its storage; a row-major contiguous one is read
//! in place from the memory-mapped file, a strided view (a transpose, an `expand`) is copied
//! into a contiguous buffer once, at open.

use crate::pickle::{self, Pickle, TensorRecord, Value};
use crate::weights::{bad, map_file, Backing, TensorInfo, Weights};
use crate::Result;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The top-level keys under which a checkpoint may keep its state dict, in order of preference.
pub const STATE_DICT_KEYS: [&str; 5] = ["ema", "model", "state_dict", "module", "net"];

/// What a PyTorch checkpoint held besides the tensors that were loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TorchNotes {
    /// The top-level key whose dict is the state dict; `None` when the root dict is.
    pub state_dict_key: Option<String>,
    /// The other top-level keys (an optimizer, a step count, …), not loaded.
    pub ignored: Vec<String>,
    /// Entries of the state dict that are not tensors, as `name (kind)`, not loaded.
    pub skipped: Vec<String>,
}

/// Whether `prefix` (the first bytes of a file) starts a zip archive, as `torch.save` writes.
pub fn is_torch_zip(prefix: &[u8]) -> bool {
    prefix.starts_with(b"PK\x03\x04")
}

/// Whether `prefix` starts the pre-1.6 format: a pickle of the magic number 0x1950a86a20f9469cfc6c.
pub fn is_legacy_torch(prefix: &[u8]) -> bool {
    const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
    prefix.len() >= 14 && prefix[0] == 0x80 && prefix[2..4] == [0x8a, 10] && prefix[4..14] == MAGIC
}

/// The globals (`module.name`) the checkpoint's pickle names, refused ones included; nothing is
/// executed (for `inspect`).
pub fn pickle_globals(path: &Path) -> Result<Vec<String>> {
    let map = map_file(path)?;
    let archive = Archive::open(&map).map_err(|e| bad(path, e))?;
    let pkl = archive.pkl();
    let data = archive.data(&map, &pkl).map_err(|e| bad(path, e))?;
    pickle::globals(&map[data]).map_err(|e| bad(path, format!("{pkl}: {e}")))
}

impl Weights {
    /// Opens a `torch.save` checkpoint (`.pt`, `.pth`, `.bin`), memory-mapped.
    pub fn open_torch(path: &Path) -> Result<Weights> {
        let dir = path.parent().unwrap_or(Path::new("."));
        load(path, dir, Backing::Map(map_file(path)?))
    }

    /// A `torch.save` checkpoint held in memory; `name` labels errors.
    pub fn open_torch_bytes(name: &str, bytes: Vec<u8>) -> Result<Weights> {
        load(Path::new(name), Path::new(name), Backing::Owned(bytes))
    }
}

fn load(path: &Path, dir: &Path, backing: Backing) -> Result<Weights> {
    let bytes: &[u8] = &backing;
    let archive = Archive::open(bytes).map_err(|e| bad(path, e))?;
    let fail = |e: String| bad(path, e);
    let byteorder = format!("{}/byteorder", archive.prefix);
    if archive.entries.contains_key(&byteorder) {
        let order = &bytes[archive.data(bytes, &byteorder).map_err(fail)?];
        if order.trim_ascii() != b"little" {
            return Err(fail(format!("{byteorder} says `{}`: only little-endian checkpoints can be read", String::from_utf8_lossy(order).trim())));
        }
    }
    let pkl = archive.pkl();
    let pickle = pickle::parse(&bytes[archive.data(bytes, &pkl).map_err(fail)?]).map_err(|e| {
        let script = archive.entries.contains_key(&format!("{}/constants.pkl", archive.prefix));
        let hint = if script { " (a TorchScript archive, from torch.jit.save: save the model's state_dict() with torch.save instead)" } else { "" };
        fail(format!("{pkl}: {e}{hint}"))
    })?;
    let (dict, notes) = choose(&pickle).map_err(|e| fail(format!("{pkl}: {e}")))?;

    let mut tensors = BTreeMap::new();
    let mut copies = Vec::new();
    let copy_limit = bytes.len().saturating_mul(2).max(1 << 30);
    for (k, v) in dict {
        if let Some(t) = pickle.tensor(*v) {
            let name = key_name(&pickle, *k);
            let info = place(t, &archive, bytes, &mut copies, copy_limit).map_err(|e| fail(format!("tensor `{name}`: {e}")))?;
            tensors.insert(name, info);
        }
    }
    let mut files = vec![(path.to_path_buf(), backing)];
    if !copies.is_empty() {
        files.push((PathBuf::from(format!("{} (strided views, copied)", path.display())), Backing::Owned(copies)));
    }
    Ok(Weights::from_parts(dir, files, tensors, Some(notes)))
}

/// A dict key as a tensor name.
fn key_name(p: &Pickle, k: Value) -> String {
    match (p.str(k), k) {
        (Some(s), _) => s.to_string(),
        (None, Value::Int(i)) => i.to_string(),
        _ => format!("<{}>", p.kind(k)),
    }
}

/// Whether `v` is a dict whose values are mostly (at least half) tensors.
fn is_state_dict(p: &Pickle, v: Value) -> bool {
    p.dict(v).is_some_and(|d| {
        let tensors = d.iter().filter(|(_, v)| p.tensor(*v).is_some()).count();
        tensors > 0 && 2 * tensors >= d.len()
    })
}

/// A dict's entries in pickle order.
type Entries<'a> = &'a [(Value, Value)];

/// The state dict in the pickled object, and what was left out.
fn choose(p: &Pickle) -> std::result::Result<(Entries<'_>, TorchNotes), String> {
    let root = p.dict(p.root).ok_or_else(|| format!("the checkpoint holds a {}, not a dict of tensors", p.kind(p.root)))?;
    let mut notes = TorchNotes::default();
    let chosen = if is_state_dict(p, p.root) {
        root
    } else if let Some((key, v)) = STATE_DICT_KEYS.iter().find_map(|&want| root.iter().find(|(k, v)| p.str(*k) == Some(want) && is_state_dict(p, *v))) {
        notes.state_dict_key = Some(key_name(p, *key));
        notes.ignored = root.iter().filter(|(k, _)| k != key).map(|(k, _)| key_name(p, *k)).collect();
        p.dict(*v).unwrap_or_default()
    } else if root.iter().any(|(_, v)| p.tensor(*v).is_some()) {
        root
    } else {
        let keys: Vec<String> = root.iter().map(|(k, _)| key_name(p, *k)).collect();
        return Err(format!(
            "no state dict: neither the top-level dict nor its entry {} is a dict of tensors (top-level keys: {})",
            STATE_DICT_KEYS.join(", "),
            if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
        ));
    };
    notes.skipped = chosen.iter().filter(|(_, v)| p.tensor(*v).is_none()).map(|(k, v)| format!("{} ({})", key_name(p, *k), p.kind(*v))).collect();
    Ok((chosen, notes))
}

/// Where the tensor `t` will be read from: in place when it is contiguous, else from a copy
/// appended to `copies` (file 1).
fn place(t: &TensorRecord, archive: &Archive, bytes: &[u8], copies: &mut Vec<u8>, copy_limit: usize) -> std::result::Result<TensorInfo, String> {
    let dtype = t.storage.dtype.ok_or("its storage is untyped, so its element type is unknown")?;
    let es = dtype.size();
    let entry = format!("{}/data/{}", archive.prefix, t.storage.key);
    let data = archive.data(bytes, &entry)?;
    let shape = t.shape.clone();
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| format!("size {shape:?} holds more elements than memory can"))?;
    if numel == 0 {
        return Ok(TensorInfo { dtype, shape, file: 0, start: data.start, end: data.start });
    }
    // The element one past the last the view reaches, in bytes, must lie inside the storage.
    let reach = shape.iter().zip(&t.stride).try_fold(t.offset, |at, (&n, &s)| (n - 1).checked_mul(s).and_then(|x| at.checked_add(x)));
    let need = reach.and_then(|r| r.checked_add(1)).and_then(|r| r.checked_mul(es));
    if need.is_none_or(|n| n > data.len()) {
        return Err(format!(
            "its view (offset {}, size {shape:?}, stride {:?}, {}) reaches past its storage {entry} of {} bytes",
            t.offset,
            t.stride,
            dtype.name(),
            data.len()
        ));
    }
    let nbytes = numel.checked_mul(es).ok_or("too many bytes")?;
    if contiguous(&shape, &t.stride) {
        let start = data.start + t.offset * es;
        return Ok(TensorInfo { dtype, shape, file: 0, start, end: start + nbytes });
    }
    if copies.len().saturating_add(nbytes) > copy_limit {
        return Err(format!("copying its strided view ({nbytes} bytes) would exceed {copy_limit} bytes of copies"));
    }
    copies.try_reserve_exact(nbytes).map_err(|_| format!("no memory for a {nbytes}-byte copy of its strided view"))?;
    let start = copies.len();
    gather(&bytes[data], es, t, copies);
    Ok(TensorInfo { dtype, shape, file: 1, start, end: copies.len() })
}

/// Whether `shape` with `stride` is row-major contiguous (dims of size 1 may have any stride).
fn contiguous(shape: &[usize], stride: &[usize]) -> bool {
    let mut expect = 1usize;
    for (&n, &s) in shape.iter().zip(stride).rev() {
        if n != 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(n);
    }
    true
}

/// Appends the elements of the strided view `t` of `src` to `out`, row-major. `place` has
/// checked that every element lies inside `src` and that the view has at least one dimension
/// and one element.
fn gather(src: &[u8], es: usize, t: &TensorRecord, out: &mut Vec<u8>) {
    let nd = t.shape.len();
    let (run, step) = (t.shape[nd - 1], t.stride[nd - 1]);
    let mut index = vec![0usize; nd - 1];
    loop {
        let base = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        if step == 1 {
            out.extend_from_slice(&src[base * es..(base + run) * es]);
        } else {
            for j in 0..run {
                let at = (base + j * step) * es;
                out.extend_from_slice(&src[at..at + es]);
            }
        }
        // The next index of the outer dimensions, last fastest.
        let mut d = nd - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

/// One zip entry as the central directory describes it.
struct Entry {
    method: u16,
    flags: u16,
    size: u64,
    compressed: u64,
    /// The offset of its local header.
    local: u64,
}

/// The entries of a zip archive, and the root folder of the checkpoint in it.
struct Archive {
    entries: HashMap<String, Entry>,
    /// `<root>` of `<root>/data.pkl`.
    prefix: String,
}

/// `n` (≤ 8) little-endian bytes at `at`, or an error when they lie past the end.
fn le(b: &[u8], at: usize, n: usize) -> std::result::Result<u64, String> {
    let s = at.checked_add(n).and_then(|end| b.get(at..end)).ok_or_else(|| format!("zip structure at offset {at} lies past the end of the file ({} bytes): truncated", b.len()))?;
    Ok(s.iter().rev().fold(0, |v, &x| v << 8 | x as u64))
}

fn offset(v: u64) -> std::result::Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("zip offset {v} exceeds the address space"))
}

impl Archive {
    fn open(b: &[u8]) -> std::result::Result<Archive, String> {
        const EOCD: u64 = 0x0605_4b50;
        const EOCD64: u64 = 0x0606_4b50;
        const LOCATOR64: u64 = 0x0706_4b50;
        const CENTRAL: u64 = 0x0201_4b50;
        // The end record (22 bytes and a comment of at most 64 KiB) closes the file.
        let lowest = b.len().saturating_sub(22 + 0xffff);
        let eocd = (lowest..b.len().saturating_sub(21)).rev().find(|&i| le(b, i, 4) == Ok(EOCD));
        let Some(eocd) = eocd else {
            return Err(if is_legacy_torch(b) {
                "the legacy PyTorch format from before PyTorch 1.6 (not a zip archive): re-save it with torch.save of a current PyTorch".into()
            } else if is_torch_zip(b) {
                "a zip archive without its end-of-central-directory record: the file is truncated".into()
            } else {
                format!("not a PyTorch checkpoint: no zip archive (it starts with {:02x?})", &b[..b.len().min(8)])
            });
        };
        let (mut count, mut cd_size, mut cd_at) = (le(b, eocd + 10, 2)?, le(b, eocd + 12, 4)?, le(b, eocd + 16, 4)?);
        if eocd >= 20 && le(b, eocd - 20, 4)? == LOCATOR64 {
            let at = offset(le(b, eocd - 12, 8)?)?;
            if le(b, at, 4)? != EOCD64 {
                return Err(format!("the zip64 end record is not at offset {at}: corrupt or truncated archive"));
            }
            (count, cd_size, cd_at) = (le(b, at + 32, 8)?, le(b, at + 40, 8)?, le(b, at + 48, 8)?);
        }
        let (cd_at, cd_size) = (offset(cd_at)?, offset(cd_size)?);
        if cd_at.checked_add(cd_size).is_none_or(|end| end > b.len()) {
            return Err(format!("the central directory ({cd_size} bytes at offset {cd_at}) lies past the end of the file ({} bytes): truncated", b.len()));
        }
        if count > (cd_size / 46) as u64 {
            return Err(format!("the central directory claims {count} entries but has room for {}", cd_size / 46));
        }
        let cd = &b[cd_at..cd_at + cd_size];
        let mut entries = HashMap::new();
        let mut p = 0;
        for _ in 0..count {
            if le(cd, p, 4)? != CENTRAL {
                return Err(format!("central directory entry at offset {} has a bad signature", cd_at + p));
            }
            let (name_len, extra_len, comment_len) = (le(cd, p + 28, 2)? as usize, le(cd, p + 30, 2)? as usize, le(cd, p + 32, 2)? as usize);
            let name = cd.get(p + 46..p + 46 + name_len).ok_or("a central directory entry's name lies past the directory")?;
            let name = String::from_utf8_lossy(name).into_owned();
            let mut e = Entry { flags: le(cd, p + 8, 2)? as u16, method: le(cd, p + 10, 2)? as u16, compressed: le(cd, p + 20, 4)?, size: le(cd, p + 24, 4)?, local: le(cd, p + 42, 4)? };
            // Zip64: the 32-bit fields that are all ones are in the extra field 0x0001, in order.
            let extra = cd.get(p + 46 + name_len..p + 46 + name_len + extra_len).ok_or_else(|| format!("entry {name}: extra field lies past the directory"))?;
            let mut x = 0;
            while x + 4 <= extra.len() {
                let (id, len) = (le(extra, x, 2)?, le(extra, x + 2, 2)? as usize);
                if id == 1 {
                    let mut f = x + 4;
                    for field in [&mut e.size, &mut e.compressed, &mut e.local] {
                        if *field == 0xffff_ffff {
                            *field = le(extra, f, 8).map_err(|_| format!("entry {name}: zip64 extra field too short"))?;
                            f += 8;
                        }
                    }
                }
                x += 4 + len;
            }
            if entries.insert(name.clone(), e).is_some() {
                return Err(format!("two zip entries are named {name}"));
            }
            p += 46 + name_len + extra_len + comment_len;
        }
        let pickles: Vec<&String> = entries.keys().filter(|n| n.ends_with("/data.pkl")).collect();
        let [pkl] = pickles.as_slice() else {
            return Err(format!("the zip archive holds {} entries named <folder>/data.pkl, not one: not a torch.save checkpoint", pickles.len()));
        };
        let prefix = pkl[..pkl.len() - "/data.pkl".len()].to_string();
        Ok(Archive { entries, prefix })
    }

    fn pkl(&self) -> String {
        format!("{}/data.pkl", self.prefix)
    }

    /// Where the data of entry `name` lies in the file, through its local header.
    fn data(&self, b: &[u8], name: &str) -> std::result::Result<Range<usize>, String> {
        const LOCAL: u64 = 0x0403_4b50;
        let e = self.entries.get(name).ok_or_else(|| format!("the archive has no entry {name}"))?;
        if e.method != 0 {
            let how = match e.method {
                8 => "deflate",
                12 => "bzip2",
                14 => "lzma",
                93 => "zstd",
                _ => "unknown",
            };
            return Err(format!("zip entry {name} is compressed (method {} = {how}); only stored entries, as torch.save writes them, can be read", e.method));
        }
        if e.flags & 1 != 0 {
            return Err(format!("zip entry {name} is encrypted"));
        }
        if e.size != e.compressed {
            return Err(format!("zip entry {name} is stored but its sizes differ ({} and {})", e.size, e.compressed));
        }
        let local = offset(e.local)?;
        if le(b, local, 4).map_err(|m| format!("entry {name}: {m}"))? != LOCAL {
            return Err(format!("zip entry {name}: no local header at offset {local}"));
        }
        let start = (local + 30).saturating_add(le(b, local + 26, 2)? as usize).saturating_add(le(b, local + 28, 2)? as usize);
        let end = start.saturating_add(offset(e.size)?);
        if end > b.len() {
            return Err(format!("zip entry {name} ({} bytes at offset {start}) lies past the end of the file ({} bytes): truncated", e.size, b.len()));
        }
        Ok(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip archive of stored entries, each with `pad` bytes of local extra field and, when
    /// `zip64`, sizes and offsets in zip64 extra fields and the zip64 end records.
    pub(crate) fn zip(entries: &[(&str, &[u8])], pad: usize, zip64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data) in entries {
            let at = out.len() as u64;
            out.extend(0x0403_4b50u32.to_le_bytes());
            out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((name.len() as u16).to_le_bytes());
            out.extend((pad as u16).to_le_bytes());
            out.extend(name.as_bytes());
            out.extend(vec![0; pad]);
            out.extend(*data);
            let (small, extra) = if zip64 {
                let mut x = vec![1, 0, 24, 0];
                x.extend((data.len() as u64).to_le_bytes());
                x.extend((data.len() as u64).to_le_bytes());
                x.extend(at.to_le_bytes());
                (0xffff_ffffu32, x)
            } else {
                (data.len() as u32, Vec::new())
            };
            central.extend(0x0201_4b50u32.to_le_bytes());
            central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            central.extend(small.to_le_bytes());
            central.extend(small.to_le_bytes());
            central.extend((name.len() as u16).to_le_bytes());
            central.extend((extra.len() as u16).to_le_bytes());
            central.extend([0; 10]); // comment length, disk, attributes
            central.extend(if zip64 { 0xffff_ffff } else { at as u32 }.to_le_bytes());
            central.extend(name.as_bytes());
            central.extend(extra);
        }
        let (cd_at, n) = (out.len() as u64, entries.len() as u64);
        out.extend(&central);
        if zip64 {
            let eocd64 = out.len() as u64;
            out.extend(0x0606_4b50u32.to_le_bytes());
            out.extend(44u64.to_le_bytes());
            out.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            for v in [n, n, central.len() as u64, cd_at] {
                out.extend(v.to_le_bytes());
            }
            out.extend(0x0706_4b50u32.to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend(eocd64.to_le_bytes());
            out.extend(1u32.to_le_bytes());
        }
        out.extend(0x0605_4b50u32.to_le_bytes());
        out.extend([0; 4]);
        let short = if zip64 { [0xff; 2] } else { (n as u16).to_le_bytes() };
        out.extend(short);
        out.extend(short);
        out.extend(if zip64 { 0xffff_ffff } else { central.len() as u32 }.to_le_bytes());
        out.extend(if zip64 { 0xffff_ffff } else { cd_at as u32 }.to_le_bytes());
        out.extend([0, 0]);
        out
    }

    /// A pickle of `{'w': <f32 tensor of `shape`, `stride`, offset 1 in storage '0' of 7 floats>}`.
    fn tensor_pickle(shape: &[u8], stride: &[u8]) -> Vec<u8> {
        let mut p = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x07tQK\x01(".to_vec();
        p.extend(shape.iter().flat_map(|&d| [b'K', d]));
        p.extend(b"t(");
        p.extend(stride.iter().flat_map(|&d| [b'K', d]));
        p.extend(b"t\x89}tRs.");
        p
    }

    fn floats(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    #[test]
    fn zip64_and_padded_local_headers() {
        for (pad, zip64) in [(0, false), (37, false), (0, true), (61, true)] {
            let pkl = tensor_pickle(&[2, 3], &[3, 1]);
            let z = zip(&[("any_root/data.pkl", &pkl), ("any_root/byteorder", b"little"), ("any_root/data/0", &floats(7))], pad, zip64);
            let w = Weights::open_torch_bytes("t.pt", z).unwrap();
            let v: Vec<f32> = w.raw("w").unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            assert_eq!(v, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "pad {pad}, zip64 {zip64}");
        }
    }

    #[test]
    fn strided_views_are_copied_and_bounds_checked() {
        // The transpose of a [3, 2] view at offset 1: [[1, 3, 5], [2, 4, 6]].
        let z = zip(&[("r/data.pkl", &tensor_pickle(&[2, 3], &[1, 2])), ("r/data/0", &floats(7))], 0, false);
        let w = Weights::open_torch_bytes("t.pt", z).unwrap();
        let v: Vec<f32> = w.raw("w").unwrap().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert_eq!(v, [1.0, 3.0, 5.0, 2.0, 4.0, 6.0]);
        let z = zip(&[("r/data.pkl", &tensor_pickle(&[2, 4], &[4, 1])), ("r/data/0", &floats(7))], 0, false);
        let e = Weights::open_torch_bytes("t.pt", z).err().unwrap().to_string();
        assert!(e.contains("tensor `w`") && e.contains("reaches past its storage r/data/0 of 28 bytes"), "{e}");
        // An `expand` to 255^4 elements of one float is refused before anything is allocated.
        let z = zip(&[("r/data.pkl", &tensor_pickle(&[255; 4], &[0; 4])), ("r/data/0", &floats(7))], 0, false);
        let e = Weights::open_torch_bytes("t.pt", z).err().unwrap().to_string();
        assert!(e.contains("would exceed"), "{e}");
    }

    #[test]
    fn archive_errors() {
        let pkl = tensor_pickle(&[2], &[1]);
        let msg = |z: Vec<u8>| Weights::open_torch_bytes("t.pt", z).err().unwrap().to_string();
        let big = zip(&[("r/data.pkl", &pkl), ("r/byteorder", b"big"), ("r/data/0", &floats(7))], 0, false);
        assert!(msg(big).contains("r/byteorder says `big`"));
        let mut deflated = zip(&[("r/data.pkl", &pkl), ("r/data/0", &floats(7))], 0, false);
        let cd = deflated.len() - 22 - (46 + 10) - (46 + 8);
        deflated[cd + 10] = 8; // method of r/data.pkl
        let e = msg(deflated);
        assert!(e.contains("r/data.pkl is compressed (method 8 = deflate)"), "{e}");
        assert!(msg(zip(&[("r/other.pkl", &pkl)], 0, false)).contains("0 entries named <folder>/data.pkl"));
        assert!(msg(b"hello world, not a zip".to_vec()).contains("not a PyTorch checkpoint"));
        assert!(msg(zip(&[("r/data.pkl", &pkl)], 0, false)).contains("no entry r/data/0"));
    }
}
