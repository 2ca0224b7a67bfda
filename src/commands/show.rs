//! `pipe show [MANIFEST] STAGE`: a stage's output (directory, hash, files and
//! recorded stats) from the lock and the store, on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use pipe_engine::{Pipeline, Registry};

use super::load;
use crate::cli::{ManifestArgs, DEFAULT_MANIFEST};
use crate::exit::{self, Failure};
use crate::reporter;

/// `args` is `[MANIFEST] STAGE`.
pub fn show(
    args: Vec<String>,
    sets: Vec<(String, String)>,
    json: bool,
    registry: &Registry,
) -> Result<i32, Failure> {
    let (manifest, stage) = match <[String; 2]>::try_from(args) {
        Ok([manifest, stage]) => (PathBuf::from(manifest), stage),
        Err(args) => (
            PathBuf::from(DEFAULT_MANIFEST),
            args.into_iter().next().unwrap_or_default(),
        ),
    };
    let p = load(&ManifestArgs { manifest, sets }, registry)?;
    print(&p, &stage, json)?;
    Ok(exit::OK)
}

fn print(p: &Pipeline, stage: &str, json: bool) -> Result<(), Failure> {
    let mut out = reporter::stdout();
    if p.stage(stage).is_none() {
        return Err(Failure::usage(anyhow::anyhow!(
            "no stage named `{stage}` in {}",
            p.file.display()
        )));
    }
    let lock = pipe_engine::lockfile::LockFile::load(p).map_err(pipe_engine::EngineError::from)?;
    let entry = lock
        .stages
        .get(stage)
        .ok_or_else(|| Failure::usage(anyhow::anyhow!("stage `{stage}` has not run yet")))?;
    let dir = p.output_dir(stage);
    let store = pipe_engine::cache::Store::open(&p.pipe_dir()).context("cannot open the store")?;
    let run = store
        .get(&entry.key)
        .context("cannot read the run record")?;
    if json {
        let files: Vec<serde_json::Value> = run
            .iter()
            .flat_map(|r| r.output.files())
            .map(|(path, digest, exec, size)| {
                serde_json::json!({"path": path, "size": size, "sha256": digest.to_string(), "executable": exec})
            })
            .collect();
        let stats = run.as_ref().map(|r| r.stats.clone()).unwrap_or_default();
        let doc = serde_json::json!({
            "stage": stage,
            "kind": entry.kind,
            "key": entry.key.to_string(),
            "output": entry.output.to_string(),
            "path": dir,
            "files": files,
            "stats": stats,
        });
        let _ = writeln!(out, "{doc}");
        return Ok(());
    }
    let _ = writeln!(
        out,
        "stage:  {stage}\nkind:   {}\nkey:    {}\noutput: {}\npath:   {}",
        entry.kind,
        entry.key,
        entry.output,
        display(&dir)
    );
    if let Some(run) = run {
        let _ = writeln!(out, "files:");
        for (path, digest, exec, size) in run.output.files() {
            let _ = writeln!(
                out,
                "  {path}  {size} bytes  {}{}",
                digest.short(),
                if exec { "  (executable)" } else { "" }
            );
        }
        if !run.stats.is_empty() {
            let _ = writeln!(out, "stats (not part of the output):");
            for (name, value) in &run.stats {
                let _ = writeln!(out, "  {name}: {value}");
            }
        }
    }
    Ok(())
}

fn display(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}
