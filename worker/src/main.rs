//! `pipe-worker`: the only binary that links libtorch. The `pipe` engine spawns
//! it for torch stages and for `pipe serve`, so that `pipe` itself starts in
//! milliseconds, a crashing stage cannot take the engine down, and GPU memory
//! is freed when a stage ends.
//!
//! Commands:
//! - `pipe-worker info`: JSON facts about libtorch and devices (cache fingerprints).
//! - `pipe-worker stage`: run the torch stage described by the JSON request on
//!   stdin (see `pipe_protocol::Request`).
//! - `pipe-worker serve PACKAGE [OPTIONS]`: the model server (`pipe serve`).
//! - `pipe-worker allreduce-check N [gloo|nccl]`: N local ranks (or a
//!   launcher's group; N = 1: a group of one) sum `[rank + 1, 10 (rank + 1)]`
//!   with c10d, on the GPU for NCCL; rank 0 prints the sum as JSON.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use pipe_protocol::{Info, Job, Request, ResolvedDevice};
use pipe_worker::dist::Dist;
use pipe_worker::fast::Linears;
use pipe_worker::{finetune, load_cuda, serve, trace, Report};

/// `pipe serve`: serve a packaged model over HTTP (SageMaker inference contract).
#[derive(Parser, Debug)]
#[command(name = "pipe serve")]
struct ServeArgs {
    /// model.tar.gz from a `package` stage, or its unpacked directory
    package: std::path::PathBuf,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most sentences run together in one forward pass
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Longest wait for requests on their way before a batch runs
    #[arg(long, default_value_t = 2)]
    max_delay_ms: u64,
    /// Inference threads, sharing one copy of the model (default: 2, or 1
    /// on one core)
    #[arg(long)]
    workers: Option<usize>,
    /// libtorch intra-op threads of each inference thread while others run
    /// too; one that runs alone uses workers × threads (default: cores /
    /// workers)
    #[arg(long)]
    threads: Option<usize>,
    /// Largest request body in bytes
    #[arg(long, default_value_t = 1 << 20)]
    body_limit: usize,
    /// Most sentences in one request (more are refused with 413); a big
    /// request runs in chunks of --max-batch, taken in turn with the others
    #[arg(long, default_value_t = 4096)]
    max_items: usize,
    /// Most requests waiting for the model (more are answered 503 with
    /// Retry-After)
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Most open connections (lowered to fit the file descriptor limit);
    /// the rest wait in the listen backlog
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers, and its body
    #[arg(long, default_value_t = 30.0)]
    read_timeout: f64,
    /// Seconds open requests may take to finish after SIGTERM before the
    /// server exits anyway
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Print {"ready": URL, "pid": PID} on stdout once listening
    #[arg(long, hide = true)]
    announce: bool,
    /// The linear layers in bf16: auto (where the CPU has AVX512-BF16 or
    /// AMX), true, false.
    #[arg(long, default_value = "auto")]
    bf16: pipe_protocol::Bf16,
    /// The linear layers in int8 (dynamic quantization: weights per output
    /// channel, activations per call); overrides --bf16
    #[arg(long)]
    int8: bool,
}

fn serve_command(args: &[String]) -> Result<()> {
    let a = ServeArgs::try_parse_from(
        std::iter::once("pipe serve".to_string()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| e.exit());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Two inference threads by default, sharing the cores: a lone request
    // runs on all of them, and under load each thread runs its batch on its
    // share, which measured faster than one thread on every core
    // (bench/serve.sh). More threads than cores slows every forward pass
    // (see `serve::serve`).
    let cores = tch::get_num_threads().max(1) as usize;
    let workers = a.workers.unwrap_or(cores.min(2)).max(1);
    let threads = a.threads.unwrap_or((cores / workers).max(1));
    if workers * threads > cores {
        tracing::warn!(
            "{workers} workers × {threads} threads is more than the {cores} cores: expect slower inference"
        );
    }
    let linears = if a.int8 {
        Linears::Int8
    } else if a
        .bf16
        .resolve(ResolvedDevice::Cpu, pipe_worker::amp::cpu_has_bf16())
    {
        Linears::Bf16
    } else {
        Linears::Fp32
    };
    tracing::info!(
        "linear layers in {}",
        match linears {
            Linears::Bf16 => "bf16 (oneDNN; AMX or AVX512-BF16 where the CPU has them)",
            Linears::Int8 => "int8 (dynamic quantization)",
            Linears::Fp32 => "fp32",
        }
    );
    serve::serve(serve::Options {
        package: a.package,
        host: a.host,
        port: a.port,
        max_batch: a.max_batch.max(1),
        max_delay: std::time::Duration::from_millis(a.max_delay_ms),
        workers,
        threads,
        body_limit: a.body_limit,
        max_items: a.max_items,
        max_queue: a.max_queue,
        max_connections: a.max_connections,
        read_timeout: seconds("--read-timeout", a.read_timeout)?,
        drain_timeout: seconds("--drain-timeout", a.drain_timeout)?,
        announce: a.announce,
        linears,
    })
}

fn seconds(flag: &str, s: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(s)
        .map_err(|e| anyhow::anyhow!("{flag} {s}: not a number of seconds ({e})"))
}

fn info() -> Info {
    Info {
        libtorch: env!("PIPE_LIBTORCH_VERSION").to_string(),
        cuda: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        threads: tch::get_num_threads() as i64,
        cpu_bf16: pipe_worker::amp::cpu_has_bf16(),
    }
}

fn stage() -> Result<()> {
    let req: Request =
        serde_json::from_reader(std::io::stdin().lock()).context("bad request on stdin")?;
    tch::set_num_threads(req.threads as i32);
    let cuda = |index: usize| match req.device {
        ResolvedDevice::Cuda if tch::Cuda::is_available() => {
            let n = tch::Cuda::device_count();
            if i64::try_from(index).is_ok_and(|i| i < n) {
                Ok(tch::Device::Cuda(index))
            } else {
                bail!("local rank {index} has no GPU: libtorch sees {n} CUDA device(s)")
            }
        }
        ResolvedDevice::Cuda => {
            bail!("device cuda was asked for, but libtorch sees no CUDA device")
        }
        ResolvedDevice::Cpu => Ok(tch::Device::Cpu),
    };
    let report = Report;
    match &req.job {
        Job::Finetune { with, model, data } => {
            cuda(0)?; // before any rank starts
            let dist = Dist::for_stage(&req, with.nproc_per_node, with.backend)?;
            // One GPU per rank of this machine.
            let device = cuda(dist.as_ref().map_or(0, |d| d.local_rank))?;
            if let Some(d) = &dist {
                tch::set_num_threads((req.threads / d.local_ranks()).max(1) as i32);
            }
            let stats =
                finetune::run_in(with, model, data, &req.out, device, &report, dist.as_ref())?;
            if let Some(d) = dist {
                d.finish()?;
            }
            report.stats(stats);
            Ok(())
        }
        Job::Trace { with, model } => {
            cuda(0)?;
            trace::run(with, model, &req.out, &report)
        }
    }
}

#[allow(clippy::print_stdout, reason = "the check's answer is its output")]
fn allreduce_check(args: &[String]) -> Result<()> {
    const USAGE: &str = "usage: pipe-worker allreduce-check N [gloo|nccl]";
    let nproc: usize = args.first().and_then(|n| n.parse().ok()).context(USAGE)?;
    let backend = match args.get(1).map(String::as_str) {
        None | Some("gloo") => pipe_protocol::DistBackend::Gloo,
        Some("nccl") => pipe_protocol::DistBackend::Nccl,
        Some(_) => bail!(USAGE),
    };
    let dist = Dist::start(
        nproc,
        backend,
        true,
        &["allreduce-check", &nproc.to_string(), backend.name()],
        &[],
    )?
    .context("no group formed")?;
    let r = (dist.group.rank + 1) as f32;
    // On the group's device: NCCL sums on the GPU.
    let t = tch::Tensor::from_slice(&[r, 10.0 * r]).to_device(dist.device);
    dist.all_reduce_sum(&t, "all-reduce")?;
    dist.group.barrier().map_err(|e| dist.fail(e, "barrier"))?;
    let sum = Vec::<f32>::try_from(&t.to_device(tch::Device::Cpu))?;
    if dist.group.rank == 0 {
        let answer = pipe_protocol::AllreduceCheck {
            world: dist.group.world,
            sum,
        };
        println!("{}", serde_json::to_string(&answer)?);
    }
    dist.finish()
}

#[allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "pipe-worker's protocol: `info` on stdout, usage and errors on stderr"
)]
fn main() -> ExitCode {
    load_cuda();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("info") => serde_json::to_string(&info())
            .map(|s| println!("{s}"))
            .map_err(Into::into),
        Some("stage") => stage().inspect_err(|e| Report.failed(&format!("{e:#}"))),
        Some("serve") => serve_command(&args[1..]),
        Some("allreduce-check") => allreduce_check(&args[1..]),
        _ => {
            eprintln!("usage: pipe-worker info | stage < REQUEST.json | serve PACKAGE [OPTIONS]");
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
