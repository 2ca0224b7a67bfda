//! What the commands that use the remote cache share: opening it, its
//! warnings, and (`pipe push`, `pipe pull`) the lock's results under the
//! workspace lock.

use anyhow::Context;
use pipe_engine::cache::{Store, WorkspaceLock};
use pipe_engine::lockfile::LockFile;
use pipe_engine::{Pipeline, Registry};
use pipe_remote::Remote;

use crate::cli::{ManifestArgs, RemoteArgs};
use crate::exit::Failure;
use crate::reporter;

pub fn no_remote() -> Failure {
    Failure::usage(anyhow::anyhow!(
        "no remote cache: pass --remote URL, set PIPE_REMOTE, or name one in {}",
        pipe_remote::config::FILE
    ))
}

/// The remote cache: `--remote`/`PIPE_REMOTE`, else the workspace setting.
pub fn open(r: &RemoteArgs, p: &Pipeline, write: bool) -> Result<Option<Remote>, Failure> {
    let url = match &r.remote {
        Some(url) => Some(url.clone()),
        None => pipe_remote::config::remote(&p.root).map_err(Failure::usage)?,
    };
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    match Remote::open(&url, write) {
        Ok(remote) => Ok(Some(remote)),
        Err(e @ pipe_remote::Error::Url { .. }) => Err(Failure::usage(e)),
        Err(e) => Err(anyhow::Error::new(e).into()),
    }
}

/// The pipeline of `pipe push`/`pipe pull` and the remote cache it must have.
pub fn required(
    m: &ManifestArgs,
    r: &RemoteArgs,
    registry: &Registry,
    write: bool,
) -> Result<(Pipeline, Remote), Failure> {
    let p = super::load(m, registry)?;
    let remote = open(r, &p, write)?.ok_or_else(no_remote)?;
    Ok((p, remote))
}

/// What went wrong with the remote during a run, said once.
pub fn warnings(remote: Option<&Remote>) {
    let Some(report) = remote.map(|r| r.report()) else {
        return;
    };
    if report.unsigned > 0 {
        reporter::warn(&format!(
            "ignored {} remote result entr{} without a valid signature ({} is set)",
            report.unsigned,
            if report.unsigned == 1 { "y" } else { "ies" },
            pipe_remote::SIGNING_KEY_VAR
        ));
    }
    for p in &report.problems {
        reporter::warn(&pipe_engine::cache::redact_userinfo(p));
    }
}

/// The stages of the lock, in manifest order.
pub fn locked(p: &Pipeline) -> Result<Vec<(String, pipe_engine::lockfile::LockEntry)>, Failure> {
    let mut lock = LockFile::load(p).map_err(pipe_engine::EngineError::from)?;
    Ok(p.stages
        .iter()
        .filter_map(|s| Some((s.name.clone(), lock.stages.remove(&s.name)?)))
        .collect())
}

/// The workspace's store, under the workspace lock: a concurrent run cleans
/// the store's temp files and saves the stat cache too.
pub fn open_locked(p: &Pipeline) -> anyhow::Result<(WorkspaceLock, Store)> {
    let pipe_dir = p.pipe_dir();
    std::fs::create_dir_all(&pipe_dir)
        .with_context(|| format!("cannot create {}", pipe_dir.display()))?;
    let lock = WorkspaceLock::acquire(&pipe_dir.join("lock"), |pid| {
        reporter::note(&reporter::waiting_for_lock(pid))
    })
    .context("cannot lock the workspace")?;
    let store = Store::open(&pipe_dir).context("cannot open the store")?;
    Ok((lock, store))
}
