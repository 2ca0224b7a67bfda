//! `pipe metrics show` (each stage's metrics for a configuration, from the
//! store) and `pipe metrics diff` (the current lock against the lock at a git
//! revision or an earlier run).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use pipe_engine::cache::Store;
use pipe_engine::lockfile::LockFile;
use pipe_engine::{Pipeline, Registry, RunOptions, Status};

use crate::history::{self, fmt, metrics_of};

type Metrics = BTreeMap<String, f64>;

/// `pipe metrics show`: the metrics of the outputs this configuration's keys
/// name (what `pipe run` would reuse), stage by stage.
pub fn show(
    out: &mut impl Write,
    p: &Pipeline,
    registry: &Registry,
    as_json: bool,
) -> anyhow::Result<()> {
    let opts = RunOptions {
        dry_run: true,
        ..RunOptions::default()
    };
    let summary = pipe_engine::run(p, registry, &opts, &pipe_engine::event::Silent)?;
    let store = Store::open(&p.pipe_dir()).context("cannot open the store")?;
    let mut doc = serde_json::Map::new();
    let mut rows = Vec::new();
    for r in &summary.results {
        let Some(stage) = p.stage(&r.name) else {
            continue;
        };
        if stage.metrics.is_empty() {
            continue;
        }
        let metrics = match (r.status, &r.key) {
            (Status::Cached, Some(key)) => Some(metrics_of(&store, stage, key)?),
            _ => None,
        };
        doc.insert(r.name.clone(), serde_json::to_value(&metrics)?);
        match metrics {
            Some(m) => rows.extend(
                m.iter()
                    .map(|(k, v)| vec![format!("{}.{k}", r.name), fmt(*v)]),
            ),
            None => rows.push(vec![
                r.name.clone(),
                "(not run for this configuration)".into(),
            ]),
        }
    }
    if as_json {
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else if rows.is_empty() {
        super::usage!(
            "no stage of {} declares metrics (`metrics: [FILE]`)",
            p.file.display()
        );
    } else {
        write!(out, "{}", super::table(&rows))?;
    }
    Ok(())
}

/// The metrics of the outputs `lock` names, as `stage.metric` → value.
fn of_lock(p: &Pipeline, store: &Store, lock: &LockFile) -> anyhow::Result<Metrics> {
    let mut all = Metrics::new();
    for stage in &p.stages {
        if let Some(entry) = lock.stages.get(&stage.name) {
            for (k, v) in metrics_of(store, stage, &entry.key)? {
                all.insert(format!("{}.{k}", stage.name), v);
            }
        }
    }
    Ok(all)
}

/// The lock of `p` at git revision `rev`.
fn lock_at(p: &Pipeline, rev: &str) -> anyhow::Result<LockFile> {
    let lock = std::path::absolute(p.lock_file())?;
    let dir = lock.parent().unwrap_or(Path::new("."));
    let name = lock
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if rev.starts_with('-') {
        super::usage!("`{rev}` is neither a run id nor a git revision");
    }
    let spec = format!("{rev}:./{name}");
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["show", &spec])
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        super::usage!(
            "`{rev}` is neither a run id nor a git revision holding {}: {}",
            lock.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("the lock is not UTF-8")?;
    Ok(LockFile::parse(&text, Path::new(&spec))?)
}

/// `pipe metrics diff`: the current lock's metrics against `rev` (a run id
/// of the history, else a git revision; default `HEAD`).
pub fn diff(
    out: &mut impl Write,
    p: &Pipeline,
    rev: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let store = Store::open(&p.pipe_dir()).context("cannot open the store")?;
    let new = of_lock(p, &store, &LockFile::load(p)?)?;
    let rev = rev.unwrap_or("HEAD");
    let old = match history::find(&p.root, rev)? {
        Some(run) => super::runs::metrics(&run),
        None => of_lock(p, &store, &lock_at(p, rev)?)?,
    };
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    if as_json {
        let doc: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .map(|k| {
                let (a, b) = (old.get(*k), new.get(*k));
                let change = a.zip(b).map(|(a, b)| b - a);
                (
                    k.to_string(),
                    serde_json::json!({"old": a, "new": b, "change": change}),
                )
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    let show = |v: Option<&f64>| v.map(|x| fmt(*x)).unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|k| {
            let (a, b) = (old.get(*k), new.get(*k));
            let change = match a.zip(b) {
                Some((a, b)) if a == b => String::new(),
                Some((a, b)) => {
                    let d = b - a;
                    format!("({}{})", if d > 0.0 { "+" } else { "" }, fmt(d))
                }
                None => String::new(),
            };
            vec![k.to_string(), show(a), "→".into(), show(b), change]
        })
        .collect();
    if rows.is_empty() {
        super::usage!("no metrics on either side (`{rev}` and the current lock)");
    }
    write!(out, "{}", super::table(&rows))?;
    Ok(())
}
