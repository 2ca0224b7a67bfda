//! `Error`: what talking to a remote cache can fail with. Each variant names
//! the URL, blob or entry; none ever carries a credential.

use std::path::PathBuf;

use pipe_cache::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad remote `{url}`: {why}")]
    Url { url: String, why: String },
    #[error("remote cache: cannot reach {what}")]
    Store {
        what: String,
        #[source]
        source: object_store::Error,
    },
    #[error("remote cache: blob {0} is missing")]
    Missing(Digest),
    #[error("remote cache: blob {digest} is corrupt (its content hashes to {actual})")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("remote cache: result entry {path} is invalid: {why}")]
    Entry { path: String, why: String },
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] pipe_cache::Error),
    #[error("cannot start the transfer runtime")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
}
