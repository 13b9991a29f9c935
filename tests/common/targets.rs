//! Compiling kernel source for GPU targets without a GPU (shared by the kernel-coverage tests).
//!
//! * [`wgsl_targets`]: WGSL (as cubecl's `WgslCompiler` prints it) → naga parse + validate, then
//!   MSL, HLSL and SPIR-V through naga's back ends; the SPIR-V is checked again by naga's own
//!   SPIR-V front end and, where `spirv-val` (Debian `spirv-tools`) is on `PATH`, by it too.
//!   MSL and HLSL are only translated: no Metal or DXC compiler runs here.
//! * [`Nvrtc`]: CUDA C++ → PTX with NVRTC, loaded at run time with `libloading` (e.g. from the
//!   PyPI wheel `nvidia-cuda-nvrtc`); no CUDA driver or GPU is needed.
//! * [`find_ptxas`] / [`ptxas`]: PTX → SASS with `ptxas -v` (PyPI wheel `nvidia-cuda-nvcc`),
//!   reporting registers and shared memory per kernel.
//! * [`Hiprtc`] / [`hip_targets`]: HIP C++ → AMDGPU code object with HIPRTC, loaded at run time
//!   with `libloading` (Debian `libamdhip64-5`, `libhiprtc-builtins5`, `libamd-comgr2`, plus
//!   `libamdhip64-dev` for the `hip/*.h` files cubecl's kernels include); no AMD driver or GPU is
//!   needed, and no code object is disassembled or loaded.
//!
//! Nothing here panics on a missing tool: finders return `Err(reason)` so a test can print
//! `SKIPPED …` and move on. Include it with `#[path = "common/targets.rs"] mod targets;`.
//!
//! Environment overrides: `NEXTFLOW_NVRTC` (path of libnvrtc), `NEXTFLOW_PTXAS` (path of ptxas),
//! `NEXTFLOW_CUDA_INCLUDE` (a CUDA include directory, used instead of the headers NVRTC bundles),
//! `NEXTFLOW_HIPRTC` (path of the library with hiprtc: libamdhip64.so.5 in ROCm 5, libhiprtc.so
//! from ROCm 6), `NEXTFLOW_HIP_INCLUDE` (the include directory holding `hip/hip_runtime.h`; else
//! `$HIP_PATH/include`, `$ROCM_PATH/include`, `/opt/rocm/include` or `/usr/include`),
//! `NEXTFLOW_SPIRV_VAL` (path of spirv-val; `0` or empty disables it), `NEXTFLOW_PYTHON`
//! (the interpreter asked for site-packages; default `python3`), and
//! `NEXTFLOW_TARGETS_DUMP=<dir>` to keep what [`wgsl_targets`] writes (`<name>.metal`, `.hlsl`, `.spv`;
//! the GPU-targets test adds each kernel's `.wgsl`, `.cu` and `.hip` source).

#![allow(dead_code)]

use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The outcome of compiling one kernel for one target.
#[derive(Clone, Debug)]
pub struct TargetResult {
    /// "wgsl", "msl", "hlsl", "spirv", "nvrtc sm_90a", "ptxas sm_90a", …
    pub target: &'static str,
    pub ok: bool,
    /// The error text when `!ok`; otherwise a short summary such as "regs 32, smem 4096 B".
    pub detail: String,
    /// Registers per thread (ptxas only).
    pub registers: Option<u32>,
    /// Shared (workgroup) memory in bytes: ptxas's `smem` (largest kernel), or for "wgsl" the
    /// total size of the `var<workgroup>`s an entry point uses (largest entry point).
    pub shared_bytes: Option<u64>,
}

impl TargetResult {
    fn ok(target: &'static str, detail: impl Into<String>) -> Self {
        Self { target, ok: true, detail: detail.into(), registers: None, shared_bytes: None }
    }
    fn err(target: &'static str, detail: impl Into<String>) -> Self {
        Self { target, ok: false, detail: detail.into(), registers: None, shared_bytes: None }
    }
}

impl std::fmt::Display for TargetResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = if self.ok { "ok" } else { "FAILED" };
        write!(f, "{:<13} {status:<6} {}", self.target, self.detail)
    }
}

/// Interns `"{prefix} {arch}"` so target names can be `&'static str` (each leaks once).
fn target_name(prefix: &str, arch: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let name = format!("{prefix} {arch}");
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&n) = names.iter().find(|&&n| n == name) {
        return n;
    }
    let n: &'static str = Box::leak(name.into_boxed_str());
    names.push(n);
    n
}

/// A fresh path in the temp dir (not created).
fn temp_path(stem: &str, ext: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let stem: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    std::env::temp_dir().join(format!("nextflow-targets-{}-{n}-{stem}.{ext}", std::process::id()))
}

// ---------------------------------------------------------------------------------------------
// WGSL → naga → MSL / HLSL / SPIR-V
// ---------------------------------------------------------------------------------------------

/// MSL version the MSL back end targets (macOS 13 / iOS 16).
const MSL_VERSION: (u8, u8) = (3, 0);
/// HLSL shader model: 6.2 is needed for f16, 6.0 for wave ops, 6.6 for 64-bit atomics.
const HLSL_MODEL: naga::back::hlsl::ShaderModel = naga::back::hlsl::ShaderModel::V6_6;
/// SPIR-V 1.3, the version Vulkan 1.1 takes (subgroup operations need it).
const SPIRV_VERSION: (u8, u8) = (1, 3);
const SPIRV_VAL_ENV: &str = "vulkan1.1";

/// Compiles WGSL for every target naga can write, without a GPU.
///
/// Returns one [`TargetResult`] per target, in this order: "wgsl" (parse + validate with all
/// validation flags and all capabilities), "msl", "hlsl", "spirv". When the WGSL itself fails,
/// the other three are reported as failed with "skipped: wgsl failed".
///
/// Every compute entry point in the module is translated (cubecl writes exactly one, named
/// after the kernel, usually "main"); a module with none fails. Resources get explicit
/// bindings so the back ends never invent ("fake") any: MSL buffer slots are numbered in
/// declaration order with the runtime-array sizes buffer after them; HLSL registers and SPIR-V
/// bindings come from `@group(G) @binding(N)` (register N in space G, set G binding N).
pub fn wgsl_targets(name: &str, wgsl: &str) -> Vec<TargetResult> {
    use naga::valid::{Capabilities, ValidationFlags, Validator};

    let skipped = |why: &str| {
        ["msl", "hlsl", "spirv"].into_iter().map(|t| TargetResult::err(t, format!("skipped: {why}"))).collect::<Vec<_>>()
    };
    let fail = |detail: String| {
        let mut out = vec![TargetResult::err("wgsl", detail)];
        out.extend(skipped("wgsl failed"));
        out
    };

    let module = match naga::front::wgsl::parse_str(wgsl) {
        Ok(m) => m,
        Err(e) => return fail(format!("{name}: WGSL parse error:\n{}", e.emit_to_string(wgsl))),
    };
    let info = match Validator::new(ValidationFlags::all(), Capabilities::all()).validate(&module) {
        Ok(i) => i,
        Err(e) => return fail(format!("{name}: naga validation error:\n{}", e.emit_to_string(wgsl))),
    };
    let compute: Vec<usize> =
        (0..module.entry_points.len()).filter(|&i| module.entry_points[i].stage == naga::ShaderStage::Compute).collect();
    if compute.is_empty() {
        return fail(format!("{name}: no @compute entry point"));
    }

    // Summary: entry points, workgroup sizes, bindings and workgroup memory they use.
    let mut shared: u64 = 0;
    let mut summary = Vec::new();
    for &i in &compute {
        let ep = &module.entry_points[i];
        let uses = info.get_entry_point(i);
        let mut bindings = 0;
        let mut ep_shared = 0u64;
        for (h, var) in module.global_variables.iter() {
            if uses[h].is_empty() {
                continue;
            }
            if var.binding.is_some() {
                bindings += 1;
            }
            if var.space == naga::AddressSpace::WorkGroup {
                ep_shared += module.types[var.ty].inner.try_size(module.to_ctx()).unwrap_or(0) as u64;
            }
        }
        shared = shared.max(ep_shared);
        let [x, y, z] = ep.workgroup_size;
        summary.push(format!("{} @workgroup_size({x},{y},{z}), {bindings} bindings, {ep_shared} B workgroup", ep.name));
    }
    let mut wgsl_result = TargetResult::ok("wgsl", summary.join("; "));
    wgsl_result.shared_bytes = Some(shared);

    let dump = std::env::var_os("NEXTFLOW_TARGETS_DUMP").map(PathBuf::from).map(|d| (d, name));
    let dump = dump.as_ref().map(|(d, n)| (d.as_path(), *n));
    vec![wgsl_result, msl(&module, &info, dump), hlsl(&module, &info, dump), spirv(&module, &info, dump)]
}

/// With `NEXTFLOW_TARGETS_DUMP` set, writes `<dir>/<name>.<ext>` (best effort).
fn dump_output(dump: Option<(&Path, &str)>, ext: &str, bytes: &[u8]) {
    if let Some((dir, name)) = dump {
        let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
        let _ = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(dir.join(format!("{name}.{ext}")), bytes));
    }
}

/// Bound globals in declaration order.
fn bound_globals(module: &naga::Module) -> Vec<(&naga::GlobalVariable, naga::ResourceBinding)> {
    module.global_variables.iter().filter_map(|(_, v)| v.binding.map(|b| (v, b))).collect()
}

fn msl(module: &naga::Module, info: &naga::valid::ModuleInfo, dump: Option<(&Path, &str)>) -> TargetResult {
    use naga::back::msl;

    // Explicit Metal slots for every binding: buffers, textures and samplers each count from 0.
    let mut resources = msl::EntryPointResources::default();
    let (mut buffers, mut textures, mut samplers) = (0u8, 0u8, 0u8);
    for (var, binding) in bound_globals(module) {
        let mut target = msl::BindTarget::default();
        match module.types[var.ty].inner {
            naga::TypeInner::Image { .. } => {
                target.texture = Some(textures);
                textures += 1;
            }
            naga::TypeInner::Sampler { .. } => {
                target.sampler = Some(msl::BindSamplerTarget::Resource(samplers));
                samplers += 1;
            }
            _ => {
                target.buffer = Some(buffers);
                buffers += 1;
            }
        }
        if let naga::AddressSpace::Storage { access } = var.space {
            target.mutable = access.contains(naga::StorageAccess::STORE);
        }
        resources.resources.insert(binding, target);
    }
    let has_immediates = module.global_variables.iter().any(|(_, v)| v.space == naga::AddressSpace::Immediate);
    if has_immediates {
        resources.immediates_buffer = Some(buffers);
        buffers += 1;
    }
    resources.sizes_buffer = Some(buffers);

    let options = msl::Options {
        lang_version: MSL_VERSION,
        per_entry_point_map: module.entry_points.iter().map(|ep| (ep.name.clone(), resources.clone())).collect(),
        fake_missing_bindings: false,
        ..Default::default()
    };
    match msl::write_string(module, info, &options, &msl::PipelineOptions::default()) {
        Err(e) => TargetResult::err("msl", format!("MSL {}.{}: {e}", MSL_VERSION.0, MSL_VERSION.1)),
        Ok((source, tinfo)) => {
            dump_output(dump, "metal", source.as_bytes());
            match entry_point_errors(module, &tinfo.entry_point_names) {
                Some(e) => TargetResult::err("msl", format!("MSL {}.{}: {e}", MSL_VERSION.0, MSL_VERSION.1)),
                None => TargetResult::ok("msl", format!("MSL {}.{}, {} lines", MSL_VERSION.0, MSL_VERSION.1, source.lines().count())),
            }
        }
    }
}

fn hlsl(module: &naga::Module, info: &naga::valid::ModuleInfo, dump: Option<(&Path, &str)>) -> TargetResult {
    use naga::back::hlsl;

    let model = HLSL_MODEL.to_str();
    let mut options = hlsl::Options { shader_model: HLSL_MODEL, fake_missing_bindings: false, ..Default::default() };
    for (_, binding) in bound_globals(module) {
        let Ok(space) = u8::try_from(binding.group) else {
            return TargetResult::err("hlsl", format!("SM {model}: @group({}) does not fit a register space", binding.group));
        };
        options.binding_map.insert(
            binding,
            hlsl::BindTarget {
                space,
                register: binding.binding,
                binding_array_size: None,
                dynamic_storage_buffer_offsets_index: None,
                restrict_indexing: false,
            },
        );
    }
    if module.global_variables.iter().any(|(_, v)| v.space == naga::AddressSpace::Immediate) {
        // Root constants: a register no @binding uses.
        let register = bound_globals(module).iter().map(|(_, b)| b.binding + 1).max().unwrap_or(0);
        options.immediates_target = Some(hlsl::BindTarget {
            space: 0,
            register,
            binding_array_size: None,
            dynamic_storage_buffer_offsets_index: None,
            restrict_indexing: false,
        });
    }
    let pipeline = hlsl::PipelineOptions::default();
    let mut source = String::new();
    let mut writer = hlsl::Writer::new(&mut source, &options, &pipeline);
    let written = writer.write(module, info, None);
    dump_output(dump, "hlsl", source.as_bytes());
    match written {
        Err(e) => TargetResult::err("hlsl", format!("SM {model}: {e}")),
        Ok(reflection) => match entry_point_errors(module, &reflection.entry_point_names) {
            Some(e) => TargetResult::err("hlsl", format!("SM {model}: {e}")),
            None => TargetResult::ok("hlsl", format!("SM {model}, {} lines", source.lines().count())),
        },
    }
}

/// The first per-entry-point failure a back end reported, as text.
fn entry_point_errors<E: std::fmt::Display>(module: &naga::Module, names: &[Result<String, E>]) -> Option<String> {
    names.iter().zip(&module.entry_points).find_map(|(r, ep)| r.as_ref().err().map(|e| format!("entry point {}: {e}", ep.name)))
}

fn spirv(module: &naga::Module, info: &naga::valid::ModuleInfo, dump: Option<(&Path, &str)>) -> TargetResult {
    use naga::back::spv;

    let options = spv::Options {
        lang_version: SPIRV_VERSION,
        flags: spv::WriterFlags::DEBUG,
        fake_missing_bindings: false,
        binding_map: bound_globals(module)
            .into_iter()
            .map(|(_, b)| (b, spv::BindingInfo { descriptor_set: b.group, binding: b.binding, binding_array_size: None }))
            .collect(),
        ..Default::default()
    };
    let version = format!("SPIR-V {}.{}", SPIRV_VERSION.0, SPIRV_VERSION.1);
    let words = match spv::write_vec(module, info, &options, None) {
        Ok(w) => w,
        Err(e) => return TargetResult::err("spirv", format!("{version}: {e}")),
    };
    let mut checks = vec![format!("{version}, {} words", words.len())];

    // 1. Back through naga: the SPIR-V front end, then the validator.
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    dump_output(dump, "spv", &bytes);
    let in_options = naga::front::spv::Options { adjust_coordinate_space: false, strict_capabilities: false, block_ctx_dump_prefix: None };
    match naga::front::spv::parse_u8_slice(&bytes, &in_options) {
        Err(e) => return TargetResult::err("spirv", format!("{version}: naga spv-in rejects naga's own output: {e}")),
        Ok(back) => {
            use naga::valid::{Capabilities, ValidationFlags, Validator};
            if let Err(e) = Validator::new(ValidationFlags::all(), Capabilities::all()).validate(&back) {
                return TargetResult::err("spirv", format!("{version}: re-parsed module fails validation: {}", e.into_inner()));
            }
            checks.push("naga spv-in ok".into());
        }
    }

    // 2. spirv-val, where installed.
    match find_spirv_val() {
        None => checks.push("spirv-val not found".into()),
        Some(tool) => {
            let path = temp_path("kernel", "spv");
            if let Err(e) = std::fs::write(&path, &bytes) {
                return TargetResult::err("spirv", format!("{version}: writing {}: {e}", path.display()));
            }
            let out = Command::new(&tool).arg("--target-env").arg(SPIRV_VAL_ENV).arg(&path).output();
            let _ = std::fs::remove_file(&path);
            match out {
                Err(e) => return TargetResult::err("spirv", format!("{version}: running {}: {e}", tool.display())),
                Ok(o) if !o.status.success() => {
                    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                    return TargetResult::err("spirv", format!("{version}: spirv-val --target-env {SPIRV_VAL_ENV}:\n{}", log.trim()));
                }
                Ok(_) => checks.push(format!("spirv-val ({SPIRV_VAL_ENV}) ok")),
            }
        }
    }
    TargetResult::ok("spirv", checks.join(", "))
}

/// `NEXTFLOW_SPIRV_VAL` (empty or "0" disables), else `spirv-val` on `PATH`.
fn find_spirv_val() -> Option<PathBuf> {
    match std::env::var_os("NEXTFLOW_SPIRV_VAL") {
        Some(v) if v.is_empty() || v == "0" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => which("spirv-val"),
    }
}

/// An executable file named `name` in a `PATH` directory.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

// ---------------------------------------------------------------------------------------------
// Finding the CUDA wheels
// ---------------------------------------------------------------------------------------------

/// Prints where pip puts wheels: the `nvidia` namespace package's parents first (where the
/// wheels really are), then every site dir and `sys.path`, in case `nvidia` cannot be imported.
const SITE_SCRIPT: &str = r#"
import os, site, sys
dirs = []
try:
    import nvidia
    dirs += [os.path.dirname(p) for p in nvidia.__path__]
except Exception:
    pass
try:
    dirs += site.getsitepackages() + [site.getusersitepackages()]
except Exception:
    pass
print("\n".join(dirs + sys.path))
"#;

/// The site dirs holding an `nvidia/` folder, from `python3` (or `NEXTFLOW_PYTHON`), cached.
/// Empty when there is no Python.
fn python_site_dirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let python = std::env::var_os("NEXTFLOW_PYTHON").unwrap_or_else(|| "python3".into());
        let Ok(out) = Command::new(python).arg("-c").arg(SITE_SCRIPT).output() else { return Vec::new() };
        let mut dirs: Vec<PathBuf> = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let p = PathBuf::from(line.trim());
            if p.join("nvidia").is_dir() && !dirs.contains(&p) {
                dirs.push(p);
            }
        }
        dirs
    })
}

/// Files in `dir` whose names start with `prefix`, highest name (version) first.
fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> =
        rd.flatten().map(|e| e.path()).filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix))).collect();
    found.sort();
    found.reverse();
    found
}

/// `<site>/nvidia/<rel>` for each site dir and each relative layout (CUDA 13 wheels use
/// `nvidia/cu13/…`, CUDA 12 wheels one folder per package), existing ones only.
fn wheel_dirs(rels: &[&str]) -> Vec<PathBuf> {
    python_site_dirs().iter().flat_map(|s| rels.iter().map(move |r| s.join("nvidia").join(r))).filter(|p| p.is_dir()).collect()
}

fn find_nvrtc_library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("NEXTFLOW_NVRTC") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("NEXTFLOW_NVRTC={} is not a file", p.display())) };
    }
    for dir in wheel_dirs(&["cu13/lib", "cuda_nvrtc/lib"]) {
        // libnvrtc.so.13 / libnvrtc.so.12.x, never libnvrtc-builtins.
        if let Some(lib) = files_with_prefix(&dir, "libnvrtc.so.").into_iter().next() {
            return Ok(lib);
        }
    }
    if python_site_dirs().is_empty() {
        Err("no NVRTC: NEXTFLOW_NVRTC unset and python3 finds no site-packages with nvidia/ (pip install nvidia-cuda-nvrtc)".into())
    } else {
        Err(format!(
            "no NVRTC: NEXTFLOW_NVRTC unset and no nvidia/cu13/lib/libnvrtc.so.* or nvidia/cuda_nvrtc/lib/libnvrtc.so.* under {:?} (pip install nvidia-cuda-nvrtc)",
            python_site_dirs()
        ))
    }
}

/// ptxas: env `NEXTFLOW_PTXAS`, else the `nvidia-cuda-nvcc` wheel (`nvidia/cu13/bin/ptxas`,
/// CUDA 12 layout `nvidia/cuda_nvcc/bin/ptxas`), else `ptxas` on `PATH`.
pub fn find_ptxas() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("NEXTFLOW_PTXAS") {
        let p = PathBuf::from(p);
        return if is_executable(&p) { Ok(p) } else { Err(format!("NEXTFLOW_PTXAS={} is not an executable file", p.display())) };
    }
    wheel_dirs(&["cu13/bin", "cuda_nvcc/bin"])
        .into_iter()
        .map(|d| d.join("ptxas"))
        .find(|p| is_executable(p))
        .or_else(|| which("ptxas"))
        .ok_or_else(|| "no ptxas: NEXTFLOW_PTXAS unset, none in the nvidia-cuda-nvcc wheel, none on PATH (pip install nvidia-cuda-nvcc)".into())
}

// ---------------------------------------------------------------------------------------------
// NVRTC
// ---------------------------------------------------------------------------------------------

type NvrtcProgram = *mut std::ffi::c_void;
type NvrtcResult = c_int;
const NVRTC_SUCCESS: NvrtcResult = 0;

struct NvrtcFns {
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> NvrtcResult,
    error_string: unsafe extern "C" fn(NvrtcResult) -> *const c_char,
    create: unsafe extern "C" fn(*mut NvrtcProgram, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> NvrtcResult,
    compile: unsafe extern "C" fn(NvrtcProgram, c_int, *const *const c_char) -> NvrtcResult,
    ptx_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    ptx: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    log_size: unsafe extern "C" fn(NvrtcProgram, *mut usize) -> NvrtcResult,
    log: unsafe extern "C" fn(NvrtcProgram, *mut c_char) -> NvrtcResult,
    destroy: unsafe extern "C" fn(*mut NvrtcProgram) -> NvrtcResult,
    /// NVRTC ≥ 13.5 only: `nvrtcInstallBundledHeaders(installPath, flags, &errorLog)`.
    install_headers: Option<unsafe extern "C" fn(*const c_char, c_uint, *mut *const c_char) -> NvrtcResult>,
}

/// NVRTC, loaded at run time.
pub struct Nvrtc {
    fns: NvrtcFns,
    version: (i32, i32),
    /// The library file loaded.
    pub path: PathBuf,
    /// `-I` directories passed to every compile (CUDA headers, then CCCL).
    pub include_dirs: Vec<PathBuf>,
    /// Where the headers came from, for reports: "bundled (…)", "wheel (…)", "NEXTFLOW_CUDA_INCLUDE", "none".
    pub headers: String,
    /// The include dirs lack `cuda_runtime.h` (NVRTC's bundled set has none): compiles then get an
    /// empty in-memory one. NVRTC declares the device built-ins itself, so for device code,
    /// which is all cubecl's `#include <cuda_runtime.h>` is there for, nothing is lost.
    pub stub_cuda_runtime_h: bool,
    // Last: the functions above point into it.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Nvrtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvrtc").field("path", &self.path).field("version", &self.version).field("headers", &self.headers).finish()
    }
}

impl Nvrtc {
    /// Loads NVRTC: env `NEXTFLOW_NVRTC` (a file path), else `python3`'s site-packages
    /// (`nvidia/cu13/lib/libnvrtc.so.*`, CUDA 12 layout `nvidia/cuda_nvrtc/lib/libnvrtc.so.*`).
    ///
    /// CUDA headers (`cuda_runtime.h`, `cuda_fp16.h`, …): env `NEXTFLOW_CUDA_INCLUDE`, else the
    /// headers NVRTC bundles (13.5+: `nvrtcInstallBundledHeaders`, installed once into
    /// `temp_dir()/nextflow-nvrtc-headers-<major>.<minor>`), else the `nvidia-cuda-runtime` wheel's
    /// include folder next to the library, else `/usr/local/cuda/include`. Sources that include
    /// nothing compile without any of these. Where none has `cuda_runtime.h`, see
    /// [`Nvrtc::stub_cuda_runtime_h`].
    pub fn find() -> Result<Nvrtc, String> {
        let path = find_nvrtc_library()?;
        // SAFETY: loading NVRTC runs only its (trusted, vendor) initialisers.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| format!("loading {}: {e}", path.display()))?;
        // SAFETY: each signature below is the one declared in nvrtc.h.
        let fns = unsafe {
            NvrtcFns {
                version: symbol(&lib, &path, "nvrtcVersion")?,
                error_string: symbol(&lib, &path, "nvrtcGetErrorString")?,
                create: symbol(&lib, &path, "nvrtcCreateProgram")?,
                compile: symbol(&lib, &path, "nvrtcCompileProgram")?,
                ptx_size: symbol(&lib, &path, "nvrtcGetPTXSize")?,
                ptx: symbol(&lib, &path, "nvrtcGetPTX")?,
                log_size: symbol(&lib, &path, "nvrtcGetProgramLogSize")?,
                log: symbol(&lib, &path, "nvrtcGetProgramLog")?,
                destroy: symbol(&lib, &path, "nvrtcDestroyProgram")?,
                install_headers: symbol(&lib, &path, "nvrtcInstallBundledHeaders").ok(),
            }
        };
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        let r = unsafe { (fns.version)(&mut major, &mut minor) };
        if r != NVRTC_SUCCESS {
            return Err(format!("{}: nvrtcVersion failed ({r})", path.display()));
        }
        let mut nvrtc =
            Nvrtc { fns, version: (major, minor), path, include_dirs: Vec::new(), headers: "none".into(), stub_cuda_runtime_h: false, _lib: lib };
        nvrtc.locate_headers()?;
        nvrtc.stub_cuda_runtime_h = !nvrtc.include_dirs.iter().any(|d| d.join("cuda_runtime.h").is_file());
        if nvrtc.stub_cuda_runtime_h {
            nvrtc.headers += " + empty cuda_runtime.h";
        }
        Ok(nvrtc)
    }

    fn locate_headers(&mut self) -> Result<(), String> {
        let with_cccl = |dir: PathBuf| {
            let cccl = dir.join("cccl");
            let mut v = vec![dir];
            if cccl.is_dir() {
                v.push(cccl);
            }
            v
        };
        if let Some(dir) = std::env::var_os("NEXTFLOW_CUDA_INCLUDE") {
            let dir = PathBuf::from(dir);
            if !dir.is_dir() {
                return Err(format!("NEXTFLOW_CUDA_INCLUDE={} is not a directory", dir.display()));
            }
            self.include_dirs = with_cccl(dir);
            self.headers = "NEXTFLOW_CUDA_INCLUDE".into();
            return Ok(());
        }
        if let Some(install) = self.fns.install_headers {
            let (major, minor) = self.version;
            let dir = std::env::temp_dir().join(format!("nextflow-nvrtc-headers-{major}.{minor}"));
            let installed = dir.join(".nvrtc_headers_version").is_file() && dir.join("cuda_fp16.h").is_file();
            if !installed {
                let c_dir = CString::new(dir.to_string_lossy().as_bytes()).map_err(|_| format!("temp dir {} has a NUL", dir.display()))?;
                let mut log: *const c_char = std::ptr::null();
                // SAFETY: a NUL-terminated path, flags 0 (skip if the version marker matches;
                // NVRTC serialises concurrent installs with a file lock), a valid out-pointer.
                let r = unsafe { install(c_dir.as_ptr(), 0, &mut log) };
                if r != NVRTC_SUCCESS {
                    // SAFETY: NVRTC leaves `log` null or pointing at a NUL-terminated message.
                    let why = if log.is_null() { String::new() } else { unsafe { CStr::from_ptr(log) }.to_string_lossy().into_owned() };
                    return Err(format!("nvrtcInstallBundledHeaders({}): {} {why}", dir.display(), self.error_string(r)));
                }
            }
            self.include_dirs = with_cccl(dir.clone());
            self.headers = format!("bundled ({})", dir.display());
            return Ok(());
        }
        // Older NVRTC: the nvidia-cuda-runtime wheel puts the headers in <lib>/../include
        // (cu13 layout) or nvidia/cuda_runtime/include (cu12 layout).
        let mut candidates: Vec<PathBuf> = self.path.parent().and_then(Path::parent).map(|p| p.join("include")).into_iter().collect();
        candidates.extend(wheel_dirs(&["cu13/include", "cuda_runtime/include"]));
        candidates.push(PathBuf::from("/usr/local/cuda/include"));
        if let Some(dir) = candidates.into_iter().find(|d| d.join("cuda_runtime.h").is_file()) {
            self.headers = format!("wheel ({})", dir.display());
            self.include_dirs = with_cccl(dir);
        }
        Ok(())
    }

    /// (major, minor) as `nvrtcVersion` reports it.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    fn error_string(&self, r: NvrtcResult) -> String {
        // SAFETY: returns a static NUL-terminated string (or null) for any code.
        let p = unsafe { (self.fns.error_string)(r) };
        if p.is_null() {
            format!("NVRTC error {r}")
        } else {
            // SAFETY: non-null, NUL-terminated, static.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    }

    /// Compiles CUDA C++ to PTX for `arch` ("sm_80", "sm_90a", or "compute_XX") with the options
    /// cubecl-cuda uses (`--gpu-architecture=…`, the include path(s), `-lineinfo`) plus
    /// `--std=c++17`. Returns the PTX, or the NVRTC log as the error.
    pub fn compile(&self, name: &str, source: &str, arch: &str) -> Result<String, String> {
        let c_source = CString::new(source).map_err(|_| format!("{name}: source contains a NUL byte"))?;
        let c_name = CString::new(format!("{name}.cu")).map_err(|_| format!("{name}: name contains a NUL byte"))?;
        let mut options = vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_string(), "-lineinfo".to_string()];
        options.extend(self.include_dirs.iter().map(|d| format!("--include-path={}", d.display())));
        let c_options = options.iter().map(|o| CString::new(o.as_str())).collect::<Result<Vec<_>, _>>().map_err(|_| format!("{name}: an option contains a NUL byte"))?;
        let option_ptrs: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();

        let (stub_source, stub_name) = (c"", c"cuda_runtime.h");
        let (n_headers, header_sources, header_names) = if self.stub_cuda_runtime_h {
            (1, [stub_source.as_ptr()], [stub_name.as_ptr()])
        } else {
            (0, [std::ptr::null()], [std::ptr::null()])
        };

        let mut prog: NvrtcProgram = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings that outlive the call; `n_headers` entries in each array.
        let r = unsafe { (self.fns.create)(&mut prog, c_source.as_ptr(), c_name.as_ptr(), n_headers, header_sources.as_ptr(), header_names.as_ptr()) };
        if r != NVRTC_SUCCESS {
            return Err(format!("{name}: nvrtcCreateProgram: {}", self.error_string(r)));
        }
        let result = (|| {
            // SAFETY: a live program and `option_ptrs.len()` valid option strings.
            let r = unsafe { (self.fns.compile)(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
            if r != NVRTC_SUCCESS {
                let log = self.program_log(prog);
                let hint = if self.include_dirs.is_empty() && log.contains("cannot open source file") {
                    "\n(no CUDA include directory: set NEXTFLOW_CUDA_INCLUDE or install nvidia-cuda-runtime / NVRTC ≥ 13.5)"
                } else {
                    ""
                };
                return Err(format!("{name} ({arch}): {}\n{}{hint}", self.error_string(r), log.trim_end()));
            }
            let mut size = 0usize;
            // SAFETY: a live, compiled program and a valid out-pointer.
            let r = unsafe { (self.fns.ptx_size)(prog, &mut size) };
            if r != NVRTC_SUCCESS {
                return Err(format!("{name}: nvrtcGetPTXSize: {}", self.error_string(r)));
            }
            let mut buf = vec![0u8; size.max(1)];
            // SAFETY: `buf` holds `size` bytes, as NVRTC asked.
            let r = unsafe { (self.fns.ptx)(prog, buf.as_mut_ptr().cast()) };
            if r != NVRTC_SUCCESS {
                return Err(format!("{name}: nvrtcGetPTX: {}", self.error_string(r)));
            }
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            buf.truncate(end);
            String::from_utf8(buf).map_err(|e| format!("{name}: PTX is not UTF-8: {e}"))
        })();
        // SAFETY: destroys the program created above exactly once.
        unsafe { (self.fns.destroy)(&mut prog) };
        result
    }

    fn program_log(&self, prog: NvrtcProgram) -> String {
        let mut size = 0usize;
        // SAFETY: a live program, a valid out-pointer.
        if unsafe { (self.fns.log_size)(prog, &mut size) } != NVRTC_SUCCESS || size == 0 {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` holds the `size` bytes NVRTC asked for.
        if unsafe { (self.fns.log)(prog, buf.as_mut_ptr().cast()) } != NVRTC_SUCCESS {
            return String::new();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }
}

/// A function pointer from `lib`.
///
/// # Safety
/// `T` must be the symbol's real (`extern "C" fn`) type.
unsafe fn symbol<T: Copy>(lib: &libloading::Library, path: &Path, name: &str) -> Result<T, String> {
    let c_name = CString::new(name).map_err(|_| format!("bad symbol name {name:?}"))?;
    // SAFETY: the caller vouches for `T`.
    unsafe { lib.get::<T>(c_name.as_bytes_with_nul()) }.map(|s| *s).map_err(|e| format!("{}: no {name}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// ptxas
// ---------------------------------------------------------------------------------------------

/// Assembles PTX for `arch` ("sm_90a") with `ptxas -arch=<arch> -v` into a temporary cubin and
/// reads "Used N registers" and "N bytes smem" from its report (the largest over the module's
/// kernels; stack frames and spills are added to `detail` when non-zero). Target "ptxas <arch>".
pub fn ptxas(ptxas: &Path, ptx: &str, arch: &str) -> TargetResult {
    let target = target_name("ptxas", arch);
    let input = temp_path(arch, "ptx");
    let output = temp_path(arch, "cubin");
    if let Err(e) = std::fs::write(&input, ptx) {
        return TargetResult::err(target, format!("writing {}: {e}", input.display()));
    }
    let out = Command::new(ptxas).arg(format!("-arch={arch}")).arg("-v").arg("-o").arg(&output).arg(&input).output();
    let _ = std::fs::remove_file(&input);
    let cubin_bytes = std::fs::metadata(&output).map(|m| m.len()).ok();
    let _ = std::fs::remove_file(&output);
    let out = match out {
        Ok(o) => o,
        Err(e) => return TargetResult::err(target, format!("running {}: {e}", ptxas.display())),
    };
    let log = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        return TargetResult::err(target, log.trim().to_string());
    }
    let report = parse_ptxas_report(&log);
    let Some(registers) = report.registers else {
        return TargetResult::err(target, format!("no \"Used N registers\" in ptxas output:\n{}", log.trim()));
    };
    let smem = report.smem.unwrap_or(0);
    let mut detail = format!("regs {registers}, smem {smem} B");
    if report.stack > 0 {
        detail += &format!(", stack {} B", report.stack);
    }
    if report.spill > 0 {
        detail += &format!(", spills {} B", report.spill);
    }
    if report.kernels > 1 {
        detail += &format!(" (max over {} kernels)", report.kernels);
    }
    if let Some(n) = cubin_bytes {
        detail += &format!(", cubin {n} B");
    }
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("warning")).collect();
    if !warnings.is_empty() {
        detail += &format!("; {}", warnings.join("; "));
    }
    TargetResult { target, ok: true, detail, registers: Some(registers), shared_bytes: Some(smem) }
}

#[derive(Default, Debug)]
struct PtxasReport {
    kernels: usize,
    registers: Option<u32>,
    smem: Option<u64>,
    stack: u64,
    spill: u64,
}

/// Parses `ptxas -v` lines such as
/// `ptxas info    : Used 32 registers, used 1 barriers, 4096 bytes smem, 380 bytes cmem[0]` and
/// `    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads`.
fn parse_ptxas_report(log: &str) -> PtxasReport {
    let mut r = PtxasReport::default();
    let number_before = |line: &str, suffix: &str| -> Option<u64> {
        let at = line.find(suffix)?;
        line[..at].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    for line in log.lines() {
        if line.contains("Compiling entry function") {
            r.kernels += 1;
        }
        if let Some(n) = number_before(line, " registers") {
            r.registers = Some(r.registers.unwrap_or(0).max(n as u32));
            r.smem = Some(r.smem.unwrap_or(0).max(number_before(line, " bytes smem").unwrap_or(0)));
        }
        r.stack = r.stack.max(number_before(line, " bytes stack frame").unwrap_or(0));
        r.spill = r.spill.max(number_before(line, " bytes spill stores").unwrap_or(0));
    }
    r
}

/// NVRTC → PTX → ptxas for each arch: "nvrtc <arch>" then "ptxas <arch>" per arch. With no
/// ptxas, only the NVRTC results.
pub fn cuda_targets(nvrtc: &Nvrtc, ptxas_path: Option<&Path>, name: &str, source: &str, archs: &[&str]) -> Vec<TargetResult> {
    let (major, minor) = nvrtc.version();
    let mut out = Vec::new();
    for &arch in archs {
        let target = target_name("nvrtc", arch);
        match nvrtc.compile(name, source, arch) {
            Err(e) => out.push(TargetResult::err(target, e)),
            Ok(ptx) => {
                out.push(TargetResult::ok(target, format!("NVRTC {major}.{minor}, {} B PTX", ptx.len())));
                if let Some(p) = ptxas_path {
                    out.push(ptxas(p, &ptx, arch));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HIPRTC
// ---------------------------------------------------------------------------------------------

type HiprtcProgram = *mut std::ffi::c_void;
type HiprtcResult = c_int;
const HIPRTC_SUCCESS: HiprtcResult = 0;
/// ELF `e_machine` of an AMDGPU code object.
const EM_AMDGPU: u16 = 224;

/// Where Debian/Ubuntu's `libamdhip64-5` (ROCm 5.2; hiprtc is part of libamdhip64 there) puts it.
const HIPRTC_DEBIAN_PATH: &str = "/usr/lib/x86_64-linux-gnu/libamdhip64.so.5";
/// Names tried with the dynamic loader's own search: ROCm ≥ 6 ships hiprtc as its own library.
const HIPRTC_NAMES: &[&str] = &["libhiprtc.so", "libamdhip64.so"];
/// What [`Hiprtc::find`] compiles to learn how the HIP headers behave: the two includes cubecl's
/// HIP kernels have, and a use of each.
const HIPRTC_PROBE: &str = "#include <hip/hip_runtime.h>\n#include <hip/hip_fp16.h>\n\
extern \"C\" __global__ void hiprtc_probe(__half* x) { x[threadIdx.x] = __float2half(1.0f); }\n";
const HIPRTC_PROBE_ARCH: &str = "gfx90a";

struct HiprtcFns {
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> HiprtcResult,
    error_string: unsafe extern "C" fn(HiprtcResult) -> *const c_char,
    create: unsafe extern "C" fn(*mut HiprtcProgram, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> HiprtcResult,
    compile: unsafe extern "C" fn(HiprtcProgram, c_int, *const *const c_char) -> HiprtcResult,
    code_size: unsafe extern "C" fn(HiprtcProgram, *mut usize) -> HiprtcResult,
    code: unsafe extern "C" fn(HiprtcProgram, *mut c_char) -> HiprtcResult,
    log_size: unsafe extern "C" fn(HiprtcProgram, *mut usize) -> HiprtcResult,
    log: unsafe extern "C" fn(HiprtcProgram, *mut c_char) -> HiprtcResult,
    destroy: unsafe extern "C" fn(*mut HiprtcProgram) -> HiprtcResult,
}

/// HIPRTC, loaded at run time.
pub struct Hiprtc {
    fns: HiprtcFns,
    version: (i32, i32),
    /// The library file loaded (or the bare name the loader resolved).
    pub path: PathBuf,
    /// `-I` directories passed to every compile: the one holding `hip/hip_runtime.h` (see
    /// [`Hiprtc::find`]); empty when none was found.
    pub include_dirs: Vec<PathBuf>,
    /// Where the headers come from, for reports: the include dir or "none", plus
    /// " + -DHIP_INCLUDE_HIP_HIP_FP16_H" where [`Hiprtc::fp16_guard`] is set.
    pub headers: String,
    /// Compiles get `-DHIP_INCLUDE_HIP_HIP_FP16_H`, `hip_fp16.h`'s include guard. HIPRTC's built-in
    /// preamble (ROCm 5.2: `libhiprtc-builtins5`) is a preprocessed copy of `hip_runtime.h` *and*
    /// `hip_fp16.h`, but it defines only `hip_runtime.h`'s guard, so including the real
    /// `hip_fp16.h` defines `__half_raw` and the rest a second time. Defining the guard does for
    /// `hip_fp16.h` what the preamble does for `hip_runtime.h`: the code is the preamble's, the
    /// header file is skipped. Set when a probe compile fails with the real headers and passes
    /// with the guard.
    pub fp16_guard: bool,
    /// The processors ("gfx90a", "gfx1030", …) of the `libamd_comgr` HIPRTC compiles with, as
    /// `amd_comgr_get_isa_name` lists them; `None` where that library could not be asked.
    /// [`Hiprtc::compile`] refuses any other arch: ROCm 5.2's comgr (2.4) crashes the process
    /// (a `strlen` of a null ISA name in `amd_comgr_do_action`) for one it lacks, such as gfx1100
    /// or gfx940, although its LLVM knows them.
    pub processors: Option<Vec<String>>,
    /// "comgr <major>.<minor> (<soname>)", or why it is unknown.
    pub comgr: String,
    // Last: the functions above point into it.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Hiprtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hiprtc")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("headers", &self.headers)
            .field("comgr", &self.comgr)
            .finish()
    }
}

impl Hiprtc {
    /// Loads HIPRTC: env `NEXTFLOW_HIPRTC` (a file path), else Debian's
    /// `/usr/lib/x86_64-linux-gnu/libamdhip64.so.5` (packages `libamdhip64-5`,
    /// `libhiprtc-builtins5`, `libamd-comgr2`), else `libhiprtc.so` / `libamdhip64.so` through
    /// the dynamic loader's search path.
    ///
    /// HIP headers: HIPRTC declares the device built-ins itself but, in ROCm 5.2, does not
    /// resolve `#include <hip/hip_runtime.h>` (which every cubecl kernel has), so like cubecl-hip
    /// (`-I<HIP_PATH>/include`) it needs an include directory: env `NEXTFLOW_HIP_INCLUDE`, else
    /// the first of `$HIP_PATH/include`, `$ROCM_PATH/include`, `/opt/rocm/include`, `/usr/include`
    /// (Debian `libamdhip64-dev`) with `hip/hip_runtime.h` in it.
    ///
    /// No AMD GPU or driver is needed: HIPRTC compiles in-process through `libamd_comgr`.
    pub fn find() -> Result<Hiprtc, String> {
        let (path, lib) = load_hiprtc_library()?;
        // SAFETY: each signature below is the one declared in hip/hiprtc.h.
        let fns = unsafe {
            HiprtcFns {
                version: symbol(&lib, &path, "hiprtcVersion")?,
                error_string: symbol(&lib, &path, "hiprtcGetErrorString")?,
                create: symbol(&lib, &path, "hiprtcCreateProgram")?,
                compile: symbol(&lib, &path, "hiprtcCompileProgram")?,
                code_size: symbol(&lib, &path, "hiprtcGetCodeSize")?,
                code: symbol(&lib, &path, "hiprtcGetCode")?,
                log_size: symbol(&lib, &path, "hiprtcGetProgramLogSize")?,
                log: symbol(&lib, &path, "hiprtcGetProgramLog")?,
                destroy: symbol(&lib, &path, "hiprtcDestroyProgram")?,
            }
        };
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        let r = unsafe { (fns.version)(&mut major, &mut minor) };
        if r != HIPRTC_SUCCESS {
            return Err(format!("{}: hiprtcVersion failed ({r})", path.display()));
        }
        let include_dirs: Vec<PathBuf> = find_hip_include()?.into_iter().collect();
        let headers = include_dirs.first().map_or("none".to_string(), |d| d.display().to_string());
        let mut hiprtc = Hiprtc {
            fns,
            version: (major, minor),
            path,
            include_dirs,
            headers,
            fp16_guard: false,
            processors: None,
            comgr: "unknown".into(),
            _lib: lib,
        };
        // Probe whether `#include <hip/hip_fp16.h>` needs the guard (see `fp16_guard`).
        if hiprtc.compile("hiprtc_probe", HIPRTC_PROBE, HIPRTC_PROBE_ARCH).is_err_and(|e| e.contains("redefinition of")) {
            hiprtc.fp16_guard = true;
            if hiprtc.compile("hiprtc_probe", HIPRTC_PROBE, HIPRTC_PROBE_ARCH).is_ok() {
                hiprtc.headers += " + -DHIP_INCLUDE_HIP_HIP_FP16_H";
            } else {
                hiprtc.fp16_guard = false;
            }
        }
        // The probe (gfx90a, which every comgr since ROCm 4.3 has) made HIPRTC load its comgr,
        // which it loads at the first compile only; ask that one for its processors.
        match comgr_processors() {
            Ok((comgr, processors)) => (hiprtc.comgr, hiprtc.processors) = (comgr, Some(processors)),
            Err(e) => hiprtc.comgr = e,
        }
        Ok(hiprtc)
    }

    /// (major, minor) as `hiprtcVersion` reports it. Not the ROCm version: ROCm 5.2's
    /// (`libamdhip64.so.5.2.21153`) says 9.0; [`Hiprtc::path`] and [`Hiprtc::comgr`] say more.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    fn error_string(&self, r: HiprtcResult) -> String {
        // SAFETY: returns a static NUL-terminated string (or null) for any code.
        let p = unsafe { (self.fns.error_string)(r) };
        if p.is_null() {
            format!("HIPRTC error {r}")
        } else {
            // SAFETY: non-null, NUL-terminated, static.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    }

    /// Compiles HIP C++ to an AMDGPU code object for `arch` ("gfx90a", "gfx1030", …) with the
    /// options cubecl-hip uses (`--std=c++17`, `-O3`, `-I<HIP include dir>`) plus
    /// `--offload-arch=<arch>`, which cubecl-hip leaves out because HIPRTC then takes the
    /// current device's. Returns the size in bytes of the code object (checked to be an AMDGPU
    /// ELF), or the HIPRTC log as the error.
    pub fn compile(&self, name: &str, source: &str, arch: &str) -> Result<usize, String> {
        if let Some(processors) = &self.processors {
            let processor = arch.split(':').next().unwrap_or(arch);
            if !processors.iter().any(|p| p == processor) {
                return Err(format!("{name}: {} does not know {processor} (not compiled: HIPRTC would crash); it has {}", self.comgr, processors.join(" ")));
            }
        }
        // One compile at a time in the process: hiprtc 5.2 / comgr 2.4 corrupt the heap when
        // called from several threads at once (seen in CI: "malloc(): unaligned tcache chunk").
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let c_source = CString::new(source).map_err(|_| format!("{name}: source contains a NUL byte"))?;
        let c_name = CString::new(format!("{name}.hip")).map_err(|_| format!("{name}: name contains a NUL byte"))?;
        let mut options = vec![format!("--offload-arch={arch}"), "--std=c++17".to_string(), "-O3".to_string()];
        options.extend(self.include_dirs.iter().map(|d| format!("-I{}", d.display())));
        if self.fp16_guard {
            options.push("-DHIP_INCLUDE_HIP_HIP_FP16_H".into());
        }
        let c_options = options.iter().map(|o| CString::new(o.as_str())).collect::<Result<Vec<_>, _>>().map_err(|_| format!("{name}: an option contains a NUL byte"))?;
        let option_ptrs: Vec<*const c_char> = c_options.iter().map(|o| o.as_ptr()).collect();

        let mut prog: HiprtcProgram = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings that outlive the call; no in-memory headers.
        let r = unsafe { (self.fns.create)(&mut prog, c_source.as_ptr(), c_name.as_ptr(), 0, std::ptr::null(), std::ptr::null()) };
        if r != HIPRTC_SUCCESS {
            return Err(format!("{name}: hiprtcCreateProgram: {}", self.error_string(r)));
        }
        let result = (|| {
            // SAFETY: a live program and `option_ptrs.len()` valid option strings.
            let r = unsafe { (self.fns.compile)(prog, option_ptrs.len() as c_int, option_ptrs.as_ptr()) };
            if r != HIPRTC_SUCCESS {
                let log = self.program_log(prog);
                let hint = if self.include_dirs.is_empty() && log.contains("file not found") {
                    "\n(no HIP include directory: set NEXTFLOW_HIP_INCLUDE or apt-get install libamdhip64-dev)"
                } else {
                    ""
                };
                return Err(format!("{name} ({arch}): {}\n{}{hint}", self.error_string(r), log.trim_end()));
            }
            let mut size = 0usize;
            // SAFETY: a live, compiled program and a valid out-pointer.
            let r = unsafe { (self.fns.code_size)(prog, &mut size) };
            if r != HIPRTC_SUCCESS {
                return Err(format!("{name}: hiprtcGetCodeSize: {}", self.error_string(r)));
            }
            if size == 0 {
                return Err(format!("{name} ({arch}): HIPRTC reported success but produced no code\n{}", self.program_log(prog).trim_end()));
            }
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` holds `size` bytes, as HIPRTC asked.
            let r = unsafe { (self.fns.code)(prog, buf.as_mut_ptr().cast()) };
            if r != HIPRTC_SUCCESS {
                return Err(format!("{name}: hiprtcGetCode: {}", self.error_string(r)));
            }
            // An AMDGPU ELF: the magic, then e_machine (offset 18, little-endian) EM_AMDGPU.
            if buf.len() < 20 || &buf[..4] != b"\x7fELF" || u16::from_le_bytes([buf[18], buf[19]]) != EM_AMDGPU {
                return Err(format!("{name} ({arch}): HIPRTC's {size} B of code are not an AMDGPU ELF code object"));
            }
            Ok(size)
        })();
        // SAFETY: destroys the program created above exactly once.
        unsafe { (self.fns.destroy)(&mut prog) };
        result
    }

    fn program_log(&self, prog: HiprtcProgram) -> String {
        let mut size = 0usize;
        // SAFETY: a live program, a valid out-pointer.
        if unsafe { (self.fns.log_size)(prog, &mut size) } != HIPRTC_SUCCESS || size == 0 {
            return String::new();
        }
        let mut buf = vec![0u8; size];
        // SAFETY: `buf` holds the `size` bytes HIPRTC asked for.
        if unsafe { (self.fns.log)(prog, buf.as_mut_ptr().cast()) } != HIPRTC_SUCCESS {
            return String::new();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    }
}

/// `NEXTFLOW_HIPRTC`, else [`HIPRTC_DEBIAN_PATH`], else [`HIPRTC_NAMES`] through `dlopen`'s search.
fn load_hiprtc_library() -> Result<(PathBuf, libloading::Library), String> {
    let load = |path: PathBuf| {
        // SAFETY: loading HIPRTC runs only its (trusted, vendor) initialisers.
        unsafe { libloading::Library::new(&path) }.map(|lib| (path.clone(), lib)).map_err(|e| format!("loading {}: {e}", path.display()))
    };
    if let Some(p) = std::env::var_os("NEXTFLOW_HIPRTC") {
        let p = PathBuf::from(p);
        return if p.is_file() { load(p) } else { Err(format!("NEXTFLOW_HIPRTC={} is not a file", p.display())) };
    }
    let debian = PathBuf::from(HIPRTC_DEBIAN_PATH);
    if debian.is_file() {
        return load(debian);
    }
    let mut errors = Vec::new();
    for name in HIPRTC_NAMES {
        match load(PathBuf::from(name)) {
            Ok(found) => return Ok(found),
            Err(e) => errors.push(e),
        }
    }
    Err(format!(
        "no HIPRTC: NEXTFLOW_HIPRTC unset, no {HIPRTC_DEBIAN_PATH} (apt-get install libamdhip64-5 libhiprtc-builtins5 libamd-comgr2); {}",
        errors.join("; ")
    ))
}

/// The HIP include directory (see [`Hiprtc::find`]), `None` when there is none.
fn find_hip_include() -> Result<Option<PathBuf>, String> {
    if let Some(dir) = std::env::var_os("NEXTFLOW_HIP_INCLUDE") {
        let dir = PathBuf::from(dir);
        return if dir.is_dir() { Ok(Some(dir)) } else { Err(format!("NEXTFLOW_HIP_INCLUDE={} is not a directory", dir.display())) };
    }
    let roots = ["HIP_PATH", "ROCM_PATH"].into_iter().filter_map(std::env::var_os).map(|r| PathBuf::from(r).join("include"));
    Ok(roots.chain(["/opt/rocm/include", "/usr/include"].map(PathBuf::from)).find(|d| d.join("hip/hip_runtime.h").is_file()))
}

/// comgr sonames, newest first (ROCm 7: .so.3; ROCm 5 and 6: .so.2).
const COMGR_NAMES: &[&str] = &["libamd_comgr.so.3", "libamd_comgr.so.2"];

/// ("comgr <major>.<minor> (<soname>)", its processors) from the `libamd_comgr` already loaded
/// in this process (by HIPRTC): `dlopen(RTLD_NOLOAD)` never loads another one.
fn comgr_processors() -> Result<(String, Vec<String>), String> {
    #[cfg(target_os = "linux")]
    {
        type Status = c_int;
        /// glibc's RTLD_NOLOAD.
        const RTLD_NOLOAD: c_int = 4;
        let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL | RTLD_NOLOAD;
        for &soname in COMGR_NAMES {
            // SAFETY: RTLD_NOLOAD only returns a library that is already loaded (and initialised).
            let Ok(lib) = (unsafe { libloading::os::unix::Library::open(Some(soname), flags) }) else { continue };
            let lib = libloading::Library::from(lib);
            let path = Path::new(soname);
            // SAFETY: the signatures declared in amd_comgr.h.
            let (version, count, isa_name) = unsafe {
                (
                    symbol::<unsafe extern "C" fn(*mut usize, *mut usize)>(&lib, path, "amd_comgr_get_version")?,
                    symbol::<unsafe extern "C" fn(*mut usize) -> Status>(&lib, path, "amd_comgr_get_isa_count")?,
                    symbol::<unsafe extern "C" fn(usize, *mut *const c_char) -> Status>(&lib, path, "amd_comgr_get_isa_name")?,
                )
            };
            let (mut major, mut minor, mut n) = (0usize, 0usize, 0usize);
            // SAFETY: valid out-pointers.
            unsafe { version(&mut major, &mut minor) };
            // SAFETY: a valid out-pointer.
            if unsafe { count(&mut n) } != 0 {
                return Err(format!("{soname}: amd_comgr_get_isa_count failed"));
            }
            let mut processors = Vec::new();
            for i in 0..n {
                let mut p: *const c_char = std::ptr::null();
                // SAFETY: `i` < count, a valid out-pointer; comgr returns a static string.
                if unsafe { isa_name(i, &mut p) } != 0 || p.is_null() {
                    return Err(format!("{soname}: amd_comgr_get_isa_name({i}) failed"));
                }
                // SAFETY: non-null, NUL-terminated, static. "amdgcn-amd-amdhsa--gfx90a[:feature…]".
                let isa = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
                let processor = isa.rsplit("--").next().unwrap_or(&isa).split(':').next().unwrap_or("").to_string();
                if !processors.contains(&processor) {
                    processors.push(processor);
                }
            }
            return Ok((format!("comgr {major}.{minor} ({soname})"), processors));
        }
        Err(format!("comgr unknown: none of {COMGR_NAMES:?} is loaded"))
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("comgr unknown: only looked for on Linux".into())
    }
}

/// HIPRTC for each arch: one "hiprtc <arch>" result per arch.
pub fn hip_targets(hiprtc: &Hiprtc, name: &str, source: &str, archs: &[&str]) -> Vec<TargetResult> {
    let (major, minor) = hiprtc.version();
    archs
        .iter()
        .map(|&arch| {
            let target = target_name("hiprtc", arch);
            match hiprtc.compile(name, source, arch) {
                Err(e) => TargetResult::err(target, e),
                Ok(bytes) => TargetResult::ok(target, format!("HIPRTC {major}.{minor}, {bytes} B code object")),
            }
        })
        .collect()
}
