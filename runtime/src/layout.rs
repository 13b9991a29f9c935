use crate::{Error, Result};

/// Shape, element strides and offset of a view into a buffer. Stride 0 broadcasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides of a contiguous tensor.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Layout {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    pub(crate) fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Layout {
        assert_eq!(shape.len(), strides.len(), "layout rank mismatch");
        Layout { shape, strides, offset }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Row-major with no gaps and no broadcast (size-1 dims may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&n, &s) in self.shape.iter().zip(&self.strides).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected *= n;
        }
        true
    }

    /// Largest element offset the view touches, plus one (0 for an empty view).
    pub fn extent(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        self.offset + self.shape.iter().zip(&self.strides).map(|(&n, &s)| (n - 1) * s).sum::<usize>() + 1
    }

    /// Storage offsets of every element in row-major logical order.
    pub fn offsets(&self) -> impl Iterator<Item = usize> + '_ {
        self.offsets_range(0, self.numel())
    }

    /// Storage offset of logical element `index` (row-major), without allocating.
    pub fn offset_of(&self, index: usize) -> usize {
        let (mut rem, mut at) = (index, self.offset);
        for d in (0..self.rank()).rev() {
            at += (rem % self.shape[d].max(1)) * self.strides[d];
            rem /= self.shape[d].max(1);
        }
        at
    }

    /// Storage offsets of logical elements `start..start + len` (chunks can run in parallel).
    pub fn offsets_range(&self, start: usize, len: usize) -> impl Iterator<Item = usize> + '_ {
        let mut index = vec![0usize; self.rank()];
        let mut current = self.offset;
        let mut rem = start;
        for d in (0..self.rank()).rev() {
            index[d] = rem % self.shape[d].max(1);
            rem /= self.shape[d].max(1);
            current += index[d] * self.strides[d];
        }
        (0..len).map(move |i| {
            if i > 0 {
                // Odometer increment from the innermost dim.
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    current += self.strides[d];
                    if index[d] < self.shape[d] {
                        break;
                    }
                    current -= self.strides[d] * index[d];
                    index[d] = 0;
                }
            }
            current
        })
    }

    pub fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange { op, dim, rank: self.rank() });
        }
        Ok(())
    }

    /// Same elements under a new shape; only where the strides allow it without a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Layout> {
        let numel: usize = shape.iter().product();
        if numel != self.numel() {
            return Err(Error::Shape {
                op: "reshape",
                msg: format!("cannot reshape {:?} ({} elements) to {:?} ({} elements)", self.shape, self.numel(), shape, numel),
            });
        }
        if self.is_contiguous() {
            return Ok(Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: self.offset });
        }
        if let Some(strides) = view_strides(&self.shape, &self.strides, shape) {
            return Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset });
        }
        Err(Error::Shape {
            op: "reshape",
            msg: format!(
                "the view {:?} with strides {:?} is not contiguous; call contiguous() first",
                self.shape, self.strides
            ),
        })
    }

    pub fn permute(&self, dims: &[usize]) -> Result<Layout> {
        let mut seen = vec![false; self.rank()];
        if dims.len() != self.rank() || dims.iter().any(|&d| d >= self.rank() || std::mem::replace(&mut seen[d], true)) {
            return Err(Error::Shape {
                op: "permute",
                msg: format!("{dims:?} is not a permutation of the {} dims of {:?}", self.rank(), self.shape),
            });
        }
        Ok(Layout {
            shape: dims.iter().map(|&d| self.shape[d]).collect(),
            strides: dims.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        })
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        self.check_dim("narrow", dim)?;
        if start.checked_add(len).is_none_or(|end| end > self.shape[dim]) {
            return Err(Error::Shape {
                op: "narrow",
                msg: format!("range {start}..{} is outside dim {dim} of size {}", start.saturating_add(len), self.shape[dim]),
            });
        }
        let mut out = self.clone();
        out.shape[dim] = len;
        out.offset += start * self.strides[dim];
        Ok(out)
    }

    /// Numpy broadcasting: align trailing dims; size-1 dims stretch with stride 0.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Layout> {
        let err = || Error::Shape { op: "broadcast", msg: format!("cannot broadcast {:?} to {:?}", self.shape, shape) };
        if shape.len() < self.rank() {
            return Err(err());
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (d, &n) in shape.iter().enumerate().skip(lead) {
            let (own, stride) = (self.shape[d - lead], self.strides[d - lead]);
            strides[d] = match own {
                _ if own == n => stride,
                1 => 0,
                _ => return Err(err()),
            };
        }
        Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }
}

/// The shape two operands broadcast to (numpy rules), or an error naming both.
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let get = |s: &[usize], d: usize| if d + s.len() >= rank { s[d + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|d| match (get(a, d), get(b, d)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::Shape { op, msg: format!("shapes {a:?} and {b:?} do not broadcast") }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_strides() {
        let l = Layout::contiguous(&[2, 3]).permute(&[1, 0]).unwrap();
        assert_eq!(l.offsets().collect::<Vec<_>>(), vec![0, 3, 1, 4, 2, 5]);
        let n = Layout::contiguous(&[4, 5]).narrow(1, 1, 2).unwrap();
        assert_eq!(n.offsets().collect::<Vec<_>>(), vec![1, 2, 6, 7, 11, 12, 16, 17]);
        assert_eq!(n.offsets_range(3, 4).collect::<Vec<_>>(), vec![7, 11, 12, 16]);
        assert!((0..n.numel()).all(|i| n.offset_of(i) == n.offsets_range(i, 1).next().unwrap()));
        assert!(!n.is_contiguous());
        let b = Layout::contiguous(&[3, 1]).broadcast_to(&[2, 3, 2]).unwrap();
        assert_eq!(b.offsets().collect::<Vec<_>>(), vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn reshape_views_split_and_merge_contiguous_runs() {
        // A fused QKV output [2, 3, 12] narrowed to k's 4 columns, split into 2 heads of 2.
        let k = Layout::contiguous(&[2, 3, 12]).narrow(2, 4, 4).unwrap();
        let heads = k.reshape(&[2, 3, 2, 2]).unwrap();
        assert_eq!(heads.strides, vec![36, 12, 2, 1]);
        assert_eq!(heads.offset, 4);
        let direct: Vec<usize> = k.offsets().collect();
        assert_eq!(heads.offsets().collect::<Vec<_>>(), direct);
        // Merging the heads back is a view too; merging across the gap is not.
        assert_eq!(heads.reshape(&[2, 3, 4]).unwrap().offsets().collect::<Vec<_>>(), direct);
        assert!(k.reshape(&[6, 4]).is_ok());
        assert!(k.reshape(&[24]).is_err());
        // A transposed matrix cannot be flattened without a copy.
        assert!(Layout::contiguous(&[3, 4]).permute(&[1, 0]).unwrap().reshape(&[12]).is_err());
    }

    #[test]
    fn bad_views_are_errors() {
        let l = Layout::contiguous(&[2, 3]);
        assert!(l.reshape(&[4]).is_err());
        assert!(l.permute(&[0, 0]).is_err());
        assert!(l.narrow(1, 2, 2).is_err());
        assert!(l.narrow(2, 0, 1).is_err());
        assert!(l.broadcast_to(&[3, 3]).is_err());
        assert!(l.permute(&[1, 0]).unwrap().reshape(&[6]).is_err());
        assert_eq!(broadcast_shape("t", &[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
        assert!(broadcast_shape("t", &[2], &[3]).is_err());
    }
}

/// Strides of `new_shape` viewing the same elements as `(shape, strides)` without a copy,
/// if there are any: each run of old dims that is contiguous within itself may be split or
/// merged (PyTorch's `view` rule), e.g. `[b, s, 3n]` narrowed to `[b, s, n]` views as
/// `[b, s, h, n/h]`.
fn view_strides(shape: &[usize], strides: &[usize], new_shape: &[usize]) -> Option<Vec<usize>> {
    if shape.is_empty() || shape.contains(&0) {
        return None;
    }
    let mut out = vec![0usize; new_shape.len()];
    let mut view_d = new_shape.len() as isize - 1;
    let mut base = strides[shape.len() - 1];
    let (mut tensor_numel, mut view_numel) = (1usize, 1usize);
    for d in (0..shape.len()).rev() {
        tensor_numel *= shape[d];
        if d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * base) {
            while view_d >= 0 && (view_numel < tensor_numel || new_shape[view_d as usize] == 1) {
                out[view_d as usize] = view_numel * base;
                view_numel *= new_shape[view_d as usize];
                view_d -= 1;
            }
            if view_numel != tensor_numel {
                return None;
            }
            if d > 0 {
                base = strides[d - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    (view_d == -1).then_some(out)
}
