//! A c10d process group (libtorch's `TCPStore` and `ProcessGroupGloo`, through
//! the C++ shim `c10d.cpp`) and the collectives fine-tuning uses.

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
    fn pipe_c10d_group_new(
        store: *mut c_void,
        backend: *const c_char,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        group: *mut *mut c_void,
    ) -> *mut c_char;
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
    /// group fail after `timeout` as well.
    pub fn join(
        store: Store,
        backend: DistBackend,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<ProcessGroup, C10dError> {
        let name = CString::new(backend.name()).map_err(|_| C10dError("bad backend".into()))?;
        let (r, w) = (
            c_int::try_from(rank).map_err(|_| C10dError(format!("rank {rank} is too large")))?,
            c_int::try_from(world)
                .map_err(|_| C10dError(format!("world size {world} is too large")))?,
        );
        let mut ptr = std::ptr::null_mut();
        // SAFETY: `store.ptr` is live; valid C string and out-pointer.
        check(unsafe {
            pipe_c10d_group_new(store.ptr, name.as_ptr(), r, w, millis(timeout), &mut ptr)
        })?;
        Ok(ProcessGroup {
            ptr,
            rank,
            world,
            _store: store,
        })
    }

    /// Sums `t` across the group, in place (a contiguous CPU tensor for gloo).
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
        // SAFETY: `ptr` came from pipe_c10d_group_new and is freed once.
        unsafe { pipe_c10d_group_free(self.ptr) }
    }
}
