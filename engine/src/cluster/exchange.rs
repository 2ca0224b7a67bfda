//! The files a submitting `pipe` and its job exchange while the job runs
//! (spec, heartbeat, progress events, result, and without a shared
//! filesystem the stage log): files in the staging dir, or objects of the
//! remote cache under `jobs/ID/`.
//!
//! Streams (`events`, `log`) are appended to by one writer and read from a
//! cursor by one reader: a file in the staging dir, or numbered chunk
//! objects (`log.0`, `log.1`, …) in the remote, since objects cannot grow.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::io_err;
use crate::remote::RemoteCache;
use crate::stage::StageError;

pub trait Exchange: Sync {
    /// Write a whole small file, atomically.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StageError>;
    /// A whole small file; `None` if there is none.
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StageError>;
    /// Append `bytes` to the stream `name`.
    fn append(&self, name: &str, bytes: &[u8]) -> Result<(), StageError>;
    /// What was appended to the stream `name` since `cursor` (0 at first),
    /// which moves past it.
    fn read_new(&self, name: &str, cursor: &mut u64) -> Result<Vec<u8>, StageError>;
    /// Remove everything (the remote's objects; a staging dir goes with its run).
    fn clear(&self) -> Result<(), StageError>;
}

/// The staging dir, on a filesystem the job shares.
pub struct Dir(pub PathBuf);

impl Exchange for Dir {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StageError> {
        let path = self.0.join(name);
        Ok(crate::cache::write_atomic(&path, bytes)?)
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StageError> {
        let path = self.0.join(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &path, e)),
        }
    }

    fn append(&self, name: &str, bytes: &[u8]) -> Result<(), StageError> {
        let path = self.0.join(name);
        std::fs::File::options()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(|e| io_err("append to", &path, e))
    }

    fn read_new(&self, name: &str, cursor: &mut u64) -> Result<Vec<u8>, StageError> {
        read_new(&self.0.join(name), cursor)
    }

    fn clear(&self) -> Result<(), StageError> {
        Ok(())
    }
}

/// What was appended to the file at `path` since `cursor`, which moves past it.
pub fn read_new(path: &Path, cursor: &mut u64) -> Result<Vec<u8>, StageError> {
    let mut text = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.seek(SeekFrom::Start(*cursor))
                .and_then(|_| f.read_to_end(&mut text))
                .map_err(|e| io_err("read", path, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("open", path, e)),
    }
    *cursor = cursor.saturating_add(text.len() as u64);
    Ok(text)
}

/// Objects of the remote cache under `jobs/ID/`, for a job on a node that
/// does not see the workspace.
pub struct Objects<'a> {
    pub remote: &'a dyn RemoteCache,
    pub id: String,
    /// Chunks written so far, per stream.
    written: Mutex<HashMap<String, u64>>,
}

impl<'a> Objects<'a> {
    pub fn new(remote: &'a dyn RemoteCache, id: String) -> Objects<'a> {
        Objects {
            remote,
            id,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn name(&self, name: &str) -> String {
        format!("{}/{name}", self.id)
    }
}

impl Exchange for Objects<'_> {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), StageError> {
        self.remote.put_job_file(&self.name(name), bytes.to_vec())
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StageError> {
        self.remote.get_job_file(&self.name(name))
    }

    fn append(&self, name: &str, bytes: &[u8]) -> Result<(), StageError> {
        if bytes.is_empty() {
            return Ok(());
        }
        // One writer per stream: the lock is held across the upload so that
        // chunks are numbered in the order they land.
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let n = written.entry(name.to_string()).or_insert(0);
        self.remote
            .put_job_file(&self.name(&format!("{name}.{n}")), bytes.to_vec())?;
        *n += 1;
        Ok(())
    }

    fn read_new(&self, name: &str, cursor: &mut u64) -> Result<Vec<u8>, StageError> {
        let mut text = Vec::new();
        loop {
            match self
                .remote
                .get_job_file(&self.name(&format!("{name}.{cursor}")))
            {
                Ok(Some(chunk)) => {
                    text.extend_from_slice(&chunk);
                    *cursor = cursor.saturating_add(1);
                }
                Ok(None) => return Ok(text),
                // What was read is kept (the cursor is past it); the rest
                // comes at the next call.
                Err(_) if !text.is_empty() => return Ok(text),
                Err(e) => return Err(e),
            }
        }
    }

    fn clear(&self) -> Result<(), StageError> {
        self.remote.delete_job(&self.id)
    }
}
