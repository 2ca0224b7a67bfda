//! Inputs and outputs of a job on a node that does not see the workspace
//! (`--cluster-io remote`), carried by the remote cache as results:
//!
//! ```text
//! submitter                                   job (scratch dir on the node)
//!   upstream result ── push ──▶ ac/<key> ──▶ fetch, materialize in/<key>/
//!   workspace path ─ ingest ─▶ ac/<key'> ─▶   (key' = a `workspace-input` record of its hash)
//!   fetch, materialize STAGING/out ◀── ac/<stage key> ◀── commit + push out/
//! ```
//!
//! Every blob is checked against its sha256 on the way in, on both sides.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use pipe_cache::{InputDigest, Key, KeyRecord, RunRecord, Store, Tree};
use serde::{Deserialize, Serialize};

use super::{io_err, JobData, JobSpec, Submission};
use crate::executor::error_chain;
use crate::pipeline::{InputRef, Pipeline};
use crate::remote::RemoteCache;
use crate::stage::{StageContext, StageError};

/// The kind of the records that carry workspace paths.
const WORKSPACE_INPUT: &str = "workspace-input";

/// An input of a job: `path` inside the output of the result `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteInput {
    pub key: Key,
    pub path: String,
    /// A workspace path: where it goes in the job's workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<PathBuf>,
}

/// Put every input of the stage into the remote; what the job fetches.
pub(super) fn send_inputs(
    ctx: &StageContext,
    sub: &Submission,
    remote: &dyn RemoteCache,
) -> Result<BTreeMap<String, RemoteInput>, StageError> {
    let mut sent = BTreeMap::new();
    for input in &ctx.stage.inputs {
        let fail = |e: StageError| -> StageError {
            format!(
                "input `{}`: cannot send it to the remote cache: {}",
                input.name,
                error_chain(e.as_ref())
            )
            .into()
        };
        let (key, path, workspace) = match &input.target {
            InputRef::Stage { stage, path } => {
                let run = sub.upstream.get(stage).ok_or_else(|| {
                    format!("input `{}`: stage `{stage}` has no result", input.name)
                })?;
                remote.push_or_fail(run, sub.store).map_err(fail)?;
                (run.key, path.clone(), None)
            }
            InputRef::Workspace(rel) => {
                let key = send_workspace_path(ctx.pipeline, sub, remote, &input.name, rel)
                    .map_err(fail)?;
                (key, String::new(), Some(rel.clone()))
            }
        };
        sent.insert(
            input.name.clone(),
            RemoteInput {
                key,
                path,
                workspace,
            },
        );
    }
    Ok(sent)
}

/// A workspace path as a result of its own, keyed by its content hash (the
/// one in the stage's key): sent once, then found by its key.
fn send_workspace_path(
    p: &Pipeline,
    sub: &Submission,
    remote: &dyn RemoteCache,
    name: &str,
    rel: &Path,
) -> Result<Key, StageError> {
    let digest = sub
        .record
        .inputs
        .get(name)
        .ok_or("not in the stage's key")?;
    let record = KeyRecord {
        kind: WORKSPACE_INPUT.into(),
        kind_version: 1,
        params: BTreeMap::new(),
        with: serde_json::json!({ "path": rel.to_string_lossy() }),
        inputs: BTreeMap::from([("content".to_string(), digest.clone())]),
        env: BTreeMap::new(),
        fingerprints: BTreeMap::new(),
    };
    let key = record.key();
    if remote.lookup(&key).is_some() {
        return Ok(key);
    }
    let store = sub.store;
    let run = match store.get(&key)? {
        Some(run) if store.verify(&run).is_ok() => run,
        _ => ingest(p, store, key, record, rel, digest)?,
    };
    remote.push_or_fail(&run, store)?;
    Ok(key)
}

/// Copy the workspace path `rel` into the store as the output of `key`.
fn ingest(
    p: &Pipeline,
    store: &Store,
    key: Key,
    record: KeyRecord,
    rel: &Path,
    digest: &InputDigest,
) -> Result<RunRecord, StageError> {
    let abs = p.root.join(rel);
    let real = abs.canonicalize().map_err(|e| io_err("resolve", &abs, e))?;
    let skip = |path: &Path| crate::executor::is_pipe_state(p, path);
    let tree = Tree::scan_skipping(&real, store.stat_cache(), &skip)?;
    if tree.hash() != digest.hash {
        return Err(format!(
            "{} changed since the stage's key was computed",
            rel.display()
        )
        .into());
    }
    Ok(store.ingest(key, record, &real, tree)?)
}

/// After the job: its output, from the remote into `ctx.out`, for the
/// executor to commit as it commits a local stage's.
pub(super) fn receive_output(
    ctx: &StageContext,
    sub: &Submission,
    remote: &dyn RemoteCache,
) -> Result<(), StageError> {
    let run = remote
        .fetch_or_fail(&sub.key, sub.store)
        .map_err(|e| format!("cannot fetch the job's output: {}", error_chain(e.as_ref())))?
        .ok_or("the job's output is not in the remote cache")?;
    Ok(sub.store.materialize(&run, ctx.out)?)
}

/// Whether `rel` is a path inside a dir (no root, no `..`).
fn inside(rel: &Path) -> bool {
    rel.components().all(|c| matches!(c, Component::Normal(_))) && rel.components().next().is_some()
}

/// Where the job's stage reads and writes on the node.
pub(super) struct Here<'a> {
    pub manifest: PathBuf,
    pub out: PathBuf,
    pub log: PathBuf,
    spec: &'a JobSpec,
    scratch: &'a Path,
    remote: Option<(&'a dyn RemoteCache, Store)>,
    rank: u32,
}

impl<'a> Here<'a> {
    /// Lay out `scratch` (the job's own dir) for the spec.
    pub fn new(
        spec: &'a JobSpec,
        scratch: &'a Path,
        remote: Option<&'a dyn RemoteCache>,
        rank: u32,
    ) -> Result<Here<'a>, StageError> {
        let own_out = || -> Result<PathBuf, StageError> {
            let out = scratch.join("out");
            std::fs::create_dir_all(&out).map_err(|e| io_err("create", &out, e))?;
            Ok(out)
        };
        match &spec.data {
            JobData::Shared { out, log, .. } => Ok(Here {
                manifest: spec.manifest.clone(),
                out: if rank == 0 { out.clone() } else { own_out()? },
                log: log.clone(),
                spec,
                scratch,
                remote: None,
                rank,
            }),
            JobData::Remote { manifest_text, .. } => {
                let remote = remote
                    .ok_or("the job's data is in a remote cache, and no --remote was given")?;
                let ws = scratch.join("ws");
                std::fs::create_dir_all(&ws).map_err(|e| io_err("create", &ws, e))?;
                if !inside(&spec.manifest) {
                    return Err(format!(
                        "the job's manifest {} is not a path inside a workspace",
                        spec.manifest.display()
                    )
                    .into());
                }
                // `.pipe` first: it marks `ws` as the manifest's workspace root.
                let store = Store::open(&ws.join(".pipe"))?;
                let manifest = ws.join(&spec.manifest);
                if let Some(dir) = manifest.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
                }
                std::fs::write(&manifest, manifest_text)
                    .map_err(|e| io_err("write", &manifest, e))?;
                let log = scratch.join("stage.log");
                std::fs::write(&log, b"").map_err(|e| io_err("create", &log, e))?;
                Ok(Here {
                    manifest,
                    out: own_out()?,
                    log,
                    spec,
                    scratch,
                    remote: Some((remote, store)),
                    rank,
                })
            }
        }
    }

    /// The stage's inputs, fetched from the remote when they come from there.
    pub fn inputs(&self) -> Result<BTreeMap<String, PathBuf>, StageError> {
        let (JobData::Remote { inputs, .. }, Some((remote, store))) =
            (&self.spec.data, &self.remote)
        else {
            return match &self.spec.data {
                JobData::Shared { inputs, .. } => Ok(inputs.clone()),
                JobData::Remote { .. } => Err("no remote cache".into()),
            };
        };
        let ws = self.scratch.join("ws");
        let mut paths = BTreeMap::new();
        for (name, input) in inputs {
            // A workspace path where the workspace has it; a stage's output
            // once per result.
            let dir = match &input.workspace {
                Some(rel) if inside(rel) => ws.join(rel),
                Some(rel) => {
                    return Err(
                        format!("input `{name}`: {} leaves the workspace", rel.display()).into(),
                    )
                }
                None => self.scratch.join("in").join(input.key.to_hex()),
            };
            if !dir.exists() {
                let run = remote
                    .fetch_or_fail(&input.key, store)
                    .map_err(|e| format!("input `{name}`: {}", error_chain(e.as_ref())))?
                    .ok_or_else(|| {
                        format!(
                            "input `{name}`: the remote cache has no result {}",
                            input.key
                        )
                    })?;
                store.materialize(&run, &dir)?;
            }
            let path = if input.path.is_empty() {
                dir
            } else {
                dir.join(&input.path)
            };
            paths.insert(name.clone(), path);
        }
        Ok(paths)
    }

    /// Whether the submitter reads the stage log from the job (it cannot
    /// read the node's file): rank 0's, with the remote.
    pub fn streams_log(&self) -> bool {
        self.remote.is_some() && self.rank == 0
    }

    /// Hand the output over: with the remote, rank 0 commits it and pushes
    /// it under the stage's key; in the shared workspace it is in place.
    pub fn deliver(
        &self,
        seconds: f64,
        pins: &BTreeMap<String, String>,
        stats: &BTreeMap<String, f64>,
    ) -> Result<(), StageError> {
        let (JobData::Remote { key, record, .. }, Some((remote, store))) =
            (&self.spec.data, &self.remote)
        else {
            return Ok(());
        };
        if self.rank != 0 {
            return Ok(());
        }
        let run = store.commit(
            *key,
            record.clone(),
            &self.out,
            seconds,
            pins.clone(),
            stats.clone(),
        )?;
        remote
            .push_or_fail(&run, store)
            .map_err(|e| format!("cannot push the output: {}", error_chain(e.as_ref())).into())
    }
}
