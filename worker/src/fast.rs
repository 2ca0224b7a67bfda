//! The model server's CPU module: `model.pt` frozen, its linear layers on
//! oneDNN weights packed at load time (see `fast_cpu.cpp`). Loaded per
//! inference thread; `model.pt` itself is not changed.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use tch::Tensor;

extern "C" {
    fn pipe_fast_load(
        path: *const c_char,
        rows: i64,
        precision: c_int,
        module: *mut *mut c_void,
        packed: *mut c_int,
    ) -> *mut c_char;
    fn pipe_fast_forward(
        module: *mut c_void,
        inputs: *const *mut c_void,
        n: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn pipe_fast_free(module: *mut c_void);
    fn pipe_fast_free_error(message: *mut c_char);
}

/// Turns a shim's malloc'd error string (or null) into a `Result`.
pub(crate) fn check(message: *mut c_char) -> Result<()> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null result is a NUL-terminated string the shim malloc'd.
    let text = unsafe { CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `message` came from the shim, is freed once, and `text` is
    // an owned copy.
    unsafe { pipe_fast_free_error(message) };
    Err(anyhow!(text))
}

/// The row count (tokens per call) the linear layers' weights are laid out
/// for; measured on all-MiniLM-L6-v2, a few hundred is best from 1 to 320 rows.
const PACK_ROWS: i64 = 320;

/// The arithmetic of a served model's linear layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linears {
    Fp32,
    /// oneDNN bf16 (AMX or AVX512-BF16 where the CPU has them).
    Bf16,
    /// Dynamic quantization: int8 weights per output channel, activations
    /// quantized per call.
    Int8,
}

/// A TorchScript module prepared for CPU inference.
pub struct FastModule {
    module: *mut c_void,
    /// How many linear layers run on packed weights.
    pub packed: usize,
}

// SAFETY: a libtorch module may move between threads.
unsafe impl Send for FastModule {}
// SAFETY: `forward` only reads the module: a TorchScript module's graph
// executor compiles its plan under its own lock and runs each call in an
// interpreter state of its own, and the packed oneDNN weights are read-only
// constants; so threads may run one module at once (the server's inference
// threads share one copy).
unsafe impl Sync for FastModule {}

impl FastModule {
    /// Loads `path` and packs its linear layers' weights in `precision`
    /// (bf16: their inputs cast to bf16 and their outputs back to fp32;
    /// int8: dynamically quantized).
    pub fn load(path: &Path, precision: Linears) -> Result<FastModule> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())?;
        let mut module = std::ptr::null_mut();
        let mut packed: c_int = 0;
        let code = match precision {
            Linears::Fp32 => 0,
            Linears::Bf16 => 1,
            Linears::Int8 => 2,
        };
        // SAFETY: valid pointers for the call's duration.
        check(unsafe {
            pipe_fast_load(c_path.as_ptr(), PACK_ROWS, code, &mut module, &mut packed)
        })?;
        if module.is_null() {
            bail!("{}: the module did not load", path.display());
        }
        Ok(FastModule {
            module,
            packed: packed.max(0) as usize,
        })
    }

    pub fn forward(&self, inputs: &[Tensor]) -> Result<Tensor> {
        let ptrs: Vec<*mut c_void> = inputs.iter().map(|t| t.as_ptr() as *mut c_void).collect();
        let mut out = std::ptr::null_mut();
        // SAFETY: the inputs outlive the call; the shim only reads them.
        check(unsafe {
            pipe_fast_forward(self.module, ptrs.as_ptr(), ptrs.len() as c_int, &mut out)
        })?;
        // SAFETY: on success `out` is a new `at::Tensor*` that we now own.
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    }
}

impl Drop for FastModule {
    fn drop(&mut self) {
        // SAFETY: created by pipe_fast_load, freed once.
        unsafe { pipe_fast_free(self.module) }
    }
}
