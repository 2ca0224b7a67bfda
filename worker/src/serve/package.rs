//! A packaged model: `model.tar.gz` from a `package` stage (unpacked into a
//! temporary directory that lives as long as the [`Package`]) or its
//! unpacked directory, and what its `config.json` says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pipe_protocol::serve::DEFAULT_MAX_LEN;
use serde::Deserialize;

pub struct Package {
    /// Where `model.pt`, the tokenizer files and `config.json` are.
    pub dir: PathBuf,
    /// Class names, index = class id.
    pub labels: Vec<String>,
    /// Tokens kept of a sentence.
    pub max_len: usize,
    _unpacked: Option<tempfile::TempDir>,
}

/// What the server reads of `config.json` (the rest is Hugging Face's).
#[derive(Deserialize)]
struct Config {
    max_len: Option<usize>,
    #[serde(default)]
    id2label: BTreeMap<String, String>,
}

impl Package {
    pub fn open(package: &Path) -> Result<Package> {
        let (dir, unpacked) = if package.is_dir() {
            (package.to_path_buf(), None)
        } else {
            let tmp = tempfile::Builder::new().prefix("pipe-serve-").tempdir()?;
            let file = std::fs::File::open(package)
                .with_context(|| format!("cannot open {}", package.display()))?;
            tar::Archive::new(flate2::read::GzDecoder::new(file))
                .unpack(tmp.path())
                .with_context(|| format!("{}: not a model.tar.gz", package.display()))?;
            (tmp.path().to_path_buf(), Some(tmp))
        };
        let bytes = std::fs::read(dir.join("config.json"))
            .with_context(|| format!("{}: no config.json", package.display()))?;
        let config: Config = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: bad config.json", package.display()))?;
        let mut labels = config
            .id2label
            .into_iter()
            .map(|(id, label)| {
                let id: usize = id.parse().with_context(|| {
                    format!(
                        "{}: config.json: id2label key `{id}` is not a class number",
                        package.display()
                    )
                })?;
                Ok((id, label))
            })
            .collect::<Result<Vec<_>>>()?;
        labels.sort();
        Ok(Package {
            dir,
            labels: labels.into_iter().map(|(_, l)| l).collect(),
            max_len: config.max_len.unwrap_or(DEFAULT_MAX_LEN),
            _unpacked: unpacked,
        })
    }
}
