//! Built-in stage kinds. Each module holds one kind implementing
//! [`pipe_engine::StageKind`]; [`registry`] lists them for the CLI.

mod shell;

pub use shell::Shell;

/// Every built-in kind.
pub fn registry() -> pipe_engine::Registry {
    let mut r = pipe_engine::Registry::new();
    r.register(Box::new(Shell));
    r
}
