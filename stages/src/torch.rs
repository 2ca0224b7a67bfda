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
//! `cpu` or `cuda` on this machine) and the thread count: the same inputs on
//! the same device and thread count give byte-identical weights.

use std::collections::BTreeMap;

use pipe_engine::{Stage, StageContext, StageError, StageKind, WithError};
use pipe_protocol::{Device, FinetuneWith, Request, TraceWith};
use serde_json::Value;

use crate::worker;

#[derive(Clone, Copy)]
pub enum Torch {
    Finetune,
    Trace,
}

/// The device and thread count a stage runs with on this machine, and its
/// data-parallel ranks on it with their backend (`nproc_per_node`).
struct Placement {
    device: &'static str,
    threads: usize,
    ranks: Option<(usize, &'static str)>,
}

impl Torch {
    fn parse(&self, with: &Value) -> Result<Value, WithError> {
        // Normalised: defaults filled in, so the worker sees what was keyed.
        match self {
            Torch::Finetune => {
                let w: FinetuneWith = WithError::parse(with)?;
                if let Some((field, message)) = w.problems() {
                    return Err(WithError::field(field, message));
                }
                serde_json::to_value(w).map_err(WithError::from_serde)
            }
            Torch::Trace => {
                let w: TraceWith = WithError::parse(with)?;
                serde_json::to_value(w).map_err(WithError::from_serde)
            }
        }
    }

    fn placement(&self, stage: &Stage) -> Result<Placement, StageError> {
        let info = worker::info()?;
        let mut ranks = None;
        let (device, threads) = match self {
            Torch::Finetune => {
                let w: FinetuneWith = WithError::parse(&stage.with)?;
                let device = match w.device {
                    Device::Cpu => "cpu",
                    Device::Cuda => "cuda",
                    Device::Auto if info.cuda => "cuda",
                    Device::Auto => "cpu",
                };
                if w.nproc_per_node > 1 {
                    ranks = Some((w.nproc_per_node, w.backend.resolve(device).name()));
                }
                (device, w.threads)
            }
            // Tracing runs on the CPU: the artifact is device-independent.
            Torch::Trace => ("cpu", WithError::parse::<TraceWith>(&stage.with)?.threads),
        };
        Ok(Placement {
            device,
            threads: threads.unwrap_or(info.threads.max(1) as usize),
            ranks,
        })
    }
}

const REQUIRED: [&str; 2] = ["model", "data"];

impl StageKind for Torch {
    fn name(&self) -> &'static str {
        match self {
            Torch::Finetune => "finetune",
            Torch::Trace => "trace",
        }
    }

    fn version(&self) -> u32 {
        match self {
            // 2: wall-clock figures left `metrics.json` for the run record.
            // 3: `steps.csv`, the per-step loss and learning rate.
            // 4: every epoch's batches drawn before training (data parallel).
            Torch::Finetune => 4,
            Torch::Trace => 1,
        }
    }

    fn check(&self, with: &Value) -> Result<(), WithError> {
        self.parse(with).map(|_| ())
    }

    fn metrics(&self) -> &'static [&'static str] {
        match self {
            Torch::Finetune => &["metrics.json"],
            Torch::Trace => &[],
        }
    }

    fn plots(&self) -> &'static [&'static str] {
        match self {
            Torch::Finetune => &["steps.csv", "metrics.json"],
            Torch::Trace => &[],
        }
    }

    fn fingerprints(&self, stage: &Stage) -> Result<BTreeMap<String, String>, StageError> {
        let p = self.placement(stage)?;
        let mut prints = BTreeMap::from([
            ("libtorch".into(), worker::info()?.libtorch),
            ("device".into(), p.device.into()),
            ("threads".into(), p.threads.to_string()),
        ]);
        // The world size and backend (not the rendezvous address or port).
        if let Some((world, backend)) = p.ranks {
            prints.insert("world_size".into(), world.to_string());
            prints.insert("backend".into(), backend.into());
        }
        Ok(prints)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let needed: &[&str] = match self {
            Torch::Finetune => &REQUIRED,
            Torch::Trace => &REQUIRED[..1],
        };
        for name in needed {
            if !ctx.inputs.contains_key(*name) {
                return Err(format!(
                    "`{}` needs an input named `{name}` (inputs: {})",
                    self.name(),
                    needed.join(", ")
                )
                .into());
            }
        }
        let p = self.placement(ctx.stage)?;
        let mut inputs = ctx.inputs.clone();
        // Data published by an `upload` stage is fetched back from the store
        // (checked against the receipt's sha256) into a scratch dir.
        let _scratch;
        if let Some(data) = inputs.get_mut("data") {
            if data.join("uploaded.json").is_file() && !data.join("train.csv").exists() {
                let dir = tempfile::Builder::new().prefix("pipe-data-").tempdir()?;
                ctx.progress("fetching the uploaded data");
                crate::upload::fetch(&data.join("uploaded.json"), dir.path(), ctx.workspace)?;
                *data = dir.path().to_path_buf();
                _scratch = dir;
            }
        }
        let request = Request {
            kind: self.name().into(),
            with: self.parse(&ctx.stage.with)?,
            inputs,
            out: ctx.out.to_path_buf(),
            device: p.device.into(),
            threads: p.threads,
        };
        worker::run_stage(ctx, &request)
    }
}
