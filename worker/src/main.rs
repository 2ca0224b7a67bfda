//! `pipe-worker`: the only binary that links libtorch. The `pipe` engine spawns
//! it for torch stages and for `pipe serve`, so that `pipe` itself starts in
//! milliseconds, a crashing stage cannot take the engine down, and GPU memory
//! is freed when a stage ends.
//!
//! Commands:
//! - `pipe-worker info`: JSON facts about libtorch and devices (cache fingerprints).
//! - `pipe-worker stage`: run the torch stage described by the JSON request on
//!   stdin (see `pipe_protocol::Request`).

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use pipe_protocol::{FinetuneWith, Info, Request, TraceWith};
use pipe_worker::{finetune, load_cuda, trace, Report};

fn info() -> Info {
    Info {
        libtorch: env!("PIPE_LIBTORCH_VERSION").to_string(),
        cuda: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        threads: tch::get_num_threads() as i64,
    }
}

fn input<'a>(req: &'a Request, name: &str) -> Result<&'a std::path::Path> {
    req.inputs
        .get(name)
        .map(|p| p.as_path())
        .with_context(|| format!("the `{}` stage needs an input named `{name}`", req.kind))
}

fn stage() -> Result<()> {
    let req: Request =
        serde_json::from_reader(std::io::stdin().lock()).context("bad request on stdin")?;
    tch::set_num_threads(req.threads as i32);
    let device = match req.device.as_str() {
        "cuda" if tch::Cuda::is_available() => tch::Device::Cuda(0),
        "cuda" => bail!("device cuda was asked for, but libtorch sees no CUDA device"),
        _ => tch::Device::Cpu,
    };
    let report = Report;
    match req.kind.as_str() {
        "finetune" => {
            let w: FinetuneWith = serde_json::from_value(req.with.clone())?;
            finetune::run(
                &w,
                input(&req, "model")?,
                input(&req, "data")?,
                &req.out,
                device,
                &report,
            )
        }
        "trace" => {
            let w: TraceWith = serde_json::from_value(req.with.clone())?;
            trace::run(&w, input(&req, "model")?, &req.out, &report)
        }
        other => bail!("unknown torch stage kind `{other}`"),
    }
}

fn main() -> ExitCode {
    load_cuda();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("info") => serde_json::to_string(&info())
            .map(|s| println!("{s}"))
            .map_err(Into::into),
        Some("stage") => stage(),
        _ => {
            eprintln!("usage: pipe-worker info | stage < REQUEST.json");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
