//! `pipe gc [MANIFEST...]`: delete store objects no run record references;
//! with manifests, also the run records their lock files do not reference.
//! The collection itself is the engine's ([`pipe_engine::gc::gc`]).

use std::collections::HashSet;
use std::path::PathBuf;

use pipe_engine::gc::GcError;
use pipe_engine::Registry;

use super::find_workspace;
use crate::exit::{self, Failure};
use crate::reporter;

pub fn gc(
    manifests: &[PathBuf],
    workspace: Option<PathBuf>,
    quiet: bool,
    registry: &Registry,
) -> Result<i32, Failure> {
    let mut keep = None;
    let mut root = None;
    for m in manifests {
        let p = pipe_engine::load(m, &[], registry)?;
        if root.as_ref().is_some_and(|r| *r != p.root) {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} belongs to another workspace ({}) than the manifests before it",
                m.display(),
                p.root.display()
            )));
        }
        root = Some(p.root.clone());
        // A lock that cannot be read would keep nothing: refuse.
        let lock =
            pipe_engine::lockfile::LockFile::load(&p).map_err(pipe_engine::EngineError::from)?;
        keep.get_or_insert_with(HashSet::new)
            .extend(lock.stages.values().map(|e| e.key));
    }
    let root = match root {
        Some(r) => r,
        None => find_workspace(workspace)?,
    };
    let stats = match pipe_engine::gc::gc(&root, keep.as_ref(), &reporter::Human::new(quiet, false))
    {
        Ok(stats) => stats,
        Err(e @ GcError::NoStore(_)) => return Err(Failure::usage(e)),
        Err(e) => return Err(anyhow::Error::new(e).into()),
    };
    reporter::status(
        "Removed",
        &format!(
            "{} objects ({:.1} MB) and {} run records; kept {} objects",
            stats.objects_removed,
            stats.bytes_freed as f64 / 1e6,
            stats.records_removed,
            stats.objects_kept
        ),
    );
    Ok(exit::OK)
}
