//! `Tree`: the listing of a stage output (or any input path) and its Merkle hash.
//!
//! A tree is a sorted list of entries with `/`-separated relative paths. A file
//! contributes its content sha256 and its executable bit (the only mode bit we
//! keep: owners, groups and umask differ between machines); a symbolic link its
//! target; a directory the hashes of its children by name. The root of a tree
//! may itself be a file, so a single input file and a whole directory are hashed
//! the same way.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::{CStr, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::{Digest, FileStat};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EntryKind {
    File {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        executable: bool,
        size: u64,
        sha256: Digest,
    },
    Dir,
    Symlink {
        target: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path with `/` separators; `""` is the root itself.
    pub path: String,
    #[serde(flatten)]
    pub kind: EntryKind,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub entries: Vec<Entry>,
}

/// How a tree scan hashes one file: plain hashing, or a stat cache.
pub trait FileHasher: Sync {
    fn hash(&self, path: &Path, stat: &FileStat) -> Result<Digest>;

    /// The names in the folder at `path` (each followed by a NUL, sorted)
    /// as [`FileHasher::listed`] was told them, if the folder's `stat`
    /// says no entry was added, removed or renamed in it since.
    fn listing(&self, _path: &Path, _stat: &FileStat) -> Option<Cow<'_, [u8]>> {
        None
    }

    /// The folder at `path`, stated as `stat` before it was listed, holds
    /// `names` (each followed by a NUL, sorted).
    fn listed(&self, _path: &Path, _stat: &FileStat, _names: &[u8]) {}
}

/// Hash every file from scratch.
pub struct PlainHasher;

impl FileHasher for PlainHasher {
    fn hash(&self, path: &Path, _stat: &FileStat) -> Result<Digest> {
        Digest::of_file(path).ctx("read", path)
    }
}

impl Tree {
    /// List and hash `root` (a file or a directory). Files are hashed in
    /// parallel; symbolic links must stay inside `root`.
    pub fn scan(root: &Path, hasher: &dyn FileHasher) -> Result<Tree> {
        Tree::scan_skipping(root, hasher, &|_| false)
    }

    /// Like [`Tree::scan`], leaving out every path below `root` for which
    /// `skip` holds (with everything under it).
    pub fn scan_skipping(
        root: &Path,
        hasher: &dyn FileHasher,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<Tree> {
        let mut pending: Vec<(String, PathBuf, FileStat)> = Vec::new();
        let mut entries = Vec::new();
        let mut walker = Walker {
            root,
            skip,
            entries: &mut entries,
            pending: &mut pending,
        };
        walker.walk(root, String::new())?;
        let hashed: Vec<Entry> = pending
            .into_par_iter()
            .map(|(rel, path, stat)| {
                let sha256 = hasher.hash(&path, &stat)?;
                Ok(Entry {
                    path: rel,
                    kind: EntryKind::File {
                        executable: stat.executable(),
                        size: stat.size,
                        sha256,
                    },
                })
            })
            .collect::<Result<_>>()?;
        entries.extend(hashed);
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Tree { entries })
    }

    /// The hash [`Tree::scan_skipping`] followed by [`Tree::hash`] gives,
    /// without building the listing: each directory is listed into one
    /// buffer and its children are looked at in parallel and folded into its
    /// hash, so an unchanged file costs one `fstatat` (against the
    /// directory's handle, by the name as listed) and one stat cache lookup,
    /// and no allocation.
    pub fn hash_path(
        root: &Path,
        hasher: &dyn FileHasher,
        skip: &(dyn Fn(&Path) -> bool + Sync),
    ) -> Result<Digest> {
        let meta = std::fs::symlink_metadata(root).ctx("read metadata of", root)?;
        let hashing = Hashing { root, hasher, skip };
        hashing.node(root, &FileStat::from(&meta), || {
            rustix::fs::open(root, DIR_FLAGS, Mode::empty())
        })
    }

    /// The Merkle hash of the whole tree.
    pub fn hash(&self) -> Digest {
        self.node_hash("").unwrap_or_else(|| Digest::of(b"empty\0"))
    }

    /// The Merkle hash of the file or directory at `path` inside the tree.
    pub fn node_hash(&self, path: &str) -> Option<Digest> {
        let path = path.trim_matches('/');
        let idx = self.entries.iter().position(|e| e.path == path)?;
        Some(self.hash_at(idx))
    }

    /// The entries below `path` (inclusive), re-rooted so that `path` becomes `""`.
    pub fn subtree(&self, path: &str) -> Option<Tree> {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return Some(self.clone());
        }
        let prefix = format!("{path}/");
        let entries: Vec<Entry> = self
            .entries
            .iter()
            .filter_map(|e| {
                if e.path == path {
                    Some(Entry {
                        path: String::new(),
                        kind: e.kind.clone(),
                    })
                } else {
                    e.path.strip_prefix(&prefix).map(|rest| Entry {
                        path: rest.to_string(),
                        kind: e.kind.clone(),
                    })
                }
            })
            .collect();
        (!entries.is_empty()).then_some(Tree { entries })
    }

    /// Files of the tree with their digests and exec bits.
    pub fn files(&self) -> impl Iterator<Item = (&str, Digest, bool, u64)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::File {
                executable,
                size,
                sha256,
            } => Some((e.path.as_str(), *sha256, *executable, *size)),
            _ => None,
        })
    }

    fn hash_at(&self, idx: usize) -> Digest {
        let entry = &self.entries[idx];
        match &entry.kind {
            EntryKind::File {
                executable, sha256, ..
            } => file_hash(*executable, sha256),
            EntryKind::Symlink { target } => link_hash(target),
            EntryKind::Dir => {
                // Entries are sorted by path, so the paths below `entry` (those
                // starting with `prefix`) are contiguous; they need not follow
                // `entry` directly (`a` < `a.b` < `a/x`). Direct children are
                // those without a further `/`.
                let prefix = if entry.path.is_empty() {
                    String::new()
                } else {
                    format!("{}/", entry.path)
                };
                let start = self
                    .entries
                    .partition_point(|e| e.path.as_str() < prefix.as_str());
                let mut parts: Vec<Vec<u8>> = vec![b"dir\0".to_vec()];
                let mut children: BTreeMap<&str, usize> = BTreeMap::new();
                for (i, e) in self.entries.iter().enumerate().skip(start) {
                    let Some(rest) = e.path.strip_prefix(&prefix) else {
                        break;
                    };
                    if !rest.is_empty() && !rest.contains('/') {
                        children.insert(rest, i);
                    }
                }
                for (name, i) in children {
                    let mut part = name.as_bytes().to_vec();
                    part.push(0);
                    part.extend_from_slice(&self.hash_at(i).0);
                    parts.push(part);
                }
                Digest::of_parts(parts.iter().map(|p| p.as_slice()))
            }
        }
    }
}

fn file_hash(executable: bool, sha256: &Digest) -> Digest {
    Digest::of_parts([
        b"file\0".as_slice(),
        if executable { b"x\0" } else { b"-\0" },
        &sha256.0,
    ])
}

fn link_hash(target: &str) -> Digest {
    Digest::of_parts([b"link\0".as_slice(), target.as_bytes()])
}

/// The target of the link at `path`, which must stay inside `root` and be UTF-8.
fn checked_link_target(root: &Path, path: &Path) -> Result<String> {
    let target = std::fs::read_link(path).ctx("read link", path)?;
    if !link_stays_inside(root, path, &target) {
        return Err(Error::UnsafeLink {
            path: path.to_path_buf(),
            target: target.display().to_string(),
        });
    }
    target
        .into_os_string()
        .into_string()
        .map_err(|_| Error::NonUtf8Path {
            path: path.to_path_buf(),
        })
}

/// [`Tree::hash_path`] at work.
struct Hashing<'a> {
    root: &'a Path,
    hasher: &'a dyn FileHasher,
    skip: &'a (dyn Fn(&Path) -> bool + Sync),
}

/// How [`Hashing`] opens a directory: never through a symbolic link (it
/// was `lstat`ed as a directory; one swapped in since fails the scan).
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Hashing<'_> {
    /// The hash of the node at `path` stated as `stat`; `open` opens it if
    /// it is a directory.
    fn node(
        &self,
        path: &Path,
        stat: &FileStat,
        open: impl FnOnce() -> rustix::io::Result<OwnedFd>,
    ) -> Result<Digest> {
        match FileType::from_raw_mode(stat.mode) {
            FileType::RegularFile => {
                let sha256 = self.hasher.hash(path, stat)?;
                Ok(file_hash(stat.executable(), &sha256))
            }
            FileType::Symlink => Ok(link_hash(&checked_link_target(self.root, path)?)),
            FileType::Directory => {
                let dir = open().map_err(io::Error::from).ctx("list", path)?;
                self.dir(&dir, path)
            }
            _ => Err(Error::Special {
                path: path.to_path_buf(),
            }),
        }
    }

    /// The hash of the directory open as `dir` at `path`.
    fn dir(&self, dir: &OwnedFd, path: &Path) -> Result<Digest> {
        // The stat of the folder that is open (not of whatever the path
        // named before), as the stat cache's listing must be its.
        let stat = rustix::fs::fstat(dir)
            .map_err(io::Error::from)
            .ctx("read metadata of", path)?;
        let stat = FileStat::from(&stat);
        let listing = match self
            .hasher
            .listing(path, &stat)
            .and_then(Listing::from_names)
        {
            Some(listing) => listing,
            None => {
                let listing = Listing::read(dir).ctx("list", path)?;
                self.hasher.listed(path, &stat, &listing.sorted_names());
                listing
            }
        };
        // One path buffer per rayon job, not one path per child: the
        // folder's path and a `/`, the child's name after it.
        let base = path.join("").into_os_string().into_vec();
        let prefix = base.len();
        let hashes: Vec<Option<Digest>> = listing
            .names
            .par_iter()
            .map_init(
                || base.clone(),
                |buf, &(start, end)| {
                    let name = listing.name(start, end).ctx("list", path)?;
                    buf.truncate(prefix);
                    buf.extend_from_slice(name.to_bytes());
                    let child = Path::new(OsStr::from_bytes(buf));
                    if (self.skip)(child) {
                        return Ok(None);
                    }
                    let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(io::Error::from)
                        .ctx("read metadata of", child)?;
                    let open = || rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty());
                    self.node(child, &FileStat::from(&stat), open).map(Some)
                },
            )
            .collect::<Result<_>>()?;
        let mut h = Sha256::new();
        h.update(b"dir\0");
        for (&(start, end), hash) in listing.names.iter().zip(hashes) {
            let Some(hash) = hash else { continue };
            let name = listing.name(start, end).ctx("list", path)?.to_bytes();
            let name = std::str::from_utf8(name).map_err(|_| Error::NonUtf8Path {
                path: path.join(OsStr::from_bytes(name)),
            })?;
            h.update(name.as_bytes());
            h.update([0]);
            h.update(hash.0);
        }
        Ok(Digest(h.finalize().into()))
    }
}

/// The names in a directory (`.` and `..` left out), sorted by their bytes:
/// one buffer of NUL-terminated names and their ranges in it, whatever the
/// number of entries.
struct Listing<'a> {
    bytes: Cow<'a, [u8]>,
    /// Each name's range in `bytes`, its NUL included.
    names: Vec<(usize, usize)>,
}

impl<'a> Listing<'a> {
    /// `getdents` into a buffer of this size.
    const READ_BUFFER: usize = 64 << 10;

    fn read(dir: &OwnedFd) -> io::Result<Listing<'static>> {
        let mut buf: Vec<MaybeUninit<u8>> = Vec::with_capacity(Self::READ_BUFFER);
        buf.resize(Self::READ_BUFFER, MaybeUninit::uninit());
        let mut raw = RawDir::new(dir.as_fd(), &mut buf);
        let mut bytes = Vec::new();
        let mut names = Vec::new();
        while let Some(entry) = raw.next() {
            let entry = entry?;
            let name = entry.file_name().to_bytes_with_nul();
            if name == b".\0" || name == b"..\0" {
                continue;
            }
            let start = bytes.len();
            bytes.extend_from_slice(name);
            names.push((start, bytes.len()));
        }
        names.sort_unstable_by(|a: &(usize, usize), b| bytes[a.0..a.1].cmp(&bytes[b.0..b.1]));
        Ok(Listing {
            bytes: Cow::Owned(bytes),
            names,
        })
    }

    /// A listing of `names` as [`Listing::sorted_names`] gave them; `None`
    /// unless each is a name (not empty, `.` or `..`, no `/`) followed by a
    /// NUL, and they are strictly sorted.
    fn from_names(bytes: Cow<'a, [u8]>) -> Option<Listing<'a>> {
        let mut names = Vec::new();
        let mut start = 0;
        let mut last: &[u8] = &[];
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'/' => return None,
                0 => {
                    let name = &bytes[start..i];
                    let first = names.is_empty();
                    if name.is_empty() || name == b"." || name == b".." || (!first && name <= last)
                    {
                        return None;
                    }
                    names.push((start, i + 1));
                    last = name;
                    start = i + 1;
                }
                _ => {}
            }
        }
        (start == bytes.len()).then_some(Listing { bytes, names })
    }

    /// The names, each followed by its NUL, in sorted order.
    fn sorted_names(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len());
        for &(start, end) in &self.names {
            out.extend_from_slice(&self.bytes[start..end]);
        }
        out
    }

    /// The name at `start..end`, as [`Listing::read`] stored it.
    fn name(&self, start: usize, end: usize) -> io::Result<&CStr> {
        CStr::from_bytes_with_nul(&self.bytes[start..end])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

struct Walker<'a> {
    root: &'a Path,
    skip: &'a dyn Fn(&Path) -> bool,
    entries: &'a mut Vec<Entry>,
    pending: &'a mut Vec<(String, PathBuf, FileStat)>,
}

impl Walker<'_> {
    fn walk(&mut self, path: &Path, rel: String) -> Result<()> {
        let root = self.root;
        let meta = std::fs::symlink_metadata(path).ctx("read metadata of", path)?;
        let ft = meta.file_type();
        if ft.is_file() {
            self.pending
                .push((rel, path.to_path_buf(), FileStat::from(&meta)));
        } else if ft.is_symlink() {
            let target = checked_link_target(root, path)?;
            self.entries.push(Entry {
                path: rel,
                kind: EntryKind::Symlink { target },
            });
        } else if ft.is_dir() {
            self.entries.push(Entry {
                path: rel.clone(),
                kind: EntryKind::Dir,
            });
            let mut children: Vec<_> = std::fs::read_dir(path)
                .ctx("list", path)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()
                .ctx("list", path)?;
            children.sort();
            for name in children {
                let child = path.join(&name);
                if (self.skip)(&child) {
                    continue;
                }
                let name_str = name.to_str().ok_or_else(|| Error::NonUtf8Path {
                    path: child.clone(),
                })?;
                let child_rel = if rel.is_empty() {
                    name_str.to_string()
                } else {
                    format!("{rel}/{name_str}")
                };
                self.walk(&child, child_rel)?;
            }
        } else {
            return Err(Error::Special {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }
}

/// Whether a relative link target, resolved lexically from the link's folder,
/// stays inside `root`. Absolute targets never do.
pub fn link_stays_inside(root: &Path, link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let Ok(rel_dir) = link.parent().unwrap_or(Path::new("")).strip_prefix(root) else {
        return false;
    };
    let mut depth: i64 = rel_dir.components().count() as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn scan(p: &Path) -> Tree {
        Tree::scan(p, &PlainHasher).unwrap()
    }

    #[test]
    fn same_content_same_hash_anywhere() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            fs::create_dir(d.join("sub")).unwrap();
            fs::write(d.join("sub/x.txt"), "x").unwrap();
            fs::write(d.join("y.txt"), "y").unwrap();
        }
        assert_eq!(scan(a.path()).hash(), scan(b.path()).hash());
        fs::write(b.path().join("y.txt"), "Y").unwrap();
        assert_ne!(scan(a.path()).hash(), scan(b.path()).hash());
    }

    #[test]
    fn exec_bit_and_names_matter() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), "1").unwrap();
        let h1 = scan(d.path()).hash();
        fs::set_permissions(d.path().join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        let h2 = scan(d.path()).hash();
        assert_ne!(h1, h2);
        fs::rename(d.path().join("a"), d.path().join("b")).unwrap();
        assert_ne!(scan(d.path()).hash(), h2);
    }

    #[test]
    fn subtree_hash_equals_scanning_the_subdir() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/b/f"), "f").unwrap();
        fs::write(d.path().join("a/g"), "g").unwrap();
        fs::write(d.path().join("ab"), "not a child of a").unwrap();
        let whole = scan(d.path());
        assert_eq!(whole.node_hash("a"), Some(scan(&d.path().join("a")).hash()));
        assert_eq!(
            whole.node_hash("a/b/f"),
            Some(scan(&d.path().join("a/b/f")).hash())
        );
        assert_eq!(
            whole.subtree("a").unwrap().hash(),
            scan(&d.path().join("a")).hash()
        );
        assert_eq!(whole.node_hash("missing"), None);
    }

    #[test]
    fn links_outside_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("../../etc/passwd", d.path().join("bad")).unwrap();
        assert!(matches!(
            Tree::scan(d.path(), &PlainHasher),
            Err(Error::UnsafeLink { .. })
        ));
        assert!(link_stays_inside(
            d.path(),
            &d.path().join("x/l"),
            Path::new("../y")
        ));
        assert!(!link_stays_inside(
            d.path(),
            &d.path().join("l"),
            Path::new("/etc")
        ));
    }

    /// A folder with a sibling that sorts between it and its children
    /// (`a` < `a.b` < `a/x`, as `.` and `-` sort before `/`).
    fn tricky(d: &Path) {
        fs::create_dir_all(d.join("a/b")).unwrap();
        fs::create_dir(d.join("empty")).unwrap();
        fs::write(d.join("a/x"), "x").unwrap();
        fs::write(d.join("a/b/y"), "y").unwrap();
        fs::write(d.join("a.b"), "sibling").unwrap();
        fs::write(d.join("a-c"), "sibling").unwrap();
        fs::write(d.join("run.sh"), "#!/bin/sh").unwrap();
        fs::set_permissions(d.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("a/x", d.join("link")).unwrap();
    }

    #[test]
    fn a_folder_hash_covers_its_children_when_a_sibling_sorts_between() {
        let d = tempfile::tempdir().unwrap();
        tricky(d.path());
        let before = scan(d.path());
        fs::write(d.path().join("a/x"), "changed").unwrap();
        let after = scan(d.path());
        assert_ne!(before.node_hash("a"), after.node_hash("a"));
        assert_ne!(before.hash(), after.hash());
        assert_eq!(after.node_hash("a"), Some(scan(&d.path().join("a")).hash()));
    }

    #[test]
    fn hash_path_equals_the_hash_of_the_scanned_tree() {
        let d = tempfile::tempdir().unwrap();
        tricky(d.path());
        // Enough files for rayon to split the folder between threads.
        fs::create_dir(d.path().join("many")).unwrap();
        for i in 0..300 {
            fs::write(d.path().join(format!("many/f{i}")), i.to_string()).unwrap();
        }
        let hash_path = |p: &Path, skip: &(dyn Fn(&Path) -> bool + Sync)| {
            Tree::hash_path(p, &PlainHasher, skip).unwrap()
        };
        let none = |_: &Path| false;
        assert_eq!(hash_path(d.path(), &none), scan(d.path()).hash());
        let file = d.path().join("a/x");
        assert_eq!(hash_path(&file, &none), scan(&file).hash());
        let skip = |p: &Path| p.ends_with("a.b") || p.ends_with("many");
        assert_eq!(
            hash_path(d.path(), &skip),
            Tree::scan_skipping(d.path(), &PlainHasher, &skip)
                .unwrap()
                .hash()
        );
        std::os::unix::fs::symlink("../..", d.path().join("a/out")).unwrap();
        assert!(matches!(
            Tree::hash_path(d.path(), &PlainHasher, &none),
            Err(Error::UnsafeLink { .. })
        ));
    }

    /// Set the mtime of `path` (a file or a folder) a minute back, so that
    /// a stat cache trusts what it records of it.
    fn settle(path: &Path) {
        fs::File::open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn a_remembered_listing_is_used_until_the_folder_changes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("in");
        fs::create_dir_all(root.join("sub")).unwrap();
        for f in ["a", "b", "sub/c"] {
            fs::write(root.join(f), f).unwrap();
            settle(&root.join(f));
        }
        settle(&root.join("sub"));
        settle(&root);
        let file = d.path().join("stat-cache.bin");
        let none = |_: &Path| false;
        let cached = |root: &Path| {
            let cache = crate::StatCache::load(file.clone());
            let hash = Tree::hash_path(root, &cache, &none).unwrap();
            cache.save().unwrap();
            let stat = FileStat::from(&fs::symlink_metadata(root).unwrap());
            let listing = cache.listing(root, &stat).map(|n| n.into_owned());
            (hash, listing)
        };
        let plain = |root: &Path| scan(root).hash();
        let (first, _) = cached(&root);
        assert_eq!(first, plain(&root));
        // The next run finds the listings of both folders.
        let (again, listing) = cached(&root);
        assert_eq!(again, first);
        assert_eq!(listing.as_deref(), Some(&b"a\0b\0sub\0"[..]));

        // Adding, removing and renaming an entry each move the folder's
        // stat: the folder is listed again and the hash follows.
        let changes: [&dyn Fn(); 3] = [
            &|| fs::write(root.join("sub/new"), "new").unwrap(),
            &|| fs::remove_file(root.join("a")).unwrap(),
            &|| fs::rename(root.join("b"), root.join("sub/b")).unwrap(),
        ];
        let mut last = first;
        for change in changes {
            change();
            let (hash, _) = cached(&root);
            assert_eq!(hash, plain(&root));
            assert_ne!(hash, last);
            last = hash;
        }
        // A folder modified moments ago is racily clean: not remembered.
        let (_, listing) = cached(&root);
        assert_eq!(listing, None);
    }

    #[test]
    fn only_sorted_plain_names_make_a_listing() {
        let ok = |b: &[u8]| Listing::from_names(Cow::Borrowed(b)).map(|l| l.names.len());
        assert_eq!(ok(b""), Some(0));
        assert_eq!(ok(b"a\0b\0c.d\0"), Some(3));
        for bad in [
            &b"b\0a\0"[..],
            b"a\0a\0",
            b"a\0\0",
            b"a/b\0",
            b".\0",
            b"..\0",
            b"a\0b",
        ] {
            assert_eq!(ok(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
