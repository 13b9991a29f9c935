//! Minimal `.npy` (format 1.0) writer and reader for f32 arrays, so scripts can compare our
//! logits with other implementations.

use std::path::Path;

/// Writes a little-endian f32 array of `shape` (replacing any file at `path`).
pub fn write_f32(path: &Path, data: &[f32], shape: &[usize]) -> std::io::Result<()> {
    std::fs::write(path, encode_f32(data, shape))
}

/// The bytes of a `.npy` file holding a little-endian f32 array of `shape`.
pub fn encode_f32(data: &[f32], shape: &[usize]) -> Vec<u8> {
    assert_eq!(data.len(), shape.iter().product::<usize>(), "data does not fill the shape");
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut f = Vec::with_capacity(header.len() + 10 + data.len() * 4);
    f.extend_from_slice(b"\x93NUMPY\x01\x00");
    f.extend_from_slice(&(header.len() as u16).to_le_bytes());
    f.extend_from_slice(header.as_bytes());
    for x in data {
        f.extend_from_slice(&x.to_le_bytes());
    }
    f
}

/// Reads an array written by [`write_f32`] (or numpy, `<f4`, C order): `(data, shape)`.
pub fn read_f32(path: &Path) -> std::io::Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path)?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {m}", path.display()));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let n = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(bytes.get(10..10 + n).ok_or_else(|| bad("truncated header"))?).map_err(|_| bad("header is not text"))?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("only little-endian f32 C-order arrays are supported"));
    }
    let inner = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).ok_or_else(|| bad("no shape"))?;
    let shape: Vec<usize> = inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().map_err(|_| bad("bad shape"))).collect::<Result<_, _>>()?;
    let data = &bytes[10 + n..];
    if data.len() != shape.iter().product::<usize>() * 4 {
        return Err(bad("data does not match the shape"));
    }
    Ok((data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(), shape))
}
