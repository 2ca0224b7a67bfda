//! Running one stage, in two steps, as cargo does: [`Executor::plan`] decides
//! whether the stored result is [`Freshness::Fresh`] or why it is
//! [`Freshness::Dirty`]; [`Executor::execute`] then acts on that decision and
//! returns an [`Outcome`]. Nothing is reported through out-parameters: the
//! outcome becomes the stage's [`StageResult`] in one place.
//!
//! ```text
//! prepare (inputs → key) ──▶ plan ──▶ Fresh ─────────────────────────▶ Outcome::Cached
//!                                └──▶ Dirty(reason) ──▶ run (staging ──▶ work ──▶ commit) ──▶ Outcome::Ran
//! ```
//!
//! [`crate::cluster::run`] is the one place a stage's work happens: here,
//! or as a cluster job (`executor: slurm`); another backend is a module there.

mod error;
mod inputs;

pub(crate) use inputs::is_pipe_state;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use pipe_cache::{DirtyReason, Error as CacheError, Key, KeyRecord, RunRecord, Store};

pub use error::{error_chain, ExecError, KindError};

use crate::event::{CacheSource, Event, Reporter, StageResult, Status};
use crate::interrupt::Interrupt;
use crate::lockfile::LockFile;
use crate::pipeline::{Pipeline, Stage};
use crate::remote::RemoteCache;
use crate::stage::{Registry, StageContext};
use inputs::Resolved;

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

/// Whether a stage's stored result can be used, decided before anything runs.
pub enum Freshness {
    /// The stored result holds (restored into the output dir unless planning).
    Fresh {
        run: Box<RunRecord>,
        source: CacheSource,
    },
    /// The stage must run, and why.
    Dirty(DirtyReason),
}

/// What became of a stage.
pub enum Outcome {
    Cached {
        run: RunRecord,
        source: CacheSource,
    },
    Ran {
        run: RunRecord,
        reason: DirtyReason,
    },
    /// Planning only: the stage would run.
    WouldRun(DirtyReason),
    /// Upstream of a `--only` selection and not cached: not run.
    Skipped(DirtyReason),
    Failed {
        error: ExecError,
        /// Why it ran, when it got that far.
        reason: Option<DirtyReason>,
        /// The end of its log, when its work failed.
        log_tail: Option<String>,
    },
}

pub struct Executor<'a> {
    pub pipeline: &'a Pipeline,
    pub registry: &'a Registry,
    pub store: Option<&'a Store>,
    pub remote: Option<&'a dyn RemoteCache>,
    pub old_lock: &'a LockFile,
    pub reporter: &'a dyn Reporter,
    pub interrupt: &'a Interrupt,
    /// Where stages without an `executor:` run.
    pub executor: crate::cluster::ExecutorKind,
    /// How cluster jobs reach their data.
    pub cluster_io: crate::cluster::ClusterIo,
}

/// A stage ready to plan: the stage (its kind prepared), resolved inputs and key.
pub struct Job<'a> {
    stage: &'a Stage,
    /// The run records of its finished dependencies.
    upstream: &'a HashMap<String, RunRecord>,
    inputs: Resolved,
    record: KeyRecord,
    key: Key,
    /// Where the output is materialised, and the log.
    out_dir: PathBuf,
    log: PathBuf,
}

/// Pins and stats a stage records while it runs (see [`StageContext::pin`]).
#[derive(Default)]
struct Recorded {
    pins: Mutex<BTreeMap<String, String>>,
    stats: Mutex<BTreeMap<String, f64>>,
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
        let (key, outcome) = match self.prepare(stage, upstream) {
            Ok(job) => (Some(job.key), self.decide_and_act(&job, mode)),
            Err(error) => (
                None,
                Outcome::Failed {
                    error,
                    reason: None,
                    log_tail: None,
                },
            ),
        };
        let mut result = self.result(stage, key, outcome);
        result.0.seconds = started.elapsed().as_secs_f64();
        result
    }

    fn decide_and_act(&self, job: &Job, mode: Mode) -> Outcome {
        let reason = match self.plan(job, mode) {
            Ok(Freshness::Fresh { run, source }) => return Outcome::Cached { run: *run, source },
            Ok(Freshness::Dirty(reason)) => reason,
            Err(error) => {
                return Outcome::Failed {
                    error,
                    reason: None,
                    log_tail: None,
                }
            }
        };
        match mode {
            Mode::Plan => Outcome::WouldRun(reason),
            Mode::CacheOnly => Outcome::Skipped(reason),
            Mode::Run | Mode::Force => match self.run(job, mode, &reason) {
                Ok(run) => Outcome::Ran { run, reason },
                Err(error) => {
                    let log_tail = matches!(error, ExecError::Run(_))
                        .then(|| log_tail(&job.log, 20))
                        .flatten();
                    Outcome::Failed {
                        error,
                        reason: Some(reason),
                        log_tail,
                    }
                }
            },
        }
    }

    /// The stage's `--json` result for `outcome`.
    fn result(
        &self,
        stage: &Stage,
        key: Option<Key>,
        outcome: Outcome,
    ) -> (StageResult, Option<RunRecord>) {
        let mut r = StageResult::new(&stage.name, Status::Failed);
        r.key = key;
        let run = match outcome {
            Outcome::Cached { run, source } => {
                r.status = Status::Cached;
                r.cache = Some(source);
                Some(run)
            }
            Outcome::Ran { run, reason } => {
                r.status = Status::Ran;
                r.reason = Some(reason);
                Some(run)
            }
            Outcome::WouldRun(reason) => {
                r.status = Status::Pending;
                r.reason = Some(reason);
                None
            }
            Outcome::Skipped(reason) => {
                r.status = Status::Skipped;
                r.error = Some(format!(
                    "not selected and not cached ({reason}); run it first"
                ));
                r.reason = Some(reason);
                None
            }
            Outcome::Failed {
                error,
                reason,
                log_tail,
            } => {
                r.error = Some(error_chain(&error));
                r.reason = reason;
                r.log_tail = log_tail;
                None
            }
        };
        if let Some(run) = &run {
            r.key = Some(run.key);
            r.output_hash = Some(run.output_hash);
            r.output_dir = Some(self.pipeline.output_dir(&stage.name));
            r.stats = run.stats.clone();
        }
        (r, run)
    }

    /// Resolve the stage's inputs and build its key.
    pub fn prepare<'s>(
        &'s self,
        stage: &'s Stage,
        upstream: &'s HashMap<String, RunRecord>,
    ) -> Result<Job<'s>, ExecError> {
        let kind = self
            .registry
            .get(&stage.kind)
            .ok_or_else(|| ExecError::UnknownKind(stage.kind.clone()))?;
        let inputs = inputs::resolve(self.pipeline, self.store, stage, upstream)?;
        let record = KeyRecord {
            kind: stage.kind.clone(),
            kind_version: kind.version,
            params: stage.params_used.clone(),
            with: stage.with.clone(),
            inputs: inputs.digests.clone(),
            env: stage.env.clone(),
            fingerprints: stage
                .prepared
                .fingerprints()
                .map_err(|e| ExecError::Kind(KindError(e)))?,
        };
        Ok(Job {
            stage,
            upstream,
            inputs,
            key: record.key(),
            record,
            out_dir: self.pipeline.output_dir(&stage.name),
            log: self.pipeline.log_file(&stage.name),
        })
    }

    /// Decide, touching nothing but the output dir (restored from the store
    /// unless planning): is the stored result good, or why must the stage run?
    pub fn plan(&self, job: &Job, mode: Mode) -> Result<Freshness, ExecError> {
        if mode == Mode::Force {
            return Ok(Freshness::Dirty(DirtyReason::Forced));
        }
        if !job.stage.cache {
            return Ok(Freshness::Dirty(DirtyReason::NotCached));
        }
        let Some((run, source)) = self.lookup(&job.key, mode)? else {
            return Ok(Freshness::Dirty(self.explain(job)));
        };
        let run = Box::new(run);
        if mode == Mode::Plan {
            return Ok(Freshness::Fresh { run, source });
        }
        // Damage is a miss: the rerun's commit repairs the store.
        let damage = match self.restore(&run, &job.out_dir) {
            Ok(()) => None,
            Err(CacheError::Corrupt { digest, .. }) => {
                Some(format!("object {} failed its hash check", digest.short()))
            }
            Err(CacheError::Missing { digest }) => {
                Some(format!("object {} is missing", digest.short()))
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(detail) = damage {
            return Ok(Freshness::Dirty(DirtyReason::OutputCorrupt { detail }));
        }
        Ok(match self.verify(job, &run)? {
            None => Freshness::Fresh { run, source },
            Some(detail) => Freshness::Dirty(DirtyReason::Drift { detail }),
        })
    }

    /// The stored result for `key`: from the store, else from the remote
    /// cache (only looked up when planning, downloaded into the store otherwise).
    fn lookup(&self, key: &Key, mode: Mode) -> Result<Option<(RunRecord, CacheSource)>, ExecError> {
        if let Some(run) = self.store.map(|s| s.get(key)).transpose()?.flatten() {
            return Ok(Some((run, CacheSource::Local)));
        }
        let remote = self.remote.and_then(|remote| match (mode, self.store) {
            (Mode::Plan, _) => remote.lookup(key),
            (_, Some(store)) => remote.fetch(key, store),
            (_, None) => None,
        });
        Ok(remote.map(|run| (run, CacheSource::Remote)))
    }

    /// For an effect: whether the world still matches the restored receipt.
    fn verify(&self, job: &Job, run: &RunRecord) -> Result<Option<String>, ExecError> {
        if !job.stage.prepared.is_effect() {
            return Ok(None);
        }
        let recorded = Recorded::default();
        let ctx = self.context(job, &job.out_dir, &run.pins, &recorded);
        job.stage
            .prepared
            .verify(&ctx)
            .map_err(|e| ExecError::Kind(KindError(e)))
    }

    /// Run a dirty stage in a staging dir and commit its output: blobs into
    /// the store, then the run record, then the output dir.
    fn run(&self, job: &Job, mode: Mode, reason: &DirtyReason) -> Result<RunRecord, ExecError> {
        let store = self.store.ok_or(ExecError::NoStore)?;
        self.reporter.event(Event::Started {
            stage: &job.stage.name,
            reason,
        });
        let staging = store.staging_dir()?;
        let out = staging.path().join("out");
        create_dir(&out)?;
        if let Some(dir) = job.log.parent() {
            create_dir(dir)?;
        }
        std::fs::write(&job.log, b"").map_err(|source| ExecError::Create {
            path: job.log.clone(),
            source,
        })?;
        let started = Instant::now();
        // A forced stage starts from nothing: it must not be held to old pins.
        let locked_pins = match (mode, self.old_lock.stages.get(&job.stage.name)) {
            (Mode::Force, _) | (_, None) => BTreeMap::new(),
            (_, Some(entry)) => entry.pins.clone(),
        };
        let recorded = Recorded::default();
        let ctx = self.context(job, &out, &locked_pins, &recorded);
        // The one place a stage's work happens (here or on a cluster).
        let submission = crate::cluster::Submission {
            default: self.executor,
            io: self.cluster_io,
            staging: staging.path(),
            store,
            remote: self.remote,
            key: job.key,
            record: &job.record,
            upstream: job.upstream,
        };
        let ran = crate::cluster::run(&ctx, &submission);
        // Whatever an interrupted stage produced is dropped with its staging dir.
        if self.interrupt.is_set() {
            return Err(ExecError::Interrupted);
        }
        ran.map_err(|e| ExecError::Run(KindError(e)))?;
        let pins = recorded
            .pins
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let stats = recorded
            .stats
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        let seconds = started.elapsed().as_secs_f64();
        let run = store.commit(job.key, job.record.clone(), &out, seconds, pins, stats)?;
        store.materialize(&run, &job.out_dir)?;
        if let Some(remote) = self.remote.filter(|r| r.writes()) {
            remote.push(&run, store);
        }
        Ok(run)
    }

    fn context<'b>(
        &'b self,
        job: &'b Job,
        out: &'b std::path::Path,
        locked_pins: &'b BTreeMap<String, String>,
        recorded: &'b Recorded,
    ) -> StageContext<'b> {
        StageContext {
            pipeline: self.pipeline,
            stage: job.stage,
            workspace: &self.pipeline.root,
            out,
            inputs: job.inputs.paths.clone(),
            log: &job.log,
            cancel: self.interrupt.flag(),
            interrupt: self.interrupt,
            reporter: self.reporter,
            locked_pins,
            new_pins: &recorded.pins,
            new_stats: &recorded.stats,
            fingerprints: &job.record.fingerprints,
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

    /// Why a stage whose key is not in the store must run.
    fn explain(&self, job: &Job) -> DirtyReason {
        let Some(entry) = self.old_lock.stages.get(&job.stage.name) else {
            return DirtyReason::NeverRun;
        };
        let old = self.store.and_then(|s| s.get(&entry.key).ok().flatten());
        match old {
            Some(old) => job
                .record
                .compare(&old.record)
                .unwrap_or(DirtyReason::NeverRun),
            None => DirtyReason::NeverRun,
        }
    }
}

fn create_dir(path: &std::path::Path) -> Result<(), ExecError> {
    std::fs::create_dir_all(path).map_err(|source| ExecError::Create {
        path: path.to_path_buf(),
        source,
    })
}

fn log_tail(path: &std::path::Path, lines: usize) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}
