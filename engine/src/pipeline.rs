//! `Pipeline`: a validated manifest — stages with resolved params, typed input
//! references and the DAG between them. Everything downstream works on this.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::dag::Dag;
use crate::stage::PreparedStage;

#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The manifest file as given on the command line.
    pub file: PathBuf,
    pub name: String,
    /// The workspace root: workspace paths are relative to it and `.pipe/` lives in it.
    pub root: PathBuf,
    /// Parameters after `--set`.
    pub params: BTreeMap<String, Value>,
    /// Stages in manifest order.
    pub stages: Vec<Stage>,
    pub dag: Dag,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub kind: String,
    /// `with:` after `${params.*}` interpolation (as keyed).
    pub with: Value,
    /// `with:` parsed by the kind, once, at validation: what runs.
    pub prepared: Arc<dyn PreparedStage>,
    pub inputs: Vec<Input>,
    pub after: Vec<String>,
    pub cache: bool,
    pub gpus: u32,
    /// `executor:`; `None` follows the run's default.
    pub executor: Option<crate::cluster::ExecutorKind>,
    /// `resources:` (`gpu` is also in `gpus`).
    pub resources: crate::cluster::Resources,
    /// `slurm:`: options passed to `sbatch` as they are.
    pub slurm: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The params this stage reads, with their values.
    pub params_used: BTreeMap<String, Value>,
    /// Files of the output holding metrics (`metrics:`, else the kind's).
    pub metrics: Vec<String>,
    /// Files of the output holding plot data (`plots:`, else the kind's).
    pub plots: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The input's name: `$PIPE_IN_<NAME>` for shell stages.
    pub name: String,
    /// The reference as written, e.g. `make:greeting.txt`.
    pub source: String,
    pub target: InputRef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRef {
    /// A file or folder inside another stage's output (`path` empty: all of it).
    Stage { stage: String, path: String },
    /// A path relative to the workspace root.
    Workspace(PathBuf),
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// `.pipe/` of the workspace.
    pub fn pipe_dir(&self) -> PathBuf {
        self.root.join(".pipe")
    }

    /// Where a stage's output is materialised.
    pub fn output_dir(&self, stage: &str) -> PathBuf {
        self.pipe_dir().join("out").join(&self.name).join(stage)
    }

    /// Where a stage's log goes.
    pub fn log_file(&self, stage: &str) -> PathBuf {
        self.pipe_dir()
            .join("logs")
            .join(&self.name)
            .join(format!("{stage}.log"))
    }

    /// The lock beside the manifest, named after it: `cola.yaml` →
    /// `cola.lock`, `pipe.yaml` → `pipe.lock` (see [`crate::lockfile`]).
    pub fn lock_file(&self) -> PathBuf {
        let lock = self.file.with_extension("lock");
        if lock != self.file {
            return lock;
        }
        // A manifest that is itself named `*.lock`.
        let mut name = self.file.clone().into_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }
}
