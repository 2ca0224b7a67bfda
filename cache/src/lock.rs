//! `WorkspaceLock`: one writer per workspace, through an advisory file lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

use crate::error::{IoContext, Result};

/// Held for the whole of a `pipe run`; released when dropped (or when the
/// process dies, since the kernel drops `flock` locks with the file).
pub struct WorkspaceLock {
    _file: File,
}

impl WorkspaceLock {
    /// Take the lock, calling `on_wait(holder_pid)` once if another process holds it,
    /// then blocking until it is free.
    pub fn acquire(path: &Path, on_wait: impl FnOnce(Option<u32>)) -> Result<WorkspaceLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx("open lock file", path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut s = String::new();
                let _ = file.read_to_string(&mut s);
                on_wait(s.trim().parse().ok());
                file.lock().ctx("lock", path)?;
            }
            Err(TryLockError::Error(e)) => return Err(e).ctx("lock", path),
        }
        file.set_len(0).ctx("write", path)?;
        file.rewind().ctx("write", path)?;
        write!(file, "{}", std::process::id()).ctx("write", path)?;
        Ok(WorkspaceLock { _file: file })
    }
}
