//! `pipe runs MANIFEST [--json]`: one row per run of the pipeline, with the
//! params that differ between runs and every stage's metrics (like `dvc exp show`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use pipe_engine::Pipeline;
use serde_json::{json, Value};

use crate::history::{self, fmt, Run};

/// Each run's metrics as `stage.metric` → value.
pub fn metrics(run: &Run) -> BTreeMap<String, f64> {
    run.stages
        .iter()
        .flat_map(|s| {
            s.metrics
                .iter()
                .map(move |(k, v)| (format!("{}.{k}", s.name), *v))
        })
        .collect()
}

pub fn runs(out: &mut impl Write, p: &Pipeline, as_json: bool) -> anyhow::Result<()> {
    let runs = history::list(&p.root, &p.name)?;
    // The params whose value is not the same in every run.
    let names: BTreeSet<&String> = runs.iter().flat_map(|r| r.params.keys()).collect();
    let differ: Vec<&String> = names
        .into_iter()
        .filter(|k| {
            let first = runs.first().and_then(|r| r.params.get(*k));
            runs.iter().any(|r| r.params.get(*k) != first)
        })
        .collect();
    let per_run: Vec<BTreeMap<String, f64>> = runs.iter().map(metrics).collect();
    let metric_names: BTreeSet<&String> = per_run.iter().flat_map(|m| m.keys()).collect();
    if as_json {
        let doc: Vec<Value> = runs
            .iter()
            .zip(&per_run)
            .map(|(r, m)| {
                let status: BTreeMap<&str, &str> = r
                    .stages
                    .iter()
                    .map(|s| (s.name.as_str(), s.status.as_str()))
                    .collect();
                json!({"id": r.id, "time": r.time, "commit": r.commit, "params": r.params,
                       "stages": status, "metrics": m})
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    if runs.is_empty() {
        super::usage!(
            "no runs of pipeline `{}` yet (`pipe run {}` records one)",
            p.name,
            p.file.display()
        );
    }
    let mut rows = vec![{
        let mut h = vec!["run".to_string(), "commit".to_string()];
        h.extend(differ.iter().map(|k| k.to_string()));
        h.extend(metric_names.iter().map(|k| k.to_string()));
        h
    }];
    for (r, m) in runs.iter().zip(&per_run) {
        let mut row = vec![
            r.id.clone(),
            r.commit
                .as_deref()
                .map(|c| c.chars().take(7).collect())
                .unwrap_or_else(|| "-".into()),
        ];
        for k in &differ {
            row.push(match r.params.get(*k) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => "-".into(),
            });
        }
        for k in &metric_names {
            row.push(m.get(*k).map(|x| fmt(*x)).unwrap_or_else(|| "-".into()));
        }
        rows.push(row);
    }
    write!(out, "{}", super::table(&rows))?;
    Ok(())
}
