//! `StatCache`: remembers file hashes by (size, mtime, inode) so that unchanged
//! large inputs are not hashed again.
//!
//! Racy entries are never trusted: a file modified within the mtime granularity
//! of the moment it was hashed could change again without its mtime moving, so
//! an entry whose mtime is not at least [`RACY_NS`] older than the time it was
//! recorded is re-hashed (git's "racily clean" rule).

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::error::{IoContext, Result};
use crate::tree::FileHasher;
use crate::Digest;

const RACY_NS: i128 = 2_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StatEntry {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
    recorded_ns: i128,
    sha256: Digest,
}

impl StatEntry {
    fn matches(&self, meta: &Metadata) -> bool {
        self.size == meta.len()
            && self.mtime_ns == mtime_ns(meta)
            && self.ctime_ns == ctime_ns(meta)
            && self.ino == meta.ino()
            && self.dev == meta.dev()
            && self.recorded_ns - self.mtime_ns >= RACY_NS
    }
}

fn mtime_ns(m: &Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn ctime_ns(m: &Metadata) -> i128 {
    m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// A persistent map from absolute path to the hash of its content at a given stat.
/// It is machine-local state: nothing from it goes into a key except the hashes.
pub struct StatCache {
    file: PathBuf,
    entries: Mutex<BTreeMap<String, StatEntry>>,
    dirty: AtomicBool,
}

impl StatCache {
    /// Load from `file`; a missing or unreadable cache starts empty.
    pub fn load(file: PathBuf) -> StatCache {
        let entries = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StatCache {
            file,
            entries: Mutex::new(entries),
            dirty: AtomicBool::new(false),
        }
    }

    /// Write back if anything changed.
    pub fn save(&self) -> Result<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = serde_json::to_vec(&*entries).unwrap_or_default();
        write_atomic(&self.file, &bytes).inspect_err(|_| self.dirty.store(true, Ordering::Relaxed))
    }

    /// Forget `path`, e.g. after it was found corrupt.
    pub fn forget(&self, path: &Path) {
        let key = path.to_string_lossy().into_owned();
        if self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .is_some()
        {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }
}

impl FileHasher for StatCache {
    fn hash(&self, path: &Path, meta: &Metadata) -> Result<Digest> {
        let key = path.to_string_lossy().into_owned();
        if let Some(e) = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if e.matches(meta) {
                return Ok(e.sha256);
            }
        }
        let recorded_ns = now_ns();
        let sha256 = Digest::of_file(path).ctx("read", path)?;
        // Stat again: if the file changed while we read it, do not remember it.
        let after = std::fs::metadata(path).ctx("read metadata of", path)?;
        if mtime_ns(&after) == mtime_ns(meta) && after.len() == meta.len() {
            let entry = StatEntry {
                size: meta.len(),
                mtime_ns: mtime_ns(meta),
                ctime_ns: ctime_ns(meta),
                ino: meta.ino(),
                dev: meta.dev(),
                recorded_ns,
                sha256,
            };
            self.entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, entry);
            self.dirty.store(true, Ordering::Relaxed);
        }
        Ok(sha256)
    }
}
