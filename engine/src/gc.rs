//! `pipe gc`: delete store objects no run record references and, given the
//! keys to keep, run records outside them. Holds the workspace lock, so a
//! concurrent `pipe run` never loses an object it is about to reference.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pipe_cache::{GcStats, Key, Store, WorkspaceLock};

use crate::event::{Event, Reporter};

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("no pipe store in {}", .0.display())]
    NoStore(PathBuf),
    #[error("cannot lock the workspace")]
    Lock(#[source] pipe_cache::Error),
    #[error("cannot open the store")]
    Open(#[source] pipe_cache::Error),
    #[error("gc failed")]
    Collect(#[source] pipe_cache::Error),
    #[error("cannot save the stat cache")]
    Save(#[source] pipe_cache::Error),
}

/// Collect the store of the workspace at `root`: lock it, open the store,
/// collect (keeping only the run records of `keep`, when given), save.
/// Waiting for another run's lock is reported to `reporter`.
pub fn gc(
    root: &Path,
    keep: Option<&HashSet<Key>>,
    reporter: &dyn Reporter,
) -> Result<GcStats, GcError> {
    let pipe_dir = root.join(".pipe");
    if !pipe_dir.is_dir() {
        return Err(GcError::NoStore(root.to_path_buf()));
    }
    let _lock = WorkspaceLock::acquire(&pipe_dir.join("lock"), |pid| {
        reporter.event(Event::WaitingForLock { pid })
    })
    .map_err(GcError::Lock)?;
    let store = Store::open(&pipe_dir).map_err(GcError::Open)?;
    let stats = store.gc(keep).map_err(GcError::Collect)?;
    store.save().map_err(GcError::Save)?;
    Ok(stats)
}
