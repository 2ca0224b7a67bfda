//! Data-parallel fine-tuning on libtorch's c10d (gloo, loopback), through the
//! real `pipe` and `pipe-worker` binaries, on the tests' tiny BERT.

mod common;

use std::process::Command;

use common::{stderr, worker};

/// Two ranks (rank 0 starts rank 1) sum `[rank + 1, 10 (rank + 1)]`.
#[test]
fn allreduce_of_known_tensors_across_two_ranks() {
    let out = Command::new(worker())
        .args(["allreduce-check", "2"])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("MASTER_PORT")
        .env("PIPE_DIST_TIMEOUT", "60")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc, serde_json::json!({"world": 2, "sum": [3.0, 30.0]}));
}
