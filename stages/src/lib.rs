//! Built-in stage kinds. Each module holds one kind implementing
//! [`pipe_engine::StageKind`] (or a helper of one); [`registry`] lists them
//! for the CLI.
//!
//! - [`shell`]: a command
//! - [`download`] (with [`fetch`] and [`archive`]): URLs and Hub repos
//! - [`split`]: CSV/TSV → train.csv/test.csv
//! - [`upload`]: files → an object store (S3, local), with a verified receipt

pub mod archive;
pub mod download;
pub mod fetch;
pub mod shell;
pub mod split;
pub mod upload;

pub use download::Download;
pub use shell::Shell;
pub use split::Split;
pub use upload::Upload;

/// Every built-in kind.
pub fn registry() -> pipe_engine::Registry {
    let mut r = pipe_engine::Registry::new();
    r.register(Box::new(Shell));
    r.register(Box::new(Download));
    r.register(Box::new(Split));
    r.register(Box::new(Upload));
    r
}
