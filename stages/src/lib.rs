//! Built-in stage kinds. Each module holds one kind implementing
//! [`pipe_engine::StageKind`] (or a helper of one); [`registry`] lists them
//! for the CLI.
//!
//! - [`shell`]: a command
//! - [`download`] (with [`fetch`] and [`archive`]): URLs and Hub repos
//! - [`split`]: CSV/TSV → train.csv/test.csv
//! - [`upload`]: files → an object store (S3, local), with a verified receipt
//! - [`torch`]: `finetune` and `trace`, run in `pipe-worker` ([`worker`])
//! - [`package`]: a reproducible SageMaker `model.tar.gz`
//! - [`deploy`] (with [`endpoint`]) and [`smoke`]: a local endpoint, and checks against it

pub mod archive;
pub mod deploy;
pub mod download;
pub mod endpoint;
pub mod fetch;
pub mod package;
pub mod shell;
pub mod smoke;
pub mod split;
pub mod torch;
pub mod upload;
pub mod worker;

pub use deploy::Deploy;
pub use download::Download;
pub use package::Package;
pub use shell::Shell;
pub use smoke::SmokeTest;
pub use split::Split;
pub use torch::{Finetune, Trace};
pub use upload::Upload;

/// What the command line tells the kinds (rather than the environment).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Look up `https://HOST/PATH` downloads as `MIRROR/HOST/PATH` first.
    pub mirror: Option<std::path::PathBuf>,
}

/// The input `name` of a `kind` stage, made by a `from`: a file, or that
/// stage's output folder, where `file` is taken.
pub(crate) fn input_file(
    ctx: &pipe_engine::StageContext,
    kind: &str,
    name: &str,
    file: &str,
    from: &str,
) -> Result<std::path::PathBuf, pipe_engine::StageError> {
    let Some(p) = ctx.inputs.get(name) else {
        return Err(format!("`{kind}` needs an input named `{name}` ({from})").into());
    };
    Ok(if p.is_dir() { p.join(file) } else { p.clone() })
}

/// Writes `value` as pretty JSON with a final newline to `file` of the
/// stage's output.
pub(crate) fn write_json(
    ctx: &pipe_engine::StageContext,
    file: &str,
    value: &impl serde::Serialize,
) -> Result<(), pipe_engine::StageError> {
    std::fs::write(
        ctx.out.join(file),
        serde_json::to_string_pretty(value)? + "\n",
    )?;
    Ok(())
}

/// Every built-in kind.
pub fn registry(settings: &Settings) -> pipe_engine::Registry {
    let mut r = pipe_engine::Registry::new();
    r.register::<Shell>();
    let mirror = settings.mirror.clone();
    r.register_with::<Download>(move |d| d.mirror = mirror.clone());
    r.register::<Split>();
    r.register::<Upload>();
    r.register::<Finetune>();
    r.register::<Trace>();
    r.register::<Package>();
    r.register::<Deploy>();
    r.register::<SmokeTest>();
    r
}
