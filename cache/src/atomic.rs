//! Crash-safe file writes: temp file in the same directory, fsync, rename, fsync dir.

use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

/// Replace `path` with `bytes` so that a crash leaves either the old or the new
/// content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).ctx("create directory", dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).ctx("create a temp file in", dir)?;
    tmp.write_all(bytes)
        .ctx("write", tmp.path().to_path_buf())?;
    tmp.as_file()
        .sync_all()
        .ctx("sync", tmp.path().to_path_buf())?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .ctx("rename into", path)?;
    sync_dir(dir)
}

/// fsync a directory so that renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .ctx("sync directory", dir)
}
