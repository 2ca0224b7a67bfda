//! `pipe-worker`: the only binary that links libtorch. The `pipe` engine spawns
//! it for torch stages and for `pipe serve`, so that `pipe` itself starts in
//! milliseconds, a crashing stage cannot take the engine down, and GPU memory
//! is freed when a stage ends.
//!
//! Commands:
//! - `pipe-worker info`: JSON facts about libtorch and devices (used for cache
//!   fingerprints).

use std::process::ExitCode;

fn info() -> serde_json::Value {
    serde_json::json!({
        "libtorch": env!("PIPE_LIBTORCH_VERSION"),
        "cuda": tch::Cuda::is_available(),
        "cuda_devices": tch::Cuda::device_count(),
        "threads": tch::get_num_threads(),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("info") => {
            println!("{}", info());
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: pipe-worker info");
            ExitCode::from(2)
        }
    }
}
