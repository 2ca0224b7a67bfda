//! Running a stage's work away from `pipe`: as a job of a cluster (Slurm,
//! [`slurm`]). The executor calls [`run`] where it would call
//! [`StageKind::run`]; everything else (keys, cache, staging, commit, lock)
//! stays where it is, so the executor is not part of a stage's key.
//!
//! ```text
//! pipe run (submits)                              the job (same binary, shared filesystem)
//!   STAGING/job.json ──▶ Backend::run ──────────▶ pipe __exec-stage STAGING/job.json
//!   STAGING/heartbeat, bumped every second  ───▶  watchdog: unchanged too long → stop
//!   reporter ◀── STAGING/events (progress lines)  StageKind::run into STAGING/out
//!   STAGING/result.json (pins, stats, error) ◀──  written last, atomically
//!   commit STAGING/out with the store's usual protocol
//! ```
//!
//! The failure stories: a job that fails, times out or is cancelled fails the
//! stage with the cluster's state, reason and exit code; Ctrl-C cancels the
//! job and waits until the cluster says it ended; a `pipe` that is killed
//! stops bumping the heartbeat, and the job's watchdog stops the job (a job
//! still pending starts, finds the heartbeat stale or its staging dir cleaned
//! by the next run, and ends at once).
//!
//! Another cluster (Kubernetes, a cloud batch service) is another [`Backend`]:
//! it starts [`Job::command`] with the workspace on a shared filesystem, waits,
//! and cancels on interrupt.

pub mod resources;
pub mod slurm;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use resources::{ExecutorKind, Resources};

use crate::event::{Event, Reporter};
use crate::interrupt::Interrupt;
use crate::pipeline::{Pipeline, Stage};
use crate::stage::{StageContext, StageError};

/// The hidden subcommand of `pipe` that runs one stage inside a job.
pub const EXEC_COMMAND: &str = "__exec-stage";

/// How long a job goes on without its `pipe`'s heartbeat (seconds).
pub const ORPHAN_TIMEOUT_VAR: &str = "PIPE_ORPHAN_TIMEOUT";
const ORPHAN_TIMEOUT: f64 = 30.0;

const SPEC: &str = "job.json";
const HEARTBEAT: &str = "heartbeat";
const EVENTS: &str = "events";
const RESULT: &str = "result.json";

/// A cluster that runs jobs.
pub trait Backend: Sync {
    /// Run `job` to its end: report its state through `ctx.reporter`, cancel
    /// it when `ctx.interrupt` is set, and fail with the cluster's words.
    fn run(&self, ctx: &StageContext, job: &Job) -> Result<(), StageError>;
}

/// What a backend starts.
pub struct Job<'a> {
    /// `pipe __exec-stage STAGING/job.json`.
    pub command: Vec<OsString>,
    /// The staging dir (on the shared filesystem).
    pub dir: &'a Path,
    pub resources: &'a Resources,
    /// Site options passed through as they are (`slurm:`).
    pub options: &'a [String],
}

/// Where `stage` runs, given the run's default.
pub fn executor_of(stage: &Stage, default: ExecutorKind) -> ExecutorKind {
    let prepared = &stage.prepared;
    match stage.executor {
        Some(e) => e,
        None if prepared.local_only() || prepared.is_effect() => ExecutorKind::Local,
        None => default,
    }
}

/// Run a stage's work where it is meant to run; `staging` holds `ctx.out`.
pub fn run(ctx: &StageContext, default: ExecutorKind, staging: &Path) -> Result<(), StageError> {
    match executor_of(ctx.stage, default) {
        ExecutorKind::Local => ctx.stage.prepared.run(ctx),
        ExecutorKind::Slurm => submit(&slurm::Slurm, ctx, staging),
    }
}

/// What the job needs to run the stage, written by the submitting `pipe`.
#[derive(Serialize, Deserialize)]
pub struct JobSpec {
    /// The manifest (absolute) and the params to set, so that the job loads
    /// the same pipeline.
    pub manifest: PathBuf,
    pub sets: Vec<(String, String)>,
    pub stage: String,
    /// The stage as the submitter saw it: the job refuses a manifest that
    /// changed since.
    pub with: Value,
    pub env: BTreeMap<String, String>,
    pub out: PathBuf,
    pub log: PathBuf,
    pub inputs: BTreeMap<String, PathBuf>,
    pub locked_pins: BTreeMap<String, String>,
    /// The key's fingerprints of the submitting machine: the job runs the
    /// stage as they say ([`StageContext::fingerprints`]).
    pub fingerprints: BTreeMap<String, String>,
    pub orphan_timeout_s: f64,
}

/// What the job leaves for the submitter.
#[derive(Serialize, Deserialize, Default)]
pub struct JobResult {
    pub error: Option<String>,
    pub pins: BTreeMap<String, String>,
    pub stats: BTreeMap<String, f64>,
}

fn io_err(op: &str, path: &Path, e: impl std::fmt::Display) -> StageError {
    format!("cannot {op} {}: {e}", path.display()).into()
}

/// Submit the stage to `backend` and wait for it; its pins and stats land in
/// `ctx` as if it had run here.
pub fn submit(backend: &dyn Backend, ctx: &StageContext, staging: &Path) -> Result<(), StageError> {
    let p = ctx.pipeline;
    let manifest = std::path::absolute(&p.file).map_err(|e| io_err("resolve", &p.file, e))?;
    // Params the manifest does not hold as they are: `--set` values are
    // scalars, and a scalar's JSON reads back as the same YAML value.
    let sets = p
        .params
        .iter()
        .filter(|(_, v)| !v.is_array() && !v.is_object())
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    let orphan_timeout_s = std::env::var(ORPHAN_TIMEOUT_VAR)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t > 0.0)
        .unwrap_or(ORPHAN_TIMEOUT);
    let spec = JobSpec {
        manifest,
        sets,
        stage: ctx.stage.name.clone(),
        with: ctx.stage.with.clone(),
        env: ctx.stage.env.clone(),
        out: ctx.out.to_path_buf(),
        log: ctx.log.to_path_buf(),
        inputs: ctx.inputs.clone(),
        locked_pins: ctx.locked_pins.clone(),
        fingerprints: ctx.fingerprints.clone(),
        orphan_timeout_s,
    };
    let spec_path = staging.join(SPEC);
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)
        .map_err(|e| io_err("write", &spec_path, e))?;
    let heartbeat = staging.join(HEARTBEAT);
    std::fs::write(&heartbeat, b"0").map_err(|e| io_err("write", &heartbeat, e))?;
    let events = staging.join(EVENTS);
    std::fs::write(&events, b"").map_err(|e| io_err("write", &events, e))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the pipe binary: {e}"))?;
    let job = Job {
        command: vec![exe.into(), EXEC_COMMAND.into(), spec_path.into()],
        dir: staging,
        resources: &ctx.stage.resources,
        options: &ctx.stage.slurm,
    };

    let (stop, stopped) = mpsc::channel::<()>();
    let ran = std::thread::scope(|scope| {
        let (heartbeat, events) = (&heartbeat, &events);
        scope.spawn(move || companion(ctx, heartbeat, events, &stopped));
        let ran = backend.run(ctx, &job);
        let _ = stop.send(());
        ran
    });
    let result: Option<JobResult> = std::fs::read(staging.join(RESULT))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match (ran, result) {
        (
            Err(e),
            Some(JobResult {
                error: Some(why), ..
            }),
        ) => Err(format!("{e}: {why}").into()),
        (Err(e), _) => Err(e),
        (Ok(()), None) => Err("the job ended without leaving its result".into()),
        (
            Ok(()),
            Some(JobResult {
                error: Some(why), ..
            }),
        ) => Err(why.into()),
        (Ok(()), Some(r)) => {
            for (name, value) in &r.pins {
                ctx.pin(name, value);
            }
            for (name, value) in r.stats {
                ctx.stat(&name, value);
            }
            Ok(())
        }
    }
}

/// While the job runs: bump the heartbeat, and pass the job's progress
/// lines on to the reporter.
fn companion(ctx: &StageContext, heartbeat: &Path, events: &Path, stop: &mpsc::Receiver<()>) {
    use std::io::{Read, Seek, SeekFrom};
    let mut beat = 0u64;
    // Bytes of `events` already passed on: whole lines only.
    let mut offset = 0u64;
    let mut forward = || {
        let mut text = Vec::new();
        let read = std::fs::File::open(events).and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            f.read_to_end(&mut text)
        });
        if read.is_err() {
            return;
        }
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        offset += whole as u64;
        for line in text[..whole].split(|&b| b == b'\n') {
            if let Ok(message) = serde_json::from_slice::<String>(line) {
                ctx.progress(&message);
            }
        }
    };
    loop {
        beat += 1;
        let _ = std::fs::write(heartbeat, beat.to_string());
        forward();
        match stop.recv_timeout(Duration::from_secs(1)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    forward();
}

/// A job's progress lines, for the submitting `pipe` (see [`companion`]).
struct EventsFile(Mutex<std::fs::File>);

impl Reporter for EventsFile {
    fn event(&self, event: Event<'_>) {
        if let Event::Progress { message, .. } = event {
            let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(f, "{}", Value::from(message));
        }
    }
}

/// The job's side (`pipe __exec-stage SPEC`): run the stage the spec names
/// into its staging dir and leave the result beside it. `rank` is the task's
/// rank (`SLURM_PROCID`): rank 0 writes the output and the result, other
/// ranks work in a scratch dir of their own.
pub fn exec(
    spec_path: &Path,
    load: impl FnOnce(&JobSpec) -> Result<Pipeline, StageError>,
    interrupt: &Interrupt,
    rank: u32,
) -> Result<(), StageError> {
    let bytes = std::fs::read(spec_path).map_err(|e| io_err("read", spec_path, e))?;
    let spec: JobSpec =
        serde_json::from_slice(&bytes).map_err(|e| io_err("parse", spec_path, e))?;
    let dir = spec_path.parent().unwrap_or(Path::new("."));
    let ran = exec_spec(&spec, dir, load, interrupt, rank);
    if rank != 0 {
        return ran.map(|_| ());
    }
    let result = match &ran {
        Ok((pins, stats)) => JobResult {
            error: None,
            pins: pins.clone(),
            stats: stats.clone(),
        },
        Err(e) => JobResult {
            error: Some(crate::executor::error_chain(e.as_ref())),
            ..JobResult::default()
        },
    };
    let path = dir.join(RESULT);
    crate::cache::write_atomic(&path, &serde_json::to_vec(&result)?)?;
    ran.map(|_| ())
}

type PinsStats = (BTreeMap<String, String>, BTreeMap<String, f64>);

fn exec_spec(
    spec: &JobSpec,
    dir: &Path,
    load: impl FnOnce(&JobSpec) -> Result<Pipeline, StageError>,
    interrupt: &Interrupt,
    rank: u32,
) -> Result<PinsStats, StageError> {
    let p = load(spec)?;
    let stage = p
        .stage(&spec.stage)
        .ok_or_else(|| format!("{}: no stage `{}`", spec.manifest.display(), spec.stage))?;
    if stage.with != spec.with || stage.env != spec.env {
        return Err(format!(
            "{}: stage `{}` changed since the job was submitted",
            spec.manifest.display(),
            spec.stage
        )
        .into());
    }
    let out = if rank == 0 {
        spec.out.clone()
    } else {
        let scratch = dir.join(format!("rank-{rank}"));
        std::fs::create_dir_all(&scratch).map_err(|e| io_err("create", &scratch, e))?;
        scratch
    };
    let events_path = dir.join(EVENTS);
    let events = std::fs::File::options()
        .append(true)
        .open(&events_path)
        .map_err(|e| io_err("open", &events_path, e))?;
    let reporter = EventsFile(Mutex::new(events));
    let pins = Mutex::new(BTreeMap::new());
    let stats = Mutex::new(BTreeMap::new());
    let ctx = StageContext {
        pipeline: &p,
        stage,
        workspace: &p.root,
        out: &out,
        inputs: spec.inputs.clone(),
        log: &spec.log,
        cancel: interrupt.flag(),
        interrupt,
        reporter: &reporter,
        locked_pins: &spec.locked_pins,
        new_pins: &pins,
        new_stats: &stats,
        fingerprints: &spec.fingerprints,
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let orphaned = std::thread::scope(|scope| {
        let heartbeat = dir.join(HEARTBEAT);
        let watchdog = scope.spawn(move || {
            watchdog(
                &heartbeat,
                Duration::from_secs_f64(spec.orphan_timeout_s),
                interrupt,
                &stopped,
            )
        });
        let ran = stage.prepared.run(&ctx);
        let _ = stop.send(());
        (ran, watchdog.join().unwrap_or(false))
    });
    match orphaned {
        (_, true) => Err("the pipe that submitted this job is gone: stopped".into()),
        (Err(e), false) => Err(e),
        (Ok(()), false) if interrupt.is_set() => Err("interrupted".into()),
        (Ok(()), false) => Ok((
            pins.into_inner().unwrap_or_else(|e| e.into_inner()),
            stats.into_inner().unwrap_or_else(|e| e.into_inner()),
        )),
    }
}

/// Stop the stage when the heartbeat stays the same for `timeout`: the
/// submitting `pipe` is gone. Returns whether it did.
fn watchdog(
    heartbeat: &Path,
    timeout: Duration,
    interrupt: &Interrupt,
    stop: &mpsc::Receiver<()>,
) -> bool {
    // A heartbeat that is gone: the staging dir was cleaned (the next run
    // of a killed `pipe`), or the submitter gave the stage up.
    let mut last = None;
    let mut since = Instant::now();
    loop {
        let Ok(now) = std::fs::read(heartbeat) else {
            interrupt.interrupt(Duration::from_secs(3));
            return true;
        };
        if last.as_ref() != Some(&now) {
            last = Some(now);
            since = Instant::now();
        }
        if since.elapsed() >= timeout {
            interrupt.interrupt(Duration::from_secs(3));
            return true;
        }
        match stop.recv_timeout(Duration::from_millis(500)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{Registry, StageKind};

    /// Writes the fingerprints it runs with into its output.
    #[derive(serde::Deserialize)]
    struct Prints {}

    impl StageKind for Prints {
        const NAME: &'static str = "prints";
        const VERSION: u32 = 1;
        fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
            let text = serde_json::to_string(ctx.fingerprints)?;
            Ok(std::fs::write(ctx.out.join("prints.json"), text)?)
        }
    }

    /// The job runs the stage with the fingerprints the submitter keyed it
    /// with (a torch stage takes its device, threads and precision from
    /// them), not with what the node would resolve.
    #[test]
    fn a_job_runs_with_the_submitters_fingerprints() {
        let ws = tempfile::tempdir().unwrap();
        let file = ws.path().join("pipe.yaml");
        std::fs::write(
            &file,
            "version: 1\nname: p\nstages:\n  s:\n    kind: prints\n",
        )
        .unwrap();
        let mut registry = Registry::new();
        registry.register::<Prints>();
        let p = crate::load(&file, &[], &registry).unwrap();
        let staging = ws.path().join("staging");
        let out = staging.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let keyed = BTreeMap::from([("device".to_string(), "cuda".to_string())]);
        let spec = JobSpec {
            manifest: file.clone(),
            sets: Vec::new(),
            stage: "s".into(),
            with: p.stage("s").unwrap().with.clone(),
            env: BTreeMap::new(),
            out: out.clone(),
            log: ws.path().join("s.log"),
            inputs: BTreeMap::new(),
            locked_pins: BTreeMap::new(),
            fingerprints: keyed.clone(),
            orphan_timeout_s: 30.0,
        };
        let spec_path = staging.join(SPEC);
        std::fs::write(&spec_path, serde_json::to_vec(&spec).unwrap()).unwrap();
        std::fs::write(staging.join(HEARTBEAT), b"1").unwrap();
        std::fs::write(staging.join(EVENTS), b"").unwrap();
        exec(&spec_path, |_| Ok(p), &Interrupt::default(), 0).unwrap();
        let got: BTreeMap<String, String> =
            serde_json::from_slice(&std::fs::read(out.join("prints.json")).unwrap()).unwrap();
        assert_eq!(got, keyed);
        let result: JobResult =
            serde_json::from_slice(&std::fs::read(staging.join(RESULT)).unwrap()).unwrap();
        assert_eq!(result.error, None);
    }
}
