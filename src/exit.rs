//! Exit codes, in one table.
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0    | success |
//! | 1    | a stage failed (or was skipped because an upstream stage failed) |
//! | 2    | bad manifest, unreadable lock file or bad usage; nothing ran |
//! | 3    | pipe itself failed (I/O error in the store, lock file …) |
//! | 130  | interrupted |

pub const OK: i32 = 0;
pub const STAGE_FAILED: i32 = 1;
pub const BAD_INPUT: i32 = 2;
pub const INTERNAL: i32 = 3;
pub const INTERRUPTED: i32 = 130;

/// An error and the exit code it maps to.
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: BAD_INPUT,
            error: error.into(),
        }
    }
}

impl From<pipe_engine::EngineError> for Failure {
    fn from(e: pipe_engine::EngineError) -> Failure {
        let code = match e {
            pipe_engine::EngineError::UnknownStage(_) => BAD_INPUT,
            pipe_engine::EngineError::Lock(ref l) if l.is_bad_content() => BAD_INPUT,
            pipe_engine::EngineError::Cache(_) | pipe_engine::EngineError::Lock(_) => INTERNAL,
        };
        Failure {
            code,
            error: e.into(),
        }
    }
}

impl From<pipe_engine::ManifestError> for Failure {
    fn from(e: pipe_engine::ManifestError) -> Failure {
        Failure {
            code: BAD_INPUT,
            error: e.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure {
            code: INTERNAL,
            error,
        }
    }
}
