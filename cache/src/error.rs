//! `Error`: everything the cache can fail with. Each variant names the path or key.

use std::io;
use std::path::PathBuf;

use crate::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid JSON in {}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {} as JSON", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("store object {digest} is corrupt (its content hashes to {actual})")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("{} changed while it was copied into the store", path.display())]
    Changed { path: PathBuf },
    #[error("store object {digest} is missing")]
    Missing { digest: Digest },
    #[error("{} is a symbolic link pointing outside its tree ({target})", path.display())]
    UnsafeLink { path: PathBuf, target: String },
    #[error("{} is neither a file, a directory nor a symbolic link", path.display())]
    Special { path: PathBuf },
    #[error("{} is not valid UTF-8; pipe only stores UTF-8 paths", path.display())]
    NonUtf8Path { path: PathBuf },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach an operation and a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.into(),
            source,
        })
    }
}
