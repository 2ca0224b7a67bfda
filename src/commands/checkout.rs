//! `pipe checkout RUN`: put back an earlier run's outputs (from the store)
//! and its lock file, running nothing.

use anyhow::Context;
use pipe_engine::cache::{Store, WorkspaceLock};

use crate::{history, reporter};

/// Restore run `id` of the workspace at `root`. Every output is checked to be
/// in the store before anything changes, so a missing one changes nothing.
pub fn checkout(root: &std::path::Path, id: &str) -> anyhow::Result<()> {
    let Some(run) = history::find(root, id)? else {
        super::usage!(
            "no run `{id}` in {} (see `pipe runs MANIFEST`)",
            root.display()
        );
    };
    let pipe_dir = root.join(".pipe");
    let _lock = WorkspaceLock::acquire(&pipe_dir.join("lock"), |pid| {
        reporter::note(&reporter::waiting_for_lock(pid))
    })
    .context("cannot lock the workspace")?;
    let store = Store::open(&pipe_dir).context("cannot open the store")?;
    let mut restore = Vec::new();
    let mut missing = Vec::new();
    for s in &run.stages {
        let Some(key) = s.key.filter(|_| s.output.is_some()) else {
            continue;
        };
        match store.get(&key)? {
            Some(rec) if store.verify(&rec).is_ok() => restore.push((s, rec)),
            _ => missing.push(s.name.as_str()),
        }
    }
    if !missing.is_empty() {
        super::usage!(
            "cannot check out run {}: the store no longer holds the output of {} (removed by `pipe gc`?); nothing was changed",
            run.id,
            missing.join(", ")
        );
    }
    let out = pipe_dir.join("out").join(&run.pipeline);
    for (s, rec) in &restore {
        let dest = out.join(&s.name);
        if !store.is_materialized(rec, &dest)? {
            store
                .materialize(rec, &dest)
                .with_context(|| format!("cannot restore the output of `{}`", s.name))?;
        }
        reporter::status(
            "Restored",
            &format!("{} ({})", s.name, rec.output_hash.short()),
        );
    }
    if let Some(lock) = &run.lock {
        let rel = &run.lock_file;
        let path = root.join(rel);
        pipe_engine::cache::write_atomic(&path, lock.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        reporter::status("Restored", &rel.display().to_string());
    }
    Ok(())
}
