//! `pipe logs MANIFEST STAGE`: the log of the run that produced the stage's
//! output in the last `pipe run`, also when that run found it cached.

use std::io::Write;

use anyhow::Context;
use pipe_engine::Pipeline;

use crate::history;

pub fn logs(out: &mut impl Write, p: &Pipeline, stage: &str) -> anyhow::Result<()> {
    if p.stage(stage).is_none() {
        super::usage!("no stage named `{stage}` in {}", p.file.display());
    }
    let last_key = history::list(&p.root, &p.name)?
        .into_iter()
        .rev()
        .find_map(|run| run.stages.into_iter().find(|s| s.name == stage))
        .and_then(|s| s.key);
    let kept = last_key.map(|key| history::key_log(p, &key));
    let path = match kept {
        Some(path) if path.is_file() => path,
        // Runs before the history kept logs by key: the last run's file.
        _ => p.log_file(stage),
    };
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            super::usage!("stage `{stage}` has no log yet (it has not run in this workspace)");
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    out.write_all(&bytes)?;
    Ok(())
}
