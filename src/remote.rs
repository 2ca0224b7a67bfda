//! `pipe push` and `pipe pull`: move every result that the manifest's lock records
//! between the workspace's store and the remote cache.

use anyhow::Context;
use pipe_engine::cache::{Store, WorkspaceLock};
use pipe_engine::lockfile::LockFile;
use pipe_engine::Pipeline;
use pipe_remote::Remote;

use crate::exit::{self, Failure};
use crate::reporter;

fn line(verb: &str, rest: &str) -> String {
    format!("{verb:>12} {rest}")
}

/// The stages of the lock, in manifest order.
fn locked(p: &Pipeline) -> Result<Vec<(String, pipe_engine::lockfile::LockEntry)>, Failure> {
    let mut lock = LockFile::load(p).map_err(pipe_engine::EngineError::from)?;
    Ok(p.stages
        .iter()
        .filter_map(|s| Some((s.name.clone(), lock.stages.remove(&s.name)?)))
        .collect())
}

/// The workspace's store, under the workspace lock: a concurrent run cleans
/// the store's temp files and saves the stat cache too.
fn open_locked(p: &Pipeline) -> anyhow::Result<(WorkspaceLock, Store)> {
    let pipe_dir = p.pipe_dir();
    std::fs::create_dir_all(&pipe_dir)
        .with_context(|| format!("cannot create {}", pipe_dir.display()))?;
    let lock = WorkspaceLock::acquire(&pipe_dir.join("lock"), |pid| {
        eprintln!("{}", reporter::waiting_for_lock(pid))
    })
    .context("cannot lock the workspace")?;
    let store = Store::open(&pipe_dir).context("cannot open the store")?;
    Ok((lock, store))
}

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
            eprintln!(
                "{}",
                if pushed.entry {
                    line("Pushed", &format!("{name} ({short})"))
                } else {
                    line("Up-to-date", &format!("{name} ({short})"))
                }
            );
        }
    }
    store.save().context("cannot save the stat cache")?;
    if !quiet {
        eprintln!(
            "{} stages: sent {blobs} blobs ({:.1} MB)",
            stages.len() - missing.len(),
            bytes as f64 / 1e6
        );
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

pub fn pull(p: &Pipeline, remote: &Remote, quiet: bool) -> Result<i32, Failure> {
    let stages = locked(p)?;
    let (_lock, store) = open_locked(p)?;
    store.clean_tmp().context("cannot clean the store")?;
    let mut missing = Vec::new();
    for (name, entry) in &stages {
        let short = entry.output.short();
        let local = store.get(&entry.key).ok().flatten();
        if local.is_some_and(|run| store.verify(&run).is_ok()) {
            if !quiet {
                eprintln!("{}", line("Cached", &format!("{name} ({short})")));
            }
            continue;
        }
        match remote.fetch_run(&entry.key, &store) {
            Ok(Some(_)) if !quiet => eprintln!("{}", line("Fetched", &format!("{name} ({short})"))),
            Ok(Some(_)) => {}
            Ok(None) => missing.push(name.as_str()),
            Err(e) => {
                if !quiet {
                    eprintln!("warning: {}", pipe_remote::error_chain(&e));
                }
                missing.push(name.as_str());
            }
        }
    }
    store.save().context("cannot save the stat cache")?;
    let report = remote.report();
    if report.unsigned > 0 {
        eprintln!(
            "warning: ignored {} remote result entries without a valid signature ({} is set)",
            report.unsigned,
            pipe_remote::SIGNING_KEY_VAR
        );
    }
    if !quiet {
        eprintln!(
            "{} stages: {} fetched ({:.1} MB)",
            stages.len(),
            report.fetched,
            report.bytes_fetched as f64 / 1e6
        );
    }
    if !missing.is_empty() {
        return Err(anyhow::anyhow!("not in the remote cache: {}", missing.join(", ")).into());
    }
    Ok(exit::OK)
}
