//! The run history: every `pipe run` appends one [`Run`] record, and each
//! stage's log is kept by key, so `pipe runs`, `pipe metrics`, `pipe logs`,
//! `pipe plots` and `pipe checkout` can look back without running anything.
//!
//! ```text
//! .pipe/runs/<pipeline>/<run-id>.json     one Run per `pipe run`, written atomically
//! .pipe/logs/<pipeline>/keys/<key>.log    the log of the run that produced a key
//! ```
//!
//! A run id is the UTC time of the run, `YYYYMMDD-HHMMSS-mmm`, so ids sort by
//! time. Metrics are copied into the record (they are small); outputs stay in
//! the store, named by their keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use pipe_engine::cache::{Digest, Key, Store};
use pipe_engine::{Pipeline, RunSummary, Stage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One `pipe run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    /// RFC 3339, UTC.
    pub time: String,
    /// `git rev-parse HEAD` of the workspace, when it is a git repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The manifest, relative to the workspace root.
    pub manifest: PathBuf,
    pub pipeline: String,
    /// Params after `--set`.
    pub params: BTreeMap<String, Value>,
    pub stages: Vec<StageRun>,
    /// The lock file, relative to the workspace root.
    pub lock_file: PathBuf,
    /// The lock file as the run left it (what `pipe checkout` restores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageRun {
    pub name: String,
    pub kind: String,
    /// `ran`, `cached`, `failed` or `skipped`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Key>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Digest>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Figures of the run that produced the output (not part of it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, f64>,
}

fn runs_dir(root: &Path, pipeline: &str) -> PathBuf {
    root.join(".pipe").join("runs").join(pipeline)
}

/// Where the log of the run that produced `key` is kept.
pub fn key_log(p: &Pipeline, key: &Key) -> PathBuf {
    p.pipe_dir()
        .join("logs")
        .join(&p.name)
        .join("keys")
        .join(format!("{}.log", key.to_hex()))
}

/// Append the record of a finished `pipe run` and keep the logs of the stages
/// that ran. Returns the record.
pub fn record(p: &Pipeline, summary: &RunSummary) -> anyhow::Result<Run> {
    let now = std::time::SystemTime::now();
    let time = humantime::format_rfc3339_millis(now).to_string();
    let store = Store::open(&p.pipe_dir()).context("cannot open the store")?;
    let mut stages = Vec::new();
    for r in &summary.results {
        let Some(stage) = p.stage(&r.name) else {
            continue;
        };
        let status = serde_json::to_value(r.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if let (Some(key), "ran" | "failed") = (&r.key, status.as_str()) {
            if let Ok(bytes) = std::fs::read(p.log_file(&r.name)) {
                let dest = key_log(p, key);
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                pipe_engine::cache::write_atomic(&dest, &bytes)
                    .with_context(|| format!("cannot keep the log of `{}`", r.name))?;
            }
        }
        let metrics = match (&r.key, r.output_hash) {
            (Some(key), Some(_)) => metrics_of(&store, stage, key).unwrap_or_else(|e| {
                crate::reporter::warn(&format!("{e:#}"));
                BTreeMap::new()
            }),
            _ => BTreeMap::new(),
        };
        stages.push(StageRun {
            name: r.name.clone(),
            kind: stage.kind.clone(),
            status,
            key: r.key,
            output: r.output_hash,
            metrics,
            stats: r.stats.clone(),
        });
    }
    let root = &p.root;
    let relative = |path: &Path| {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        path.strip_prefix(root)
            .map(Path::to_path_buf)
            .unwrap_or(path)
    };
    let dir = runs_dir(root, &p.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // 2026-11-27T22:25:01.123Z → 20261127-222501-123
    let stamp: String = time
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T' || *c == '.')
        .map(|c| if c == 'T' || c == '.' { '-' } else { c })
        .collect();
    let mut run = Run {
        id: stamp.clone(),
        time,
        commit: git_commit(root),
        manifest: relative(&p.file),
        lock_file: relative(&p.lock_file()),
        pipeline: p.name.clone(),
        params: p.params.clone(),
        stages,
        lock: std::fs::read_to_string(p.lock_file()).ok(),
    };
    // Claim the id atomically: the record is written to a temp file and then
    // hard-linked to its name, which fails if another run took that name
    // (two runs in the same millisecond), and never leaves a partial record.
    for n in 1..=1000 {
        if n > 1 {
            run.id = format!("{stamp}-{n}");
        }
        let text = serde_json::to_string_pretty(&run)? + "\n";
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .with_context(|| format!("cannot write {}", tmp.path().display()))?;
        let path = dir.join(format!("{}.json", run.id));
        match std::fs::hard_link(tmp.path(), &path) {
            Ok(()) => return Ok(run),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot write the run record {}", path.display()))
            }
        }
    }
    anyhow::bail!("no free run id in {} for {stamp}", dir.display())
}

fn git_commit(root: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--verify", "-q", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

/// The runs of a pipeline, oldest first. A record that cannot be read is
/// an error naming it.
pub fn list(root: &Path, pipeline: &str) -> anyhow::Result<Vec<Run>> {
    let dir = runs_dir(root, pipeline);
    let mut paths = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries {
                let path = e
                    .with_context(|| format!("cannot list {}", dir.display()))?
                    .path();
                if path.extension().is_some_and(|x| x == "json") {
                    paths.push(path);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    }
    paths.sort();
    paths.iter().map(|p| read(p)).collect()
}

fn read(path: &Path) -> anyhow::Result<Run> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read run record {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("run record {} is not valid", path.display()))
}

/// The run `id` of any pipeline of the workspace at `root` (a unique prefix
/// will do).
pub fn find(root: &Path, id: &str) -> anyhow::Result<Option<Run>> {
    let base = root.join(".pipe").join("runs");
    let mut found = Vec::new();
    if let Ok(pipelines) = std::fs::read_dir(&base) {
        for dir in pipelines.flatten() {
            for e in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(stem) = name.strip_suffix(".json") {
                    if stem == id {
                        return read(&e.path()).map(Some);
                    }
                    if stem.starts_with(id) {
                        found.push(e.path());
                    }
                }
            }
        }
    }
    match found.as_slice() {
        [] => Ok(None),
        [one] => read(one).map(Some),
        _ => crate::commands::usage!(
            "run id `{id}` is ambiguous: {} runs start with it",
            found.len()
        ),
    }
}

/// The metrics of `stage`'s output with `key`: its declared JSON files,
/// flattened to `name` (`file/name` when it declares several) → number.
/// `Ok(None)`-like empty map when the store has no such output.
pub fn metrics_of(
    store: &Store,
    stage: &Stage,
    key: &Key,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let Some(run) = store.get(key).context("cannot read the run record")? else {
        return Ok(out);
    };
    for file in &stage.metrics {
        let bytes = store
            .read_file(&run, file)
            .with_context(|| format!("stage `{}`: cannot read metrics file `{file}`", stage.name))?
            .with_context(|| {
                format!(
                    "stage `{}`: its output has no metrics file `{file}`",
                    stage.name
                )
            })?;
        let doc: Value = serde_json::from_slice(&bytes).with_context(|| {
            format!("stage `{}`: metrics file `{file}` is not JSON", stage.name)
        })?;
        let prefix = if stage.metrics.len() > 1 {
            format!("{file}/")
        } else {
            String::new()
        };
        flatten(&doc, prefix, &mut out);
    }
    Ok(out)
}

/// Numbers of nested objects as `a.b` → value; lists are plots, not metrics.
fn flatten(v: &Value, name: String, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(name, x);
            }
        }
        Value::Bool(b) => {
            out.insert(name, f64::from(u8::from(*b)));
        }
        Value::Object(o) => {
            for (k, v) in o {
                let sub = if name.is_empty() || name.ends_with('/') {
                    format!("{name}{k}")
                } else {
                    format!("{name}.{k}")
                };
                flatten(v, sub, out);
            }
        }
        _ => {}
    }
}

/// A metric value as people read it: at most 4 decimals, no trailing zeros.
pub fn fmt(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
