//! `pipe pull`: download every result that the manifest's lock records from
//! the remote cache into the workspace's store, running nothing.

use anyhow::Context;
use pipe_engine::Pipeline;
use pipe_remote::Remote;

use super::remote::{locked, open_locked};
use crate::exit::{self, Failure};
use crate::reporter;

pub fn pull(p: &Pipeline, remote: &Remote, quiet: bool) -> Result<i32, Failure> {
    let stages = locked(p)?;
    let (_lock, store) = open_locked(p)?;
    store.clean_tmp().context("cannot clean the store")?;
    let mut missing = Vec::new();
    for (name, entry) in &stages {
        let short = entry.output.short();
        let local = store.get(&entry.key).ok().flatten();
        if local.is_some_and(|run| store.verify(&run).is_ok()) {
            if !quiet {
                reporter::status("Cached", &format!("{name} ({short})"));
            }
            continue;
        }
        match remote.fetch_run(&entry.key, &store) {
            Ok(Some(_)) if !quiet => reporter::status("Fetched", &format!("{name} ({short})")),
            Ok(Some(_)) => {}
            Ok(None) => missing.push(name.as_str()),
            Err(e) => {
                if !quiet {
                    reporter::warn(&pipe_remote::error_chain(&e));
                }
                missing.push(name.as_str());
            }
        }
    }
    store.save().context("cannot save the stat cache")?;
    let report = remote.report();
    if report.unsigned > 0 {
        reporter::warn(&format!(
            "ignored {} remote result entries without a valid signature ({} is set)",
            report.unsigned,
            pipe_remote::SIGNING_KEY_VAR
        ));
    }
    if !quiet {
        reporter::note(&format!(
            "{} stages: {} fetched ({:.1} MB)",
            stages.len(),
            report.fetched,
            report.bytes_fetched as f64 / 1e6
        ));
    }
    if !missing.is_empty() {
        return Err(anyhow::anyhow!("not in the remote cache: {}", missing.join(", ")).into());
    }
    Ok(exit::OK)
}
