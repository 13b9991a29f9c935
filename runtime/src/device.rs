//! Devices: discovery, selection (`--device`), and the cubecl client behind each one.

use crate::probe;
use crate::{Error, Result};
use cubecl::prelude::ComputeClient;
use cubecl::Runtime;
use std::fmt;
use std::sync::{Arc, OnceLock};

pub use cubecl::cuda::CudaRuntime;
pub use cubecl::hip::HipRuntime;
pub use cubecl::wgpu::WgpuRuntime;

/// Which runtime executes kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Native Rust on the host CPU.
    Cpu,
    Cuda,
    Hip,
    /// wgpu on a Vulkan adapter (WGSL kernels).
    Vulkan,
    /// wgpu on a Metal adapter.
    Metal,
    /// wgpu on a DirectX 12 adapter.
    Dx12,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Hip => "hip",
            Backend::Vulkan => "vulkan",
            Backend::Metal => "metal",
            Backend::Dx12 => "dx12",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of processor sits behind a device; `auto` uses it to rank devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    NativeCpu,
    DiscreteGpu,
    IntegratedGpu,
    VirtualGpu,
    /// A GPU API implemented on the CPU (Mesa lavapipe, SwiftShader, WARP): proves kernels
    /// correct, never faster than the native CPU backend.
    SoftwareRasterizer,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::NativeCpu => "cpu",
            DeviceKind::DiscreteGpu => "discrete gpu",
            DeviceKind::IntegratedGpu => "integrated gpu",
            DeviceKind::VirtualGpu => "virtual gpu",
            DeviceKind::SoftwareRasterizer => "software",
        }
    }
}

/// Everything `nextflow devices` prints about one device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub backend: Backend,
    /// Index among the devices of its backend, as in `vulkan:1`.
    pub index: usize,
    pub name: String,
    pub kind: DeviceKind,
    pub memory_bytes: Option<u64>,
    pub f16: bool,
    pub bf16: bool,
    /// Plane (warp/subgroup) operations, as the adapter reports them.
    pub planes: bool,
    /// The adapter's own storage-binding limit (wgpu adapters): the largest buffer a kernel
    /// can bind, which cubecl requests when it opens the device (not wgpu's 128 MiB default).
    pub max_binding_bytes: Option<u64>,
    /// How to reach the device's runtime client.
    wgpu_device: Option<cubecl::wgpu::WgpuDevice>,
}

impl DeviceInfo {
    /// Describes a device by hand (listings and tests); it cannot be opened.
    #[allow(clippy::too_many_arguments)]
    pub fn described(
        backend: Backend,
        index: usize,
        name: &str,
        kind: DeviceKind,
        memory_bytes: Option<u64>,
        f16: bool,
        bf16: bool,
        planes: bool,
    ) -> DeviceInfo {
        DeviceInfo { backend, index, name: name.into(), kind, memory_bytes, f16, bf16, planes, max_binding_bytes: None, wgpu_device: None }
    }

    /// The same, with an adapter's storage-binding limit (listings and tests).
    pub fn with_max_binding(mut self, bytes: u64) -> DeviceInfo {
        self.max_binding_bytes = Some(bytes);
        self
    }

    /// The `--device` spelling that selects exactly this device.
    pub fn spec(&self) -> String {
        match self.backend {
            Backend::Cpu => "cpu".into(),
            b => format!("{}:{}", b.name(), self.index),
        }
    }

    /// Rank used by `auto`: higher is preferred; `None` means auto never picks it.
    fn auto_rank(&self) -> Option<u32> {
        match (self.backend, self.kind) {
            (_, DeviceKind::SoftwareRasterizer) => None,
            (Backend::Cuda | Backend::Hip, _) => Some(5),
            (_, DeviceKind::DiscreteGpu) => Some(4),
            (_, DeviceKind::IntegratedGpu) => Some(3),
            (_, DeviceKind::VirtualGpu) => Some(2),
            (Backend::Cpu, _) => Some(1),
            _ => None,
        }
    }
}

/// A backend that could not be used, and why (shown by `nextflow devices`).
#[derive(Clone, Debug)]
pub struct Unavailable {
    pub backend: Backend,
    pub reason: String,
}

/// The result of probing every backend once.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub devices: Vec<DeviceInfo>,
    pub unavailable: Vec<Unavailable>,
}

impl Discovery {
    /// The device `--device auto` selects: a real GPU if there is one, else the native CPU.
    pub fn auto(&self) -> &DeviceInfo {
        self.devices
            .iter()
            .filter_map(|d| d.auto_rank().map(|r| (r, d)))
            // max_by_key keeps the last maximum; reverse so the first listed device wins ties.
            .rev()
            .max_by_key(|(r, _)| *r)
            .map(|(_, d)| d)
            .expect("the CPU device is always present")
    }

    /// Resolves a parsed `--device` value to one device.
    pub fn select(&self, spec: &DeviceSpec) -> Result<&DeviceInfo> {
        let (backend, index) = match *spec {
            DeviceSpec::Auto => return Ok(self.auto()),
            DeviceSpec::Cpu => (Backend::Cpu, 0),
            DeviceSpec::Backend(b, i) => (b, i),
        };
        let matching: Vec<&DeviceInfo> = self.devices.iter().filter(|d| d.backend == backend).collect();
        if matching.is_empty() {
            let reason = self
                .unavailable
                .iter()
                .find(|u| u.backend == backend)
                .map(|u| u.reason.clone())
                .unwrap_or_else(|| "no device found".into());
            return Err(Error::BackendUnavailable { backend: backend.name(), reason });
        }
        matching
            .get(index)
            .copied()
            .ok_or(Error::NoSuchDevice { backend: backend.name(), index, count: matching.len() })
    }
}

/// A parsed `--device` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Backend(Backend, usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::UnknownDeviceSpec { spec: s.to_string() };
        let lower = s.trim().to_ascii_lowercase();
        let (name, index) = match lower.split_once(':') {
            Some((n, i)) => (n, i.parse::<usize>().map_err(|_| bad())?),
            None => (lower.as_str(), 0),
        };
        let backend = match name {
            "auto" if !lower.contains(':') => return Ok(DeviceSpec::Auto),
            "cpu" if index == 0 => return Ok(DeviceSpec::Cpu),
            "cuda" => Backend::Cuda,
            "hip" | "rocm" => Backend::Hip,
            "vulkan" => Backend::Vulkan,
            "metal" => Backend::Metal,
            "dx12" => Backend::Dx12,
            _ => return Err(bad()),
        };
        Ok(DeviceSpec::Backend(backend, index))
    }
}

fn cpu_info() -> DeviceInfo {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|n| n.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    DeviceInfo {
        backend: Backend::Cpu,
        index: 0,
        name: format!("{name} ({threads} threads)"),
        kind: DeviceKind::NativeCpu,
        memory_bytes,
        f16: true,
        bf16: true,
        planes: false,
        max_binding_bytes: None,
        wgpu_device: None,
    }
}

fn wgpu_devices() -> std::result::Result<Vec<DeviceInfo>, String> {
    use cubecl::wgpu::{GraphicsApi, WgpuDevice};
    let api = cubecl::wgpu::AutoGraphicsApi::backend();
    let backend = match api {
        wgpu::Backend::Vulkan => Backend::Vulkan,
        wgpu::Backend::Metal => Backend::Metal,
        wgpu::Backend::Dx12 => Backend::Dx12,
        other => return Err(format!("wgpu backend {other:?} is not supported")),
    };
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: api.into(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(api.into()));
    if adapters.is_empty() {
        return Err(format!("no {} adapter found (is the {} loader and a driver installed?)", backend.name(), backend.name()));
    }
    // cubecl addresses adapters by type and index within that type, in enumeration order.
    let mut per_type = [0usize; 5];
    let mut out = Vec::new();
    for adapter in adapters {
        let info = adapter.get_info();
        let features = adapter.features();
        let (kind, slot) = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => (DeviceKind::DiscreteGpu, 0),
            wgpu::DeviceType::IntegratedGpu => (DeviceKind::IntegratedGpu, 1),
            wgpu::DeviceType::VirtualGpu => (DeviceKind::VirtualGpu, 2),
            wgpu::DeviceType::Cpu => (DeviceKind::SoftwareRasterizer, 3),
            wgpu::DeviceType::Other => continue,
        };
        let nth = per_type[slot];
        per_type[slot] += 1;
        let wgpu_device = match slot {
            0 => WgpuDevice::DiscreteGpu(nth),
            1 => WgpuDevice::IntegratedGpu(nth),
            2 => WgpuDevice::VirtualGpu(nth),
            // cubecl opens the first CPU adapter only.
            _ if nth == 0 => WgpuDevice::Cpu,
            _ => continue,
        };
        let driver = [info.driver.as_str(), info.driver_info.as_str()].join(" ").trim().to_string();
        out.push(DeviceInfo {
            backend,
            index: out.len(),
            name: if driver.is_empty() { info.name.clone() } else { format!("{} ({driver})", info.name) },
            kind,
            memory_bytes: None,
            f16: features.contains(wgpu::Features::SHADER_F16),
            bf16: false,
            planes: features.contains(wgpu::Features::SUBGROUP),
            max_binding_bytes: Some(adapter.limits().max_storage_buffer_binding_size as u64),
            wgpu_device: Some(wgpu_device),
        });
    }
    Ok(out)
}

fn driver_devices(backend: Backend, found: std::result::Result<Vec<probe::DriverDevice>, String>, d: &mut Discovery) {
    match found {
        Ok(list) if list.is_empty() => d.unavailable.push(Unavailable { backend, reason: "driver found, no device".into() }),
        Ok(list) => {
            for (index, dev) in list.into_iter().enumerate() {
                let bf16 = match backend {
                    Backend::Cuda => dev.capability.is_some_and(|(major, _)| major >= 8),
                    _ => true,
                };
                d.devices.push(DeviceInfo {
                    backend,
                    index,
                    name: dev.name,
                    kind: DeviceKind::DiscreteGpu,
                    memory_bytes: dev.memory_bytes,
                    f16: true,
                    bf16,
                    planes: true,
                    max_binding_bytes: None,
                    wgpu_device: None,
                });
            }
        }
        Err(reason) => d.unavailable.push(Unavailable { backend, reason }),
    }
}

/// Probes every backend once per process (cheap after the first call).
pub fn discover() -> &'static Discovery {
    static DISCOVERY: OnceLock<Discovery> = OnceLock::new();
    DISCOVERY.get_or_init(|| {
        // Mesa's implicit device-select layer connects to X11/Wayland to order adapters for
        // displays, printing errors on headless machines; we rank devices ourselves.
        if std::env::var_os("NODEVICE_SELECT").is_none() {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
        let mut d = Discovery { devices: vec![cpu_info()], unavailable: Vec::new() };
        driver_devices(Backend::Cuda, probe::cuda_devices(), &mut d);
        driver_devices(Backend::Hip, probe::hip_devices(), &mut d);
        match wgpu_devices() {
            Ok(list) => d.devices.extend(list),
            Err(reason) => d.unavailable.push(Unavailable { backend: Backend::Vulkan, reason }),
        }
        d
    })
}

/// The runtime client that executes kernels for a device.
#[derive(Clone)]
pub enum Client {
    Cpu,
    Wgpu(ComputeClient<WgpuRuntime>),
    Cuda(ComputeClient<CudaRuntime>),
    Hip(ComputeClient<HipRuntime>),
    /// A wgpu device whose launches are also recorded ([`crate::record`]); tests only.
    Record(ComputeClient<crate::RecordRuntime>),
}

/// An opened device. Cheap to clone; tensors keep one.
#[derive(Clone)]
pub struct Device {
    info: Arc<DeviceInfo>,
    client: Client,
}

impl Device {
    /// The native CPU backend (always available).
    pub fn cpu() -> Device {
        Device { info: Arc::new(discover().devices[0].clone()), client: Client::Cpu }
    }

    /// Opens the device a `--device` string names (`auto`, `cpu`, `cuda:0`, `vulkan:1`, …).
    pub fn open(spec: &str) -> Result<Device> {
        let spec: DeviceSpec = spec.parse()?;
        Device::open_info(discover().select(&spec)?)
    }

    /// Opens a device found by [`discover`].
    pub fn open_info(info: &DeviceInfo) -> Result<Device> {
        // Clients are created once per device and shared, as cubecl keeps one server each.
        let client = match info.backend {
            Backend::Cpu => Client::Cpu,
            Backend::Cuda => Client::Cuda(CudaRuntime::client(&cubecl::cuda::CudaDevice { index: info.index })),
            Backend::Hip => Client::Hip(HipRuntime::client(&cubecl::hip::AmdDevice { index: info.index })),
            Backend::Vulkan | Backend::Metal | Backend::Dx12 => {
                let dev = info.wgpu_device.clone().ok_or_else(|| Error::Device {
                    device: info.spec(),
                    msg: "adapter cannot be addressed by cubecl".into(),
                })?;
                Client::Wgpu(WgpuRuntime::client(&dev))
            }
        };
        Ok(Device { info: Arc::new(info.clone()), client })
    }

    /// Opens a wgpu adapter found by [`discover`] through the recording runtime: kernels run on
    /// it as usual, and every distinct kernel instance is kept ([`crate::record::recorded`]) so
    /// tests can compile it for other targets. Refuses non-wgpu devices.
    pub fn open_recording(info: &DeviceInfo) -> Result<Device> {
        let dev = info.wgpu_device.clone().ok_or_else(|| Error::Device {
            device: info.spec(),
            msg: "recording needs a wgpu adapter (vulkan, metal or dx12)".into(),
        })?;
        use cubecl::Runtime as _;
        Ok(Device { info: Arc::new(info.clone()), client: Client::Record(crate::RecordRuntime::client(&dev)) })
    }

    /// Whether launches on this device are recorded ([`Device::open_recording`]).
    pub fn is_recording(&self) -> bool {
        matches!(self.client, Client::Record(_))
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn backend(&self) -> Backend {
        self.info.backend
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self.client, Client::Cpu)
    }

    /// Same device (backend and index).
    pub fn same(&self, other: &Device) -> bool {
        self.info.backend == other.info.backend
            && self.info.index == other.info.index
            && self.is_recording() == other.is_recording()
    }

    /// Whether kernels of this dtype can run here (else ops fall back to the CPU path).
    pub fn supports(&self, dtype: crate::DType) -> bool {
        use crate::DType::*;
        match (&self.client, dtype) {
            (Client::Cpu, _) => true,
            (_, F32 | U32 | I32) => true,
            (_, F16) => self.info.f16,
            (_, BF16) => self.info.bf16 && !matches!(self.client, Client::Wgpu(_) | Client::Record(_)),
            (Client::Wgpu(_) | Client::Record(_), U8) => false,
            (_, U8) => true,
        }
    }

    /// Waits for queued work and surfaces errors that kernel launches deferred.
    pub fn sync(&self) -> Result<()> {
        let err = |e: String| Error::Device { device: self.to_string(), msg: e };
        match &self.client {
            Client::Cpu => Ok(()),
            Client::Wgpu(c) => pollster::block_on(c.sync()).map_err(|e| err(format!("{e:?}"))),
            Client::Cuda(c) => pollster::block_on(c.sync()).map_err(|e| err(format!("{e:?}"))),
            Client::Hip(c) => pollster::block_on(c.sync()).map_err(|e| err(format!("{e:?}"))),
            Client::Record(c) => pollster::block_on(c.sync()).map_err(|e| err(format!("{e:?}"))),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.info.spec(), self.info.name)
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Device({})", self.info.spec())
    }
}
