//! The stage interface: what a stage kind implements, and the context it runs in.
//!
//! Kinds live in the `pipe-stages` crate. A kind is a typed `with:` struct
//! implementing [`StageKind`]; the [`Registry`] keeps its constants as a
//! [`Kind`], manifest validation turns each stage's `with:` into the kind's
//! struct once ([`Kind::prepare`]), and the executor calls that
//! [`PreparedStage`] (keys, run, verify). A kind never prints: it writes its
//! log to `ctx.log` and reports progress through `ctx.progress()`, and the
//! reporter decides what reaches the terminal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::event::{Event, Reporter};
use crate::interrupt::Interrupt;
use crate::pipeline::{Pipeline, Stage};

pub type StageError = Box<dyn std::error::Error + Send + Sync>;

/// A problem with a stage's `with:` block, found before anything runs.
#[derive(Debug, Clone)]
pub struct WithError {
    /// The offending key inside `with:`, when known.
    pub field: Option<String>,
    pub message: String,
}

impl WithError {
    /// Deserialise a kind's typed `with:` struct (a missing `with:` is empty).
    pub fn parse<T: serde::de::DeserializeOwned>(with: &Value) -> Result<T, WithError> {
        let with = match with {
            Value::Null => Value::Object(Default::default()),
            w => w.clone(),
        };
        serde_json::from_value(with).map_err(WithError::from_serde)
    }

    /// A problem with one field.
    pub fn field(field: &str, message: impl Into<String>) -> WithError {
        WithError {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    /// A positive number of seconds from `with:` as a `Duration`. Huge,
    /// negative, zero or NaN values are an error, never a panic.
    pub fn seconds(field: &str, secs: f64) -> Result<Duration, WithError> {
        match Duration::try_from_secs_f64(secs) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(WithError::field(
                field,
                format!("must be a positive number of seconds that fits a duration, got {secs:?}"),
            )),
        }
    }

    /// From a serde error; picks the field out of "unknown field `x`" / "missing field `x`".
    pub fn from_serde(e: impl std::fmt::Display) -> WithError {
        let message = e.to_string();
        let field = ["unknown field `", "missing field `", "invalid value for `"]
            .iter()
            .find_map(|p| {
                message
                    .split_once(p)
                    .and_then(|(_, r)| r.split_once('`'))
                    .map(|(f, _)| f.to_string())
            });
        WithError { field, message }
    }
}

impl std::fmt::Display for WithError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WithError {}

/// Everything a running stage may touch.
pub struct StageContext<'a> {
    pub pipeline: &'a Pipeline,
    pub stage: &'a Stage,
    /// The workspace root (working directory of commands).
    pub workspace: &'a Path,
    /// The empty directory the stage must write its output into (for `verify`:
    /// the restored receipt, read-only).
    pub out: &'a Path,
    /// Each input's name and the path it resolved to.
    pub inputs: BTreeMap<String, PathBuf>,
    /// Where the stage's log goes (created empty before the run).
    pub log: &'a Path,
    /// Set when the run is interrupted; long stages check it.
    pub cancel: &'a AtomicBool,
    /// Starts child processes so that an interrupt or a crash stops them
    /// (see [`Interrupt::spawn`]).
    pub interrupt: &'a Interrupt,
    /// Where progress messages go (see [`StageContext::progress`]).
    pub reporter: &'a dyn Reporter,
    /// Pins this stage recorded in the lock file last time (e.g. the content hash of
    /// an unpinned download); empty when the stage is forced.
    pub locked_pins: &'a BTreeMap<String, String>,
    /// Pins to record in the lock file for this run (see [`StageContext::pin`]).
    pub new_pins: &'a Mutex<BTreeMap<String, String>>,
    /// Figures about this run for its run record (see [`StageContext::stat`]).
    pub new_stats: &'a Mutex<BTreeMap<String, f64>>,
    /// What the key recorded of the machine that keyed the stage
    /// ([`StageKind::fingerprints`]: a torch stage's resolved device, thread
    /// count, precision, libtorch). A stage that runs elsewhere (a Slurm
    /// node) runs as they say, so that its result is the one its key names.
    pub fingerprints: &'a BTreeMap<String, String>,
}

impl StageContext<'_> {
    /// A one-line progress message for the reporter (e.g. a training step).
    pub fn progress(&self, message: &str) {
        self.reporter.event(Event::Progress {
            stage: &self.stage.name,
            message: &crate::cache::redact_userinfo(message),
        });
    }

    /// Record a fact in the lock file that later runs must reproduce (e.g. the
    /// `sha256` of a download that has no pin in the manifest).
    pub fn pin(&self, name: &str, value: &str) {
        self.new_pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), value.to_string());
    }

    /// Record a figure about this run that must stay out of the output, such
    /// as a wall-clock time: it goes to the run record (`pipe show`, `--json`),
    /// so the output stays a function of the inputs. Non-finite values are
    /// dropped (JSON cannot hold them).
    pub fn stat(&self, name: &str, value: f64) {
        if value.is_finite() {
            self.new_stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.to_string(), value);
        }
    }
}

/// A stage kind, written as its typed `with:`: the struct `with:` deserialises
/// into *is* the stage. The engine parses `with:` into it once, when the
/// manifest is validated ([`StageKind::validate`] adds the checks serde cannot
/// make), and carries it on the [`Stage`] as a [`PreparedStage`]; nothing
/// downstream reads `with:` again. Register it with [`Registry::register`].
pub trait StageKind: serde::de::DeserializeOwned + Send + Sync + 'static {
    /// The name used as `kind:` in manifests.
    const NAME: &'static str;

    /// Bump whenever the kind's output for the same inputs changes.
    const VERSION: u32;

    /// Top-level `with:` fields that hold shell scripts. A `${params.X}` in one
    /// is replaced by the value quoted for the shell (always data, never code),
    /// and a `PIPE_PARAM_<X>` named in one makes the stage read param `X`.
    const SCRIPT_FIELDS: &'static [&'static str] = &[];

    /// JSON files of the output that hold metrics, when the manifest does not
    /// say (`metrics:`).
    const METRICS: &'static [&'static str] = &[];

    /// Files of the output that hold plot data, when the manifest does not
    /// say (`plots:`).
    const PLOTS: &'static [&'static str] = &[];

    /// Whether the stage must run on this machine, whatever the executor
    /// (a local endpoint, checks against it). Effects run here by default.
    const LOCAL_ONLY: bool = false;

    /// Checks serde cannot make (ranges, fields that exclude each other,
    /// an input standing in for a field), before anything runs. `inputs`
    /// are the names of the stage's inputs.
    fn validate(&mut self, _inputs: &[&str]) -> Result<(), WithError> {
        Ok(())
    }

    /// Facts about this machine that change the result (go into the key).
    fn fingerprints(&self) -> Result<BTreeMap<String, String>, StageError> {
        Ok(BTreeMap::new())
    }

    /// Whether the stage acts on the outside world. An effect's output is a
    /// receipt; on a cache hit the engine calls [`StageKind::verify`] instead of
    /// trusting it.
    fn is_effect(&self) -> bool {
        false
    }

    /// Produce the output in `ctx.out`.
    fn run(&self, ctx: &StageContext) -> Result<(), StageError>;

    /// For effects: whether the receipt in `ctx.out` still holds. `Ok(None)`:
    /// it does; `Ok(Some(why))`: the world drifted and the stage must run again.
    fn verify(&self, _ctx: &StageContext) -> Result<Option<String>, StageError> {
        Ok(None)
    }
}

/// A stage's parsed `with:`, as the engine calls it (see [`StageKind`], whose
/// methods these are; every kind implements this trait through it).
pub trait PreparedStage: Send + Sync {
    fn fingerprints(&self) -> Result<BTreeMap<String, String>, StageError>;
    fn is_effect(&self) -> bool;
    fn local_only(&self) -> bool;
    fn run(&self, ctx: &StageContext) -> Result<(), StageError>;
    fn verify(&self, ctx: &StageContext) -> Result<Option<String>, StageError>;
}

impl<K: StageKind> PreparedStage for K {
    fn fingerprints(&self) -> Result<BTreeMap<String, String>, StageError> {
        StageKind::fingerprints(self)
    }
    fn is_effect(&self) -> bool {
        StageKind::is_effect(self)
    }
    fn local_only(&self) -> bool {
        K::LOCAL_ONLY
    }
    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        StageKind::run(self, ctx)
    }
    fn verify(&self, ctx: &StageContext) -> Result<Option<String>, StageError> {
        StageKind::verify(self, ctx)
    }
}

impl std::fmt::Debug for dyn PreparedStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreparedStage")
    }
}

/// A stage's `with:` parsed and checked, or why not.
pub type Prepared = Result<Arc<dyn PreparedStage>, WithError>;

/// Parses and checks one stage's `with:`, given its input names.
type Prepare = Arc<dyn Fn(&Value, &[&str]) -> Prepared + Send + Sync>;

/// A registered kind: its constants, and how to prepare a stage of it.
#[derive(Clone)]
pub struct Kind {
    pub name: &'static str,
    pub version: u32,
    pub script_fields: &'static [&'static str],
    pub metrics: &'static [&'static str],
    pub plots: &'static [&'static str],
    pub local_only: bool,
    prepare: Prepare,
}

impl Kind {
    /// `configure` sets what the binary decides (a download mirror) on each
    /// stage once it is parsed, before [`StageKind::validate`].
    fn of<K: StageKind>(configure: impl Fn(&mut K) + Send + Sync + 'static) -> Kind {
        Kind {
            name: K::NAME,
            version: K::VERSION,
            script_fields: K::SCRIPT_FIELDS,
            metrics: K::METRICS,
            plots: K::PLOTS,
            local_only: K::LOCAL_ONLY,
            prepare: Arc::new(move |with, inputs| {
                let mut stage: K = WithError::parse(with)?;
                configure(&mut stage);
                stage.validate(inputs)?;
                Ok(Arc::new(stage))
            }),
        }
    }

    /// Parse and check a stage's `with:` (after interpolation) once, given
    /// the names of its inputs.
    pub fn prepare(&self, with: &Value, inputs: &[&str]) -> Prepared {
        (self.prepare)(with, inputs)
    }
}

/// The stage kinds a binary knows.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Kind>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn register<K: StageKind>(&mut self) {
        self.register_with::<K>(|_| {});
    }

    /// [`Registry::register`], with `configure` applied to every stage of the
    /// kind once it is parsed, before [`StageKind::validate`].
    pub fn register_with<K: StageKind>(
        &mut self,
        configure: impl Fn(&mut K) + Send + Sync + 'static,
    ) {
        self.kinds.insert(K::NAME, Kind::of::<K>(configure));
    }

    pub fn get(&self, name: &str) -> Option<&Kind> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.keys().copied()
    }
}
