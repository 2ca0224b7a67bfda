//! `pipe __exec-stage SPEC` (hidden): the inside of a cluster job. Loads the
//! manifest the spec names and runs its one stage (see
//! [`pipe_engine::cluster`]): into the submitter's staging dir, where SPEC
//! is, or with `--remote URL` (nodes that do not see the workspace) in a
//! scratch dir, SPEC being the job's id in the remote cache. The submitting
//! `pipe` reads the outcome from the result file beside the spec; the exit
//! code tells the cluster the same. Errors go to the job's output, which is
//! the stage log on a shared filesystem; with `--remote` the job also
//! appends them to the log it sends.

use std::path::Path;
use std::sync::Arc;

use pipe_engine::cluster::{exchange, exec};
use pipe_engine::{Interrupt, Registry, WorkspacePaths};

use crate::exit;

pub fn run(spec: &Path, remote: Option<&str>, registry: &Registry) -> i32 {
    let interrupt = Arc::new(Interrupt::new());
    // `scancel` sends SIGTERM: the stage's processes stop as on Ctrl-C.
    crate::signals::watch(interrupt.clone());
    // A task of a multi-task job (through `srun`) knows its rank.
    let rank = std::env::var("SLURM_PROCID")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    // Without a shared filesystem the node holds only the inputs of the
    // job's stage, not the workspace paths other stages name.
    let paths = match remote {
        None => WorkspacePaths::Check,
        Some(_) => WorkspacePaths::Trust,
    };
    let load = |manifest: &Path, sets: &[(String, String)]| {
        pipe_engine::load_with(manifest, sets, registry, paths).map_err(|e| e.to_string().into())
    };
    let ran = match remote {
        None => {
            let dir = exchange::Dir(spec.parent().unwrap_or(Path::new(".")).to_path_buf());
            exec(&dir, None, load, &interrupt, rank)
        }
        Some(url) => match pipe_remote::Remote::open(url, true) {
            Ok(remote) => {
                let objects = exchange::Objects::new(&remote, spec.to_string_lossy().into_owned());
                exec(&objects, Some(&remote), load, &interrupt, rank)
            }
            Err(e) => Err(e.into()),
        },
    };
    match ran {
        Ok(()) => exit::OK,
        Err(e) => {
            crate::reporter::error(&pipe_engine::executor::error_chain(e.as_ref()));
            exit::STAGE_FAILED
        }
    }
}
