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

use pipe_engine::{StageContext, StageError, StageKind, WithError};
use pipe_protocol::{Device, FinetuneWith, Request, TraceWith};
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
    device: &'static str,
    threads: usize,
}

impl Placement {
    /// `device: auto` becomes `cuda` where the worker sees CUDA; `threads`
    /// defaults to libtorch's.
    fn resolve(device: Device, threads: Option<usize>) -> Result<Placement, StageError> {
        let info = worker::info()?;
        let device = match device {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Auto if info.cuda => "cuda",
            Device::Auto => "cpu",
        };
        Ok(Placement {
            device,
            threads: threads.unwrap_or(info.threads.max(1) as usize),
        })
    }

    /// What goes into the key.
    fn fingerprints(&self) -> Result<BTreeMap<String, String>, StageError> {
        Ok(BTreeMap::from([
            ("libtorch".into(), worker::info()?.libtorch),
            ("device".into(), self.device.into()),
            ("threads".into(), self.threads.to_string()),
        ]))
    }
}

/// Runs a torch stage of kind `kind` in the worker, once its inputs are there.
fn run(
    ctx: &StageContext,
    kind: &str,
    needed: &[&str],
    with: serde_json::Value,
    p: Placement,
) -> Result<(), StageError> {
    for name in needed {
        if !ctx.inputs.contains_key(*name) {
            return Err(format!(
                "`{kind}` needs an input named `{name}` (inputs: {})",
                needed.join(", ")
            )
            .into());
        }
    }
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
        kind: kind.into(),
        with,
        inputs,
        out: ctx.out.to_path_buf(),
        device: p.device.into(),
        threads: p.threads,
    };
    worker::run_stage(ctx, &request)
}

impl StageKind for Finetune {
    const NAME: &'static str = "finetune";
    // 2: wall-clock figures left `metrics.json` for the run record.
    // 3: `steps.csv`, the per-step loss and learning rate.
    const VERSION: u32 = 3;
    const METRICS: &'static [&'static str] = &["metrics.json"];
    const PLOTS: &'static [&'static str] = &["steps.csv", "metrics.json"];

    fn validate(&mut self, _inputs: &[&str]) -> Result<(), WithError> {
        match self.0.problems() {
            Some((field, message)) => Err(WithError::field(field, message)),
            None => Ok(()),
        }
    }

    fn fingerprints(&self) -> Result<BTreeMap<String, String>, StageError> {
        Placement::resolve(self.0.device, self.0.threads)?.fingerprints()
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = Placement::resolve(self.0.device, self.0.threads)?;
        // Normalised: defaults filled in, so the worker sees what was keyed.
        let with = serde_json::to_value(&self.0)?;
        run(ctx, Self::NAME, &["model", "data"], with, p)
    }
}

impl StageKind for Trace {
    const NAME: &'static str = "trace";
    const VERSION: u32 = 1;

    // Tracing runs on the CPU: the artifact is device-independent.
    fn fingerprints(&self) -> Result<BTreeMap<String, String>, StageError> {
        Placement::resolve(Device::Cpu, self.0.threads)?.fingerprints()
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let p = Placement::resolve(Device::Cpu, self.0.threads)?;
        let with = serde_json::to_value(&self.0)?;
        run(ctx, Self::NAME, &["model"], with, p)
    }
}
