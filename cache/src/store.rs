//! `Store`: the content-addressed store under `.pipe/cas-v1/`.
//!
//! ```text
//! .pipe/cas-v1/objects/ab/abcdef…      file blobs by sha256, read-only (`…-x`: executable copy)
//! .pipe/cas-v1/runs/<key>.json         RunRecord: key record + output tree, one per key
//! .pipe/cas-v1/tmp/                    staging dirs of running stages (same filesystem)
//! ```
//!
//! Commit order, so that a SIGKILL at any moment leaves no partial entry:
//! 1. the stage writes into a staging dir under `tmp/`;
//! 2. each file is fsynced, made read-only and renamed into `objects/`
//!    (an object is complete the moment it has its name);
//! 3. the run record is written atomically (temp file, fsync, rename).
//!
//! A run record therefore only ever names objects that are complete. Objects
//! without a record (a crash between 2 and 3) are harmless and `gc` drops them.
//! Staging dirs left by a crash are removed by [`Store::clean_tmp`] under the
//! workspace lock.
//!
//! Outputs are materialised as hard links to the read-only objects (a copy where
//! links are impossible), so restoring a cached multi-GB output costs one link
//! per file, and checking that it is still intact costs one `stat` per file.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, Metadata};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::{sync_dir, write_atomic};
use crate::error::{Error, IoContext, Result};
use crate::stat_cache::StatCache;
use crate::tree::{EntryKind, FileHasher, Tree};
use crate::{Digest, FileStat, Key, KeyRecord};

/// On-disk layout version: bump on any format change.
pub const LAYOUT: &str = "cas-v1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub key: Key,
    pub record: KeyRecord,
    pub output_hash: Digest,
    pub output: Tree,
    /// Wall time of the run that produced it.
    pub seconds: f64,
    /// Facts the stage pinned for later runs (copied into `pipe.lock`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, String>,
    /// Figures about the run that are not part of its output (e.g. training
    /// time), so that the output stays a function of the key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, f64>,
}

pub struct Store {
    cas: PathBuf,
    stat: StatCache,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub records_removed: usize,
    pub objects_removed: usize,
    pub objects_kept: usize,
    pub bytes_freed: u64,
}

impl Store {
    /// Open (creating if needed) the store inside a workspace's `.pipe` dir.
    pub fn open(pipe_dir: &Path) -> Result<Store> {
        let cas = pipe_dir.join(LAYOUT);
        for sub in ["objects", "runs", "tmp"] {
            let d = cas.join(sub);
            fs::create_dir_all(&d).ctx("create directory", &d)?;
        }
        Ok(Store {
            stat: StatCache::load(pipe_dir.join("stat-cache-v3.bin")),
            cas,
        })
    }

    /// The stat cache, for hashing workspace inputs.
    pub fn stat_cache(&self) -> &StatCache {
        &self.stat
    }

    /// Persist machine-local state (the stat cache).
    pub fn save(&self) -> Result<()> {
        self.stat.save()
    }

    /// A fresh staging dir for a running stage; removed when dropped.
    pub fn staging_dir(&self) -> Result<tempfile::TempDir> {
        let tmp = self.cas.join("tmp");
        tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(&tmp)
            .ctx("create a staging dir in", tmp)
    }

    /// Remove staging dirs left behind by killed runs, and the temp files of
    /// atomic writes they interrupted (`.tmp…` beside run records and in
    /// `.pipe/`). Call with the workspace lock held.
    pub fn clean_tmp(&self) -> Result<()> {
        let tmp = self.cas.join("tmp");
        for e in fs::read_dir(&tmp).ctx("list", &tmp)? {
            let p = e.ctx("list", &tmp)?.path();
            make_writable(&p);
            let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
        }
        let pipe_dir = self.cas.parent().unwrap_or(&self.cas);
        for dir in [self.cas.join("runs"), pipe_dir.to_path_buf()] {
            for e in fs::read_dir(&dir).ctx("list", &dir)? {
                let e = e.ctx("list", &dir)?;
                if e.file_name().to_string_lossy().starts_with(".tmp")
                    && e.file_type().is_ok_and(|t| t.is_file())
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    fn record_path(&self, key: &Key) -> PathBuf {
        self.cas.join("runs").join(format!("{}.json", key.to_hex()))
    }

    /// Where the object `digest` lives (it may be absent).
    pub fn object_path(&self, digest: &Digest, executable: bool) -> PathBuf {
        let hex = digest.to_hex();
        let name = if executable {
            format!("{hex}-x")
        } else {
            hex.clone()
        };
        self.cas.join("objects").join(&hex[..2]).join(name)
    }

    /// The run record of `key`, if one was committed and can be read.
    ///
    /// A record that does not parse (truncated by a full disk, edited by hand)
    /// is a miss, not an error: the stage runs again and its commit replaces
    /// the record. Failing instead would fail every rerun until `--force`.
    pub fn get(&self, key: &Key) -> Result<Option<RunRecord>> {
        let path = self.record_path(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice::<RunRecord>(&bytes)
                .ok()
                .filter(|run| run.key == *key)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", path),
        }
    }

    /// Move the staged output of a finished stage into the store and write its
    /// run record (in that order; see the module docs).
    pub fn commit(
        &self,
        key: Key,
        record: KeyRecord,
        staged: &Path,
        seconds: f64,
        pins: BTreeMap<String, String>,
        stats: BTreeMap<String, f64>,
    ) -> Result<RunRecord> {
        // Staged paths are gone after the commit: not worth a stat cache entry.
        let output = Tree::scan(staged, &crate::PlainHasher)?;
        let mut touched = HashSet::new();
        for (rel, digest, executable, _) in output.files() {
            let obj = self.object_path(&digest, executable);
            // An intact object is shared; a damaged one is replaced by the good
            // copy through the rename below, never deleted first (another stage
            // may be linking it right now).
            if self.check_object(&digest, executable).is_ok() {
                continue;
            }
            let src = staged.join(rel);
            let dir = obj.parent().unwrap_or(&self.cas);
            fs::create_dir_all(dir).ctx("create directory", dir)?;
            let mode = if executable { 0o555 } else { 0o444 };
            fs::set_permissions(&src, fs::Permissions::from_mode(mode))
                .ctx("set permissions of", &src)?;
            fs::File::open(&src)
                .and_then(|f| f.sync_all())
                .ctx("sync", &src)?;
            if fs::rename(&src, &obj).is_err() {
                // Staging is inside the store, so this only happens for odd mounts.
                let tmp = obj.with_extension("partial");
                fs::copy(&src, &tmp).ctx("copy into the store", &tmp)?;
                fs::File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .ctx("sync", &tmp)?;
                fs::rename(&tmp, &obj).ctx("rename into the store", &obj)?;
            }
            touched.insert(dir.to_path_buf());
        }
        for dir in touched {
            sync_dir(&dir)?;
        }
        let run = RunRecord {
            key,
            output_hash: output.hash(),
            record,
            output,
            seconds,
            pins,
            stats,
        };
        self.write_record(&run)?;
        Ok(run)
    }

    /// Copy the files of `tree`, a scan of `src`, into the store as the
    /// output of a run of `key`, then write its record: how a workspace input
    /// travels to a remote cache for a cluster job that does not see the
    /// workspace. A file whose content is not the scan's is an error.
    pub fn ingest(&self, key: Key, record: KeyRecord, src: &Path, tree: Tree) -> Result<RunRecord> {
        let tmp_dir = self.tmp_dir();
        for (rel, digest, executable, _) in tree.files() {
            if self.check_object(&digest, executable).is_ok() {
                continue;
            }
            let from = if rel.is_empty() {
                src.to_path_buf()
            } else {
                src.join(rel)
            };
            let tmp =
                tempfile::NamedTempFile::new_in(&tmp_dir).ctx("create a file in", &tmp_dir)?;
            fs::copy(&from, tmp.path()).ctx("copy into the store", &from)?;
            if Digest::of_file(tmp.path()).ctx("read", tmp.path())? != digest {
                return Err(Error::Changed { path: from });
            }
            let (_, path) = tmp.keep().map_err(|e| e.error).ctx("keep", &tmp_dir)?;
            self.insert_object(&path, &digest, executable)?;
        }
        let run = RunRecord {
            key,
            output_hash: tree.hash(),
            record,
            output: tree,
            seconds: 0.0,
            pins: BTreeMap::new(),
            stats: BTreeMap::new(),
        };
        self.put_record(&run)?;
        Ok(run)
    }

    /// Whether the object `digest` is in the store (its content is not checked).
    pub fn has_object(&self, digest: &Digest, executable: bool) -> bool {
        self.object_path(digest, executable).is_file()
    }

    /// The store's scratch dir, on the store's filesystem: files written there
    /// can be renamed into the store.
    pub fn tmp_dir(&self) -> PathBuf {
        self.cas.join("tmp")
    }

    /// Move a complete file `src` (under [`Store::tmp_dir`]) whose sha256 the
    /// caller checked to be `digest` into `objects/`, read-only. Not yet
    /// durable: [`Store::put_record`] syncs the filesystem once before the
    /// record, which for thousands of small files costs one call instead of
    /// one fsync each.
    pub fn insert_object(&self, src: &Path, digest: &Digest, executable: bool) -> Result<()> {
        let obj = self.object_path(digest, executable);
        let dir = obj.parent().unwrap_or(&self.cas);
        fs::create_dir_all(dir).ctx("create directory", dir)?;
        let mode = if executable { 0o555 } else { 0o444 };
        fs::set_permissions(src, fs::Permissions::from_mode(mode))
            .ctx("set permissions of", src)?;
        fs::rename(src, &obj).ctx("rename into the store", &obj)
    }

    /// Write a run record whose objects are all in the store (step 3 of the
    /// commit order), e.g. one fetched from a remote cache.
    pub fn put_record(&self, run: &RunRecord) -> Result<()> {
        // Objects from `insert_object` first (step 2), then the record (step 3).
        let objects = self.cas.join("objects");
        let dir = fs::File::open(&objects).ctx("open", &objects)?;
        // SAFETY: `dir` is an open file descriptor for the duration of the call.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
            return Err(std::io::Error::last_os_error()).ctx("sync the filesystem of", objects);
        }
        self.write_record(run)
    }

    /// Write a run record as pretty JSON, atomically. A record that cannot be
    /// encoded is an error, never an empty file.
    fn write_record(&self, run: &RunRecord) -> Result<()> {
        let path = self.record_path(&run.key);
        let bytes = serde_json::to_vec_pretty(run).map_err(|source| Error::Encode {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)
    }

    /// Check one object against its name, using the stat cache to skip
    /// re-hashing objects that have not been touched since they were checked.
    ///
    /// A damaged object is left where it is: the stage that produced it runs
    /// again and [`Store::commit`] renames a good copy over it.
    fn check_object(&self, digest: &Digest, executable: bool) -> Result<(PathBuf, Metadata)> {
        let path = self.object_path(digest, executable);
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Missing { digest: *digest })
            }
            Err(e) => return Err(e).ctx("read store object", &path),
        };
        let actual = self.stat.hash(&path, &FileStat::from(&meta))?;
        if actual != *digest {
            self.stat.forget(&path);
            return Err(Error::Corrupt {
                digest: *digest,
                actual,
            });
        }
        Ok((path, meta))
    }

    /// The bytes of the file at `path` inside the output of `run`, read from
    /// its store object: `Ok(None)` when the output has no such file.
    pub fn read_file(&self, run: &RunRecord, path: &str) -> Result<Option<Vec<u8>>> {
        let path = path.trim_matches('/');
        let Some((_, digest, executable, _)) = run.output.files().find(|(p, ..)| *p == path) else {
            return Ok(None);
        };
        let obj = self.object_path(&digest, executable);
        let bytes = match fs::read(&obj) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Missing { digest })
            }
            Err(e) => return Err(e).ctx("read", obj),
        };
        // Never hand out a damaged object's bytes.
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(Error::Corrupt { digest, actual });
        }
        Ok(Some(bytes))
    }

    /// Check every object of a run record: [`Error::Corrupt`] or
    /// [`Error::Missing`] when one is damaged.
    pub fn verify(&self, run: &RunRecord) -> Result<()> {
        for (_, digest, executable, _) in run.output.files() {
            self.check_object(&digest, executable)?;
        }
        Ok(())
    }

    /// Whether `dest` holds exactly the output of `run`, linked to intact objects.
    pub fn is_materialized(&self, run: &RunRecord, dest: &Path) -> Result<bool> {
        let mut listed = Vec::new();
        if list(dest, String::new(), &mut listed).is_err() {
            return Ok(false);
        }
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        if listed.len() != run.output.entries.len() {
            return Ok(false);
        }
        for (entry, (rel, meta)) in run.output.entries.iter().zip(&listed) {
            if entry.path != *rel {
                return Ok(false);
            }
            let ok = match &entry.kind {
                EntryKind::Dir => meta.is_dir(),
                EntryKind::Symlink { target } => {
                    meta.file_type().is_symlink()
                        && fs::read_link(dest.join(rel)).ok().as_deref() == Some(Path::new(target))
                }
                EntryKind::File {
                    executable,
                    size,
                    sha256,
                } => {
                    let (_, obj) = self.check_object(sha256, *executable)?;
                    meta.is_file()
                        && meta.len() == *size
                        && meta.ino() == obj.ino()
                        && meta.dev() == obj.dev()
                }
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Restore the output of `run` at `dest`, replacing whatever is there.
    /// Objects are verified first; files are read-only hard links to them.
    pub fn materialize(&self, run: &RunRecord, dest: &Path) -> Result<()> {
        self.verify(run)?;
        let parent = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).ctx("create directory", parent)?;
        // Built in the store's `tmp/` (same filesystem as `.pipe/out`), so that
        // what a SIGKILL leaves mid-swap is removed by `clean_tmp`, not left
        // beside the outputs.
        let tmp = self.cas.join("tmp");
        let build = tempfile::Builder::new()
            .prefix("materialize-")
            .tempdir_in(&tmp)
            .ctx("create a temp dir in", tmp)?;
        let root = build.path().join("out");
        for entry in &run.output.entries {
            let path = if entry.path.is_empty() {
                root.clone()
            } else {
                root.join(&entry.path)
            };
            match &entry.kind {
                EntryKind::Dir => fs::create_dir_all(&path).ctx("create directory", &path)?,
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &path).ctx("create link", &path)?
                }
                EntryKind::File {
                    executable, sha256, ..
                } => {
                    let obj = self.object_path(sha256, *executable);
                    if fs::hard_link(&obj, &path).is_err() {
                        fs::copy(&obj, &path).ctx("copy store object to", &path)?;
                    }
                }
            }
        }
        // Swap in: move the old output aside, the new one in, then delete the old.
        let old = build.path().join("old");
        if fs::symlink_metadata(dest).is_ok() {
            fs::rename(dest, &old).ctx("move aside", dest)?;
        }
        fs::rename(&root, dest).ctx("move output into", dest)?;
        if old.exists() {
            make_writable(&old);
            fs::remove_dir_all(&old).ctx("remove old output", &old)?;
        }
        Ok(())
    }

    /// Delete run records not in `keep` (when given), then every object no
    /// remaining run record names, and stale staging dirs.
    pub fn gc(&self, keep: Option<&HashSet<Key>>) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let runs = self.cas.join("runs");
        let mut referenced = HashSet::new();
        for e in fs::read_dir(&runs).ctx("list", &runs)? {
            let path = e.ctx("list", &runs)?.path();
            let key = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(Digest::from_hex);
            let Some(key) = key else { continue };
            if keep.is_some_and(|k| !k.contains(&key)) {
                fs::remove_file(&path).ctx("remove", &path)?;
                stats.records_removed += 1;
                continue;
            }
            match self.get(&key) {
                Ok(Some(run)) => {
                    for (_, d, x, _) in run.output.files() {
                        referenced.insert(self.object_path(&d, x));
                    }
                }
                // An unreadable record is useless: drop it so its objects can go.
                _ => {
                    fs::remove_file(&path).ctx("remove", &path)?;
                    stats.records_removed += 1;
                }
            }
        }
        let objects = self.cas.join("objects");
        for shard in fs::read_dir(&objects).ctx("list", &objects)? {
            let shard = shard.ctx("list", &objects)?.path();
            for obj in fs::read_dir(&shard).ctx("list", &shard)? {
                let obj = obj.ctx("list", &shard)?.path();
                if referenced.contains(&obj) {
                    stats.objects_kept += 1;
                } else {
                    stats.bytes_freed += fs::metadata(&obj).map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(&obj).ctx("remove", &obj)?;
                    self.stat.forget(&obj);
                    stats.objects_removed += 1;
                }
            }
        }
        self.clean_tmp()?;
        Ok(stats)
    }
}

/// List a materialised output without hashing, sorted like `Tree::scan`.
fn list(path: &Path, rel: String, out: &mut Vec<(String, Metadata)>) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let is_dir = meta.is_dir();
    out.push((rel.clone(), meta));
    if is_dir {
        for e in fs::read_dir(path)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            let child = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            list(&path.join(&*name), child, out)?;
        }
    }
    Ok(())
}

/// Give the owner write access to everything below `path`, so it can be removed.
pub fn make_writable(path: &Path) {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_symlink() {
            return;
        }
        let mode = meta.permissions().mode();
        let _ = fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o200));
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(path) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u32) -> KeyRecord {
        KeyRecord {
            kind: "test".into(),
            kind_version: n,
            params: BTreeMap::new(),
            with: serde_json::Value::Null,
            inputs: BTreeMap::new(),
            env: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        }
    }

    fn commit(store: &Store, n: u32, files: &[(&str, &str)]) -> RunRecord {
        let staged = store.staging_dir().unwrap();
        for (p, c) in files {
            let p = staged.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, c).unwrap();
        }
        let rec = record(n);
        store
            .commit(
                rec.key(),
                rec,
                staged.path(),
                0.0,
                BTreeMap::new(),
                BTreeMap::new(),
            )
            .unwrap()
    }

    #[test]
    fn commit_materialize_round_trip() {
        let ws = tempfile::tempdir().unwrap();
        let store = Store::open(ws.path()).unwrap();
        let run = commit(&store, 1, &[("a.txt", "a"), ("d/b.txt", "b")]);
        assert_eq!(
            store.get(&run.key).unwrap().unwrap().output_hash,
            run.output_hash
        );
        let dest = ws.path().join("out/s");
        assert!(!store.is_materialized(&run, &dest).unwrap());
        store.materialize(&run, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("d/b.txt")).unwrap(), "b");
        assert!(store.is_materialized(&run, &dest).unwrap());
        assert_eq!(
            Tree::scan(&dest, &crate::PlainHasher).unwrap().hash(),
            run.output_hash
        );
        // A stray file makes it stale.
        fs::write(dest.join("extra"), "x").unwrap();
        assert!(!store.is_materialized(&run, &dest).unwrap());
        store.materialize(&run, &dest).unwrap();
        assert!(store.is_materialized(&run, &dest).unwrap());
    }

    #[test]
    fn corrupt_object_is_detected_and_dropped() {
        let ws = tempfile::tempdir().unwrap();
        let store = Store::open(ws.path()).unwrap();
        let run = commit(&store, 1, &[("a.txt", "hello")]);
        let obj = store.object_path(&Digest::of(b"hello"), false);
        fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&obj, "HELLO").unwrap();
        assert!(matches!(store.verify(&run), Err(Error::Corrupt { .. })));
        // Left for the rerun to replace, not deleted under another stage's feet.
        assert!(obj.exists());
        let again = commit(&store, 1, &[("a.txt", "hello")]);
        store.verify(&again).unwrap();
        assert_eq!(fs::read(&obj).unwrap(), b"hello");
        fs::remove_file(&obj).unwrap();
        assert!(matches!(store.verify(&run), Err(Error::Missing { .. })));
    }

    #[test]
    fn unparseable_run_record_is_a_miss() {
        let ws = tempfile::tempdir().unwrap();
        let store = Store::open(ws.path()).unwrap();
        let run = commit(&store, 1, &[("a.txt", "a")]);
        let path = store.record_path(&run.key);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(store.get(&run.key).unwrap().is_none());
        commit(&store, 1, &[("a.txt", "a")]);
        assert!(store.get(&run.key).unwrap().is_some());
    }

    #[test]
    fn gc_keeps_referenced_objects() {
        let ws = tempfile::tempdir().unwrap();
        let store = Store::open(ws.path()).unwrap();
        let keep = commit(&store, 1, &[("a", "kept")]);
        let drop = commit(&store, 2, &[("a", "dropped")]);
        let stats = store.gc(Some(&[keep.key].into())).unwrap();
        assert_eq!(stats.records_removed, 1);
        assert_eq!(stats.objects_removed, 1);
        assert!(store.get(&drop.key).unwrap().is_none());
        store.verify(&keep).unwrap();
    }
}
