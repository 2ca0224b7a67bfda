//! A shared remote cache for pipe: stage results that one workspace (a CI job,
//! a teammate) computed, reused by another.
//!
//! ```text
//! pipe run ──executor──▶ RemoteCache::fetch(key) ──▶ ac/<key> ──▶ cas/<tree> ──▶ cas/<pack|file>… ──▶ Store
//!          ◀─────────── Store::put_record ◀── every blob checked against its sha256
//! ```
//!
//! The layout (see [`entry`]) is content-addressed like Bazel's Remote
//! Execution API: `cas/<sha256>` for files, packs of small files and tree
//! listings; `ac/<key>` for each stage result. A push writes blobs first and
//! the entry last (the local store's commit order), so an entry only ever names
//! blobs that were complete when it was written; a blob lost or damaged since
//! makes that stage a miss, never a failure, and the next writer re-sends it.
//!
//! With `PIPE_REMOTE_SIGNING_KEY` set, entries are HMAC-SHA256-signed on push,
//! and entries without a valid signature are ignored on read.
//!
//! Start reading at [`Remote::fetch_run`] and [`Remote::push_run`].

pub mod config;
pub mod entry;
mod error;
pub mod location;
mod transfer;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use object_store::ObjectStore;
use pipe_cache::{Digest, Key, RunRecord, Store};
use pipe_engine::StageError;

pub use error::Error;
pub use location::Location;
pub use transfer::Pushed;

/// The environment variable holding the HMAC key of result entries.
pub const SIGNING_KEY_VAR: &str = "PIPE_REMOTE_SIGNING_KEY";

/// Transfers at once.
const PARALLEL: usize = 16;

/// What happened during a run, for the CLI to report once at the end.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Results downloaded, and their bytes.
    pub fetched: usize,
    pub bytes_fetched: u64,
    /// Blobs sent, and their bytes.
    pub blobs_pushed: usize,
    pub bytes_pushed: u64,
    /// Entries ignored because they had no valid signature.
    pub unsigned: usize,
    /// Lookups or pushes that failed (the stage ran, or stays local), first few.
    pub problems: Vec<String>,
}

pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    rt: tokio::runtime::Runtime,
    secret: Option<Vec<u8>>,
    write: bool,
    report: Mutex<Report>,
    /// Blobs found missing or corrupt: re-sent on push even if the remote lists them.
    bad: Mutex<HashSet<Digest>>,
    /// Set when the remote could not be reached: later lookups are misses
    /// straight away instead of a timeout each.
    down: AtomicBool,
}

impl Remote {
    /// Open the remote at `url`; results of stages that run are pushed when `write`.
    pub fn open(url: &str, write: bool) -> Result<Remote, Error> {
        let (store, prefix) = Location::parse(url)?.open()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .map_err(|source| Error::Runtime { source })?;
        let secret = std::env::var_os(SIGNING_KEY_VAR)
            .filter(|k| !k.is_empty())
            .map(|k| k.into_encoded_bytes());
        Ok(Remote {
            url: url.to_string(),
            store,
            prefix,
            rt,
            secret,
            write,
            report: Mutex::new(Report::default()),
            bad: Mutex::new(HashSet::new()),
            down: AtomicBool::new(false),
        })
    }

    /// What happened so far.
    pub fn report(&self) -> Report {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note(&self, f: impl FnOnce(&mut Report)) {
        f(&mut self.report.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn problem(&self, e: &Error) {
        if matches!(e, Error::Store { .. }) {
            self.down.store(true, Ordering::Relaxed);
        }
        let text = error_chain(e);
        self.note(|r| {
            if r.problems.len() < 8 && !r.problems.contains(&text) {
                r.problems.push(text);
            }
        });
    }

    /// Download the result of `key` into `store`: `None` if the remote has no
    /// (valid) entry for it.
    pub fn fetch_run(&self, key: &Key, store: &Store) -> Result<Option<RunRecord>, Error> {
        self.rt.block_on(self.fetch(key, Some(store)))
    }

    /// Upload `run`, whose objects are in `store`.
    pub fn push_run(&self, run: &RunRecord, store: &Store) -> Result<Pushed, Error> {
        let pushed = self.rt.block_on(self.push(run, store))?;
        self.note(|r| {
            r.blobs_pushed += pushed.blobs;
            r.bytes_pushed += pushed.bytes;
        });
        Ok(pushed)
    }
}

impl pipe_engine::RemoteCache for Remote {
    fn lookup(&self, key: &Key) -> Option<RunRecord> {
        if self.down.load(Ordering::Relaxed) {
            return None;
        }
        self.rt.block_on(self.fetch(key, None)).unwrap_or_else(|e| {
            self.problem(&e);
            None
        })
    }

    fn fetch(&self, key: &Key, store: &Store) -> Option<RunRecord> {
        if self.down.load(Ordering::Relaxed) {
            return None;
        }
        self.fetch_run(key, store).unwrap_or_else(|e| {
            self.problem(&e);
            None
        })
    }

    fn writes(&self) -> bool {
        self.write
    }

    fn push(&self, run: &RunRecord, store: &Store) {
        if self.down.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.push_run(run, store) {
            self.problem(&e);
        }
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn fetch_or_fail(&self, key: &Key, store: &Store) -> Result<Option<RunRecord>, StageError> {
        Ok(self.fetch_run(key, store)?)
    }

    fn push_or_fail(&self, run: &RunRecord, store: &Store) -> Result<(), StageError> {
        self.push_run(run, store)?;
        Ok(())
    }

    fn put_job_file(&self, name: &str, bytes: Vec<u8>) -> Result<(), StageError> {
        let path = self.path("jobs", name);
        Ok(self.rt.block_on(self.put(&path, bytes.into()))?)
    }

    fn get_job_file(&self, name: &str) -> Result<Option<Vec<u8>>, StageError> {
        let path = self.path("jobs", name);
        Ok(self.rt.block_on(self.get_bytes(&path))?.map(Vec::from))
    }

    fn delete_job(&self, id: &str) -> Result<(), StageError> {
        Ok(self
            .rt
            .block_on(self.delete_prefix(&self.path("jobs", id)))?)
    }
}

/// `a: b: c` from an error and its sources, URL user info masked (the
/// engine's rendering, one copy).
pub use pipe_engine::executor::error_chain;
