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
//! With `--cluster-io remote` the node needs no shared filesystem: the same
//! files are objects of the remote cache under `jobs/ID/` ([`exchange`]),
//! the stage's inputs travel as results in the remote ([`carry`]: an
//! upstream stage's by its key, a workspace path as a result of its own),
//! the job runs in a scratch dir, streams its log back, and pushes its
//! output under the stage's key; the submitter fetches it into STAGING/out
//! and commits it as above.
//!
//! The failure stories: a job that fails, times out or is cancelled fails the
//! stage with the cluster's state, reason and exit code; Ctrl-C cancels the
//! job and waits until the cluster says it ended; a `pipe` that is killed
//! stops bumping the heartbeat, and the job's watchdog stops the job once the
//! heartbeat is older than the orphan timeout, or gone (a job still pending
//! starts and finds it so: the staging dir cleaned by the next run, or the
//! heartbeat stale). Without a shared filesystem a job whose `pipe` is gone
//! removes its files from the remote itself.
//!
//! Another cluster (Kubernetes, a cloud batch service) is another [`Backend`]:
//! it starts [`Job::command`], waits, and cancels on interrupt.

mod carry;
pub mod exchange;
pub mod resources;
pub mod slurm;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pipe_cache::{Key, KeyRecord, RunRecord, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use carry::RemoteInput;
pub use exchange::Exchange;
pub use resources::{ClusterIo, ExecutorKind, Resources};

use crate::event::{Event, Reporter};
use crate::interrupt::Interrupt;
use crate::pipeline::{Pipeline, Stage};
use crate::remote::RemoteCache;
use crate::stage::{StageContext, StageError};

/// The hidden subcommand of `pipe` that runs one stage inside a job.
pub const EXEC_COMMAND: &str = "__exec-stage";

/// How long a job goes on without its `pipe`'s heartbeat (seconds).
pub const ORPHAN_TIMEOUT_VAR: &str = "PIPE_ORPHAN_TIMEOUT";
const ORPHAN_TIMEOUT: f64 = 30.0;

/// The exchanged files (see [`exchange`]).
pub const SPEC: &str = "job.json";
const HEARTBEAT: &str = "heartbeat";
const EVENTS: &str = "events";
const LOG: &str = "log";
const RESULT: &str = "result.json";

/// A cluster that runs jobs.
pub trait Backend: Sync {
    /// Run `job` to its end: report its state through `ctx.reporter`, cancel
    /// it when `ctx.interrupt` is set, and fail with the cluster's words.
    fn run(&self, ctx: &StageContext, job: &Job) -> Result<(), StageError>;
}

/// What a backend starts.
pub struct Job<'a> {
    /// `pipe __exec-stage STAGING/job.json`, or with the remote in place of
    /// a shared filesystem `pipe __exec-stage --remote URL ID`.
    pub command: Vec<OsString>,
    /// The staging dir, for the backend's own files (a batch script).
    pub dir: &'a Path,
    /// Where the job runs and its output goes, when the node sees the
    /// workspace; `None`: a place of the node's own, output discarded (the
    /// job streams the stage log itself).
    pub workspace: Option<&'a Path>,
    pub log: Option<&'a Path>,
    pub resources: &'a Resources,
    /// Site options passed through as they are (`slurm:`).
    pub options: &'a [String],
}

/// Where stages run and how their jobs reach their data; with what the
/// executor knows of the stage.
pub struct Submission<'a> {
    /// Where stages without an `executor:` run.
    pub default: ExecutorKind,
    pub io: ClusterIo,
    /// The stage's staging dir (`ctx.out` is inside).
    pub staging: &'a Path,
    pub store: &'a Store,
    pub remote: Option<&'a dyn RemoteCache>,
    pub key: Key,
    pub record: &'a KeyRecord,
    /// The run records of the stage's finished dependencies.
    pub upstream: &'a HashMap<String, RunRecord>,
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

/// Run a stage's work where it is meant to run.
pub fn run(ctx: &StageContext, sub: &Submission) -> Result<(), StageError> {
    match executor_of(ctx.stage, sub.default) {
        ExecutorKind::Local => ctx.stage.prepared.run(ctx),
        ExecutorKind::Slurm => submit(&slurm::Slurm, ctx, sub),
    }
}

/// What the job needs to run the stage, written by the submitting `pipe`.
#[derive(Serialize, Deserialize)]
pub struct JobSpec {
    /// The manifest and the params to set, so that the job loads the same
    /// pipeline: its absolute path, or with [`JobData::Remote`] its path in
    /// the workspace (the text travels in the spec).
    pub manifest: PathBuf,
    pub sets: Vec<(String, String)>,
    pub stage: String,
    /// The stage as the submitter saw it: the job refuses a manifest that
    /// changed since.
    pub with: Value,
    pub env: BTreeMap<String, String>,
    pub locked_pins: BTreeMap<String, String>,
    /// The key's fingerprints of the submitting machine: the job runs the
    /// stage as they say ([`StageContext::fingerprints`]).
    pub fingerprints: BTreeMap<String, String>,
    pub orphan_timeout_s: f64,
    pub data: JobData,
}

/// Where the job finds its inputs and leaves its output.
#[derive(Serialize, Deserialize)]
#[serde(tag = "io", rename_all = "lowercase")]
pub enum JobData {
    /// In the workspace, on a filesystem the node shares.
    Shared {
        out: PathBuf,
        log: PathBuf,
        inputs: BTreeMap<String, PathBuf>,
    },
    /// In the remote cache: inputs by the key of the result that holds
    /// them, the output pushed under the stage's key.
    Remote {
        manifest_text: String,
        key: Key,
        record: KeyRecord,
        inputs: BTreeMap<String, RemoteInput>,
    },
}

/// What the job leaves for the submitter.
#[derive(Serialize, Deserialize, Default)]
pub struct JobResult {
    pub error: Option<String>,
    pub pins: BTreeMap<String, String>,
    pub stats: BTreeMap<String, f64>,
}

pub(crate) fn io_err(op: &str, path: &Path, e: impl std::fmt::Display) -> StageError {
    format!("cannot {op} {}: {e}", path.display()).into()
}

/// A name for a job's files in the remote: the key and a nonce.
fn job_id(key: &Key) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let nonce = pipe_cache::Digest::of(format!("{nanos} {}", std::process::id()).as_bytes());
    format!("{}-{}", key.to_hex(), &nonce.to_hex()[..16])
}

/// Removes the job's files from the remote when the submitter is done.
struct Cleared<'a>(&'a dyn Exchange);

impl Drop for Cleared<'_> {
    fn drop(&mut self) {
        let _ = self.0.clear();
    }
}

/// Submit the stage to `backend` and wait for it; its pins and stats land in
/// `ctx` as if it had run here.
pub fn submit(
    backend: &dyn Backend,
    ctx: &StageContext,
    sub: &Submission,
) -> Result<(), StageError> {
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
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the pipe binary: {e}"))?;
    let dir = exchange::Dir(sub.staging.to_path_buf());
    let (data, manifest, objects, command): (_, _, _, Vec<OsString>) = match sub.io {
        ClusterIo::Shared => (
            JobData::Shared {
                out: ctx.out.to_path_buf(),
                log: ctx.log.to_path_buf(),
                inputs: ctx.inputs.clone(),
            },
            manifest,
            None,
            vec![
                exe.into(),
                EXEC_COMMAND.into(),
                sub.staging.join(SPEC).into(),
            ],
        ),
        ClusterIo::Remote => {
            let remote = sub.remote.ok_or(
                "--cluster-io remote: no remote cache (pass --remote URL, set PIPE_REMOTE, or name one in pipe.config.yaml)",
            )?;
            let inputs = carry::send_inputs(ctx, sub, remote)?;
            let manifest_text =
                std::fs::read_to_string(&manifest).map_err(|e| io_err("read", &manifest, e))?;
            // Where the manifest is in the workspace: the job lays out one of
            // its own the same way.
            let root = std::path::absolute(&p.root).map_err(|e| io_err("resolve", &p.root, e))?;
            let name = manifest
                .strip_prefix(&root)
                .map_err(|_| {
                    format!(
                        "{} is not inside its workspace {}",
                        manifest.display(),
                        root.display()
                    )
                })?
                .to_path_buf();
            let id = job_id(&sub.key);
            let command = vec![
                exe.into(),
                EXEC_COMMAND.into(),
                "--remote".into(),
                remote.url().into(),
                id.clone().into(),
            ];
            let data = JobData::Remote {
                manifest_text,
                key: sub.key,
                record: sub.record.clone(),
                inputs,
            };
            (
                data,
                name,
                Some(exchange::Objects::new(remote, id)),
                command,
            )
        }
    };
    let exchange: &dyn Exchange = match &objects {
        Some(objects) => objects,
        None => &dir,
    };
    let _cleared = Cleared(exchange);
    let spec = JobSpec {
        manifest,
        sets,
        stage: ctx.stage.name.clone(),
        with: ctx.stage.with.clone(),
        env: ctx.stage.env.clone(),
        locked_pins: ctx.locked_pins.clone(),
        fingerprints: ctx.fingerprints.clone(),
        orphan_timeout_s,
        data,
    };
    exchange.put(SPEC, &serde_json::to_vec_pretty(&spec)?)?;
    exchange.put(HEARTBEAT, b"0")?;
    let shared = sub.io == ClusterIo::Shared;
    let job = Job {
        command,
        dir: sub.staging,
        workspace: shared.then_some(ctx.workspace),
        log: shared.then_some(ctx.log),
        resources: &ctx.stage.resources,
        options: &ctx.stage.slurm,
    };

    let (stop, stopped) = mpsc::channel::<()>();
    let ran = std::thread::scope(|scope| {
        scope.spawn(move || companion(ctx, exchange, !shared, &stopped));
        let ran = backend.run(ctx, &job);
        let _ = stop.send(());
        ran
    });
    let result: Option<JobResult> = exchange
        .get(RESULT)
        .ok()
        .flatten()
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
            if let (ClusterIo::Remote, Some(remote)) = (sub.io, sub.remote) {
                carry::receive_output(ctx, sub, remote)?;
            }
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

/// While the job runs: bump the heartbeat, pass the job's progress lines on
/// to the reporter, and (`log`) append the log it streams to the stage log.
fn companion(ctx: &StageContext, exchange: &dyn Exchange, log: bool, stop: &mpsc::Receiver<()>) {
    let mut beat = 0u64;
    let (mut events_at, mut log_at) = (0u64, 0u64);
    // A line cut at the end of what was read, kept for the next read.
    let mut partial = Vec::new();
    let mut log_file = None;
    let mut forward = || {
        if let Ok(text) = exchange.read_new(EVENTS, &mut events_at) {
            partial.extend_from_slice(&text);
            let whole = partial
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            for line in partial[..whole].split(|&b| b == b'\n') {
                if let Ok(message) = serde_json::from_slice::<String>(line) {
                    ctx.progress(&message);
                }
            }
            partial.drain(..whole);
        }
        if log {
            if let Ok(text) = exchange.read_new(LOG, &mut log_at) {
                if !text.is_empty() {
                    use std::io::Write;
                    let file = log_file.get_or_insert_with(|| {
                        std::fs::File::options().append(true).open(ctx.log).ok()
                    });
                    if let Some(f) = file {
                        let _ = f.write_all(&text);
                    }
                }
            }
        }
    };
    loop {
        beat += 1;
        let _ = exchange.put(HEARTBEAT, beat.to_string().as_bytes());
        forward();
        match stop.recv_timeout(Duration::from_secs(1)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    forward();
}

/// A job's progress lines, sent to the submitter by the watchdog's loop.
#[derive(Default)]
struct Events(Mutex<Vec<u8>>);

impl Reporter for Events {
    fn event(&self, event: Event<'_>) {
        if let Event::Progress { message, .. } = event {
            let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
            buf.extend_from_slice(Value::from(message).to_string().as_bytes());
            buf.push(b'\n');
        }
    }
}

impl Events {
    /// Send what was reported since the last call; kept for the next call
    /// when the exchange fails.
    fn flush(&self, exchange: &dyn Exchange) {
        let text = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if exchange.append(EVENTS, &text).is_err() {
            let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let newer = std::mem::replace(&mut *buf, text);
            buf.extend_from_slice(&newer);
        }
    }
}

/// How the watchdog saw the submitting `pipe` while the stage ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    /// Its heartbeat went on until the stage ended.
    Alive,
    /// The heartbeat is gone: the staging dir was cleaned (the next run of
    /// a killed `pipe`), or the submitter gave the stage up.
    Gone,
    /// The heartbeat stood still for the orphan timeout.
    Stale,
}

/// The job stopped because its `pipe` is gone.
#[derive(Debug)]
struct Orphaned;

impl std::fmt::Display for Orphaned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the pipe that submitted this job is gone: stopped")
    }
}

impl std::error::Error for Orphaned {}

/// An error with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Failed {
    what: String,
    #[source]
    source: StageError,
}

fn failed(what: impl Into<String>) -> impl FnOnce(StageError) -> StageError {
    let what = what.into();
    move |source| Box::new(Failed { what, source }) as StageError
}

/// The job's side (`pipe __exec-stage`): run the stage the spec in
/// `exchange` names and leave the result beside it. `remote` is the remote
/// cache of a job with [`JobData::Remote`]. `rank` is the task's rank
/// (`SLURM_PROCID`): rank 0 writes the output, the result and the progress
/// lines; other ranks work in a scratch dir of their own.
pub fn exec(
    exchange: &dyn Exchange,
    remote: Option<&dyn RemoteCache>,
    load: impl FnOnce(&Path, &[(String, String)]) -> Result<Pipeline, StageError>,
    interrupt: &Interrupt,
    rank: u32,
) -> Result<(), StageError> {
    let bytes = exchange
        .get(SPEC)?
        .ok_or("no job spec: the pipe that submitted this job cleaned it up")?;
    let spec: JobSpec = serde_json::from_slice(&bytes)
        .map_err(|e| failed("cannot parse the job spec")(e.into()))?;
    let timeout = Duration::try_from_secs_f64(spec.orphan_timeout_s)
        .unwrap_or(Duration::from_secs_f64(ORPHAN_TIMEOUT));
    let (ran, watch) = exec_spec(&spec, exchange, remote, load, interrupt, rank, timeout);
    if rank != 0 {
        return ran.map(|_| ());
    }
    if watch == Watch::Gone {
        // Nobody reads the result: the job's files go, as the submitter
        // would have removed them.
        let _ = exchange.clear();
        return ran.map(|_| ());
    }
    let result = match &ran {
        Ok((pins, stats)) => JobResult {
            error: None,
            pins: pins.clone(),
            stats: stats.clone(),
        },
        Err(e) => {
            let error = crate::executor::error_chain(e.as_ref());
            if matches!(spec.data, JobData::Remote { .. }) {
                // The job's own output goes nowhere the submitter can read:
                // the reason goes into the stage log too.
                let _ = exchange.append(LOG, format!("pipe __exec-stage: {error}\n").as_bytes());
            }
            JobResult {
                error: Some(error),
                ..JobResult::default()
            }
        }
    };
    let result = serde_json::to_vec(&result)?;
    exchange
        .put(RESULT, &result)
        .or_else(|_| exchange.put(RESULT, &result))?;
    if watch == Watch::Stale && !heartbeat_moves(exchange, timeout) {
        // The submitter is gone for good: nobody removes the files but us.
        let _ = exchange.clear();
    }
    ran.map(|_| ())
}

/// Whether the heartbeat changes within `timeout` (a submitter that was
/// only slow to bump it).
fn heartbeat_moves(exchange: &dyn Exchange, timeout: Duration) -> bool {
    let first = exchange.get(HEARTBEAT).ok().flatten();
    let since = Instant::now();
    while since.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(500));
        match exchange.get(HEARTBEAT) {
            Ok(None) => return false,
            Ok(now) if now != first => return true,
            _ => {}
        }
    }
    false
}

type PinsStats = (BTreeMap<String, String>, BTreeMap<String, f64>);

fn exec_spec(
    spec: &JobSpec,
    exchange: &dyn Exchange,
    remote: Option<&dyn RemoteCache>,
    load: impl FnOnce(&Path, &[(String, String)]) -> Result<Pipeline, StageError>,
    interrupt: &Interrupt,
    rank: u32,
    timeout: Duration,
) -> (Result<PinsStats, StageError>, Watch) {
    let here = match carry::Here::new(spec, remote, rank) {
        Ok(here) => here,
        Err(e) => return (Err(e), Watch::Alive),
    };
    let events = Events::default();
    let pins = Mutex::new(BTreeMap::new());
    let stats = Mutex::new(BTreeMap::new());
    let (stop, stopped) = mpsc::channel::<()>();
    let streamed_log = here.streams_log().then_some(here.log.as_path());
    // Progress lines from rank 0 only: one writer per stream.
    let sent_events = (rank == 0).then_some(&events);
    let started = Instant::now();
    let (ran, watch) = std::thread::scope(|scope| {
        let watchdog = scope.spawn(move || {
            watchdog(
                exchange,
                timeout,
                interrupt,
                &stopped,
                sent_events,
                streamed_log,
            )
        });
        let ran = (|| {
            // Fetching the inputs is part of the job the watchdog watches.
            let inputs = here.inputs(interrupt, &events)?;
            let p = load(&here.manifest, &spec.sets)?;
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
            let ctx = StageContext {
                pipeline: &p,
                stage,
                workspace: &p.root,
                out: &here.out,
                inputs,
                log: &here.log,
                cancel: interrupt.flag(),
                interrupt,
                reporter: &events,
                locked_pins: &spec.locked_pins,
                new_pins: &pins,
                new_stats: &stats,
                fingerprints: &spec.fingerprints,
            };
            stage.prepared.run(&ctx)
        })();
        let _ = stop.send(());
        (ran, watchdog.join().unwrap_or(Watch::Alive))
    });
    let (pins, stats) = (
        pins.into_inner().unwrap_or_else(|e| e.into_inner()),
        stats.into_inner().unwrap_or_else(|e| e.into_inner()),
    );
    let ran = match (ran, watch) {
        (_, Watch::Gone | Watch::Stale) => Err(Orphaned.into()),
        (Err(e), Watch::Alive) => Err(e),
        (Ok(()), Watch::Alive) if interrupt.is_set() => Err("interrupted".into()),
        (Ok(()), Watch::Alive) => here
            .deliver(started.elapsed().as_secs_f64(), &pins, &stats)
            .map(|()| (pins, stats)),
    };
    (ran, watch)
}

/// Stop the stage when the heartbeat stays the same for `timeout`, or is
/// gone: the submitting `pipe` is. Meanwhile send the stage's progress
/// lines (`events`) and what it adds to its log (`log`), at most once a
/// second each.
fn watchdog(
    exchange: &dyn Exchange,
    timeout: Duration,
    interrupt: &Interrupt,
    stop: &mpsc::Receiver<()>,
    events: Option<&Events>,
    log: Option<&Path>,
) -> Watch {
    let mut last = None;
    let mut since = Instant::now();
    let mut log_at = 0u64;
    let send = |log_at: &mut u64| {
        if let Some(events) = events {
            events.flush(exchange);
        }
        let Some(path) = log else { return };
        let mut cursor = *log_at;
        if let Ok(text) = exchange::read_new(path, &mut cursor) {
            if exchange.append(LOG, &text).is_ok() {
                *log_at = cursor;
            }
        }
    };
    let mut sent = Instant::now();
    let watch = loop {
        match exchange.get(HEARTBEAT) {
            Ok(None) => break Watch::Gone,
            Ok(now) => {
                if last != now {
                    last = now;
                    since = Instant::now();
                }
            }
            // The remote did not answer: only the timeout counts.
            Err(_) => {}
        }
        if since.elapsed() >= timeout {
            break Watch::Stale;
        }
        if sent.elapsed() >= Duration::from_secs(1) {
            send(&mut log_at);
            sent = Instant::now();
        }
        match stop.recv_timeout(Duration::from_millis(500)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => break Watch::Alive,
        }
    };
    if watch != Watch::Alive {
        interrupt.interrupt(Duration::from_secs(3));
    }
    send(&mut log_at);
    watch
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
            locked_pins: BTreeMap::new(),
            fingerprints: keyed.clone(),
            orphan_timeout_s: 30.0,
            data: JobData::Shared {
                out: out.clone(),
                log: ws.path().join("s.log"),
                inputs: BTreeMap::new(),
            },
        };
        let dir = exchange::Dir(staging.clone());
        dir.put(SPEC, &serde_json::to_vec(&spec).unwrap()).unwrap();
        dir.put(HEARTBEAT, b"1").unwrap();
        exec(&dir, None, |_, _| Ok(p), &Interrupt::default(), 0).unwrap();
        let got: BTreeMap<String, String> =
            serde_json::from_slice(&std::fs::read(out.join("prints.json")).unwrap()).unwrap();
        assert_eq!(got, keyed);
        let result: JobResult =
            serde_json::from_slice(&std::fs::read(staging.join(RESULT)).unwrap()).unwrap();
        assert_eq!(result.error, None);
    }
}
