//! `pipe.config.yaml`: the committed workspace setting that names the remote
//! cache, like `.dvc/config`. `--remote` and `PIPE_REMOTE` override it.
//!
//! ```yaml
//! remote: s3://team-bucket/pipe-cache
//! ```
//!
//! Never put credentials here: they come from the AWS environment or profile.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file's name, at the workspace root.
pub const FILE: &str = "pipe.config.yaml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    remote: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), location)]
pub struct ConfigError {
    pub path: PathBuf,
    /// `:LINE:COL` when known.
    pub location: String,
    pub message: String,
}

/// The remote URL the workspace at `root` names, if any.
pub fn remote(root: &Path) -> Result<Option<String>, ConfigError> {
    let path = root.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ConfigError {
                path,
                location: String::new(),
                message: e.to_string(),
            })
        }
    };
    let config: Config = if text.trim().is_empty() {
        Config::default()
    } else {
        serde_yaml::from_str(&text).map_err(|e| ConfigError {
            location: e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default(),
            path: path.clone(),
            message: e.to_string(),
        })?
    };
    Ok(config.remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_remote_and_points_at_mistakes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(remote(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(FILE), "remote: file:///srv/c\n").unwrap();
        assert_eq!(
            remote(dir.path()).unwrap().as_deref(),
            Some("file:///srv/c")
        );
        std::fs::write(dir.path().join(FILE), "remote: x\nremot: y\n").unwrap();
        let e = remote(dir.path()).unwrap_err().to_string();
        assert!(e.contains("pipe.config.yaml:2:1"), "{e}");
    }
}
