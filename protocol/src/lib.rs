//! The contract between `pipe` (which never links libtorch) and `pipe-worker`
//! (which does): the typed `with:` of each torch stage kind, the [`Request`]
//! the engine sends on the worker's stdin, the [`Message`]s the worker prints
//! on stdout, and the files both sides name ([`TOKENIZER_FILES`]). Both sides
//! parse `with:` with the same structs, so a manifest is checked before any
//! worker starts and the worker sees exactly what was keyed.
//!
//! ```text
//! pipe (stages::torch) ──Request (stdin, JSON)──▶ pipe-worker stage
//!                      ◀─Message per line (stdout)─ Progress | Stats | Failed
//!       stage log      ◀─human log (stderr)──────
//! ```

pub mod serve;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which device a torch stage runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// The device a stage runs on, resolved on this machine (`auto` is gone):
/// what its key was computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolvedDevice {
    Cpu,
    Cuda,
}

impl Device {
    /// `auto` becomes CUDA where `cuda` (the worker sees a CUDA device).
    pub fn resolve(self, cuda: bool) -> ResolvedDevice {
        match self {
            Device::Cpu => ResolvedDevice::Cpu,
            Device::Cuda => ResolvedDevice::Cuda,
            Device::Auto if cuda => ResolvedDevice::Cuda,
            Device::Auto => ResolvedDevice::Cpu,
        }
    }
}

impl ResolvedDevice {
    /// `cpu` or `cuda`, as it goes into the key.
    pub fn name(self) -> &'static str {
        match self {
            ResolvedDevice::Cpu => "cpu",
            ResolvedDevice::Cuda => "cuda",
        }
    }
}

/// `bf16:` of a fine-tune: `auto` (the default), `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bf16 {
    /// bf16 where it is faster: a CPU with bf16 matrix instructions
    /// (AMX-BF16 or AVX512-BF16). Not on CUDA, where BERT-sized steps are
    /// bound by kernel launches and autocast's casts made them slower.
    #[default]
    Auto,
    On,
    Off,
}

impl Bf16 {
    /// Whether a stage on `device` runs in bf16, `cpu_bf16` saying whether
    /// this machine's CPU has bf16 matrix instructions.
    pub fn resolve(self, device: ResolvedDevice, cpu_bf16: bool) -> bool {
        match self {
            Bf16::On => true,
            Bf16::Off => false,
            Bf16::Auto => device == ResolvedDevice::Cpu && cpu_bf16,
        }
    }

    /// `bf16` or `fp32`, as it goes into the key and `metrics.json`.
    pub fn precision(on: bool) -> &'static str {
        if on {
            "bf16"
        } else {
            "fp32"
        }
    }
}

/// The command-line spelling (`--bf16 auto|true|false`).
impl std::str::FromStr for Bf16 {
    type Err = String;
    fn from_str(s: &str) -> Result<Bf16, String> {
        match s {
            "auto" => Ok(Bf16::Auto),
            "true" => Ok(Bf16::On),
            "false" => Ok(Bf16::Off),
            _ => Err(format!("`{s}`: expected true, false or auto")),
        }
    }
}

impl Serialize for Bf16 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Bf16::Auto => s.serialize_str("auto"),
            Bf16::On => s.serialize_bool(true),
            Bf16::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Bf16 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bf16;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or auto")
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Bf16, E> {
                Ok(if b { Bf16::On } else { Bf16::Off })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Bf16, E> {
                match s {
                    "auto" => Ok(Bf16::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(s), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The collective backend of data-parallel fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    /// NCCL on CUDA, gloo on the CPU.
    #[default]
    Auto,
    Gloo,
    Nccl,
}

impl DistBackend {
    /// The backend a stage on `device` uses.
    pub fn resolve(self, device: ResolvedDevice) -> DistBackend {
        match self {
            DistBackend::Auto if device == ResolvedDevice::Cuda => DistBackend::Nccl,
            DistBackend::Auto => DistBackend::Gloo,
            b => b,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DistBackend::Auto => "auto",
            DistBackend::Gloo => "gloo",
            DistBackend::Nccl => "nccl",
        }
    }
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Warm up linearly for `warmup_ratio` of the steps, then hold.
    #[default]
    Constant,
    /// Warm up linearly, then decay linearly to 0 at the last step.
    Linear,
}

/// `with:` of `kind: finetune`. Defaults are the blog's recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneWith {
    pub num_labels: i64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub eps: f64,
    pub max_grad_norm: f64,
    pub max_len: usize,
    pub seed: u64,
    pub weight_decay: f64,
    pub warmup_ratio: f64,
    pub schedule: Schedule,
    /// Sort sentences by length inside shuffled pools of 50 batches, so that
    /// each batch pads little; batches are then shuffled.
    pub group_by_length: bool,
    pub device: Device,
    /// Intra-op CPU threads; by default libtorch's (one per core).
    pub threads: Option<usize>,
    /// bf16 autocast: matrix products in bf16, weights and optimizer state
    /// fp32 (see [`Bf16`]); what it resolved to is part of the key.
    pub bf16: Bf16,
    /// Log a line every this many batches.
    pub log_interval: usize,
    /// Label names, index = class id (default "0", "1", …).
    pub labels: Option<Vec<String>>,
    /// Data-parallel ranks on this machine (each with `threads / N` threads);
    /// `batch_size` stays the global batch.
    pub nproc_per_node: usize,
    /// The collective backend of the ranks.
    pub backend: DistBackend,
}

impl Default for FinetuneWith {
    fn default() -> Self {
        FinetuneWith {
            num_labels: 2,
            epochs: 1,
            batch_size: 64,
            lr: 2e-5,
            eps: 1e-8,
            max_grad_norm: 1.0,
            max_len: 64,
            seed: 1,
            weight_decay: 0.0,
            warmup_ratio: 0.0,
            schedule: Schedule::Constant,
            group_by_length: true,
            device: Device::Auto,
            threads: None,
            bf16: Bf16::Auto,
            log_interval: 20,
            labels: None,
            nproc_per_node: 1,
            backend: DistBackend::Auto,
        }
    }
}

impl FinetuneWith {
    /// Problems `serde` cannot see: `(field, message)`.
    pub fn problems(&self) -> Option<(&'static str, String)> {
        let positive = [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("log_interval", self.log_interval),
            ("nproc_per_node", self.nproc_per_node),
        ];
        if let Some((f, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Some((f, "must be at least 1".into()));
        }
        if !(2..=512).contains(&self.max_len) {
            return Some(("max_len", "must be between 2 and 512".into()));
        }
        if self.num_labels < 2 {
            return Some(("num_labels", "must be at least 2".into()));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Some(("lr", "must be a positive number".into()));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Some(("warmup_ratio", "must be in [0, 1)".into()));
        }
        if self.threads == Some(0) {
            return Some(("threads", "must be at least 1".into()));
        }
        if self.backend == DistBackend::Nccl && self.device == Device::Cpu {
            return Some((
                "backend",
                "nccl runs on CUDA only, and this stage has device: cpu (use gloo, or auto)".into(),
            ));
        }
        if let Some(l) = &self.labels {
            if l.len() as i64 != self.num_labels {
                return Some((
                    "labels",
                    format!(
                        "has {} names but num_labels is {}",
                        l.len(),
                        self.num_labels
                    ),
                ));
            }
        }
        None
    }
}

/// `with:` of `kind: trace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceWith {
    /// Largest |traced − eager| logit difference accepted.
    pub tolerance: f64,
    pub threads: Option<usize>,
}

impl Default for TraceWith {
    fn default() -> Self {
        TraceWith {
            tolerance: 1e-5,
            threads: None,
        }
    }
}

/// What the engine asks of `pipe-worker stage` (JSON on its stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub job: Job,
    /// The empty output directory.
    pub out: PathBuf,
    /// The device the key was computed for.
    pub device: ResolvedDevice,
    /// The intra-op thread count the key was computed for.
    pub threads: usize,
}

/// The torch stage to run, with its checked `with:` (defaults filled in) and
/// its inputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Job {
    Finetune {
        with: FinetuneWith,
        /// A Hugging Face checkpoint directory.
        model: PathBuf,
        /// A directory with `train.csv` and `test.csv`.
        data: PathBuf,
    },
    Trace {
        with: TraceWith,
        /// A `finetune` output.
        model: PathBuf,
    },
}

/// One line of the worker's stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Message {
    /// A one-line progress message for the terminal.
    Progress(String),
    /// Figures about this run that must not enter the output (wall-clock
    /// times, throughput): they go to the stage's run record.
    Stats(BTreeMap<String, f64>),
    /// Why the stage failed; the worker exits non-zero after it.
    Failed { error: String },
}

/// `pipe-worker allreduce-check N`: the sum rank 0 saw of `[r + 1, 10 (r + 1)]`
/// over the ranks `r` of a group of `world`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllreduceCheck {
    pub world: usize,
    pub sum: Vec<f32>,
}

/// Tokenizer files of a model directory: copied along with the weights by
/// `finetune` and `trace`, and packed at the root of `model.tar.gz`.
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "added_tokens.json",
];

/// `pipe-worker info`: facts about this machine's libtorch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    pub libtorch: String,
    pub cuda: bool,
    pub cuda_devices: i64,
    pub threads: i64,
    /// The CPU has bf16 matrix instructions (AMX-BF16 or AVX512-BF16).
    #[serde(default)]
    pub cpu_bf16: bool,
}

/// `ETA 1m05s`: the time left when `done` of `total` took `elapsed`, for the
/// progress lines of long jobs (downloads, training) on both sides. `None`
/// before any work is done or past the end.
pub fn eta(done: f64, total: f64, elapsed: std::time::Duration) -> Option<String> {
    if !(done > 0.0 && total > done) {
        return None;
    }
    let left = elapsed.as_secs_f64() * (total - done) / done;
    if !left.is_finite() {
        return None;
    }
    let s = left.round() as u64;
    Some(match s {
        0..=59 => format!("ETA {s}s"),
        60..=3599 => format!("ETA {}m{:02}s", s / 60, s % 60),
        _ => format!("ETA {}h{:02}m", s / 3600, s % 3600 / 60),
    })
}

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn a_request_says_its_kind_and_round_trips() {
        let r = Request {
            job: Job::Trace {
                with: TraceWith::default(),
                model: "m".into(),
            },
            out: "o".into(),
            device: Device::Auto.resolve(false),
            threads: 2,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""kind":"trace""#), "{text}");
        assert!(text.contains(r#""device":"cpu""#), "{text}");
        let back: Request = serde_json::from_str(&text).unwrap();
        assert!(matches!(back.job, Job::Trace { with, .. } if with == TraceWith::default()));
    }

    #[test]
    fn failed_is_one_json_line() {
        let m = Message::Failed {
            error: "a\nb".into(),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(text, r#"{"failed":{"error":"a\nb"}}"#);
        assert_eq!(serde_json::from_str::<Message>(&text).unwrap(), m);
    }
}

#[cfg(test)]
mod eta_tests {
    use std::time::Duration;

    #[test]
    fn eta_scales_elapsed_time_by_the_work_left() {
        let ten = Duration::from_secs(10);
        assert_eq!(super::eta(1.0, 2.0, ten).as_deref(), Some("ETA 10s"));
        assert_eq!(super::eta(1.0, 10.0, ten).as_deref(), Some("ETA 1m30s"));
        assert_eq!(super::eta(1.0, 1000.0, ten).as_deref(), Some("ETA 2h46m"));
        assert_eq!(super::eta(0.0, 10.0, ten), None);
        assert_eq!(super::eta(10.0, 10.0, ten), None);
        assert_eq!(super::eta(f64::MIN_POSITIVE, 1e300, ten), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_is_true_false_or_auto() {
        let parse = |y: &str| serde_json::from_str::<Bf16>(y);
        assert_eq!(parse("true").unwrap(), Bf16::On);
        assert_eq!(parse("false").unwrap(), Bf16::Off);
        assert_eq!(parse("\"auto\"").unwrap(), Bf16::Auto);
        let e = parse("\"yes\"").unwrap_err().to_string();
        assert!(e.contains("true, false or auto"), "{e}");
        assert_eq!(serde_json::to_string(&Bf16::Auto).unwrap(), "\"auto\"");
        assert_eq!(serde_json::to_string(&Bf16::On).unwrap(), "true");
        assert_eq!("false".parse::<Bf16>(), Ok(Bf16::Off));
        assert!("yes"
            .parse::<Bf16>()
            .is_err_and(|e| e.contains("true, false or auto")));
    }

    #[test]
    fn auto_is_bf16_on_a_cpu_that_has_it_only() {
        let cpu = ResolvedDevice::Cpu;
        assert!(Bf16::Auto.resolve(cpu, true));
        assert!(!Bf16::Auto.resolve(cpu, false));
        assert!(!Bf16::Auto.resolve(ResolvedDevice::Cuda, true));
        assert!(Bf16::On.resolve(cpu, false));
        assert!(!Bf16::Off.resolve(cpu, true));
    }
}
