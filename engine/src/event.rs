//! What the engine tells a reporter. The engine never prints.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pipe_cache::{Digest, DirtyReason, Key};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ran,
    Cached,
    Failed,
    Skipped,
    /// `--dry-run` / `status`: would run.
    Pending,
}

/// Where a cached result came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheSource {
    /// This workspace's store.
    Local,
    /// A remote cache (downloaded into the store for this run).
    Remote,
}

/// The outcome of one stage, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct StageResult {
    pub name: String,
    pub status: Status,
    pub key: Option<Key>,
    pub output_hash: Option<Digest>,
    pub output_dir: Option<PathBuf>,
    pub seconds: f64,
    /// For a cached stage: whether the result was local or fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSource>,
    /// Why it ran (or would run).
    #[serde(
        serialize_with = "display_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub reason: Option<DirtyReason>,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The end of the stage's log, for failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    /// Figures the run that produced the output recorded (see
    /// `StageContext::stat`), also for a cached stage.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, f64>,
}

fn display_opt<S: serde::Serializer>(r: &Option<DirtyReason>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(r) => s.serialize_str(&r.to_string()),
        None => s.serialize_none(),
    }
}

impl StageResult {
    pub fn new(name: &str, status: Status) -> StageResult {
        StageResult {
            name: name.to_string(),
            status,
            key: None,
            output_hash: None,
            output_dir: None,
            seconds: 0.0,
            cache: None,
            reason: None,
            error: None,
            log_tail: None,
            stats: BTreeMap::new(),
        }
    }
}

pub enum Event<'a> {
    /// Another `pipe run` holds the workspace; we wait for it.
    WaitingForLock {
        pid: Option<u32>,
    },
    Started {
        stage: &'a str,
        reason: &'a DirtyReason,
    },
    Progress {
        stage: &'a str,
        message: &'a str,
    },
    Finished(&'a StageResult),
    /// A stage's job on a cluster was submitted or changed state
    /// (`PENDING (Priority)`, `RUNNING`).
    Job {
        stage: &'a str,
        backend: &'a str,
        id: &'a str,
        state: &'a str,
    },
}

pub trait Reporter: Sync {
    fn event(&self, event: Event<'_>);
}

/// A reporter that drops everything.
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: Event<'_>) {}
}
