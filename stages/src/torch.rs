//! `kind: finetune` and `kind: trace`: the torch stages. They are checked and
//! keyed here, and run in `pipe-worker` (see [`crate::worker`]).
//!
//! ```yaml
//! finetune:
//!   kind: finetune
//!   inputs: {model: bert:, data: split:}       # or data: upload: (its uploaded.json)
//!   with: {epochs: 3, batch_size: 32, lr: 1e-4, warmup_ratio: 0.1, schedule: linear}
//! trace:
//!   kind: trace
//!   inputs: {model: finetune:}
//! ```
//!
//! The key holds the libtorch version, the resolved device (`auto` becomes
//! `cpu` or `cuda` on this machine), the precision (`bf16: auto` becomes
//! `bf16` on a CPU with bf16 matrix instructions) and the thread count, and for
//! data-parallel fine-tuning the world size and backend: the same inputs on
//! the same device and thread count give byte-identical weights.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pipe_engine::{StageContext, StageError, StageKind, WithError};
use pipe_protocol::{Bf16, Device, FinetuneWith, Job, Request, ResolvedDevice, TraceWith};
use serde::Deserialize;

use crate::worker;

/// `kind: finetune`.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Finetune(FinetuneWith);

/// `kind: trace`.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct Trace(TraceWith);

/// The device and thread count a stage runs with on this machine.
struct Placement {
    device: ResolvedDevice,
    threads: usize,
    /// The CPU has bf16 matrix instructions.
    cpu_bf16: bool,
}

impl Placement {
    /// `device: auto` becomes `cuda` where the worker sees CUDA; `threads`
    /// defaults to libtorch's.
    fn resolve(device: Device, threads: Option<usize>) -> Result<Placement, StageError> {
        let info = worker::info()?;
        Ok(Placement {
            device: device.resolve(info.cuda),
            threads: threads.unwrap_or(info.threads.max(1) as usize),
            cpu_bf16: info.cpu_bf16,
        })
    }

    /// How the stage runs: as its key says. `ctx.fingerprints` were
    /// resolved where `pipe run` keyed the stage, which for a Slurm job is
    /// another machine than this node: its device, thread count and
    /// precision hold here too, so the result is the one the key names; a
    /// libtorch other than the key's is refused (its numbers differ).
    fn for_run(
        ctx: &StageContext,
        device: Device,
        threads: Option<usize>,
    ) -> Result<(Placement, Option<bool>), StageError> {
        let mut p = Placement::resolve(device, threads)?;
        let keyed = ctx.fingerprints;
        if let Some(lib) = keyed.get("libtorch") {
            let here = worker::info()?.libtorch;
            if *lib != here {
                return Err(format!(
                    "the stage was keyed for libtorch {lib}, and this machine's pipe-worker has {here}"
                )
                .into());
            }
        }
        match keyed.get("device").map(String::as_str) {
            Some("cuda") => p.device = ResolvedDevice::Cuda,
            Some("cpu") => p.device = ResolvedDevice::Cpu,
            _ => {}
        }
        if let Some(t) = keyed.get("threads").and_then(|t| t.parse().ok()) {
            p.threads = t;
        }
        let bf16 = keyed.get("precision").map(|v| v == Bf16::precision(true));
        Ok((p, bf16))
    }

    /// What goes into the key.
    fn fingerprints(&self) -> Result<BTreeMap<String, String>, StageError> {
        Ok(BTreeMap::from([
            ("libtorch".into(), worker::info()?.libtorch),
            ("device".into(), self.device.name().into()),
            ("threads".into(), self.threads.to_string()),
        ]))
    }

    /// Runs `job` in the worker.
    fn run(self, ctx: &StageContext, job: Job) -> Result<(), StageError> {
        let request = Request {
            job,
            out: ctx.out.to_path_buf(),
            device: self.device,
            threads: self.threads,
        };
        worker::run_stage(ctx, &request)
    }
}

/// The input `name` of a torch stage of kind `kind` (which needs `all`).
fn input(ctx: &StageContext, kind: &str, name: &str, all: &[&str]) -> Result<PathBuf, StageError> {
    match ctx.inputs.get(name) {
        Some(p) => Ok(p.clone()),
        None => Err(format!(
            "`{kind}` needs an input named `{name}` (inputs: {})",
            all.join(", ")
        )
        .into()),
    }
}

impl StageKind for Finetune {
    const NAME: &'static str = "finetune";
    // 2: wall-clock figures left `metrics.json` for the run record.
    // 3: `steps.csv`, the per-step loss and learning rate.
    // 4: every epoch's batches drawn before training (data parallel).
    // 5: fused AdamW (its rounding); `bf16` autocasts on the CPU too, in bf16 on CUDA.
    // 6: CPU dropout masks from pipe's own generator (worker/src/dropout.rs).
    // 7: the last layer runs from the [CLS] position only (its masks' shapes).
    // 8: on the CPU, gradients clipped by a norm from BLAS dot products (its
    //    rounding), and not scaled by 1 when within bounds.
    const VERSION: u32 = 8;
    const METRICS: &'static [&'static str] = &["metrics.json"];
    const PLOTS: &'static [&'static str] = &["steps.csv", "metrics.json"];

    fn validate(&mut self, _inputs: &[&str]) -> Result<(), WithError> {
        match self.0.problems() {
            Some((field, message)) => Err(WithError::field(field, message)),
            None => Ok(()),
        }
    }

    fn fingerprints(&self) -> Result<BTreeMap<String, String>, StageError> {
        let placement = Placement::resolve(self.0.device, self.0.threads)?;
        let mut prints = placement.fingerprints()?;
        let bf16 = self.0.bf16.resolve(placement.device, placement.cpu_bf16);
        prints.insert("precision".into(), Bf16::precision(bf16).into());
        // The world size and backend (not the rendezvous address or port).
        if self.0.nproc_per_node > 1 {
            let backend = self.0.backend.resolve(placement.device);
            prints.insert("world_size".into(), self.0.nproc_per_node.to_string());
            prints.insert("backend".into(), backend.name().into());
        }
        Ok(prints)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let all = ["model", "data"];
        let model = input(ctx, Self::NAME, "model", &all)?;
        let mut data = input(ctx, Self::NAME, "data", &all)?;
        // Data published by an `upload` stage is fetched back from the store
        // (checked against the receipt's sha256) into a scratch dir.
        let _scratch;
        if data.join("uploaded.json").is_file() && !data.join("train.csv").exists() {
            let dir = tempfile::Builder::new().prefix("pipe-data-").tempdir()?;
            ctx.progress("fetching the uploaded data");
            crate::upload::fetch(&data.join("uploaded.json"), dir.path(), ctx.workspace)?;
            data = dir.path().to_path_buf();
            _scratch = dir;
        }
        let (placement, keyed_bf16) = Placement::for_run(ctx, self.0.device, self.0.threads)?;
        // The worker runs with the precision the key was computed for.
        let mut with = self.0.clone();
        let bf16 =
            keyed_bf16.unwrap_or_else(|| with.bf16.resolve(placement.device, placement.cpu_bf16));
        with.bf16 = if bf16 { Bf16::On } else { Bf16::Off };
        let job = Job::Finetune { with, model, data };
        placement.run(ctx, job)
    }
}

impl StageKind for Trace {
    const NAME: &'static str = "trace";
    // 2: the graph's last layer runs from the [CLS] position only.
    const VERSION: u32 = 2;

    // Tracing runs on the CPU: the artifact is device-independent.
    fn fingerprints(&self) -> Result<BTreeMap<String, String>, StageError> {
        Placement::resolve(Device::Cpu, self.0.threads)?.fingerprints()
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let model = input(ctx, Self::NAME, "model", &["model"])?;
        let job = Job::Trace {
            with: self.0.clone(),
            model,
        };
        Placement::for_run(ctx, Device::Cpu, self.0.threads)?
            .0
            .run(ctx, job)
    }
}
