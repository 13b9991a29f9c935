use crate::layout::{contiguous_strides, Layout};
use crate::storage::Storage;
use crate::{DType, Device, Element, Error, Result};
use std::fmt;
use std::sync::Arc;

/// A strided view of a typed buffer on one device. Views (reshape, permute, narrow,
/// broadcast) share the buffer; ops in `nextflow-ops` produce new buffers.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
    dtype: DType,
    device: Device,
}

impl Tensor {
    /// Wraps a buffer; `layout` must lie inside it.
    pub fn from_storage(storage: Storage, layout: Layout, dtype: DType, device: Device) -> Tensor {
        Tensor { storage: Arc::new(storage), layout, dtype, device }
    }

    /// Uploads host values as a contiguous tensor of `T`'s dtype.
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_bytes(bytemuck::cast_slice(data), T::DTYPE, shape, device)
    }

    /// Uploads little-endian element bytes.
    pub fn from_bytes(bytes: &[u8], dtype: DType, shape: &[usize], device: &Device) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        if bytes.len() != numel * dtype.size() {
            return Err(Error::DataLength { op: "from_bytes", shape: shape.to_vec(), expected: numel, found: bytes.len() / dtype.size() });
        }
        Ok(Tensor::from_storage(device.upload(bytes)?, Layout::contiguous(shape), dtype, device.clone()))
    }

    /// Converts f64 values to `dtype` on the host and uploads them (test and loader helper).
    pub fn from_f64(values: &[f64], dtype: DType, shape: &[usize], device: &Device) -> Result<Tensor> {
        Tensor::from_bytes(&dtype.f64_to_bytes(values), dtype, shape, device)
    }

    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }
    pub fn strides(&self) -> &[usize] {
        self.layout.strides()
    }
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn layout(&self) -> &Layout {
        &self.layout
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// The buffer for writing in place, if no other tensor or view shares it.
    /// The buffer itself when this is its last handle.
    pub fn into_storage(self) -> Option<Storage> {
        Arc::try_unwrap(self.storage).ok()
    }
    pub fn storage_mut(&mut self) -> Option<&mut Storage> {
        Arc::get_mut(&mut self.storage)
    }
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }
    /// Contiguous and starting at the buffer's first element.
    pub fn is_dense(&self) -> bool {
        self.layout.is_contiguous() && self.layout.offset() == 0
    }

    fn view(&self, layout: Layout) -> Tensor {
        Tensor { storage: self.storage.clone(), layout, dtype: self.dtype, device: self.device.clone() }
    }

    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.view(self.layout.reshape(shape)?))
    }
    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        Ok(self.view(self.layout.permute(dims)?))
    }
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        self.layout.check_dim("transpose", a)?;
        self.layout.check_dim("transpose", b)?;
        let mut dims: Vec<usize> = (0..self.rank()).collect();
        dims.swap(a, b);
        self.permute(&dims)
    }
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.view(self.layout.narrow(dim, start, len)?))
    }
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.view(self.layout.broadcast_to(shape)?))
    }
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim, rank: self.rank() });
        }
        let mut shape = self.shape().to_vec();
        let mut strides = self.strides().to_vec();
        let stride = if dim < self.rank() { strides[dim] * shape[dim] } else { 1 };
        shape.insert(dim, 1);
        strides.insert(dim, stride);
        Ok(self.view(Layout::new(shape, strides, self.layout.offset())))
    }

    /// The element bytes of the view, in row-major logical order (downloads the buffer).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let raw = self.device.download(&self.storage)?;
        let size = self.dtype.size();
        if self.is_contiguous() {
            let start = self.layout.offset() * size;
            return Ok(raw[start..start + self.numel() * size].to_vec());
        }
        let mut out = Vec::with_capacity(self.numel() * size);
        for o in self.layout.offsets() {
            out.extend_from_slice(&raw[o * size..(o + 1) * size]);
        }
        Ok(out)
    }

    /// Downloads the view as `T` (must match the dtype).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch { op: "to_vec", expected: T::DTYPE, found: self.dtype });
        }
        let bytes = self.to_bytes()?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Downloads the view as f64 whatever its dtype (exact for every dtype).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(self.dtype.bytes_to_f64(&self.to_bytes()?))
    }

    /// Copies the view to another device (contiguous there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_bytes(&self.to_bytes()?, self.dtype, self.shape(), device)
    }

    /// Row-major strides for this tensor's shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        contiguous_strides(self.shape())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({:?}, {}, {:?})", self.shape(), self.dtype, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{discover, DType};

    fn devices() -> Vec<Device> {
        discover().devices.iter().map(|d| Device::open_info(d).unwrap()).collect()
    }

    #[test]
    fn upload_download_round_trips_every_dtype_on_every_device() {
        for device in devices() {
            for dtype in DType::ALL {
                let values: Vec<f64> = (0..7).map(|i| (i * 3) as f64).collect();
                let t = Tensor::from_f64(&values, dtype, &[7], &device).unwrap();
                assert_eq!(t.to_f64_vec().unwrap(), values, "{dtype} on {device}");
            }
        }
    }

    #[test]
    fn views_share_the_buffer_and_read_back_in_logical_order() {
        for device in devices() {
            let t = Tensor::from_slice(&(0..24).collect::<Vec<u32>>(), &[2, 3, 4], &device).unwrap();
            let v = t.permute(&[2, 0, 1]).unwrap().narrow(0, 1, 2).unwrap();
            assert!(Arc::ptr_eq(&t.storage, &v.storage), "views never copy");
            assert_eq!(v.shape(), &[2, 2, 3]);
            assert_eq!(v.to_vec::<u32>().unwrap(), vec![1, 5, 9, 13, 17, 21, 2, 6, 10, 14, 18, 22]);
            let b = t.narrow(2, 3, 1).unwrap().broadcast_to(&[2, 3, 2]).unwrap();
            assert_eq!(b.to_vec::<u32>().unwrap(), vec![3, 3, 7, 7, 11, 11, 15, 15, 19, 19, 23, 23]);
            let u = t.reshape(&[6, 4]).unwrap().unsqueeze(1).unwrap();
            assert_eq!(u.shape(), &[6, 1, 4]);
            assert_eq!(u.to_vec::<u32>().unwrap(), (0..24).collect::<Vec<u32>>());
        }
    }

    #[test]
    fn buffers_past_the_device_limit_are_errors_not_aborts() {
        for device in devices() {
            let limit = device.max_buffer_bytes();
            if limit < 1 << 30 {
                let err = device.alloc(limit as usize + 4).unwrap_err();
                assert!(matches!(err, Error::BufferTooLarge { .. }), "{err}");
                assert!(err.to_string().contains("limit"), "{err}");
            }
        }
    }

    #[test]
    fn caller_mistakes_are_errors() {
        let cpu = Device::cpu();
        assert!(matches!(Tensor::from_slice(&[1.0f32; 5], &[2, 3], &cpu), Err(Error::DataLength { .. })));
        let t = Tensor::from_slice(&[1.0f32; 6], &[2, 3], &cpu).unwrap();
        assert!(matches!(t.to_vec::<u32>(), Err(Error::DTypeMismatch { .. })));
        assert!(matches!(t.transpose(0, 2), Err(Error::DimOutOfRange { .. })));
        assert!(matches!(t.unsqueeze(3), Err(Error::DimOutOfRange { .. })));
        assert!(t.transpose(0, 1).unwrap().reshape(&[6]).is_err());
    }
}
