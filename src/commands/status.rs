//! `pipe status`: for each stage, whether it is cached or why it will run
//! (a plan: nothing runs, nothing changes).

use std::io::Write;

use pipe_engine::{CacheSource, Registry, RunOptions, RunSummary, Status};

use super::{load, remote};
use crate::cli::{ManifestArgs, RemoteArgs};
use crate::exit::{self, Failure};
use crate::reporter;

pub fn status(
    m: &ManifestArgs,
    r: &RemoteArgs,
    json: bool,
    registry: &Registry,
) -> Result<i32, Failure> {
    let p = load(m, registry)?;
    let remote = remote::open(r, &p, false)?;
    let opts = RunOptions {
        dry_run: true,
        ..RunOptions::default()
    };
    let summary = pipe_engine::run_with_remote(
        &p,
        registry,
        &opts,
        &pipe_engine::event::Silent,
        remote.as_ref().map(|r| r as &dyn pipe_engine::RemoteCache),
    )?;
    remote::warnings(remote.as_ref());
    if json {
        reporter::json_summary(&summary);
    } else {
        print(&summary);
    }
    Ok(exit::OK)
}

/// One line per stage on stdout: `train  will run: param lr changed`.
pub fn print(summary: &RunSummary) {
    let mut out = reporter::stdout();
    let width = summary
        .results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0);
    for r in &summary.results {
        let state = match r.status {
            Status::Cached => format!(
                "cached ({}){}",
                r.output_hash.map(|h| h.short()).unwrap_or_default(),
                if r.cache == Some(CacheSource::Remote) {
                    " in the remote cache"
                } else {
                    ""
                }
            ),
            Status::Pending => format!(
                "will run: {}",
                r.reason.as_ref().map(|r| r.to_string()).unwrap_or_default()
            ),
            Status::Failed | Status::Skipped => {
                format!("error: {}", r.error.as_deref().unwrap_or(""))
            }
            Status::Ran => "ran".into(),
        };
        let _ = writeln!(out, "{:<width$}  {state}", r.name);
    }
}
