//! The lock file: per stage its key, params, input hashes, output hash and
//! pins, like `dvc.lock`. Human-readable YAML in manifest order, rewritten only
//! when it changes, atomically.
//!
//! Each manifest has its own lock beside it, named after it: `cola.yaml` →
//! `cola.lock`, `pipe.yaml` → `pipe.lock` (as `dvc.yaml`/`dvc.lock`), so two
//! manifests in one folder never share records or pins. Older pipes wrote one
//! `pipe.lock` per folder: while a manifest has no lock of its own, the stages
//! of a `pipe.lock` beside it that was written for the same pipeline (its
//! `pipeline:` name) are taken over, and the next run writes the new lock.
//!
//! A lock that exists but cannot be read is an error, never an empty lock: an
//! empty lock would drop every pin and accept changed upstream bytes. A missing
//! lock is empty.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pipe_cache::{Digest, InputDigest, Key};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pipeline::Pipeline;

/// The one lock per folder that pipes before per-manifest locks wrote.
pub const LEGACY_NAME: &str = "pipe.lock";

/// The lock format this pipe reads and writes.
const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockEntry {
    pub kind: String,
    pub key: Key,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputDigest>,
    pub output: Digest,
    /// What a stage downloaded, by source (URL or Hub file), and its sha256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockFile {
    /// The pipeline name it was written for (empty for a new lock).
    pub pipeline: String,
    pub stages: BTreeMap<String, LockEntry>,
}

#[derive(Serialize)]
struct OnDisk {
    version: u32,
    pipeline: String,
    stages: serde_yaml::Mapping,
}

#[derive(Deserialize)]
struct FromDisk {
    version: u32,
    pipeline: String,
    stages: BTreeMap<String, LockEntry>,
}

/// A lock file that exists but cannot be used. Nothing runs.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read lock file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lock file {}{} cannot be parsed; nothing ran (fix it, or delete it to record it anew, losing its pins)", path.display(), at(*line, *column))]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        column: Option<usize>,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("lock file {}:{line}:1 has an unresolved merge conflict; nothing ran (resolve it, or delete the file to record it anew, losing its pins)", path.display())]
    Conflict { path: PathBuf, line: usize },
    #[error("lock file {}: version {version} is not one this pipe reads (it reads version {VERSION})", path.display())]
    Version { path: PathBuf, version: u32 },
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

impl LockError {
    /// A problem with the file's content (as opposed to reading it).
    pub fn is_bad_content(&self) -> bool {
        !matches!(self, LockError::Io { .. })
    }
}

impl LockFile {
    /// Read the lock at `path`: `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<LockFile>, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LockError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        LockFile::parse(&text, path).map(Some)
    }

    /// Parse lock text; `path` names where it came from in errors (e.g. a
    /// lock read from an earlier git revision).
    pub fn parse(text: &str, path: &Path) -> Result<LockFile, LockError> {
        let conflict = text.lines().position(|l| {
            ["<<<<<<< ", "=======", ">>>>>>> "]
                .iter()
                .any(|m| l.starts_with(m))
        });
        if let Some(i) = conflict {
            return Err(LockError::Conflict {
                path: path.to_path_buf(),
                line: i + 1,
            });
        }
        let disk: FromDisk = serde_yaml::from_str(text).map_err(|source| LockError::Parse {
            path: path.to_path_buf(),
            line: source.location().map(|l| l.line()),
            column: source.location().map(|l| l.column()),
            source,
        })?;
        if disk.version != VERSION {
            return Err(LockError::Version {
                path: path.to_path_buf(),
                version: disk.version,
            });
        }
        Ok(LockFile {
            pipeline: disk.pipeline,
            stages: disk.stages,
        })
    }

    /// The lock of `pipeline`: its own lock, else what a legacy `pipe.lock`
    /// beside it holds for this pipeline's stages, else empty.
    pub fn load(pipeline: &Pipeline) -> Result<LockFile, LockError> {
        let own = pipeline.lock_file();
        if let Some(lock) = LockFile::read(&own)? {
            return Ok(lock);
        }
        let legacy = own.with_file_name(LEGACY_NAME);
        if legacy == own {
            return Ok(LockFile::default());
        }
        match LockFile::read(&legacy)? {
            Some(mut lock) if lock.pipeline == pipeline.name => {
                lock.stages.retain(|name, entry| {
                    pipeline.stage(name).is_some_and(|s| s.kind == entry.kind)
                });
                Ok(lock)
            }
            _ => Ok(LockFile::default()),
        }
    }

    /// Render in the manifest's stage order, dropping stages it no longer has.
    pub fn render(&self, pipeline: &Pipeline) -> String {
        let mut stages = serde_yaml::Mapping::new();
        for s in &pipeline.stages {
            if let Some(e) = self.stages.get(&s.name) {
                if let Ok(v) = serde_yaml::to_value(e) {
                    stages.insert(serde_yaml::Value::String(s.name.clone()), v);
                }
            }
        }
        let disk = OnDisk {
            version: VERSION,
            pipeline: pipeline.name.clone(),
            stages,
        };
        let lock = pipeline.lock_file();
        let name = lock
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        format!(
            "# {name}: written by `pipe run`. Commit it with the manifest.\n{}",
            serde_yaml::to_string(&disk).unwrap_or_default()
        )
    }

    /// Write if the content differs from what is on disk.
    pub fn save(&self, pipeline: &Pipeline) -> pipe_cache::Result<()> {
        let path = pipeline.lock_file();
        let text = self.render(pipeline);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        pipe_cache::write_atomic(&path, text.as_bytes())
    }
}
