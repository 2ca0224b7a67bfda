//! `pipe __exec-stage SPEC` (hidden): the inside of a cluster job. Loads the
//! manifest the spec names and runs its one stage into the submitter's
//! staging dir (see [`pipe_engine::cluster`]). The submitting `pipe` reads
//! the outcome from the result file beside the spec; the exit code tells the
//! cluster the same. The job's output is the stage log, so errors go there.

use std::path::Path;
use std::sync::Arc;

use pipe_engine::cluster::{exec, JobSpec};
use pipe_engine::{Interrupt, Registry};

use crate::exit;

pub fn run(spec: &Path, registry: &Registry) -> i32 {
    let interrupt = Arc::new(Interrupt::new());
    // `scancel` sends SIGTERM: the stage's processes stop as on Ctrl-C.
    crate::signals::watch(interrupt.clone());
    // A task of a multi-task job (through `srun`) knows its rank.
    let rank = std::env::var("SLURM_PROCID")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let load = |spec: &JobSpec| {
        pipe_engine::load(&spec.manifest, &spec.sets, registry).map_err(|e| e.to_string().into())
    };
    match exec(spec, load, &interrupt, rank) {
        Ok(()) => exit::OK,
        Err(e) => {
            crate::reporter::error(&pipe_engine::executor::error_chain(e.as_ref()));
            exit::STAGE_FAILED
        }
    }
}
