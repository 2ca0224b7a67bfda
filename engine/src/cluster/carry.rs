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

use super::{failed, io_err, JobData, JobSpec, Submission};
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
        let fail = failed(format!(
            "input `{}`: cannot send it to the remote cache",
            input.name
        ));
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
        .map_err(failed(
            "cannot fetch the job's output from the remote cache",
        ))?
        .ok_or("the job's output is not in the remote cache")?;
    Ok(sub.store.materialize(&run, ctx.out)?)
}

/// `rel` without `.` components, if it is a path inside a dir (no root, no
/// `..`, not the dir itself).
fn inside(rel: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!clean.as_os_str().is_empty()).then_some(clean)
}

/// Where the job's stage reads and writes on the node.
pub(super) struct Here<'a> {
    pub manifest: PathBuf,
    pub out: PathBuf,
    pub log: PathBuf,
    spec: &'a JobSpec,
    /// Without a shared filesystem: the job's own dir (removed at the end),
    /// its store, and the remote.
    apart: Option<Apart<'a>>,
    rank: u32,
}

struct Apart<'a> {
    scratch: tempfile::TempDir,
    remote: &'a dyn RemoteCache,
    store: Store,
}

impl<'a> Here<'a> {
    /// Lay out where the stage runs: in the shared workspace (rank 0 into
    /// the staging dir's `out`, another rank into `rank-N` beside it), or in
    /// a scratch dir of the node's (`$TMPDIR`).
    pub fn new(
        spec: &'a JobSpec,
        remote: Option<&'a dyn RemoteCache>,
        rank: u32,
    ) -> Result<Here<'a>, StageError> {
        let create = |dir: PathBuf| -> Result<PathBuf, StageError> {
            std::fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
            Ok(dir)
        };
        match &spec.data {
            JobData::Shared { out, log, .. } => Ok(Here {
                manifest: spec.manifest.clone(),
                out: if rank == 0 {
                    out.clone()
                } else {
                    let staging = out.parent().unwrap_or(Path::new("."));
                    create(staging.join(format!("rank-{rank}")))?
                },
                log: log.clone(),
                spec,
                apart: None,
                rank,
            }),
            JobData::Remote { .. } => {
                let remote = remote
                    .ok_or("the job's data is in a remote cache, and no --remote was given")?;
                let rel = inside(&spec.manifest).ok_or_else(|| {
                    format!(
                        "the job's manifest {} is not a path inside a workspace",
                        spec.manifest.display()
                    )
                })?;
                let scratch = tempfile::Builder::new()
                    .prefix("pipe-job-")
                    .tempdir()
                    .map_err(|e| failed("cannot create the job's scratch dir")(e.into()))?;
                let ws = create(scratch.path().join("ws"))?;
                // `.pipe` marks `ws` as the manifest's workspace root.
                let store = Store::open(&ws.join(".pipe"))?;
                let log = scratch.path().join("stage.log");
                std::fs::write(&log, b"").map_err(|e| io_err("create", &log, e))?;
                Ok(Here {
                    manifest: ws.join(rel),
                    out: create(scratch.path().join("out"))?,
                    log,
                    spec,
                    apart: Some(Apart {
                        scratch,
                        remote,
                        store,
                    }),
                    rank,
                })
            }
        }
    }

    /// The stage's inputs: with the remote, fetched into the job's
    /// workspace (workspace paths where the workspace has them, a stage's
    /// output once per result), each checked against the hash the stage's
    /// key records; then the manifest is written beside them.
    pub fn inputs(
        &self,
        interrupt: &crate::interrupt::Interrupt,
        reporter: &dyn crate::event::Reporter,
    ) -> Result<BTreeMap<String, PathBuf>, StageError> {
        let (
            JobData::Remote {
                inputs,
                record,
                manifest_text,
                ..
            },
            Some(apart),
        ) = (&self.spec.data, &self.apart)
        else {
            return match &self.spec.data {
                JobData::Shared { inputs, .. } => Ok(inputs.clone()),
                JobData::Remote { .. } => Err("no remote cache".into()),
            };
        };
        let ws = apart.scratch.path().join("ws");
        // Workspace paths shortest first: one inside another is already
        // there with it (both hashed from the same workspace).
        let mut order: Vec<(&String, &RemoteInput, Option<PathBuf>)> = Vec::new();
        for (name, input) in inputs {
            let rel = match &input.workspace {
                None => None,
                Some(rel) => Some(inside(rel).ok_or_else(|| {
                    format!("input `{name}`: {} is not a path inside the workspace (`.` cannot travel: name its folders)", rel.display())
                })?),
            };
            order.push((name, input, rel));
        }
        order.sort_by_key(|(_, _, rel)| rel.as_ref().map_or(0, |r| r.components().count()));
        let mut placed: Vec<PathBuf> = Vec::new();
        let mut paths = BTreeMap::new();
        for (name, input, rel) in order {
            if interrupt.is_set() {
                return Err("interrupted".into());
            }
            let at = |e: StageError| failed(format!("input `{name}`"))(e);
            let path = if input.path.is_empty() {
                String::new()
            } else {
                inside(Path::new(&input.path))
                    .ok_or_else(|| {
                        format!(
                            "input `{name}`: `{}` is not a path inside a stage's output",
                            input.path
                        )
                    })?
                    .to_string_lossy()
                    .into_owned()
            };
            let dir = match &rel {
                Some(rel) => ws.join(rel),
                None => apart.scratch.path().join("in").join(input.key.to_hex()),
            };
            let covered = match &rel {
                Some(rel) => placed.iter().any(|p| rel.starts_with(p)),
                None => dir.exists(),
            };
            if !covered {
                reporter.event(crate::event::Event::Progress {
                    stage: &self.spec.stage,
                    message: &format!("fetching input `{name}`"),
                });
                let run = apart
                    .remote
                    .fetch_or_fail(&input.key, &apart.store)
                    .map_err(at)?
                    .ok_or_else(|| {
                        format!(
                            "input `{name}`: the remote cache has no result {}",
                            input.key
                        )
                    })?;
                let expected = record.inputs.get(name).map(|d| d.hash);
                if run.output.node_hash(&path) != expected {
                    return Err(format!(
                        "input `{name}`: result {} does not hold what the stage's key names",
                        input.key
                    )
                    .into());
                }
                apart
                    .store
                    .materialize(&run, &dir)
                    .map_err(|e| at(e.into()))?;
                if let Some(rel) = rel {
                    placed.push(rel);
                }
            }
            let path = if path.is_empty() {
                dir
            } else {
                dir.join(&path)
            };
            paths.insert(name.clone(), path);
        }
        // The manifest may sit in a folder that came as an input: never
        // write through a link into the store.
        if let Some(dir) = self.manifest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
        }
        let _ = std::fs::remove_file(&self.manifest);
        std::fs::write(&self.manifest, manifest_text)
            .map_err(|e| io_err("write", &self.manifest, e))?;
        Ok(paths)
    }

    /// Whether the submitter reads the stage log from the job (it cannot
    /// read the node's file): rank 0's, with the remote.
    pub fn streams_log(&self) -> bool {
        self.apart.is_some() && self.rank == 0
    }

    /// Hand the output over: with the remote, rank 0 commits it and pushes
    /// it under the stage's key; in the shared workspace it is in place.
    pub fn deliver(
        &self,
        seconds: f64,
        pins: &BTreeMap<String, String>,
        stats: &BTreeMap<String, f64>,
    ) -> Result<(), StageError> {
        let (JobData::Remote { key, record, .. }, Some(apart)) = (&self.spec.data, &self.apart)
        else {
            return Ok(());
        };
        if self.rank != 0 {
            return Ok(());
        }
        if record.key() != *key {
            return Err(format!("the job's key record does not hash to its key {key}").into());
        }
        let run = apart.store.commit(
            *key,
            record.clone(),
            &self.out,
            seconds,
            pins.clone(),
            stats.clone(),
        )?;
        apart
            .remote
            .push_or_fail(&run, &apart.store)
            .map_err(failed("cannot push the output to the remote cache"))
    }
}
