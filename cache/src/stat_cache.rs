//! `StatCache`: remembers file hashes by (size, mtime, inode) so that unchanged
//! large inputs are not hashed again.
//!
//! Racy entries are never trusted: a file modified within the mtime granularity
//! of the moment it was hashed could change again without its mtime moving, so
//! an entry whose mtime is not at least [`RACY_NS`] older than the time it was
//! recorded is re-hashed (git's "racily clean" rule).
//!
//! A no-op run looks up every input file here, so the lookup of an unchanged
//! file takes no lock and allocates nothing: the records are read into one
//! buffer of paths and one vector of entries, indexed by a hash of the path. What a run adds or forgets goes to a small map beside it, merged on
//! [`StatCache::save`].
//!
//! The file (`stat-cache-v2.bin`) is [`MAGIC`] followed by records sorted by
//! path: the path's length (u32), the path's bytes, then the fixed fields of
//! [`StatEntry`] (little endian). A missing, foreign or damaged file reads as
//! an empty cache: it only costs re-hashing.

use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata;
use std::hash::{BuildHasher, RandomState};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::atomic::write_atomic;
use crate::error::{IoContext, Result};
use crate::tree::FileHasher;
use crate::Digest;

const RACY_NS: i128 = 2_000_000_000;

/// The first bytes of a stat cache file; bump the version with any change.
const MAGIC: &[u8] = b"pipe-stat-cache-v2\n";

/// Bytes of a record after its path.
const FIXED: usize = 8 + 16 + 16 + 8 + 8 + 16 + 32;

#[derive(Clone, Debug, PartialEq, Eq)]
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

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.ctime_ns.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.recorded_ns.to_le_bytes());
        out.extend_from_slice(&self.sha256.0);
    }

    /// Decode the [`FIXED`] bytes of a record; `None` if there are fewer.
    fn decode(b: &[u8]) -> Option<StatEntry> {
        let mut r = Reader(b);
        Some(StatEntry {
            size: u64::from_le_bytes(r.take()?),
            mtime_ns: i128::from_le_bytes(r.take()?),
            ctime_ns: i128::from_le_bytes(r.take()?),
            ino: u64::from_le_bytes(r.take()?),
            dev: u64::from_le_bytes(r.take()?),
            recorded_ns: i128::from_le_bytes(r.take()?),
            sha256: Digest(r.take()?),
        })
    }
}

/// Takes fixed-size arrays off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
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

/// The records of the file as loaded: one buffer of paths, the entries, each
/// naming its path as a range of that buffer, and an index from a hash of the
/// path to the entry (the path is compared on lookup; of two paths with the
/// same hash, the second is simply not cached).
#[derive(Default)]
struct Loaded {
    paths: Vec<u8>,
    entries: Vec<(Range<usize>, StatEntry)>,
    index: HashMap<u64, usize>,
    hasher: RandomState,
}

impl Loaded {
    fn parse(bytes: &[u8]) -> Option<Loaded> {
        let mut rest = bytes.strip_prefix(MAGIC)?;
        let mut loaded = Loaded::default();
        while !rest.is_empty() {
            let mut r = Reader(rest);
            let len = usize::try_from(u32::from_le_bytes(r.take()?)).ok()?;
            let path = r.0.get(..len)?;
            let entry = StatEntry::decode(r.0.get(len..)?)?;
            rest = r.0.get(len + FIXED..)?;
            let start = loaded.paths.len();
            loaded.paths.extend_from_slice(path);
            loaded.entries.push((start..loaded.paths.len(), entry));
        }
        loaded.index.reserve(loaded.entries.len());
        for (i, (range, _)) in loaded.entries.iter().enumerate() {
            let hash = loaded.hasher.hash_one(&loaded.paths[range.clone()]);
            loaded.index.entry(hash).or_insert(i);
        }
        Some(loaded)
    }

    fn get(&self, path: &[u8]) -> Option<&StatEntry> {
        let i = *self.index.get(&self.hasher.hash_one(path))?;
        let (range, entry) = self.entries.get(i)?;
        (self.paths.get(range.clone())? == path).then_some(entry)
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &StatEntry)> {
        self.entries
            .iter()
            .map(|(r, e)| (&self.paths[r.clone()], e))
    }
}

/// A persistent map from absolute path to the hash of its content at a given stat.
/// It is machine-local state: nothing from it goes into a key except the hashes.
pub struct StatCache {
    file: PathBuf,
    loaded: Loaded,
    /// Entries recorded (`Some`) or forgotten (`None`) since loading; they
    /// override `loaded`.
    changes: Mutex<HashMap<Box<[u8]>, Option<StatEntry>>>,
    /// Whether `changes` is not empty (read without its lock).
    dirty: AtomicBool,
    /// Whether `changes` holds anything not yet saved.
    unsaved: AtomicBool,
}

impl StatCache {
    /// Load from `file`; a missing or unreadable cache starts empty.
    pub fn load(file: PathBuf) -> StatCache {
        let loaded = std::fs::read(&file)
            .ok()
            .and_then(|b| Loaded::parse(&b))
            .unwrap_or_default();
        StatCache {
            file,
            loaded,
            changes: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
            unsaved: AtomicBool::new(false),
        }
    }

    /// Write back if anything changed.
    pub fn save(&self) -> Result<()> {
        if !self.unsaved.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let mut merged: BTreeMap<&[u8], &StatEntry> = self
            .loaded
            .iter()
            .filter(|(path, _)| !changes.contains_key(*path))
            .collect();
        for (path, entry) in changes.iter() {
            if let Some(entry) = entry {
                merged.insert(path, entry);
            }
        }
        let mut bytes = MAGIC.to_vec();
        for (path, entry) in merged {
            // A path longer than 4 GiB cannot exist; leave it out rather than fail.
            let Ok(len) = u32::try_from(path.len()) else {
                continue;
            };
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(path);
            entry.encode(&mut bytes);
        }
        write_atomic(&self.file, &bytes)
            .inspect_err(|_| self.unsaved.store(true, Ordering::Release))
    }

    /// Forget `path`, e.g. after it was found corrupt.
    pub fn forget(&self, path: &Path) {
        let key = path.as_os_str().as_bytes();
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let known = self.loaded.get(key).is_some() || changes.get(key).is_some_and(Option::is_some);
        if known {
            changes.insert(key.into(), None);
            self.dirty.store(true, Ordering::Release);
            self.unsaved.store(true, Ordering::Release);
        }
    }

    /// The recorded hash of `path` if `meta` still matches it.
    fn lookup(&self, key: &[u8], meta: &Metadata) -> Option<Digest> {
        if self.dirty.load(Ordering::Acquire) {
            let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(change) = changes.get(key) {
                return change
                    .as_ref()
                    .filter(|e| e.matches(meta))
                    .map(|e| e.sha256);
            }
        }
        self.loaded
            .get(key)
            .filter(|e| e.matches(meta))
            .map(|e| e.sha256)
    }
}

impl FileHasher for StatCache {
    fn hash(&self, path: &Path, meta: &Metadata) -> Result<Digest> {
        let key = path.as_os_str().as_bytes();
        if let Some(sha256) = self.lookup(key, meta) {
            return Ok(sha256);
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
            self.changes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.into(), Some(entry));
            self.dirty.store(true, Ordering::Release);
            self.unsaved.store(true, Ordering::Release);
        }
        Ok(sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn settled(path: &Path) {
        // Old enough not to be racily clean.
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - std::time::Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn entries_survive_save_and_load_and_forget() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        fs::write(&a, "a").unwrap();
        fs::write(&b, "b").unwrap();
        settled(&a);
        settled(&b);
        let file = d.path().join("cache.bin");
        let cache = StatCache::load(file.clone());
        for p in [&a, &b] {
            let meta = fs::metadata(p).unwrap();
            assert_eq!(cache.hash(p, &meta).unwrap(), Digest::of_file(p).unwrap());
        }
        cache.save().unwrap();

        let cache = StatCache::load(file.clone());
        assert_eq!(cache.loaded.entries.len(), 2);
        let meta = fs::metadata(&a).unwrap();
        assert_eq!(
            cache.lookup(a.as_os_str().as_bytes(), &meta),
            Some(Digest::of(b"a"))
        );
        cache.forget(&a);
        assert_eq!(cache.lookup(a.as_os_str().as_bytes(), &meta), None);
        cache.save().unwrap();
        let cache = StatCache::load(file.clone());
        assert_eq!(cache.loaded.entries.len(), 1);

        // A damaged file reads as empty.
        let mut bytes = fs::read(&file).unwrap();
        bytes.truncate(bytes.len() - 1);
        fs::write(&file, bytes).unwrap();
        assert_eq!(StatCache::load(file).loaded.entries.len(), 0);
    }
}
