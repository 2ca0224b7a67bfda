//! Why a stage could not be served or run: [`ExecError`] keeps each cause as
//! its source, and [`error_chain`] renders the chain as one line.

use std::path::PathBuf;

use crate::stage::StageError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("unknown stage kind `{0}`")]
    UnknownKind(String),
    #[error("input `{input}`: stage `{stage}` has no output")]
    NoUpstreamOutput { input: String, stage: String },
    #[error("input `{input}`: the output of stage `{stage}` has no `{path}`")]
    NoUpstreamPath {
        input: String,
        stage: String,
        path: String,
    },
    #[error("input `{input}`: `{}` cannot be resolved", path.display())]
    Unresolvable {
        input: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input `{input}`: `{}` cannot be resolved: workspace {}", path.display(), root.display())]
    WorkspaceUnresolvable {
        input: String,
        path: PathBuf,
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "input `{input}`: `{}` resolves to {}, outside the workspace {} (through a symbolic link)",
        path.display(), real.display(), root.display()
    )]
    OutsideWorkspace {
        input: String,
        path: PathBuf,
        real: PathBuf,
        root: PathBuf,
    },
    #[error("no store")]
    NoStore,
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Cache(#[from] pipe_cache::Error),
    /// The stage kind failed while planning (`fingerprints`, `verify`).
    #[error(transparent)]
    Kind(KindError),
    /// The stage's work failed (`run`): its log tail tells the rest.
    #[error(transparent)]
    Run(KindError),
}

/// A stage kind's error, shown as itself: its message, then its sources.
#[derive(Debug)]
pub struct KindError(pub StageError);

impl std::fmt::Display for KindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for KindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// `a: b: c` from an error and its sources, URL user info masked.
///
/// pipe's own errors keep each cause as a source and never repeat it in
/// their message. Some library errors do both (object_store's end their
/// message with `: SOURCE`): such a source, or one that only repeats the
/// error before it, is not printed twice. Nothing else is left out, even
/// when its text happens to appear earlier in the line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut prev = e.to_string();
    let mut s = prev.clone();
    let mut cur = e.source();
    while let Some(src) = cur {
        let msg = src.to_string();
        let repeated = prev == msg
            || prev
                .strip_suffix(msg.as_str())
                .is_some_and(|head| head.ends_with(": "));
        if !repeated {
            s.push_str(": ");
            s.push_str(&msg);
        }
        prev = msg;
        cur = src.source();
    }
    crate::cache::redact_userinfo(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library error that prints its source and also returns it.
    #[derive(Debug, thiserror::Error)]
    #[error("upload failed: {0}")]
    struct Flattens(#[source] std::io::Error);

    #[test]
    fn every_cause_is_shown_once() {
        let e = ExecError::Create {
            path: "/ws/interrupted".into(),
            source: std::io::Error::other("interrupted"),
        };
        assert_eq!(
            error_chain(&e),
            "cannot create /ws/interrupted: interrupted"
        );
        let e = ExecError::Run(KindError(Box::new(Flattens(std::io::Error::other(
            "connection reset",
        )))));
        assert_eq!(error_chain(&e), "upload failed: connection reset");
    }
}
