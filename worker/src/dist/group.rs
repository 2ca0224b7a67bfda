//! A c10d process group (libtorch's `TCPStore`, `ProcessGroupGloo` and
//! `ProcessGroupNCCL`, through the C++ shims `c10d.cpp` and `nccl.cpp`) and
//! the collectives fine-tuning uses.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;

use tch::Tensor;

use pipe_protocol::DistBackend;

extern "C" {
    fn pipe_c10d_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        world: c_int,
        timeout_ms: i64,
        store: *mut *mut c_void,
        port_out: *mut u16,
    ) -> *mut c_char;
    fn pipe_c10d_store_free(store: *mut c_void);
    fn pipe_c10d_gloo_new(
        store: *mut c_void,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        group: *mut *mut c_void,
    ) -> *mut c_char;
    fn pipe_c10d_group_wrap(backend: *mut c_void, timeout_ms: i64, group: *mut *mut c_void);
    fn pipe_c10d_group_free(group: *mut c_void);
    fn pipe_c10d_allreduce_sum(group: *mut c_void, tensor: *mut c_void) -> *mut c_char;
    fn pipe_c10d_barrier(group: *mut c_void) -> *mut c_char;
    fn pipe_c10d_free_error(message: *mut c_char);
}

/// What c10d said when a store, a group or a collective failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct C10dError(String);

fn check(message: *mut c_char) -> Result<(), C10dError> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string the shim malloc'd.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    unsafe { pipe_c10d_free_error(message) };
    Err(C10dError(text))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// A c10d `TCPStore`: the rendezvous of a group, hosted by rank 0.
pub struct Store {
    ptr: *mut c_void,
    port: u16,
}

// SAFETY: c10d stores are thread-safe; the pointer is owned here.
unsafe impl Send for Store {}

impl Store {
    /// Hosts the store on `host:port` (port 0: a free one, see [`Store::port`]).
    pub fn host(
        host: &str,
        port: u16,
        world: usize,
        timeout: Duration,
    ) -> Result<Store, C10dError> {
        Store::new(host, port, true, world, timeout)
    }

    /// Connects to the store rank 0 hosts, retrying until `timeout`.
    pub fn connect(
        host: &str,
        port: u16,
        world: usize,
        timeout: Duration,
    ) -> Result<Store, C10dError> {
        Store::new(host, port, false, world, timeout)
    }

    fn new(
        host: &str,
        port: u16,
        server: bool,
        world: usize,
        timeout: Duration,
    ) -> Result<Store, C10dError> {
        let host = CString::new(host).map_err(|_| C10dError(format!("bad host {host:?}")))?;
        let world = c_int::try_from(world)
            .map_err(|_| C10dError(format!("world size {world} is too large")))?;
        let mut ptr = std::ptr::null_mut();
        let mut bound = 0u16;
        // SAFETY: valid C string and out-pointers; the shim owns the store behind `ptr`.
        check(unsafe {
            pipe_c10d_store_new(
                host.as_ptr(),
                port,
                c_int::from(server),
                world,
                millis(timeout),
                &mut ptr,
                &mut bound,
            )
        })?;
        Ok(Store { ptr, port: bound })
    }

    /// The port the store listens on (rank 0) or connected to.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from pipe_c10d_store_new and is freed once.
        unsafe { pipe_c10d_store_free(self.ptr) }
    }
}

/// Whether this worker can make a `backend` group (NCCL: built with it, and
/// CUDA there), before any rank is started or joins.
pub fn available(backend: DistBackend) -> Result<(), C10dError> {
    match backend {
        DistBackend::Nccl => nccl::backend_new().map(drop),
        _ => Ok(()),
    }
}

/// One rank's handle on a process group.
pub struct ProcessGroup {
    ptr: *mut c_void,
    /// This process's rank, 0-based.
    pub rank: usize,
    /// How many ranks the group has.
    pub world: usize,
    // The group keeps its own reference to the store; ours keeps it alive
    // for as long as the group, whatever c10d does.
    _store: Store,
}

// SAFETY: one thread at a time uses a group (it is not `Sync`).
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group of `world` ranks on `store` as `rank`: blocks until
    /// every rank has joined, or fails after `timeout`. Collectives on the
    /// group fail after `timeout` as well. NCCL binds the group to CUDA
    /// device `cuda_device`.
    pub fn join(
        store: Store,
        backend: DistBackend,
        rank: usize,
        world: usize,
        cuda_device: usize,
        timeout: Duration,
    ) -> Result<ProcessGroup, C10dError> {
        let int = |what: &str, n: usize| {
            c_int::try_from(n).map_err(|_| C10dError(format!("{what} {n} is too large")))
        };
        let (r, w) = (int("rank", rank)?, int("world size", world)?);
        let mut ptr = std::ptr::null_mut();
        match backend {
            DistBackend::Nccl => {
                let new = nccl::backend_new()?;
                let mut b = std::ptr::null_mut();
                // SAFETY: `store.ptr` is live; `new` is the shim's
                // pipe_nccl_backend_new; on success `b` is a backend that
                // pipe_c10d_group_wrap takes over.
                check(unsafe {
                    new(
                        store.ptr,
                        r,
                        w,
                        millis(timeout),
                        int("CUDA device", cuda_device)?,
                        &mut b,
                    )
                })?;
                // SAFETY: `b` is the backend just made; the group takes it over.
                unsafe { pipe_c10d_group_wrap(b, millis(timeout), &mut ptr) };
            }
            // SAFETY: `store.ptr` is live; valid out-pointer.
            _ => check(unsafe { pipe_c10d_gloo_new(store.ptr, r, w, millis(timeout), &mut ptr) })?,
        }
        Ok(ProcessGroup {
            ptr,
            rank,
            world,
            _store: store,
        })
    }

    /// Sums `t` across the group, in place (a contiguous tensor: on the CPU
    /// for gloo, on the group's device for NCCL).
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<(), C10dError> {
        // SAFETY: `ptr` is live and `t.as_ptr()` is a valid at::Tensor* for the call.
        check(unsafe { pipe_c10d_allreduce_sum(self.ptr, t.as_ptr() as *mut c_void) })
    }

    /// Waits until every rank gets here.
    pub fn barrier(&self) -> Result<(), C10dError> {
        // SAFETY: `ptr` is live.
        check(unsafe { pipe_c10d_barrier(self.ptr) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from pipe_c10d_gloo_new or
        // pipe_c10d_group_wrap and is freed once.
        unsafe { pipe_c10d_group_free(self.ptr) }
    }
}

/// The NCCL shim (`nccl.cpp`): a shared object build.rs compiles and the
/// worker embeds, loaded on first use from an anonymous in-memory file. It
/// links libtorch_cuda, so a machine without CUDA never loads it.
mod nccl {
    use super::C10dError;
    use std::ffi::{c_char, c_int, c_void};

    pub type BackendNew = unsafe extern "C" fn(
        store: *mut c_void,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        device: c_int,
        backend: *mut *mut c_void,
    ) -> *mut c_char;

    #[cfg(not(pipe_nccl))]
    pub fn backend_new() -> Result<BackendNew, C10dError> {
        Err(C10dError(
            "backend nccl: this pipe-worker was built without the NCCL headers \
             (scripts/setup-libtorch installs them); use backend gloo"
                .into(),
        ))
    }

    #[cfg(pipe_nccl)]
    pub fn backend_new() -> Result<BackendNew, C10dError> {
        static LOADED: std::sync::OnceLock<Result<usize, String>> = std::sync::OnceLock::new();
        match LOADED.get_or_init(|| load().map_err(|e| format!("backend nccl: {e}"))) {
            // SAFETY: the address dlsym gave for pipe_nccl_backend_new, whose
            // C signature is `BackendNew`; the object stays loaded.
            Ok(addr) => Ok(unsafe { std::mem::transmute::<usize, BackendNew>(*addr) }),
            Err(e) => Err(C10dError(e.clone())),
        }
    }

    #[cfg(pipe_nccl)]
    fn load() -> Result<usize, String> {
        use std::ffi::{CStr, CString};
        use std::io::Write;
        use std::os::fd::FromRawFd;
        static SO: &[u8] = include_bytes!(env!("PIPE_NCCL_SO"));
        if !tch::Cuda::is_available() {
            return Err("libtorch sees no CUDA device".into());
        }
        // SAFETY: a valid C string.
        let fd = unsafe { libc::memfd_create(c"pipe-nccl".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "cannot hold the NCCL shim in memory: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(SO)
            .map_err(|e| format!("cannot write the NCCL shim: {e}"))?;
        let path = CString::new(format!("/proc/self/fd/{fd}")).map_err(|e| e.to_string())?;
        // SAFETY: dlopen of the shim; it stays loaded for the process's
        // lifetime (the handle is never closed).
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns NULL or a C string valid until the next call.
            let why = unsafe { libc::dlerror() };
            let why = if why.is_null() {
                "unknown error".into()
            } else {
                // SAFETY: non-null, NUL-terminated, read before any other dl call.
                unsafe { CStr::from_ptr(why) }
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(format!(
                "cannot load the NCCL shim (does the libtorch pipe-worker runs against have NCCL?): {why}"
            ));
        }
        // SAFETY: a live handle and a valid C string.
        let sym = unsafe { libc::dlsym(handle, c"pipe_nccl_backend_new".as_ptr()) };
        if sym.is_null() {
            return Err("the NCCL shim lacks pipe_nccl_backend_new".into());
        }
        Ok(sym as usize)
    }
}
