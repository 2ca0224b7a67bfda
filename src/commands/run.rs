//! `pipe run`: run (or with `--dry-run`, plan) the pipeline, record the run
//! in the history, and report.

use std::collections::BTreeSet;
use std::time::Instant;

use pipe_engine::{Force, Registry, RunOptions, RunSummary, Status};

use super::{load, remote, status};
use crate::cli::RunArgs;
use crate::exit::{self, Failure};
use crate::{history, reporter, signals};

pub fn run(a: RunArgs, registry: &Registry, quiet: bool, verbose: bool) -> Result<i32, Failure> {
    let p = load(&a.m, registry)?;
    let remote = remote::open(&a.r, &p, a.push)?;
    if a.cluster_io == Some(pipe_engine::cluster::ClusterIo::Remote) && remote.is_none() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--cluster-io remote carries the jobs' data through the remote cache, and there is none: pass --remote URL, set PIPE_REMOTE, or name one in {}",
            pipe_remote::config::FILE
        )));
    }
    let opts = RunOptions {
        force: if a.force_all {
            Force::All
        } else if a.force.is_empty() {
            Force::None
        } else {
            Force::Stages(a.force.into_iter().collect::<BTreeSet<_>>())
        },
        only: a.only,
        until: a.until,
        dry_run: a.dry_run,
        jobs: a.jobs.unwrap_or(RunOptions::default().jobs),
        gpus: gpus(),
        interrupt: Default::default(),
        executor: a.executor.unwrap_or_default(),
        cluster_io: a.cluster_io.unwrap_or_default(),
    };
    signals::watch(opts.interrupt.clone());
    let started = Instant::now();
    let human = reporter::Human::new(quiet || a.json, verbose);
    let remote_cache = remote.as_ref().map(|r| r as &dyn pipe_engine::RemoteCache);
    let summary = if a.json {
        pipe_engine::run_with_remote(&p, registry, &opts, &reporter::Json, remote_cache)?
    } else {
        pipe_engine::run_with_remote(&p, registry, &opts, &human, remote_cache)?
    };
    remote::warnings(remote.as_ref());
    if !a.dry_run {
        if let Err(e) = history::record(&p, &summary) {
            reporter::warn(&format!("the run was not recorded: {e:#}"));
        }
    }
    if a.json {
        reporter::json_summary(&summary);
    } else {
        human.finish(&summary, started.elapsed().as_secs_f64());
        if a.dry_run {
            status::print(&summary);
        }
    }
    Ok(exit_code(&summary, a.json))
}

/// The exit code of a run, with the one line that explains a failure.
fn exit_code(summary: &RunSummary, json: bool) -> i32 {
    if summary.interrupted {
        if !json {
            reporter::error("interrupted");
        }
        return exit::INTERRUPTED;
    }
    if !summary.failed() {
        return exit::OK;
    }
    if !json {
        let names = |status: Status| -> Vec<&str> {
            summary
                .results
                .iter()
                .filter(|r| r.status == status)
                .map(|r| r.name.as_str())
                .collect()
        };
        let mut parts = Vec::new();
        for (status, word) in [(Status::Failed, "failed"), (Status::Skipped, "skipped")] {
            let names = names(status);
            if !names.is_empty() {
                parts.push(format!("{word}: {}", names.join(", ")));
            }
        }
        reporter::error(&parts.join("; "));
    }
    exit::STAGE_FAILED
}

/// GPUs on this machine.
fn gpus() -> u32 {
    std::fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|d| d.count() as u32)
        .unwrap_or(0)
}
