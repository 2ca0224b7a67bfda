//! `pipe endpoints`: the endpoints deploy stages started, with their health.

use std::io::Write;
use std::path::PathBuf;

use pipe_stages::endpoint::{self, Health};

use super::find_workspace;
use crate::exit::{self, Failure};
use crate::reporter;

pub fn endpoints(workspace: Option<PathBuf>, json: bool) -> Result<i32, Failure> {
    let root = find_workspace(workspace)?;
    let mut rows = Vec::new();
    for r in endpoint::list(&root) {
        let health = match r.health() {
            Health::Healthy => "healthy".to_string(),
            Health::Down(why) => format!("down: {why}"),
        };
        rows.push((r, health));
    }
    let mut out = reporter::stdout();
    if json {
        let doc: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, h)| serde_json::json!({"name": r.name, "url": r.url, "pid": r.pid, "model_sha256": r.model_sha256, "log": r.log, "health": h}))
            .collect();
        let _ = writeln!(out, "{}", serde_json::Value::Array(doc));
    } else if rows.is_empty() {
        reporter::note(&format!("no endpoints in {}", root.display()));
    } else {
        let w = rows.iter().map(|(r, _)| r.name.len()).max().unwrap_or(4);
        for (r, h) in &rows {
            let _ = writeln!(
                out,
                "{:<w$}  {:<24}  pid {:<8} model {}  {h}",
                r.name,
                r.url,
                r.pid,
                &r.model_sha256[..12.min(r.model_sha256.len())]
            );
        }
    }
    Ok(exit::OK)
}
