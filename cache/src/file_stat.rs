//! `FileStat`: what one `stat` of a file tells a tree scan, and all a
//! [`FileHasher`](crate::FileHasher) may look at to tell whether the file
//! changed since it last hashed it.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

/// The fields of a `stat` that pipe reads: a plain value, so that the walk of
/// [`Tree::hash_path`](crate::Tree::hash_path) can fill it from the raw
/// `fstatat` of a directory entry without building a path or a
/// [`Metadata`] for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Nanoseconds since the epoch.
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
    /// `st_mode`: the type and permission bits.
    pub mode: u32,
}

impl FileStat {
    /// Whether any execute bit is set (the only mode bit a tree keeps).
    pub fn executable(&self) -> bool {
        self.mode & 0o111 != 0
    }
}

fn ns(secs: i64, nsecs: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsecs)
}

impl From<&Metadata> for FileStat {
    fn from(m: &Metadata) -> FileStat {
        FileStat {
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
            mode: m.mode(),
        }
    }
}

impl From<&rustix::fs::Stat> for FileStat {
    // The kernel's `stat` declares some of these fields unsigned on some
    // architectures; read them as `std`'s `MetadataExt` does (seconds signed,
    // sizes unsigned), so both sources give the same values.
    #[allow(clippy::unnecessary_cast)]
    fn from(s: &rustix::fs::Stat) -> FileStat {
        FileStat {
            size: s.st_size as u64,
            mtime_ns: ns(s.st_mtime as i64, s.st_mtime_nsec as i64),
            ctime_ns: ns(s.st_ctime as i64, s.st_ctime_nsec as i64),
            ino: s.st_ino as u64,
            dev: s.st_dev as u64,
            mode: s.st_mode as u32,
        }
    }
}
