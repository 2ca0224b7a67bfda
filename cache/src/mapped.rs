//! `MappedFile`: a file mapped read-only, so that reading it costs neither a
//! copy nor a fault per page (the stat cache file: 14 MB for 100,000 files,
//! most of a no-op run's memory traffic if it were read).

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::path::Path;

use rustix::mm::{MapFlags, ProtFlags};

/// The bytes of a file, mapped private and read-only.
///
/// The bytes must not change while mapped: pipe only ever replaces the files
/// it maps by renaming a new file over them ([`crate::write_atomic`]), which
/// leaves a mapping of the old file intact. (A file truncated in place by
/// some other program would fault on access, as for any reader of mapped
/// files; ripgrep and git map files in the same way.)
pub(crate) struct MappedFile {
    ptr: *mut c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone.
unsafe impl Send for MappedFile {}
// SAFETY: as above: shared references only ever read it.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Map the whole of `path`.
    pub(crate) fn open(path: &Path) -> io::Result<MappedFile> {
        let file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(io::Error::other)?;
        if len == 0 {
            return Ok(MappedFile::default());
        }
        // SAFETY: a new mapping at an address the kernel chooses aliases no
        // Rust object; `len` is the file's length; see the type's comment for
        // why the bytes do not change while mapped.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::PRIVATE | MapFlags::POPULATE,
                &file,
                0,
            )
        }?;
        Ok(MappedFile { ptr, len })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` maps `len` readable bytes until `self` is dropped.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Default for MappedFile {
    fn default() -> MappedFile {
        MappedFile {
            ptr: std::ptr::null_mut(),
            len: 0,
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: `ptr` and `len` are the mapping `open` made, and no
            // borrow of its bytes outlives `self`. An error leaves it mapped,
            // which only costs address space.
            let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
        }
    }
}
