//! Running one stage: resolve its inputs to content hashes, build its key,
//! serve it from the store if possible, otherwise run it in a staging dir and
//! commit the result.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use pipe_cache::{
    DirtyReason, Error as CacheError, InputDigest, KeyRecord, RunRecord, Store, Tree,
};

use crate::event::{CacheSource, Event, Reporter, StageResult, Status};
use crate::interrupt::Interrupt;
use crate::lockfile::LockFile;
use crate::pipeline::{InputRef, Pipeline, Stage};
use crate::remote::RemoteCache;
use crate::stage::{Registry, StageContext, StageError};

/// How far to go with a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Serve from cache or run.
    Run,
    /// Run even if cached.
    Force,
    /// Serve from cache, else fail: the stage is upstream of a `--only` selection.
    CacheOnly,
    /// Report what would happen; touch nothing (`status`, `--dry-run`).
    Plan,
}

pub struct Executor<'a> {
    pub pipeline: &'a Pipeline,
    pub registry: &'a Registry,
    pub store: Option<&'a Store>,
    pub remote: Option<&'a dyn RemoteCache>,
    pub old_lock: &'a LockFile,
    pub reporter: &'a dyn Reporter,
    pub interrupt: &'a Interrupt,
}

/// Inputs resolved to paths and digests.
struct Resolved {
    paths: BTreeMap<String, PathBuf>,
    digests: BTreeMap<String, InputDigest>,
}

impl Executor<'_> {
    /// Execute stage `stage`; `upstream` holds the run records of its finished
    /// dependencies. Returns the result and, on success, the run record.
    pub fn execute(
        &self,
        stage: &Stage,
        mode: Mode,
        upstream: &HashMap<String, RunRecord>,
    ) -> (StageResult, Option<RunRecord>) {
        let started = Instant::now();
        let mut result = StageResult::new(&stage.name, Status::Failed);
        let outcome = self.try_execute(stage, mode, upstream, &mut result);
        result.seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(run) => {
                if let Some(run) = &run {
                    result.key = Some(run.key);
                    result.output_hash = Some(run.output_hash);
                    result.output_dir = Some(self.pipeline.output_dir(&stage.name));
                    result.stats = run.stats.clone();
                }
                (result, run)
            }
            // `result.status` starts as Failed; a stage refused before running
            // (not selected, not cached) has set Skipped.
            Err(e) => {
                result.error = Some(error_chain(e.as_ref()));
                (result, None)
            }
        }
    }

    fn try_execute(
        &self,
        stage: &Stage,
        mode: Mode,
        upstream: &HashMap<String, RunRecord>,
        result: &mut StageResult,
    ) -> Result<Option<RunRecord>, StageError> {
        let p = self.pipeline;
        let kind = self
            .registry
            .get(&stage.kind)
            .ok_or_else(|| format!("unknown stage kind `{}`", stage.kind))?;
        let resolved = self.resolve_inputs(stage, upstream)?;
        let record = KeyRecord {
            kind: stage.kind.clone(),
            kind_version: kind.version,
            params: stage.params_used.clone(),
            with: stage.with.clone(),
            inputs: resolved.digests.clone(),
            env: stage.env.clone(),
            fingerprints: stage.prepared.fingerprints()?,
        };
        let key = record.key();
        result.key = Some(key);
        let out_dir = p.output_dir(&stage.name);
        let log = p.log_file(&stage.name);

        let mut reason = match mode {
            Mode::Force => Some(DirtyReason::Forced),
            _ if !stage.cache => Some(DirtyReason::NotCached),
            _ => None,
        };
        if reason.is_none() {
            let mut hit = match self.store {
                Some(store) => store.get(&key)?,
                None => None,
            };
            let mut source = CacheSource::Local;
            if hit.is_none() {
                hit = self.remote_hit(&key, mode);
                source = CacheSource::Remote;
            }
            result.cache = hit.is_some().then_some(source);
            match hit {
                Some(run) if mode == Mode::Plan => {
                    result.status = Status::Cached;
                    return Ok(Some(run));
                }
                Some(run) => match self.restore(&run, &out_dir) {
                    Ok(()) => {
                        let drift = if stage.prepared.is_effect() {
                            let pins = Mutex::new(BTreeMap::new());
                            let stats = Mutex::new(BTreeMap::new());
                            let ctx = self.context(
                                stage, &resolved, &out_dir, &log, &run.pins, &pins, &stats,
                            );
                            stage.prepared.verify(&ctx)?
                        } else {
                            None
                        };
                        match drift {
                            None => {
                                result.status = Status::Cached;
                                return Ok(Some(run));
                            }
                            Some(detail) => reason = Some(DirtyReason::Drift { detail }),
                        }
                    }
                    // Damage is a miss: the rerun's commit repairs the store.
                    Err(CacheError::Corrupt { digest, .. }) => {
                        reason = Some(DirtyReason::OutputCorrupt {
                            detail: format!("object {} failed its hash check", digest.short()),
                        });
                    }
                    Err(CacheError::Missing { digest }) => {
                        reason = Some(DirtyReason::OutputCorrupt {
                            detail: format!("object {} is missing", digest.short()),
                        });
                    }
                    Err(e) => return Err(e.into()),
                },
                None => reason = Some(self.explain(stage, &record)),
            }
        }
        let reason = reason.unwrap_or(DirtyReason::NeverRun);
        result.cache = None;
        result.reason = Some(reason.clone());
        match mode {
            Mode::Plan => {
                result.status = Status::Pending;
                return Ok(None);
            }
            Mode::CacheOnly => {
                result.status = Status::Skipped;
                return Err(format!("not selected and not cached ({reason}); run it first").into());
            }
            Mode::Run | Mode::Force => {}
        }
        let store = self.store.ok_or("no store")?;

        self.reporter.event(Event::Started {
            stage: &stage.name,
            reason: &reason,
        });
        let staging = store.staging_dir()?;
        let out = staging.path().join("out");
        std::fs::create_dir_all(&out).map_err(|e| io_err("create", &out, e))?;
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
        }
        std::fs::write(&log, b"").map_err(|e| io_err("create", &log, e))?;
        let started = Instant::now();
        // A forced stage starts from nothing: it must not be held to old pins.
        let locked_pins = match (mode, self.old_lock.stages.get(&stage.name)) {
            (Mode::Force, _) | (_, None) => BTreeMap::new(),
            (_, Some(entry)) => entry.pins.clone(),
        };
        let new_pins = Mutex::new(BTreeMap::new());
        let new_stats = Mutex::new(BTreeMap::new());
        let ctx = self.context(
            stage,
            &resolved,
            &out,
            &log,
            &locked_pins,
            &new_pins,
            &new_stats,
        );
        let ran = stage.prepared.run(&ctx);
        // Whatever an interrupted stage produced is dropped with its staging dir.
        if self.interrupt.is_set() {
            return Err("interrupted".into());
        }
        if let Err(e) = ran {
            result.log_tail = log_tail(&log, 20);
            return Err(e);
        }
        let pins = new_pins.into_inner().unwrap_or_else(|e| e.into_inner());
        let stats = new_stats.into_inner().unwrap_or_else(|e| e.into_inner());
        let run = store.commit(
            key,
            record,
            &out,
            started.elapsed().as_secs_f64(),
            pins,
            stats,
        )?;
        store.materialize(&run, &out_dir)?;
        if let Some(remote) = self.remote.filter(|r| r.writes()) {
            remote.push(&run, store);
        }
        result.status = Status::Ran;
        Ok(Some(run))
    }

    /// A result missing from the store, from the remote cache: only looked up
    /// when planning, downloaded into the store otherwise.
    fn remote_hit(&self, key: &pipe_cache::Key, mode: Mode) -> Option<RunRecord> {
        let remote = self.remote?;
        match (mode, self.store) {
            (Mode::Plan, _) => remote.lookup(key),
            (_, Some(store)) => remote.fetch(key, store),
            (_, None) => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn context<'b>(
        &'b self,
        stage: &'b Stage,
        resolved: &Resolved,
        out: &'b std::path::Path,
        log: &'b std::path::Path,
        locked_pins: &'b BTreeMap<String, String>,
        new_pins: &'b Mutex<BTreeMap<String, String>>,
        new_stats: &'b Mutex<BTreeMap<String, f64>>,
    ) -> StageContext<'b> {
        StageContext {
            pipeline: self.pipeline,
            stage,
            workspace: &self.pipeline.root,
            out,
            inputs: resolved.paths.clone(),
            log,
            cancel: self.interrupt.flag(),
            interrupt: self.interrupt,
            reporter: self.reporter,
            locked_pins,
            new_pins,
            new_stats,
        }
    }

    /// Make sure `out_dir` holds `run`'s output, re-linking if needed.
    fn restore(&self, run: &RunRecord, out_dir: &std::path::Path) -> Result<(), CacheError> {
        let Some(store) = self.store else {
            return Ok(());
        };
        if store.is_materialized(run, out_dir)? {
            return Ok(());
        }
        store.materialize(run, out_dir)
    }

    fn resolve_inputs(
        &self,
        stage: &Stage,
        upstream: &HashMap<String, RunRecord>,
    ) -> Result<Resolved, StageError> {
        let p = self.pipeline;
        let mut paths = BTreeMap::new();
        let mut digests = BTreeMap::new();
        for input in &stage.inputs {
            let (path, hash) = match &input.target {
                InputRef::Stage { stage: up, path } => {
                    let run = upstream.get(up).ok_or_else(|| {
                        format!("input `{}`: stage `{up}` has no output", input.name)
                    })?;
                    let hash = run.output.node_hash(path).ok_or_else(|| {
                        format!(
                            "input `{}`: the output of stage `{up}` has no `{path}`",
                            input.name
                        )
                    })?;
                    let dir = p.output_dir(up);
                    (if path.is_empty() { dir } else { dir.join(path) }, hash)
                }
                InputRef::Workspace(rel) => {
                    let abs = p.root.join(rel);
                    let real = self.real_workspace_path(&abs).map_err(|why| {
                        format!("input `{}`: `{}` {why}", input.name, rel.display())
                    })?;
                    let skip = |path: &Path| is_pipe_state(p, path);
                    let hash = match self.store {
                        Some(store) => Tree::hash_path(&real, store.stat_cache(), &skip)?,
                        None => Tree::hash_path(&real, &pipe_cache::PlainHasher, &skip)?,
                    };
                    (abs, hash)
                }
            };
            paths.insert(input.name.clone(), path);
            digests.insert(
                input.name.clone(),
                InputDigest {
                    source: input.source.clone(),
                    hash,
                },
            );
        }
        Ok(Resolved { paths, digests })
    }

    /// The real path of a workspace input: symbolic links along it are
    /// followed, and it must still be inside the (real) workspace.
    fn real_workspace_path(&self, abs: &Path) -> Result<PathBuf, String> {
        let real = abs
            .canonicalize()
            .map_err(|e| format!("cannot be resolved: {e}"))?;
        let root = self.pipeline.root.canonicalize().map_err(|e| {
            format!(
                "cannot be resolved: workspace {}: {e}",
                self.pipeline.root.display()
            )
        })?;
        if !real.starts_with(&root) {
            return Err(format!(
                "resolves to {}, outside the workspace {} (through a symbolic link)",
                real.display(),
                root.display()
            ));
        }
        Ok(real)
    }

    /// Why a stage whose key is not in the store must run.
    fn explain(&self, stage: &Stage, record: &KeyRecord) -> DirtyReason {
        let Some(entry) = self.old_lock.stages.get(&stage.name) else {
            return DirtyReason::NeverRun;
        };
        let old = self.store.and_then(|s| s.get(&entry.key).ok().flatten());
        match old {
            Some(old) => record.compare(&old.record).unwrap_or(DirtyReason::NeverRun),
            None => DirtyReason::NeverRun,
        }
    }
}

/// pipe's own files, never part of a workspace input (an input of `.`): the
/// `.pipe` dir and lock files (this pipeline's, and any `pipe.lock` or
/// `NAME.lock` beside a `NAME.yaml`/`NAME.yml` that `pipe run` wrote: another
/// tool's lock, such as Helm's `Chart.lock`, is data).
fn is_pipe_state(p: &Pipeline, path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let same = |a: &Path| {
        a.canonicalize()
            .is_ok_and(|a| path.canonicalize().is_ok_and(|b| a == b))
    };
    match name {
        ".pipe" => path.is_dir() && same(&p.pipe_dir()),
        "pipe.lock" => written_by_pipe(path),
        // Called for every file of an input: a plain name costs no allocation.
        _ if !name.ends_with(".lock") => false,
        _ if {
            let lock = p.lock_file();
            lock.file_name() == path.file_name() && same(&lock)
        } =>
        {
            true
        }
        _ => {
            name.strip_suffix(".lock").is_some_and(|stem| {
                ["yaml", "yml"]
                    .iter()
                    .any(|ext| path.with_file_name(format!("{stem}.{ext}")).is_file())
            }) && written_by_pipe(path)
        }
    }
}

/// Whether the lock file at `path` opens with the header `pipe run` writes.
fn written_by_pipe(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 160];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]);
    head.starts_with('#')
        && head
            .lines()
            .next()
            .is_some_and(|l| l.contains(": written by `pipe run`."))
}

fn io_err(op: &str, path: &std::path::Path, e: std::io::Error) -> StageError {
    format!("cannot {op} {}: {e}", path.display()).into()
}

/// `a: b: c` from an error and its sources, URL user info masked.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let msg = src.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = src.source();
    }
    crate::cache::redact_userinfo(&s)
}

fn log_tail(path: &std::path::Path, lines: usize) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}
