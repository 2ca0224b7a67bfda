//! `RemoteCache`: the seam to a shared cache that other workspaces fill.
//!
//! The engine only asks two questions of it: "do you hold the result of this
//! key?" (then bring its objects and record into my store) and "keep this
//! result". The implementation (object storage, a shared filesystem) lives in
//! the `pipe-remote` crate; the CLI builds it and hands it to
//! [`crate::scheduler::run_with_remote`].
//!
//! A remote never makes a stage fail: an unreachable remote, a missing or
//! corrupt blob or an entry with a bad signature is a miss (the stage runs),
//! and the implementation keeps its own count of such problems for the CLI to
//! report once. A fetched result goes through the same checks as a local one,
//! so an effect (`upload`, `deploy`, `smoke_test`) is still verified on this
//! machine before it counts as cached.

use pipe_cache::{Key, RunRecord, Store};

use crate::stage::StageError;

pub trait RemoteCache: Sync {
    /// The result of `key`, without downloading its objects (for planning).
    fn lookup(&self, key: &Key) -> Option<RunRecord>;
    /// Download the result of `key` into `store`: objects first, then the run
    /// record. `None` on a miss.
    fn fetch(&self, key: &Key, store: &Store) -> Option<RunRecord>;
    /// Whether results of stages that ran are to be pushed.
    fn writes(&self) -> bool;
    /// Upload a result whose objects are in `store`: objects first, the entry last.
    fn push(&self, run: &RunRecord, store: &Store);

    /// The remote's URL, for a cluster job to open it.
    fn url(&self) -> &str;

    // A cluster job that does not see the workspace (`--cluster-io remote`)
    // takes its inputs from the remote and leaves its output there. For it a
    // problem is an error, not a miss.

    /// [`RemoteCache::fetch`], failing with the reason.
    fn fetch_or_fail(&self, key: &Key, store: &Store) -> Result<Option<RunRecord>, StageError>;
    /// [`RemoteCache::push`], failing with the reason (whether or not the
    /// run pushes its results).
    fn push_or_fail(&self, run: &RunRecord, store: &Store) -> Result<(), StageError>;
    /// A job's small control files (its spec, heartbeat, result, log), as
    /// objects under `jobs/`: `name` is `ID/FILE`.
    fn put_job_file(&self, name: &str, bytes: Vec<u8>) -> Result<(), StageError>;
    fn get_job_file(&self, name: &str) -> Result<Option<Vec<u8>>, StageError>;
    /// Delete the files of job `id`.
    fn delete_job(&self, id: &str) -> Result<(), StageError>;
}
