//! A stage's inputs resolved to paths and content digests: an upstream
//! stage's output (its recorded hash), or a workspace path (hashed now,
//! through the store's stat cache when there is a store).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pipe_cache::{InputDigest, RunRecord, Store, Tree};

use super::ExecError;
use crate::pipeline::{InputRef, Pipeline, Stage};

/// Inputs resolved to paths and digests.
pub(super) struct Resolved {
    pub paths: BTreeMap<String, PathBuf>,
    pub digests: BTreeMap<String, InputDigest>,
}

/// Resolve `stage`'s inputs; `upstream` holds the run records of its
/// finished dependencies.
pub(super) fn resolve(
    p: &Pipeline,
    store: Option<&Store>,
    stage: &Stage,
    upstream: &HashMap<String, RunRecord>,
) -> Result<Resolved, ExecError> {
    let mut paths = BTreeMap::new();
    let mut digests = BTreeMap::new();
    for input in &stage.inputs {
        let (path, hash) = match &input.target {
            InputRef::Stage { stage: up, path } => {
                let run = upstream
                    .get(up)
                    .ok_or_else(|| ExecError::NoUpstreamOutput {
                        input: input.name.clone(),
                        stage: up.clone(),
                    })?;
                let hash = run
                    .output
                    .node_hash(path)
                    .ok_or_else(|| ExecError::NoUpstreamPath {
                        input: input.name.clone(),
                        stage: up.clone(),
                        path: path.clone(),
                    })?;
                let dir = p.output_dir(up);
                (if path.is_empty() { dir } else { dir.join(path) }, hash)
            }
            InputRef::Workspace(rel) => {
                let abs = p.root.join(rel);
                let real = real_workspace_path(p, &input.name, rel, &abs)?;
                let skip = |path: &Path| is_pipe_state(p, path);
                let hash = match store {
                    Some(store) => Tree::hash_path(&real, store.stat_cache(), &skip)?,
                    None => Tree::hash_path(&real, &pipe_cache::PlainHasher, &skip)?,
                };
                (abs, hash)
            }
        };
        paths.insert(input.name.clone(), path);
        digests.insert(
            input.name.clone(),
            InputDigest {
                source: input.source.clone(),
                hash,
            },
        );
    }
    Ok(Resolved { paths, digests })
}

/// The real path of a workspace input: symbolic links along it are
/// followed, and it must still be inside the (real) workspace.
fn real_workspace_path(
    p: &Pipeline,
    input: &str,
    rel: &Path,
    abs: &Path,
) -> Result<PathBuf, ExecError> {
    let real = abs
        .canonicalize()
        .map_err(|source| ExecError::Unresolvable {
            input: input.to_string(),
            path: rel.to_path_buf(),
            source,
        })?;
    let root = p
        .root
        .canonicalize()
        .map_err(|source| ExecError::WorkspaceUnresolvable {
            input: input.to_string(),
            path: rel.to_path_buf(),
            root: p.root.clone(),
            source,
        })?;
    if !real.starts_with(&root) {
        return Err(ExecError::OutsideWorkspace {
            input: input.to_string(),
            path: rel.to_path_buf(),
            real,
            root,
        });
    }
    Ok(real)
}

/// pipe's own files, never part of a workspace input (an input of `.`): the
/// `.pipe` dir and lock files (this pipeline's, and any `pipe.lock` or
/// `NAME.lock` beside a `NAME.yaml`/`NAME.yml` that `pipe run` wrote: another
/// tool's lock, such as Helm's `Chart.lock`, is data).
pub(crate) fn is_pipe_state(p: &Pipeline, path: &Path) -> bool {
    // Called for every file of an input: the last name is found in the
    // path's bytes, not by parsing every component (`Path::file_name`).
    let last = path.as_os_str().as_bytes().rsplit(|&b| b == b'/').next();
    let name = match last {
        Some(n) if !n.is_empty() && n != b"." && n != b".." => {
            if n != b".pipe" && !n.ends_with(b".lock") {
                return false;
            }
            std::str::from_utf8(n).ok()
        }
        _ => path.file_name().and_then(|n| n.to_str()),
    };
    let Some(name) = name else {
        return false;
    };
    let same = |a: &Path| {
        a.canonicalize()
            .is_ok_and(|a| path.canonicalize().is_ok_and(|b| a == b))
    };
    match name {
        ".pipe" => path.is_dir() && same(&p.pipe_dir()),
        "pipe.lock" => written_by_pipe(path),
        // Called for every file of an input: a plain name costs no allocation.
        _ if !name.ends_with(".lock") => false,
        _ if {
            let lock = p.lock_file();
            lock.file_name() == path.file_name() && same(&lock)
        } =>
        {
            true
        }
        _ => {
            name.strip_suffix(".lock").is_some_and(|stem| {
                ["yaml", "yml"]
                    .iter()
                    .any(|ext| path.with_file_name(format!("{stem}.{ext}")).is_file())
            }) && written_by_pipe(path)
        }
    }
}

/// Whether the lock file at `path` opens with the header `pipe run` writes.
fn written_by_pipe(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 160];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    let head = String::from_utf8_lossy(&head[..n]);
    head.starts_with('#')
        && head
            .lines()
            .next()
            .is_some_and(|l| l.contains(": written by `pipe run`."))
}
