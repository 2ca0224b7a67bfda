//! `run`: walk the DAG, start ready stages on up to `jobs` threads, hold GPU
//! tokens, stop the dependents of a failure and let other branches finish.
//!
//! Downstream keys are computed from the *actual* output hashes of finished
//! upstream stages, when a stage becomes ready: a rerun that produces identical
//! bytes leaves everything below it cached (early cutoff).

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc};

use pipe_cache::{RunRecord, Store, WorkspaceLock};

use crate::event::{Event, Reporter, StageResult, Status};
use crate::executor::{Executor, Mode};
use crate::interrupt::Interrupt;
use crate::lockfile::{LockEntry, LockFile};
use crate::pipeline::Pipeline;
use crate::remote::RemoteCache;
use crate::stage::Registry;

#[derive(Clone, Debug, Default)]
pub enum Force {
    #[default]
    None,
    All,
    Stages(BTreeSet<String>),
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub force: Force,
    /// Run only this stage; its upstream must be cached.
    pub only: Option<String>,
    /// Run this stage and what it depends on.
    pub until: Option<String>,
    /// Report what would run; change nothing.
    pub dry_run: bool,
    pub jobs: usize,
    /// GPUs on this machine.
    pub gpus: u32,
    /// Set by Ctrl-C / SIGTERM (see [`Interrupt::interrupt`]).
    pub interrupt: Arc<Interrupt>,
    /// Where stages without an `executor:` run (effects always run here).
    pub executor: crate::cluster::ExecutorKind,
    /// How cluster jobs reach their inputs and hand back their outputs.
    pub cluster_io: crate::cluster::ClusterIo,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            force: Force::None,
            only: None,
            until: None,
            dry_run: false,
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            gpus: 0,
            interrupt: Arc::default(),
            executor: Default::default(),
            cluster_io: Default::default(),
        }
    }
}

/// The GPUs of this machine a stage holds while it runs: none when it runs
/// on a cluster, whose scheduler hands out that node's GPUs.
fn local_gpus(stage: &crate::pipeline::Stage, default: crate::cluster::ExecutorKind) -> u32 {
    match crate::cluster::executor_of(stage, default) {
        crate::cluster::ExecutorKind::Local => stage.gpus,
        crate::cluster::ExecutorKind::Slurm => 0,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no stage named `{0}` in this manifest")]
    UnknownStage(String),
    #[error(transparent)]
    Cache(#[from] pipe_cache::Error),
    #[error(transparent)]
    Lock(#[from] crate::lockfile::LockError),
}

/// Results in manifest order.
#[derive(Debug)]
pub struct RunSummary {
    pub results: Vec<StageResult>,
    /// The run was stopped by Ctrl-C / SIGTERM.
    pub interrupted: bool,
}

impl RunSummary {
    pub fn failed(&self) -> bool {
        self.results
            .iter()
            .any(|r| matches!(r.status, Status::Failed | Status::Skipped))
    }
}

enum State {
    Pending,
    Running,
    Done(Box<StageResult>, Option<Box<RunRecord>>),
}

/// Which stages take part, and how.
fn selection(p: &Pipeline, opts: &RunOptions) -> Result<Vec<Option<Mode>>, EngineError> {
    let index = |name: &str| {
        p.index(name)
            .ok_or_else(|| EngineError::UnknownStage(name.to_string()))
    };
    let forced = |i: usize| match &opts.force {
        Force::None => false,
        Force::All => true,
        Force::Stages(s) => s.contains(&p.stages[i].name),
    };
    if let Force::Stages(names) = &opts.force {
        for n in names {
            index(n)?;
        }
    }
    let base = |i: usize| {
        if opts.dry_run {
            Mode::Plan
        } else if forced(i) {
            Mode::Force
        } else {
            Mode::Run
        }
    };
    let mut modes: Vec<Option<Mode>> = (0..p.stages.len()).map(|i| Some(base(i))).collect();
    if let Some(until) = &opts.until {
        let keep = p.dag.ancestors(index(until)?);
        for (i, m) in modes.iter_mut().enumerate() {
            if !keep.contains(&i) {
                *m = None;
            }
        }
    }
    if let Some(only) = &opts.only {
        let i = index(only)?;
        let ancestors = p.dag.ancestors(i);
        for (j, m) in modes.iter_mut().enumerate() {
            *m = if j == i {
                *m
            } else if ancestors.contains(&j) {
                Some(if opts.dry_run {
                    Mode::Plan
                } else {
                    Mode::CacheOnly
                })
            } else {
                None
            };
        }
    }
    Ok(modes)
}

/// Run (or, with `dry_run`, plan) a pipeline.
pub fn run(
    p: &Pipeline,
    registry: &Registry,
    opts: &RunOptions,
    reporter: &dyn Reporter,
) -> Result<RunSummary, EngineError> {
    run_with_remote(p, registry, opts, reporter, None)
}

/// [`run`], looking up stages missing from the store in a remote cache.
pub fn run_with_remote(
    p: &Pipeline,
    registry: &Registry,
    opts: &RunOptions,
    reporter: &dyn Reporter,
    remote: Option<&dyn RemoteCache>,
) -> Result<RunSummary, EngineError> {
    let modes = selection(p, opts)?;
    let old_lock = LockFile::load(p)?;
    let pipe_dir = p.pipe_dir();

    // Planning touches nothing: no lock, no store created.
    let (_lock, store) = if opts.dry_run {
        let store = if pipe_dir.join(pipe_cache::store::LAYOUT).is_dir() {
            Some(Store::open(&pipe_dir)?)
        } else {
            None
        };
        (None, store)
    } else {
        std::fs::create_dir_all(&pipe_dir).map_err(|source| pipe_cache::Error::Io {
            op: "create directory",
            path: pipe_dir.clone(),
            source,
        })?;
        let lock = WorkspaceLock::acquire(&pipe_dir.join("lock"), |pid| {
            reporter.event(Event::WaitingForLock { pid })
        })?;
        let store = Store::open(&pipe_dir)?;
        opts.interrupt.begin(&pipe_dir)?;
        store.clean_tmp()?;
        (Some(lock), Some(store))
    };

    let interrupt = &*opts.interrupt;
    let exec = Executor {
        pipeline: p,
        registry,
        store: store.as_ref(),
        remote,
        old_lock: &old_lock,
        reporter,
        interrupt,
        executor: opts.executor,
        cluster_io: opts.cluster_io,
    };
    let n = p.stages.len();
    let mut states: Vec<State> = (0..n).map(|_| State::Pending).collect();
    let topo = p.dag.topo();
    let jobs = opts.jobs.max(1);

    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(usize, StageResult, Option<RunRecord>)>();
        let mut running = 0usize;
        let mut gpus_in_use = 0u32;
        loop {
            for &i in &topo {
                let Some(mode) = modes[i] else { continue };
                if !matches!(states[i], State::Pending) {
                    continue;
                }
                let deps: Vec<usize> = p
                    .dag
                    .deps(i)
                    .into_iter()
                    .filter(|&d| modes[d].is_some())
                    .collect();
                let mut upstream = HashMap::new();
                let mut blocked = None;
                let mut waiting = false;
                for &d in &deps {
                    match &states[d] {
                        State::Done(r, Some(run))
                            if matches!(r.status, Status::Ran | Status::Cached) =>
                        {
                            upstream.insert(p.stages[d].name.clone(), (**run).clone());
                        }
                        State::Done(r, _) if r.status == Status::Pending => {
                            blocked = Some((Status::Pending, r.name.clone()));
                        }
                        State::Done(r, _) => {
                            blocked.get_or_insert((Status::Skipped, r.name.clone()));
                        }
                        _ => waiting = true,
                    }
                }
                if waiting {
                    continue;
                }
                if interrupt.is_set() {
                    let mut r = StageResult::new(&p.stages[i].name, Status::Skipped);
                    r.error = Some("interrupted".into());
                    reporter.event(Event::Finished(&r));
                    states[i] = State::Done(Box::new(r), None);
                    continue;
                }
                if let Some((status, up)) = blocked {
                    let mut r = StageResult::new(&p.stages[i].name, status);
                    if status == Status::Pending {
                        r.reason = Some(pipe_cache::DirtyReason::UpstreamWillRun { stage: up });
                    } else {
                        r.error = Some(format!("upstream stage `{up}` did not complete"));
                        reporter.event(Event::Finished(&r));
                    }
                    states[i] = State::Done(Box::new(r), None);
                    continue;
                }
                let need = local_gpus(&p.stages[i], opts.executor);
                let gpu_ok = need == 0 || gpus_in_use == 0 || gpus_in_use + need <= opts.gpus;
                if running >= jobs || !gpu_ok {
                    continue;
                }
                running += 1;
                gpus_in_use += need;
                states[i] = State::Running;
                let tx = tx.clone();
                let exec = &exec;
                let stage = &p.stages[i];
                scope.spawn(move || {
                    // A panic fails this stage only; the run goes on and ends.
                    let (r, run) = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        exec.execute(stage, mode, &upstream)
                    }))
                    .unwrap_or_else(|panic| {
                        let mut r = StageResult::new(&stage.name, Status::Failed);
                        r.error = Some(format!("stage panicked: {}", panic_message(&*panic)));
                        (r, None)
                    });
                    let _ = tx.send((i, r, run));
                });
            }
            if running == 0 {
                break;
            }
            let Ok((i, r, run)) = rx.recv() else { break };
            running -= 1;
            gpus_in_use -= local_gpus(&p.stages[i], opts.executor);
            if r.status != Status::Pending {
                reporter.event(Event::Finished(&r));
            }
            states[i] = State::Done(Box::new(r), run.map(Box::new));
        }
    });

    let mut results = Vec::new();
    let mut lock = old_lock.clone();
    for (i, state) in states.into_iter().enumerate() {
        if let State::Done(r, run) = state {
            if let (Some(run), true) = (&run, matches!(r.status, Status::Ran | Status::Cached)) {
                lock.stages.insert(
                    p.stages[i].name.clone(),
                    LockEntry {
                        kind: run.record.kind.clone(),
                        key: run.key,
                        params: run.record.params.clone(),
                        inputs: run.record.inputs.clone(),
                        output: run.output_hash,
                        pins: run.pins.clone(),
                    },
                );
            }
            results.push(*r);
        }
    }
    if let (Some(store), false) = (&store, opts.dry_run) {
        lock.stages.retain(|name, _| p.stage(name).is_some());
        lock.save(p)?;
        store.save()?;
        interrupt.end(&pipe_dir);
    }
    Ok(RunSummary {
        results,
        interrupted: interrupt.is_set(),
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{StageContext, StageError, StageKind};

    /// A kind whose `run` panics, standing in for any bug in a stage.
    #[derive(serde::Deserialize)]
    struct Panics {}

    impl StageKind for Panics {
        const NAME: &'static str = "panics";
        const VERSION: u32 = 1;
        fn run(&self, _: &StageContext) -> Result<(), StageError> {
            panic!("boom in the stage")
        }
    }

    #[derive(serde::Deserialize)]
    struct Writes {}

    impl StageKind for Writes {
        const NAME: &'static str = "writes";
        const VERSION: u32 = 1;
        fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
            Ok(std::fs::write(ctx.out.join("ok"), "ok")?)
        }
    }

    /// A workspace holding `manifest`, loaded with the kinds above.
    fn workspace(manifest: &str) -> (tempfile::TempDir, Pipeline, Registry) {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir(ws.path().join(".pipe")).unwrap();
        let file = ws.path().join("pipe.yaml");
        std::fs::write(&file, manifest).unwrap();
        let mut registry = Registry::new();
        registry.register::<Panics>();
        registry.register::<Writes>();
        let p = crate::load(&file, &[], &registry).unwrap();
        (ws, p, registry)
    }

    /// GPU tokens are this machine's: a stage sent to Slurm holds none here.
    #[test]
    fn only_stages_run_here_hold_this_machines_gpus() {
        let (_ws, p, _) = workspace(
            "version: 1\nname: p\nstages:\n  here:\n    kind: writes\n    resources: {gpu: 1}\n    executor: local\n  there:\n    kind: writes\n    resources: {gpu: 1}\n    executor: slurm\n  either:\n    kind: writes\n    resources: {gpu: 2}\n",
        );
        let gpus = |name: &str, default| {
            let stage = p.stages.iter().find(|s| s.name == name).unwrap();
            local_gpus(stage, default)
        };
        use crate::cluster::ExecutorKind::{Local, Slurm};
        assert_eq!(
            [
                gpus("here", Slurm),
                gpus("there", Local),
                gpus("either", Local),
                gpus("either", Slurm)
            ],
            [1, 0, 2, 0]
        );
    }

    #[test]
    fn a_panicking_stage_fails_alone_and_the_run_ends() {
        let (ws, p, registry) = workspace(
            "version: 1\nname: p\nstages:\n  bad:\n    kind: panics\n  after:\n    kind: writes\n    inputs: {x: 'bad:'}\n  other:\n    kind: writes\n",
        );
        let summary = run(&p, &registry, &RunOptions::default(), &crate::event::Silent).unwrap();
        let status: Vec<_> = summary
            .results
            .iter()
            .map(|r| (r.name.as_str(), r.status, r.error.as_deref()))
            .collect();
        assert_eq!(
            status,
            [
                (
                    "bad",
                    Status::Failed,
                    Some("stage panicked: boom in the stage")
                ),
                (
                    "after",
                    Status::Skipped,
                    Some("upstream stage `bad` did not complete")
                ),
                ("other", Status::Ran, None),
            ]
        );
        // The workspace lock was released: it can be taken again at once.
        let lock = pipe_cache::WorkspaceLock::acquire(&ws.path().join(".pipe/lock"), |_| {
            panic!("the lock is still held")
        });
        assert!(lock.is_ok());
    }
}
