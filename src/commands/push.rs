//! `pipe push`: upload every result that the manifest's lock records from the
//! workspace's store to the remote cache.

use anyhow::Context;
use pipe_engine::Pipeline;
use pipe_remote::Remote;

use super::remote::{locked, open_locked};
use crate::exit::{self, Failure};
use crate::reporter;

pub fn push(p: &Pipeline, remote: &Remote, quiet: bool) -> Result<i32, Failure> {
    let stages = locked(p)?;
    if stages.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "{} records no results: run the pipeline first",
            p.lock_file().display()
        )));
    }
    let (_lock, store) = open_locked(p)?;
    let mut missing = Vec::new();
    let (mut blobs, mut bytes) = (0usize, 0u64);
    for (name, entry) in &stages {
        let Some(run) = store.get(&entry.key).context("cannot read a run record")? else {
            missing.push(name.as_str());
            continue;
        };
        let pushed = remote
            .push_run(&run, &store)
            .with_context(|| format!("cannot push `{name}`"))?;
        blobs += pushed.blobs;
        bytes += pushed.bytes;
        if !quiet {
            let short = run.output_hash.short();
            let verb = if pushed.entry { "Pushed" } else { "Up-to-date" };
            reporter::status(verb, &format!("{name} ({short})"));
        }
    }
    store.save().context("cannot save the stat cache")?;
    if !quiet {
        reporter::note(&format!(
            "{} stages: sent {blobs} blobs ({:.1} MB)",
            stages.len() - missing.len(),
            bytes as f64 / 1e6
        ));
    }
    if !missing.is_empty() {
        return Err(anyhow::anyhow!(
            "not in the local store (run them first): {}",
            missing.join(", ")
        )
        .into());
    }
    Ok(exit::OK)
}
