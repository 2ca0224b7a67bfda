//! `StatCache`: remembers file hashes by (size, mtime, inode) so that unchanged
//! large inputs are not hashed again.
//!
//! Racy entries are never trusted: a file modified within the mtime granularity
//! of the moment it was hashed could change again without its mtime moving, so
//! an entry whose mtime is not at least [`RACY_NS`] older than the time it was
//! recorded is re-hashed (git's "racily clean" rule).
//!
//! A no-op run looks up every input file here, so the lookup of an unchanged
//! file takes no lock and allocates nothing: the file is kept as read, with
//! the offset of each record; as the records are sorted by path, a lookup is
//! a binary search over them, and the lookups of one folder's files touch
//! the same few pages. Loading copies nothing and hashes nothing: one pass
//! checks that the records are whole and strictly sorted. What a run adds or
//! forgets goes to a small map beside it, merged on [`StatCache::save`].
//!
//! It also remembers folders' listings: adding, removing or renaming an
//! entry of a folder moves its mtime, so a folder whose stat is as recorded
//! (and was not racily clean then) holds the names it was listed with, and a
//! no-op run does not list it again (`getdents` and sorting its names were
//! a fifth of the work). Its files are still stated one by one.
//!
//! The file (`stat-cache-v3.bin`) is [`MAGIC`] followed by records sorted by
//! path: the path's length (u32), the path's bytes, then the fixed fields of
//! [`StatEntry`] (little endian). A folder's record has its path and a `/`
//! (no file's path ends in one), and its names follow the fixed fields: their
//! length in bytes (u32), then each name and a NUL, sorted. A missing,
//! foreign or damaged file reads as an empty cache: it only costs re-hashing.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::atomic::write_atomic;
use crate::error::{IoContext, Result};
use crate::mapped::MappedFile;
use crate::tree::FileHasher;
use crate::{Digest, FileStat};

const RACY_NS: i128 = 2_000_000_000;

/// The first bytes of a stat cache file; bump the version with any change.
const MAGIC: &[u8] = b"pipe-stat-cache-v3\n";

/// Bytes of a record after its path.
const FIXED: usize = 8 + 16 + 16 + 8 + 8 + 16 + 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// What a file or folder stated as `stat` looked like at `recorded_ns`.
    fn of(stat: &FileStat, recorded_ns: i128, sha256: Digest) -> StatEntry {
        StatEntry {
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            ctime_ns: stat.ctime_ns,
            ino: stat.ino,
            dev: stat.dev,
            recorded_ns,
            sha256,
        }
    }

    fn matches(&self, stat: &FileStat) -> bool {
        self.size == stat.size
            && self.mtime_ns == stat.mtime_ns
            && self.ctime_ns == stat.ctime_ns
            && self.ino == stat.ino
            && self.dev == stat.dev
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

/// The key of the folder at `path`'s record.
fn folder_key(path: &Path) -> Vec<u8> {
    let mut key = path.as_os_str().as_bytes().to_vec();
    key.push(b'/');
    key
}

/// What a run recorded for a path: a file's entry, or a folder's and the
/// names it was listed with.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    entry: StatEntry,
    names: Option<Box<[u8]>>,
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

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

thread_local! {
    /// The index after this thread's last record found by [`Loaded::get`]
    /// (in whichever cache: it is only a guess, checked before use).
    static NEXT: Cell<usize> = const { Cell::new(0) };
}

/// The file as loaded: its bytes, and the range of each record's path in
/// them, in (strictly increasing) path order; the record's [`FIXED`] bytes
/// follow its path (and a folder's names follow those).
#[derive(Default)]
struct Loaded {
    bytes: MappedFile,
    paths: Vec<(usize, usize)>,
}

impl Loaded {
    /// Check `bytes` and find its records; `None` if it is not a whole
    /// stat cache file with records sorted by path.
    fn parse(file: MappedFile) -> Option<Loaded> {
        let bytes = file.bytes();
        let mut paths = Vec::new();
        let mut at = MAGIC.len();
        if !bytes.starts_with(MAGIC) {
            return None;
        }
        let mut last: Option<&[u8]> = None;
        while at < bytes.len() {
            let len = u32::from_le_bytes(*bytes.get(at..)?.first_chunk::<4>()?);
            let start = at.checked_add(4)?;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            at = end.checked_add(FIXED)?;
            let path = bytes.get(start..end)?;
            if path.ends_with(b"/") {
                let len = u32::from_le_bytes(*bytes.get(at..)?.first_chunk::<4>()?);
                at = at.checked_add(4)?.checked_add(usize::try_from(len).ok()?)?;
            }
            if at > bytes.len() || last.is_some_and(|last| last >= path) {
                return None;
            }
            last = Some(path);
            paths.push((start, end));
        }
        Some(Loaded { bytes: file, paths })
    }

    fn path(&self, (start, end): (usize, usize)) -> &[u8] {
        &self.bytes.bytes()[start..end]
    }

    fn entry(&self, (_, end): (usize, usize)) -> Option<StatEntry> {
        StatEntry::decode(self.bytes.bytes().get(end..)?)
    }

    /// The names of a folder's record (`parse` checked they are there).
    fn names(&self, (_, end): (usize, usize)) -> Option<&[u8]> {
        let at = end.checked_add(FIXED)?;
        let bytes = self.bytes.bytes();
        let len = u32::from_le_bytes(*bytes.get(at..)?.first_chunk::<4>()?);
        bytes.get(at + 4..(at + 4).checked_add(usize::try_from(len).ok()?)?)
    }

    /// The index of the record of `path`.
    fn find(&self, path: &[u8]) -> Option<usize> {
        // A folder's files are looked up in path order (each thread taking a
        // run of them), so the record after this thread's last find is tried
        // before a binary search: one comparison, on memory just read.
        let guess = NEXT.get();
        let i = match self.paths.get(guess) {
            Some(&r) if self.path(r) == path => guess,
            _ => self.paths.partition_point(|&r| self.path(r) < path),
        };
        let r = *self.paths.get(i)?;
        if self.path(r) != path {
            return None;
        }
        NEXT.set(i + 1);
        Some(i)
    }

    fn get(&self, path: &[u8]) -> Option<StatEntry> {
        self.entry(*self.paths.get(self.find(path)?)?)
    }

    /// A folder's entry and names.
    fn folder(&self, key: &[u8]) -> Option<(StatEntry, &[u8])> {
        let r = *self.paths.get(self.find(key)?)?;
        Some((self.entry(r)?, self.names(r)?))
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], StatEntry, Option<&[u8]>)> {
        self.paths.iter().filter_map(|&r| {
            let path = self.path(r);
            let names = if path.ends_with(b"/") {
                Some(self.names(r)?)
            } else {
                None
            };
            Some((path, self.entry(r)?, names))
        })
    }
}

/// A persistent map from absolute path to the hash of its content at a given stat.
/// It is machine-local state: nothing from it goes into a key except the hashes.
pub struct StatCache {
    file: PathBuf,
    /// The file, mapped on first use: a store that hashes nothing (`pipe
    /// show`, the history of a run) never reads it.
    loaded: OnceLock<Loaded>,
    /// Entries recorded (`Some`) or forgotten (`None`) since loading; they
    /// override `loaded`.
    changes: Mutex<HashMap<Box<[u8]>, Option<Record>>>,
    /// Whether `changes` is not empty (read without its lock).
    dirty: AtomicBool,
    /// Whether `changes` holds anything not yet saved.
    unsaved: AtomicBool,
}

impl StatCache {
    fn loaded(&self) -> &Loaded {
        self.loaded.get_or_init(|| {
            MappedFile::open(&self.file)
                .ok()
                .and_then(Loaded::parse)
                .unwrap_or_default()
        })
    }

    /// The cache kept in `file` (read on first use); a missing or unreadable
    /// cache starts empty.
    pub fn load(file: PathBuf) -> StatCache {
        StatCache {
            file,
            loaded: OnceLock::new(),
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
        let mut merged: BTreeMap<&[u8], (StatEntry, Option<&[u8]>)> = self
            .loaded()
            .iter()
            .filter(|(path, _, _)| !changes.contains_key(*path))
            .map(|(path, entry, names)| (path, (entry, names)))
            .collect();
        for (path, record) in changes.iter() {
            if let Some(r) = record {
                merged.insert(path, (r.entry, r.names.as_deref()));
            }
        }
        let mut bytes = MAGIC.to_vec();
        for (path, (entry, names)) in merged {
            // A path (or listing) over 4 GiB cannot exist; leave it out
            // rather than fail.
            let Ok(len) = u32::try_from(path.len()) else {
                continue;
            };
            let names = match names.map(|n| u32::try_from(n.len()).map(|len| (len, n))) {
                Some(Err(_)) => continue,
                Some(Ok(names)) => Some(names),
                None => None,
            };
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(path);
            entry.encode(&mut bytes);
            if let Some((len, names)) = names {
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(names);
            }
        }
        write_atomic(&self.file, &bytes)
            .inspect_err(|_| self.unsaved.store(true, Ordering::Release))
    }

    /// Forget `path`, e.g. after it was found corrupt.
    pub fn forget(&self, path: &Path) {
        let key = path.as_os_str().as_bytes();
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let known =
            self.loaded().get(key).is_some() || changes.get(key).is_some_and(Option::is_some);
        if known {
            changes.insert(key.into(), None);
            self.dirty.store(true, Ordering::Release);
            self.unsaved.store(true, Ordering::Release);
        }
    }

    /// Remember `record` for `key` (saved with the next [`StatCache::save`]).
    fn record(&self, key: &[u8], record: Record) {
        self.changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.into(), Some(record));
        self.dirty.store(true, Ordering::Release);
        self.unsaved.store(true, Ordering::Release);
    }

    /// The recorded hash of `path` if `stat` still matches it.
    fn lookup(&self, key: &[u8], stat: &FileStat) -> Option<Digest> {
        if self.dirty.load(Ordering::Acquire) {
            let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(change) = changes.get(key) {
                return change
                    .as_ref()
                    .filter(|r| r.entry.matches(stat))
                    .map(|r| r.entry.sha256);
            }
        }
        self.loaded()
            .get(key)
            .filter(|e| e.matches(stat))
            .map(|e| e.sha256)
    }
}

impl FileHasher for StatCache {
    fn hash(&self, path: &Path, stat: &FileStat) -> Result<Digest> {
        let key = path.as_os_str().as_bytes();
        if let Some(sha256) = self.lookup(key, stat) {
            return Ok(sha256);
        }
        let recorded_ns = now_ns();
        let sha256 = Digest::of_file(path).ctx("read", path)?;
        // Stat again: if the file changed while we read it, do not remember it.
        let after = std::fs::metadata(path).ctx("read metadata of", path)?;
        let after = FileStat::from(&after);
        if after.mtime_ns == stat.mtime_ns && after.size == stat.size {
            let entry = StatEntry::of(stat, recorded_ns, sha256);
            self.record(key, Record { entry, names: None });
        }
        Ok(sha256)
    }

    fn listing(&self, path: &Path, stat: &FileStat) -> Option<Cow<'_, [u8]>> {
        let key = folder_key(path);
        if self.dirty.load(Ordering::Acquire) {
            let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(change) = changes.get(key.as_slice()) {
                let r = change.as_ref().filter(|r| r.entry.matches(stat))?;
                return r.names.as_deref().map(|n| Cow::Owned(n.to_vec()));
            }
        }
        let (entry, names) = self.loaded().folder(&key)?;
        entry.matches(stat).then_some(Cow::Borrowed(names))
    }

    fn listed(&self, path: &Path, stat: &FileStat, names: &[u8]) {
        let recorded_ns = now_ns();
        if recorded_ns - stat.mtime_ns < RACY_NS {
            // It would not be trusted.
            return;
        }
        let entry = StatEntry::of(stat, recorded_ns, Digest([0; 32]));
        let names = Some(names.into());
        self.record(&folder_key(path), Record { entry, names });
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
            let meta = FileStat::from(&fs::metadata(p).unwrap());
            assert_eq!(cache.hash(p, &meta).unwrap(), Digest::of_file(p).unwrap());
        }
        cache.save().unwrap();

        let cache = StatCache::load(file.clone());
        assert_eq!(cache.loaded().paths.len(), 2);
        let meta = FileStat::from(&fs::metadata(&a).unwrap());
        assert_eq!(
            cache.lookup(a.as_os_str().as_bytes(), &meta),
            Some(Digest::of(b"a"))
        );
        cache.forget(&a);
        assert_eq!(cache.lookup(a.as_os_str().as_bytes(), &meta), None);
        cache.save().unwrap();
        let cache = StatCache::load(file.clone());
        assert_eq!(cache.loaded().paths.len(), 1);

        // A damaged file reads as empty.
        let mut bytes = fs::read(&file).unwrap();
        bytes.truncate(bytes.len() - 1);
        fs::write(&file, bytes).unwrap();
        assert_eq!(StatCache::load(file).loaded().paths.len(), 0);
    }

    /// A cache file of `paths` (in the given order), each with `size` = its index.
    fn file_of(dir: &Path, paths: &[&str]) -> PathBuf {
        let mut bytes = MAGIC.to_vec();
        for (i, p) in paths.iter().enumerate() {
            bytes.extend_from_slice(&(p.len() as u32).to_le_bytes());
            bytes.extend_from_slice(p.as_bytes());
            StatEntry {
                size: i as u64,
                mtime_ns: 0,
                ctime_ns: 0,
                ino: 0,
                dev: 0,
                recorded_ns: 0,
                sha256: Digest::of(p.as_bytes()),
            }
            .encode(&mut bytes);
        }
        let file = dir.join("cache.bin");
        fs::write(&file, bytes).unwrap();
        file
    }

    fn size_of(cache: &StatCache, path: &str) -> Option<u64> {
        cache.loaded().get(path.as_bytes()).map(|e| e.size)
    }

    #[test]
    fn lookups_find_each_record_in_any_order_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        // `/a` < `/a.b` < `/a/x`: a folder's files need not follow it.
        let paths = ["/a", "/a.b", "/a/x", "/a/y", "/b/x", "/b/y/z"];
        let cache = StatCache::load(file_of(d.path(), &paths));
        for order in [[0, 1, 2, 3, 4, 5], [5, 3, 4, 0, 2, 1], [2, 2, 3, 1, 0, 5]] {
            for i in order {
                assert_eq!(size_of(&cache, paths[i]), Some(i as u64), "{}", paths[i]);
            }
        }
        for missing in ["", "/", "/a/", "/a/xx", "/a/w", "/c", "/b/y"] {
            assert_eq!(size_of(&cache, missing), None, "{missing}");
        }
    }

    #[test]
    fn a_file_whose_records_are_not_strictly_sorted_reads_as_empty() {
        let d = tempfile::tempdir().unwrap();
        for paths in [&["/b", "/a"][..], &["/a", "/a"][..]] {
            let cache = StatCache::load(file_of(d.path(), paths));
            assert_eq!(cache.loaded().paths.len(), 0, "{paths:?}");
            assert_eq!(size_of(&cache, "/a"), None);
        }
        let cache = StatCache::load(file_of(d.path(), &["/a", "/b"]));
        assert_eq!(cache.loaded().paths.len(), 2);
    }
}
