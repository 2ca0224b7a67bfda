//! One file per subcommand, each with one entry function that the dispatch in
//! `main.rs` calls (clap parses in `cli.rs`); the work itself is the engine's
//! and the stage kinds'. Helpers several commands share live here.

pub mod checkout;
pub mod completions;
pub mod dag;
pub mod down;
pub mod endpoints;
pub mod exec_stage;
pub mod gc;
pub mod init;
pub mod logs;
pub mod metrics;
pub mod plots;
pub mod pull;
pub mod push;
pub mod remote;
pub mod run;
pub mod runs;
pub mod serve;
pub mod show;
pub mod status;
pub mod validate;

use std::path::{Path, PathBuf};

use anyhow::Context;
use pipe_engine::{Pipeline, Registry};

use crate::cli::{ManifestArgs, DEFAULT_MANIFEST};
use crate::exit::Failure;

/// The pipeline of a command's manifest arguments.
pub fn load(m: &ManifestArgs, registry: &Registry) -> Result<Pipeline, Failure> {
    check_default(&m.manifest)?;
    Ok(pipe_engine::load(&m.manifest, &m.sets, registry)?)
}

/// Run `f` on the pipeline of `manifest` (see [`load_plain`]): exit code 0, or the
/// code of its error (see [`failure`]).
pub fn with_pipeline(
    manifest: &Path,
    registry: &Registry,
    f: impl FnOnce(&Pipeline) -> anyhow::Result<()>,
) -> Result<i32, Failure> {
    let p = load_plain(manifest, registry)?;
    f(&p).map_err(failure)?;
    Ok(crate::exit::OK)
}

/// A clear word when the manifest a command falls back to is not there.
pub fn check_default(manifest: &Path) -> Result<(), Failure> {
    if manifest == Path::new(DEFAULT_MANIFEST) && !manifest.exists() {
        return Err(Failure::usage(anyhow::anyhow!(
            "no {DEFAULT_MANIFEST} in the current folder: name a manifest, or create one with `pipe init`"
        )));
    }
    Ok(())
}

/// The pipeline of a manifest, without `--set` (the commands that read the
/// lock and the history).
pub fn load_plain(manifest: &Path, registry: &Registry) -> Result<Pipeline, Failure> {
    check_default(manifest)?;
    Ok(pipe_engine::load(manifest, &[], registry)?)
}

/// `[MANIFEST] REST…` of a command that takes at most `max_rest` more
/// arguments: the first argument is the manifest when there are more than
/// `max_rest`, or when it names a YAML file or an existing file; otherwise
/// the manifest is `pipe.yaml`.
pub fn manifest_first(mut args: Vec<String>, max_rest: usize) -> (PathBuf, Vec<String>) {
    let named = args.first().is_some_and(|first| {
        args.len() > max_rest
            || first.ends_with(".yaml")
            || first.ends_with(".yml")
            || Path::new(first).is_file()
    });
    if named {
        let manifest = args.remove(0);
        (PathBuf::from(manifest), args)
    } else {
        (PathBuf::from(DEFAULT_MANIFEST), args)
    }
}

/// The workspace root, found from `dir` or the current directory by the one
/// rule every command uses ([`pipe_engine::workspace::find_root`]).
pub fn find_workspace(dir: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let start = match dir {
        Some(d) => d,
        None => std::env::current_dir().context("no current directory")?,
    };
    Ok(pipe_engine::workspace::find_root(&start))
}

/// Rows of cells as aligned columns (two spaces apart, no trailing spaces).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            line += cell;
            line += &" ".repeat(pad + 2);
        }
        s += line.trim_end();
        s += "\n";
    }
    s
}

/// A mistake in what the user asked for (an unknown run, stage or revision,
/// nothing recorded yet): exit code 2 rather than 3.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// `bail!` with a [`Usage`] error.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::commands::Usage(format!($($arg)*)).into())
    };
}
pub(crate) use usage;

/// The exit code of a command's error: 2 for [`Usage`], else 3.
pub fn failure(error: anyhow::Error) -> crate::exit::Failure {
    if error.downcast_ref::<Usage>().is_some() {
        crate::exit::Failure::usage(error)
    } else {
        error.into()
    }
}
