//! A recording wgpu runtime: proof of every GPU target without the GPU.
//!
//! cubecl builds a kernel's IR ([`KernelDefinition`]) inside the server that compiles it, for
//! that server's compiler only, so no public call yields the IR of the kernels an op launches.
//! This runtime is the seam: its compiler ([`RecordCompiler`]) returns the definition itself,
//! and its server ([`RecordServer`]) keeps each distinct definition, then hands it to a wrapped
//! [`WgpuServer`] as a ready-made kernel. The launch runs for real on that wgpu device (results
//! are checked like any other device's), and tests can compile every kernel instance an op
//! suite launched for the targets this machine has no hardware for: each distinct kernel is
//! compiled at its first launch to WGSL (which naga turns into MSL, HLSL and SPIR-V) and to
//! cubecl's CUDA and HIP C++ ([`RecordedKernel`]).
//!
//! Open it with [`crate::Device::open_recording`]; read the instances with [`recorded`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cubecl::device::{DeviceId, DeviceService, ServerUtilitiesHandle};
use cubecl::future::DynFut;
use cubecl::prelude::*;
use cubecl::{CompilationError, Compiler, CubeTask};
use cubecl::stream_id::StreamId;
use cubecl::server::{
    Binding, ComputeServer, CopyDescriptor, KernelArguments, ProfileError, ProfilingToken, ServerCommunication,
    ServerError, ServerUtilities,
};
use cubecl::wgpu::{AutoCompiler, WgpuDevice, WgpuRuntime, WgpuServer, WgpuStorage};
use cubecl::zspace::{Shape, Strides};
use cubecl_runtime::allocator::ContiguousMemoryLayoutPolicy;
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::memory_management::{ManagedMemoryHandle, MemoryAllocationMode, MemoryUsage};
use cubecl_runtime::storage::{ComputeStorage, ManagedResource};

/// One distinct kernel instance (what cubecl caches under one [`KernelId`]), compiled at its
/// first launch by each of cubecl's source compilers. cubecl's IR is not `Send`, so the sources
/// are kept, not the IR.
#[derive(Clone, Debug)]
pub struct RecordedKernel {
    /// cubecl's kernel type name (module path and generics), e.g. `…::Binary<f32, …>`.
    pub name: &'static str,
    /// The cache key, printed: generics, comptime arguments, cube size, execution mode.
    pub id: String,
    /// What wgpu runs on Vulkan, Metal and DX12 (naga translates it for the last two).
    pub wgsl: Result<String, String>,
    /// What cubecl-cuda hands NVRTC (its `CudaCompiler`, default options: warp size 32, no
    /// cluster or grid-constant features).
    pub cuda: Result<String, String>,
    /// Dynamic shared memory (bytes) cubecl-cuda requests when it launches the kernel: cubecl
    /// declares shared memory `extern`, so ptxas reports none of it.
    pub cuda_dynamic_shared: usize,
    /// What cubecl-hip hands hiprtc (its `HipCompiler`, wave size 64 as on CDNA).
    pub hip: Result<String, String>,
}

static RECORDED: Mutex<Vec<RecordedKernel>> = Mutex::new(Vec::new());

/// Every distinct kernel instance launched through recording devices so far, in launch order.
pub fn recorded() -> Vec<RecordedKernel> {
    RECORDED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Compiles one kernel for each source target. `define` builds a fresh definition per compiler:
/// a definition's scope shares state behind `Rc`s that compiling consumes (the second compiler
/// of one clone finds its mutable locals already taken).
fn sources(name: &'static str, id: &KernelId, define: impl Fn() -> KernelDefinition, mode: ExecutionMode, address_type: StorageType) -> RecordedKernel {
    fn text<T: std::fmt::Display>(r: Result<T, CompilationError>) -> Result<String, String> {
        r.map(|repr| repr.to_string()).map_err(|e| e.to_string())
    }
    let wgsl = text(cubecl::wgpu::WgslCompiler::default().compile(define(), &Default::default(), mode, address_type));
    let cuda_options = cubecl_cpp::shared::CompilationOptions::default();
    let cuda = cubecl::cuda::CudaCompiler::default().compile(define(), &cuda_options, mode, address_type);
    let cuda_dynamic_shared = cuda.as_ref().map_or(0, |k| k.shared_memory_size());
    let cuda = text(cuda);
    let hip_options = cubecl_cpp::shared::CompilationOptions { warp_size: 64, ..Default::default() };
    let hip = text(cubecl::hip::runtime::HipCompiler::default().compile(define(), &hip_options, mode, address_type));
    let id = id.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
    RecordedKernel { name, id, wgsl, cuda, cuda_dynamic_shared, hip }
}

/// A compiler whose output is its input: the kernel's definition.
#[derive(Clone, Debug, Default)]
pub struct RecordCompiler;

/// What [`RecordCompiler`] produces.
pub struct Definition(pub KernelDefinition);

impl std::fmt::Display for Definition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Compiler for RecordCompiler {
    type Representation = Definition;
    type CompilationOptions = ();

    fn compile(
        &mut self,
        kernel: KernelDefinition,
        _: &(),
        _: ExecutionMode,
        _: StorageType,
    ) -> Result<Definition, CompilationError> {
        Ok(Definition(kernel))
    }

    fn elem_size(&self, elem: cubecl::ir::ElemType) -> usize {
        elem.size()
    }

    fn extension(&self) -> &'static str {
        "ir"
    }
}

/// The launched kernel, defined again through [`RecordCompiler`] when wgpu compiles it.
struct Captured {
    task: Box<dyn CubeTask<RecordCompiler>>,
    mode: ExecutionMode,
}

impl Captured {
    fn definition(&self) -> KernelDefinition {
        // RecordCompiler cannot fail: it returns the definition it is given.
        match self.task.compile(&mut RecordCompiler, &(), self.mode, self.task.address_type()) {
            Ok(c) => c.repr.expect("RecordCompiler returns its definition").0,
            Err(e) => panic!("defining kernel {} failed: {e}", self.task.name()),
        }
    }
}

impl KernelMetadata for Captured {
    fn name(&self) -> &'static str {
        self.task.name()
    }
    fn id(&self) -> KernelId {
        self.task.id()
    }
    fn address_type(&self) -> StorageType {
        self.task.address_type()
    }
}

impl CubeKernel for Captured {
    fn define(&self) -> KernelDefinition {
        self.definition()
    }
}

/// A wgpu server that records what it launches.
#[derive(Debug)]
pub struct RecordServer {
    inner: WgpuServer,
    utilities: Arc<ServerUtilities<RecordServer>>,
    seen: HashSet<KernelId>,
}

impl ServerCommunication for RecordServer {
    const SERVER_COMM_ENABLED: bool = false;
}

impl DeviceService for RecordServer {
    fn init(device_id: DeviceId) -> Self {
        let inner = <WgpuServer as DeviceService>::init(device_id);
        let u = ComputeServer::utilities(&inner);
        let policy = ContiguousMemoryLayoutPolicy::new(u.properties.memory.alignment as usize);
        let utilities = Arc::new(ServerUtilities::new(u.properties.clone(), u.logger.clone(), u.info, policy));
        RecordServer { inner, utilities, seen: HashSet::new() }
    }

    fn utilities(&self) -> ServerUtilitiesHandle {
        self.utilities.clone() as ServerUtilitiesHandle
    }
}

impl ComputeServer for RecordServer {
    type Kernel = Box<dyn CubeTask<RecordCompiler>>;
    type Info = <WgpuServer as ComputeServer>::Info;
    type MemoryLayoutPolicy = ContiguousMemoryLayoutPolicy;
    type Storage = WgpuStorage;

    fn initialize_memory(&mut self, memory: ManagedMemoryHandle, size: u64, stream_id: StreamId) {
        self.inner.initialize_memory(memory, size, stream_id)
    }

    fn staging(&mut self, sizes: &[usize], stream_id: StreamId) -> Result<Vec<cubecl::bytes::Bytes>, ServerError> {
        self.inner.staging(sizes, stream_id)
    }

    fn logger(&self) -> Arc<ServerLogger> {
        self.inner.logger()
    }

    fn utilities(&self) -> Arc<ServerUtilities<Self>> {
        self.utilities.clone()
    }

    fn read(
        &mut self,
        descriptors: Vec<CopyDescriptor>,
        stream_id: StreamId,
    ) -> DynFut<Result<Vec<cubecl::bytes::Bytes>, ServerError>> {
        self.inner.read(descriptors, stream_id)
    }

    fn write(&mut self, descriptors: Vec<(CopyDescriptor, cubecl::bytes::Bytes)>, stream_id: StreamId) {
        self.inner.write(descriptors, stream_id)
    }

    fn sync(&mut self, stream_id: StreamId) -> DynFut<Result<(), ServerError>> {
        self.inner.sync(stream_id)
    }

    fn get_resource(
        &mut self,
        binding: Binding,
        stream_id: StreamId,
    ) -> Result<ManagedResource<<WgpuStorage as ComputeStorage>::Resource>, ServerError> {
        self.inner.get_resource(binding, stream_id)
    }

    unsafe fn launch(
        &mut self,
        kernel: Self::Kernel,
        count: CubeCount,
        bindings: KernelArguments,
        mode: ExecutionMode,
        stream_id: StreamId,
    ) {
        let captured = Captured { task: kernel, mode };
        let id = captured.id();
        if self.seen.insert(id.clone()) {
            let kernel = sources(captured.name(), &id, || captured.definition(), mode, captured.address_type());
            RECORDED.lock().unwrap_or_else(|e| e.into_inner()).push(kernel);
        }
        let task: Box<dyn CubeTask<AutoCompiler>> = Box::new(KernelTask::<AutoCompiler, Captured>::new(captured));
        // SAFETY: the caller's guarantees for `kernel` hold for the same kernel, wrapped.
        unsafe { self.inner.launch(task, count, bindings, mode, stream_id) }
    }

    fn flush(&mut self, stream_id: StreamId) -> Result<(), ServerError> {
        self.inner.flush(stream_id)
    }

    fn memory_usage(&mut self, stream_id: StreamId) -> Result<MemoryUsage, ServerError> {
        self.inner.memory_usage(stream_id)
    }

    fn memory_cleanup(&mut self, stream_id: StreamId) {
        self.inner.memory_cleanup(stream_id)
    }

    fn start_profile(&mut self, stream_id: StreamId) -> Result<ProfilingToken, ServerError> {
        self.inner.start_profile(stream_id)
    }

    fn end_profile(
        &mut self,
        stream_id: StreamId,
        token: ProfilingToken,
    ) -> Result<cubecl::profile::ProfileDuration, ProfileError> {
        self.inner.end_profile(stream_id, token)
    }

    fn allocation_mode(&mut self, mode: MemoryAllocationMode, stream_id: StreamId) {
        self.inner.allocation_mode(mode, stream_id)
    }
}

/// The recording runtime: wgpu's device, properties and limits, with [`RecordServer`].
#[derive(Debug, Clone)]
pub struct RecordRuntime;

impl Runtime for RecordRuntime {
    type Compiler = RecordCompiler;
    type Server = RecordServer;
    type Device = WgpuDevice;

    fn client(device: &WgpuDevice) -> ComputeClient<Self> {
        ComputeClient::load(device)
    }

    fn name(_: &ComputeClient<Self>) -> &'static str {
        "wgpu<wgsl>, recording"
    }

    fn require_array_lengths() -> bool {
        WgpuRuntime::require_array_lengths()
    }

    fn max_cube_count() -> (u32, u32, u32) {
        WgpuRuntime::max_cube_count()
    }

    fn can_read_tensor(shape: &Shape, strides: &Strides) -> bool {
        WgpuRuntime::can_read_tensor(shape, strides)
    }

    fn target_properties() -> cubecl::ir::TargetProperties {
        WgpuRuntime::target_properties()
    }

    fn enumerate_devices(type_id: u16, info: &<WgpuServer as ComputeServer>::Info) -> Vec<DeviceId> {
        WgpuRuntime::enumerate_devices(type_id, info)
    }
}
