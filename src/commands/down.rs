//! `pipe down NAME... | --all`: stop endpoints and remove their records.

use std::path::PathBuf;

use pipe_stages::endpoint::{self, Stopped};

use super::find_workspace;
use crate::exit::{self, Failure};
use crate::reporter;

pub fn down(names: &[String], all: bool, workspace: Option<PathBuf>) -> Result<i32, Failure> {
    let root = find_workspace(workspace)?;
    let known = endpoint::list(&root);
    let chosen = if all {
        known
    } else {
        let mut v = Vec::new();
        for n in names {
            let Some(r) = known.iter().find(|r| &r.name == n) else {
                return Err(Failure::usage(anyhow::anyhow!(
                    "no endpoint named `{n}` (known: {})",
                    known
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            };
            v.push(r.clone());
        }
        v
    };
    for r in chosen {
        let stopped = r
            .stop(&root, std::time::Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("cannot stop {}: {e}", r.name))?;
        match stopped {
            Stopped::Server => reporter::status("Stopped", &format!("{} ({})", r.name, r.url)),
            Stopped::Stale(why) => reporter::status(
                "Forgot",
                &format!("{}: stale record removed, nothing killed: {why}", r.name),
            ),
        }
    }
    Ok(exit::OK)
}
