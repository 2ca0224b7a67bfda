//! The libtorch side of `pipe`: the model, its checkpoints and tokenizer, the
//! torch stage kinds (`finetune`, `trace`) and the model server. The `pipe-worker`
//! binary is the only thing that links libtorch; the engine spawns it.

pub mod amp;
pub mod bert;
pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod dropout;
pub mod fast;
pub mod finetune;
pub mod optim;
pub mod scores;
pub mod serve;
pub mod tokenize;
pub mod trace;

use std::collections::BTreeMap;
use std::io::Write;

use pipe_protocol::Message;

/// jemalloc is the whole process's `malloc`, libtorch's included: libtorch
/// allocates and frees every activation and gradient of every step, and
/// glibc's allocator hands the large ones back to the kernel on free, so each
/// step faulted them in again (three million page faults in one MiniLM bf16
/// epoch; with jemalloc about 0.4 million), and its small-block bookkeeping
/// (`malloc_consolidate`) was a tenth of a one-sentence request.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read before `main`: freed pages stay with the
/// process for reuse (no decay back to the kernel, and no separate arena
/// that returns allocations over 8 MiB at once), and a request may be carved
/// from a free extent up to 1024 times its size (with jemalloc's default,
/// 64, freed large extents sat unused beside the new memory mapped for
/// smaller requests: a 1-epoch MiniLM fp32 run peaked at 3.5 GiB; with
/// this, 0.8 GiB; with glibc, 1.0 GiB). A worker runs one stage or one
/// server, whose steps free and allocate the same sizes over and over: its
/// memory stays at its peak, and the peak is lower than with glibc's.
/// `MALLOC_CONF` in the environment still applies on top.
#[export_name = "malloc_conf"]
static MALLOC_CONF: &[u8; 85] =
    b"dirty_decay_ms:-1,muzzy_decay_ms:-1,oversize_threshold:0,lg_extent_max_active_fit:10\0";

/// Where a worker's output goes: its log on stderr (appended to the stage log
/// by the engine), progress as JSON lines on stdout.
pub struct Report;

impl Report {
    #[allow(
        clippy::print_stderr,
        reason = "the worker's log is its stderr, which the engine appends to the stage log"
    )]
    pub fn log(&self, line: &str) {
        eprintln!("{line}");
    }

    pub fn progress(&self, message: &str) {
        self.send(&Message::Progress(message.to_string()));
    }

    /// Figures for the stage's run record (see [`Message::Stats`]).
    pub fn stats(&self, stats: BTreeMap<String, f64>) {
        self.send(&Message::Stats(stats));
    }

    /// Why the stage failed (see [`Message::Failed`]).
    pub fn failed(&self, error: &str) {
        self.send(&Message::Failed {
            error: error.to_string(),
        });
    }

    fn send(&self, message: &Message) {
        if let Ok(line) = serde_json::to_string(message) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Loads `libtorch_cuda.so` when it exists, so that CUDA is available even
/// though the linker dropped it (`--as-needed`: nothing references it directly).
pub fn load_cuda() {
    for name in [c"libtorch_cuda.so"] {
        // SAFETY: dlopen with a valid C string; the handle is kept for the
        // process's lifetime.
        unsafe {
            libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::{c_void, CStr};
    use std::mem::size_of;

    use tikv_jemalloc_sys as jemalloc;

    /// `mallctl` with `new` written (if any) and the old value read.
    fn mallctl<T: Copy, N>(name: &CStr, old: T, new: Option<&mut N>) -> (i32, T) {
        let mut old = old;
        let mut len = size_of::<T>();
        let (new, new_len) = match new {
            Some(n) => (n as *mut N as *mut c_void, size_of::<N>()),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: `old` and `new` are valid for their lengths for the call.
        let rc = unsafe {
            jemalloc::mallctl(
                name.as_ptr(),
                &mut old as *mut T as *mut c_void,
                &mut len,
                new,
                new_len,
            )
        };
        (rc, old)
    }

    #[test]
    fn libtorch_allocates_from_jemalloc_which_keeps_freed_pages() {
        // The symbols libtorch's calls resolve to are jemalloc's.
        for (name, ours) in [
            (c"malloc", jemalloc::malloc as *const ()),
            (c"posix_memalign", jemalloc::posix_memalign as *const ()),
            (c"free", jemalloc::free as *const ()),
        ] {
            // SAFETY: dlsym with a valid C string.
            let global = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            assert_eq!(global as *const (), ours, "{name:?} is not jemalloc's");
        }
        // `malloc_conf` was read.
        assert_eq!(
            mallctl::<isize, ()>(c"opt.dirty_decay_ms", 0, None),
            (0, -1)
        );
        assert_eq!(
            mallctl::<isize, ()>(c"opt.muzzy_decay_ms", 0, None),
            (0, -1)
        );
        assert_eq!(
            mallctl::<usize, ()>(c"opt.lg_extent_max_active_fit", 0, None),
            (0, 10)
        );
        // A tensor's memory is in one of jemalloc's arenas.
        let t = tch::Tensor::zeros([1 << 22], (tch::Kind::Float, tch::Device::Cpu));
        let mut ptr = t.data_ptr();
        assert_eq!(mallctl(c"arenas.lookup", u32::MAX, Some(&mut ptr)).0, 0);
    }
}
