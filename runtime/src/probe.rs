//! Driver probing through `dlopen`, before any cubecl client exists.
//!
//! cudarc panics inside a device thread when libcuda is missing, and the HIP backend
//! behaves the same way with libamdhip64. So discovery never creates a client blindly: it
//! first opens the driver library itself, asks it for devices, and only then lets the
//! caller build a client for a device that exists.

use libloading::{Library, Symbol};
use std::ffi::{c_char, c_int, c_uint, CStr};

/// One GPU found through a vendor driver.
#[derive(Clone, Debug)]
pub struct DriverDevice {
    pub name: String,
    pub memory_bytes: Option<u64>,
    /// Compute capability (CUDA) or gcn arch major/minor (HIP), where the driver tells.
    pub capability: Option<(i32, i32)>,
}

fn open_first(names: &[&str]) -> Result<Library, String> {
    for name in names {
        // SAFETY: loading a vendor driver library runs its initialisers; these are the
        // same libraries the cubecl backends would load themselves.
        if let Ok(lib) = unsafe { Library::new(name) } {
            return Ok(lib);
        }
    }
    Err(format!("{} not found", names[0]))
}

const CUDA_DRIVER: &[&str] = &["libcuda.so.1", "libcuda.so", "nvcuda.dll"];
const CUDA_NVRTC: &[&str] = &[
    "libnvrtc.so",
    "libnvrtc.so.13",
    "libnvrtc.so.12",
    "libnvrtc.so.11.2",
    "nvrtc64_120_0.dll",
    "nvrtc64_130_0.dll",
];
const HIP_RUNTIME: &[&str] = &["libamdhip64.so", "libamdhip64.so.7", "libamdhip64.so.6", "libamdhip64.so.5", "amdhip64.dll"];
const HIP_RTC: &[&str] = &["libhiprtc.so", "libhiprtc.so.7", "libhiprtc.so.6", "libhiprtc.so.5"];

/// Lists CUDA devices, or says which library or call is missing.
pub fn cuda_devices() -> Result<Vec<DriverDevice>, String> {
    let lib = open_first(CUDA_DRIVER)?;
    // Kernels are compiled at run time by NVRTC; without it the first launch would panic.
    open_first(CUDA_NVRTC).map_err(|e| format!("{e} (NVRTC, needed to compile kernels)"))?;
    type Init = unsafe extern "C" fn(c_uint) -> c_int;
    type Count = unsafe extern "C" fn(*mut c_int) -> c_int;
    type Get = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    type Name = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    type Mem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
    type Attr = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
    // SAFETY: signatures follow the CUDA driver API (cuda.h); every pointer passed is a
    // valid local, and results are only read when the call returned CUDA_SUCCESS (0).
    unsafe {
        let sym = |n: &[u8]| -> Result<*const (), String> {
            let s: Symbol<*const ()> = lib.get(n).map_err(|e| format!("libcuda lacks {}: {e}", String::from_utf8_lossy(n)))?;
            Ok(*s)
        };
        let init: Init = std::mem::transmute(sym(b"cuInit\0")?);
        let count: Count = std::mem::transmute(sym(b"cuDeviceGetCount\0")?);
        let get: Get = std::mem::transmute(sym(b"cuDeviceGet\0")?);
        let name: Name = std::mem::transmute(sym(b"cuDeviceGetName\0")?);
        let mem: Mem = std::mem::transmute(sym(b"cuDeviceTotalMem_v2\0")?);
        let attr: Attr = std::mem::transmute(sym(b"cuDeviceGetAttribute\0")?);
        let rc = init(0);
        if rc != 0 {
            return Err(format!("cuInit failed with CUDA error {rc} (driver present, no usable GPU)"));
        }
        let mut n: c_int = 0;
        if count(&mut n) != 0 {
            return Err("cuDeviceGetCount failed".into());
        }
        let mut out = Vec::new();
        for i in 0..n {
            let mut dev: c_int = 0;
            if get(&mut dev, i) != 0 {
                continue;
            }
            let mut buf = [0 as c_char; 256];
            let label = if name(buf.as_mut_ptr(), 256, dev) == 0 {
                CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
            } else {
                format!("CUDA device {i}")
            };
            let mut bytes: usize = 0;
            let memory_bytes = (mem(&mut bytes, dev) == 0).then_some(bytes as u64);
            let (mut major, mut minor) = (0, 0);
            // 75/76: CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR/MINOR
            let capability = (attr(&mut major, 75, dev) == 0 && attr(&mut minor, 76, dev) == 0).then_some((major, minor));
            out.push(DriverDevice { name: label, memory_bytes, capability });
        }
        Ok(out)
    }
}

/// Lists HIP (ROCm) devices, or says which library or call is missing.
pub fn hip_devices() -> Result<Vec<DriverDevice>, String> {
    let lib = open_first(HIP_RUNTIME)?;
    open_first(HIP_RTC).map_err(|e| format!("{e} (hiprtc, needed to compile kernels)"))?;
    type Init = unsafe extern "C" fn(c_uint) -> c_int;
    type Count = unsafe extern "C" fn(*mut c_int) -> c_int;
    type Name = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    type Mem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
    // SAFETY: signatures follow hip_runtime_api.h; pointers are valid locals.
    unsafe {
        let sym = |n: &[u8]| -> Result<*const (), String> {
            let s: Symbol<*const ()> =
                lib.get(n).map_err(|e| format!("libamdhip64 lacks {}: {e}", String::from_utf8_lossy(n)))?;
            Ok(*s)
        };
        let init: Init = std::mem::transmute(sym(b"hipInit\0")?);
        let count: Count = std::mem::transmute(sym(b"hipGetDeviceCount\0")?);
        let name: Name = std::mem::transmute(sym(b"hipDeviceGetName\0")?);
        let mem: Mem = std::mem::transmute(sym(b"hipDeviceTotalMem\0")?);
        if init(0) != 0 {
            return Err("hipInit failed (runtime present, no usable GPU)".into());
        }
        let mut n: c_int = 0;
        if count(&mut n) != 0 {
            return Err("hipGetDeviceCount failed".into());
        }
        Ok((0..n)
            .map(|i| {
                let mut buf = [0 as c_char; 256];
                let label = if name(buf.as_mut_ptr(), 256, i) == 0 {
                    CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
                } else {
                    format!("HIP device {i}")
                };
                let mut bytes: usize = 0;
                let memory_bytes = (mem(&mut bytes, i) == 0).then_some(bytes as u64);
                DriverDevice { name: label, memory_bytes, capability: None }
            })
            .collect())
    }
}
