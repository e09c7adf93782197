//! The CUDA driver API, loaded at run time: [`Cuda`] implements [`Device`] on GPU 0 (the first that
//! `CUDA_VISIBLE_DEVICES` leaves) in its primary context, with the legacy default stream.
//!
//! The library is `libcuda.so.1` (or `libcuda.so`), or the file named by the environment variable
//! `QC_LIBCUDA`. Every failure is a message naming the driver call and its `CUresult` name.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

use libloading::Library;

use super::Device;

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuModule = *mut c_void;
type CuFunction = *mut c_void;
type CuDevicePtr = u64;

/// `CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR` / `_MINOR`.
const CC_MAJOR: c_int = 75;
const CC_MINOR: c_int = 76;
/// `CU_JIT_ERROR_LOG_BUFFER`, `CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES`.
const JIT_ERROR_LOG_BUFFER: c_int = 5;
const JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_int = 6;

/// The driver entry points qc uses (their `_v2` versions where the plain name is the legacy ABI).
struct Api {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    device_get_attribute: unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    primary_ctx_release: unsafe extern "C" fn(CuDevice) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    ctx_synchronize: unsafe extern "C" fn() -> CuResult,
    module_load_data_ex: unsafe extern "C" fn(
        *mut CuModule,
        *const c_void,
        c_uint,
        *mut c_int,
        *mut *mut c_void,
    ) -> CuResult,
    module_get_function: unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult,
    module_unload: unsafe extern "C" fn(CuModule) -> CuResult,
    mem_alloc: unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult,
    mem_free: unsafe extern "C" fn(CuDevicePtr) -> CuResult,
    memcpy_htod: unsafe extern "C" fn(CuDevicePtr, *const c_void, usize) -> CuResult,
    memcpy_dtoh: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize) -> CuResult,
    memcpy_dtod: unsafe extern "C" fn(CuDevicePtr, CuDevicePtr, usize) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch_kernel: unsafe extern "C" fn(
        CuFunction,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    get_error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

/// GPU 0 through the CUDA driver.
pub struct Cuda {
    api: Api,
    device: CuDevice,
    modules: Vec<CuModule>,
    functions: Vec<CuFunction>,
    allocations: Vec<CuDevicePtr>,
    /// Keeps the library loaded while the function pointers of `api` are in use (dropped last).
    _lib: Library,
}

fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, String> {
    // SAFETY: each `T` above is the C signature of the driver function `name` (cuda.h).
    unsafe {
        lib.get::<T>(name.as_bytes())
            .map(|s| *s)
            .map_err(|e| format!("the CUDA driver has no {name}: {e}"))
    }
}

impl Cuda {
    /// Loads the driver, initializes it and makes GPU 0's primary context current on this thread.
    pub fn open() -> Result<Cuda, String> {
        let names: Vec<String> = match std::env::var("QC_LIBCUDA") {
            Ok(p) if !p.is_empty() => vec![p],
            _ => vec!["libcuda.so.1".into(), "libcuda.so".into()],
        };
        let mut errors = Vec::new();
        let mut lib = None;
        for n in &names {
            // SAFETY: loading the CUDA driver runs its initializers, which have no preconditions.
            match unsafe { Library::new(n) } {
                Ok(l) => {
                    lib = Some(l);
                    break;
                }
                Err(e) => errors.push(format!("{n}: {e}")),
            }
        }
        let lib = lib.ok_or_else(|| {
            format!(
                "cannot load the CUDA driver (is an NVIDIA driver installed?): {}",
                errors.join("; ")
            )
        })?;
        let api = Api {
            init: sym(&lib, "cuInit")?,
            device_get_count: sym(&lib, "cuDeviceGetCount")?,
            device_get: sym(&lib, "cuDeviceGet")?,
            device_get_name: sym(&lib, "cuDeviceGetName")?,
            device_get_attribute: sym(&lib, "cuDeviceGetAttribute")?,
            primary_ctx_retain: sym(&lib, "cuDevicePrimaryCtxRetain")?,
            primary_ctx_release: sym(&lib, "cuDevicePrimaryCtxRelease_v2")?,
            ctx_set_current: sym(&lib, "cuCtxSetCurrent")?,
            ctx_synchronize: sym(&lib, "cuCtxSynchronize")?,
            module_load_data_ex: sym(&lib, "cuModuleLoadDataEx")?,
            module_get_function: sym(&lib, "cuModuleGetFunction")?,
            module_unload: sym(&lib, "cuModuleUnload")?,
            mem_alloc: sym(&lib, "cuMemAlloc_v2")?,
            mem_free: sym(&lib, "cuMemFree_v2")?,
            memcpy_htod: sym(&lib, "cuMemcpyHtoD_v2")?,
            memcpy_dtoh: sym(&lib, "cuMemcpyDtoH_v2")?,
            memcpy_dtod: sym(&lib, "cuMemcpyDtoD_v2")?,
            launch_kernel: sym(&lib, "cuLaunchKernel")?,
            get_error_name: sym(&lib, "cuGetErrorName")?,
        };
        let mut c = Cuda {
            api,
            device: 0,
            modules: Vec::new(),
            functions: Vec::new(),
            allocations: Vec::new(),
            _lib: lib,
        };
        // SAFETY: driver calls with valid out-pointers, in the order the driver API requires.
        unsafe {
            c.check((c.api.init)(0), "cuInit")?;
            let mut n = 0;
            c.check((c.api.device_get_count)(&mut n), "cuDeviceGetCount")?;
            if n == 0 {
                return Err("the CUDA driver sees no GPU".into());
            }
            let mut d = 0;
            c.check((c.api.device_get)(&mut d, 0), "cuDeviceGet")?;
            c.device = d;
            let mut ctx = std::ptr::null_mut();
            c.check(
                (c.api.primary_ctx_retain)(&mut ctx, c.device),
                "cuDevicePrimaryCtxRetain",
            )?;
            c.check((c.api.ctx_set_current)(ctx), "cuCtxSetCurrent")?;
        }
        Ok(c)
    }

    fn check(&self, r: CuResult, call: &str) -> Result<(), String> {
        if r == 0 {
            return Ok(());
        }
        let mut name: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorName writes a pointer to a static string, or fails.
        let n = unsafe {
            if (self.api.get_error_name)(r, &mut name) == 0 && !name.is_null() {
                CStr::from_ptr(name).to_string_lossy().into_owned()
            } else {
                "unknown error".into()
            }
        };
        Err(format!("{call} failed: {n} ({r})"))
    }

    /// The GPU's name.
    pub fn name(&self) -> String {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer holds 256 bytes; the driver NUL-terminates the name.
        unsafe {
            if (self.api.device_get_name)(buf.as_mut_ptr(), 256, self.device) != 0 {
                return "unknown GPU".into();
            }
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        }
    }

    /// The GPU's compute capability (major, minor).
    pub fn compute_capability(&self) -> Result<(i32, i32), String> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: valid out-pointers.
        unsafe {
            self.check(
                (self.api.device_get_attribute)(&mut major, CC_MAJOR, self.device),
                "cuDeviceGetAttribute",
            )?;
            self.check(
                (self.api.device_get_attribute)(&mut minor, CC_MINOR, self.device),
                "cuDeviceGetAttribute",
            )?;
        }
        Ok((major, minor))
    }
}

/// Whether a GPU of compute capability `cc` runs PTX compiled for `target` (`sm_80`, `sm_90a`, ...):
/// an architecture-specific target (`a` suffix) needs exactly its chip; a plain one any chip at least
/// as new.
pub fn runs_target(cc: (i32, i32), target: &str) -> bool {
    let Some(digits) = target.strip_prefix("sm_") else {
        return false;
    };
    let (num, specific) = match digits.strip_suffix('a') {
        Some(d) => (d, true),
        None => (digits, false),
    };
    let Ok(n) = num.parse::<i32>() else {
        return false;
    };
    let want = (n / 10, n % 10);
    if specific {
        cc == want
    } else {
        cc >= want
    }
}

impl Device for Cuda {
    fn alloc(&mut self, bytes: u64) -> Result<u64, String> {
        let mut p = 0;
        // SAFETY: valid out-pointer.
        self.check(
            unsafe { (self.api.mem_alloc)(&mut p, bytes as usize) },
            "cuMemAlloc",
        )?;
        self.allocations.push(p);
        Ok(p)
    }

    fn upload(&mut self, dst: u64, data: &[u8]) -> Result<(), String> {
        // SAFETY: `data` is readable for its length; `dst` is an allocation of the plan's size.
        self.check(
            unsafe { (self.api.memcpy_htod)(dst, data.as_ptr().cast(), data.len()) },
            "cuMemcpyHtoD",
        )
    }

    fn download(&mut self, src: u64, out: &mut [u8]) -> Result<(), String> {
        // SAFETY: `out` is writable for its length.
        self.check(
            unsafe { (self.api.memcpy_dtoh)(out.as_mut_ptr().cast(), src, out.len()) },
            "cuMemcpyDtoH",
        )
    }

    fn copy(&mut self, dst: u64, src: u64, bytes: u64) -> Result<(), String> {
        // SAFETY: both ranges are inside allocations (the plan is checked).
        self.check(
            unsafe { (self.api.memcpy_dtod)(dst, src, bytes as usize) },
            "cuMemcpyDtoD",
        )
    }

    fn kernel(&mut self, ptx: &[u8], entry: &str) -> Result<usize, String> {
        let mut image = ptx.to_vec();
        image.push(0);
        let mut log = vec![0u8; 1 << 14];
        let mut opts = [JIT_ERROR_LOG_BUFFER, JIT_ERROR_LOG_BUFFER_SIZE_BYTES];
        let mut vals: [*mut c_void; 2] = [log.as_mut_ptr().cast(), log.len() as *mut c_void];
        let mut m = std::ptr::null_mut();
        // SAFETY: a NUL-terminated PTX image; the options name a writable log buffer and its size.
        let r = unsafe {
            (self.api.module_load_data_ex)(
                &mut m,
                image.as_ptr().cast(),
                2,
                opts.as_mut_ptr(),
                vals.as_mut_ptr(),
            )
        };
        if let Err(e) = self.check(r, "cuModuleLoadDataEx") {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            return Err(format!(
                "{e}: {}",
                String::from_utf8_lossy(&log[..end]).trim()
            ));
        }
        self.modules.push(m);
        let name = CString::new(entry).map_err(|_| format!("bad entry name {entry:?}"))?;
        let mut f = std::ptr::null_mut();
        // SAFETY: `m` is a loaded module, `name` NUL-terminated.
        self.check(
            unsafe { (self.api.module_get_function)(&mut f, m, name.as_ptr()) },
            "cuModuleGetFunction",
        )?;
        self.functions.push(f);
        Ok(self.functions.len() - 1)
    }

    fn launch(
        &mut self,
        kernel: usize,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[Vec<u8>],
    ) -> Result<(), String> {
        let f = *self
            .functions
            .get(kernel)
            .ok_or_else(|| format!("no kernel {kernel}"))?;
        // Each parameter's bytes, 8-byte aligned, and a pointer to each.
        let mut storage: Vec<u64> = params
            .iter()
            .map(|p| {
                let mut b = [0u8; 8];
                b[..p.len().min(8)].copy_from_slice(&p[..p.len().min(8)]);
                u64::from_le_bytes(b)
            })
            .collect();
        let mut ptrs: Vec<*mut c_void> =
            storage.iter_mut().map(|v| (v as *mut u64).cast()).collect();
        // SAFETY: one pointer per kernel parameter, each to at least the parameter's size (the plan
        // gives one param per `.param` of the entry, none larger than 8 bytes); default stream.
        self.check(
            unsafe {
                (self.api.launch_kernel)(
                    f,
                    grid[0],
                    grid[1],
                    grid[2],
                    block[0],
                    block[1],
                    block[2],
                    0,
                    std::ptr::null_mut(),
                    ptrs.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )
    }

    fn synchronize(&mut self) -> Result<(), String> {
        // SAFETY: no arguments.
        self.check(unsafe { (self.api.ctx_synchronize)() }, "cuCtxSynchronize")
    }
}

impl Drop for Cuda {
    fn drop(&mut self) {
        // SAFETY: every handle was made by this driver instance and is released once.
        unsafe {
            for &p in &self.allocations {
                (self.api.mem_free)(p);
            }
            for &m in &self.modules {
                (self.api.module_unload)(m);
            }
            (self.api.primary_ctx_release)(self.device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_run_on_their_chips() {
        assert!(runs_target((9, 0), "sm_80"));
        assert!(runs_target((8, 9), "sm_89"));
        assert!(!runs_target((8, 6), "sm_89"));
        assert!(runs_target((9, 0), "sm_90a"));
        assert!(!runs_target((10, 0), "sm_90a"));
        assert!(runs_target((10, 0), "sm_100a"));
        assert!(!runs_target((12, 0), "sm_100a"));
        assert!(!runs_target((9, 0), "x86-64-v4"));
    }

    #[test]
    fn a_missing_driver_is_an_error_not_a_crash() {
        // Only meaningful where no driver is installed (CI); with one, opening must work or fail
        // with a driver message.
        std::env::set_var("QC_LIBCUDA", "/nonexistent/libcuda.so.1");
        let e = Cuda::open().err().expect("a missing library cannot open");
        std::env::remove_var("QC_LIBCUDA");
        assert!(e.contains("cannot load the CUDA driver"), "{e}");
        assert!(e.contains("/nonexistent/libcuda.so.1"), "{e}");
    }
}
