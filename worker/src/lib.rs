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
