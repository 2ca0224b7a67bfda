//! `pipe.lock`: per stage its key, params, input hashes and output hash, like
//! `dvc.lock`. Human-readable YAML in manifest order, rewritten only when it
//! changes, atomically.

use std::collections::BTreeMap;
use std::path::Path;

use pipe_cache::{Digest, InputDigest, Key};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::pipeline::Pipeline;

const HEADER: &str = "# pipe.lock: written by `pipe run`. Commit it with the manifest.\n";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LockEntry {
    pub kind: String,
    pub key: Key,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputDigest>,
    pub output: Digest,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockFile {
    pub stages: BTreeMap<String, LockEntry>,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    pipeline: String,
    stages: serde_yaml::Mapping,
}

impl LockFile {
    /// Read `path`; a missing or unreadable lock is empty (it is a record, not an input).
    pub fn load(path: &Path) -> LockFile {
        let Ok(text) = std::fs::read_to_string(path) else {
            return LockFile::default();
        };
        let Ok(disk) = serde_yaml::from_str::<OnDisk>(&text) else {
            return LockFile::default();
        };
        let stages = disk
            .stages
            .into_iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), serde_yaml::from_value(v).ok()?)))
            .collect();
        LockFile { stages }
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
            version: 1,
            pipeline: pipeline.name.clone(),
            stages,
        };
        format!(
            "{HEADER}{}",
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
