//! Safe archive extraction: zip, tar and tar.gz.
//!
//! Nothing is ever written, linked or copied through a symlink:
//!
//! - entries with absolute paths or `..` are rejected;
//! - files, folders and hard-link copies are made first, and each path is
//!   checked, component by component, to cross no symlink;
//! - symlinks are made last, each only where no symlink lies on its path,
//!   and once all exist every one is resolved the way the kernel would (link
//!   by link, confined to the output dir): one that ends outside fails the
//!   extraction and all links are removed. This catches chains whose links
//!   each look harmless alone (`up -> ../..`, then `esc -> up/../..`).
//!
//! An archive that expands past `max_bytes` (archive bombs; hard-link copies
//! count) fails, and link targets and long-name records are read with a bound.
//! With `only`, just those entries (files, or folders and what is below them)
//! are extracted, and each must exist.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// The longest symlink target or entry name read from an archive (Linux's `PATH_MAX`).
const MAX_NAME: u64 = 4096;
/// The largest pax extended header read (it holds names and a few fields).
const MAX_PAX: u64 = 1 << 16;
/// Symlinks followed while resolving one link (Linux's `MAXSYMLINKS`).
const MAX_HOPS: u32 = 40;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive entry `{0}` would escape the output directory")]
    Unsafe(String),
    #[error("archive entry `{0}` goes through a symlink")]
    ThroughLink(String),
    #[error("archive link `{name}` → `{target}` points outside the output directory")]
    UnsafeLink { name: String, target: String },
    #[error("archive link `{0}` has the name of another entry")]
    LinkClash(String),
    #[error("archive entry `{name}` has a name or link target longer than {limit} bytes")]
    NameTooLong { name: String, limit: u64 },
    #[error("hard link `{name}` → `{target}` does not name a regular file extracted before it")]
    BadHardLink { name: String, target: String },
    #[error("archive expands past {limit} bytes (raise `max_bytes` if this is expected)")]
    TooBig { limit: u64 },
    #[error("`{0}` is not in the archive")]
    Missing(String),
    #[error("cannot read the archive")]
    Zip(#[from] zip::result::ZipError),
    #[error("cannot extract {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Zip,
    #[serde(rename = "tar.gz")]
    TarGz,
    Tar,
    None,
}

impl Format {
    pub fn from_name(name: &str) -> Format {
        let n = name.to_ascii_lowercase();
        if n.ends_with(".zip") {
            Format::Zip
        } else if n.ends_with(".tar.gz") || n.ends_with(".tgz") {
            Format::TarGz
        } else if n.ends_with(".tar") {
            Format::Tar
        } else {
            Format::None
        }
    }
}

/// A relative, normal path inside the output dir, or an error.
fn safe_path(name: &str) -> Result<PathBuf, ArchiveError> {
    let p = Path::new(name);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return Err(ArchiveError::Unsafe(name.to_string())),
        }
    }
    Ok(out)
}

struct Sink<'a> {
    dest: &'a Path,
    written: u64,
    limit: u64,
    only: &'a [String],
    seen: Vec<bool>,
    /// Symlinks to make once every file exists: (path in the archive, target).
    links: Vec<(PathBuf, String)>,
}

impl Sink<'_> {
    fn wanted(&mut self, rel: &Path) -> bool {
        if self.only.is_empty() {
            return true;
        }
        let mut hit = false;
        for (i, o) in self.only.iter().enumerate() {
            let o = Path::new(o.trim_end_matches('/'));
            if rel == o || rel.starts_with(o) {
                self.seen[i] = true;
                hit = true;
            }
        }
        hit
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
        move |source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// `dest/rel`, after checking that no existing component of it below
    /// `dest` is a symlink.
    fn no_links(&self, rel: &Path) -> Result<PathBuf, ArchiveError> {
        let mut path = self.dest.to_path_buf();
        for part in rel.components() {
            path.push(part);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(ArchiveError::ThroughLink(rel.display().to_string()))
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(Self::io(&path)(e)),
            }
        }
        Ok(self.dest.join(rel))
    }

    /// `dest/rel`, its parent folders made, nothing on the way a symlink.
    fn prepare(&self, rel: &Path) -> Result<PathBuf, ArchiveError> {
        let path = self.no_links(rel)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Self::io(dir))?;
        }
        Ok(path)
    }

    fn dir(&self, rel: &Path) -> Result<(), ArchiveError> {
        let path = self.no_links(rel)?;
        std::fs::create_dir_all(&path).map_err(Self::io(&path))
    }

    fn file(
        &mut self,
        rel: &Path,
        mut reader: impl Read,
        executable: bool,
    ) -> Result<(), ArchiveError> {
        let path = self.prepare(rel)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(Self::io(&path))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(Self::io(&path))?;
            if n == 0 {
                break;
            }
            self.count(n as u64)?;
            f.write_all(&buf[..n]).map_err(Self::io(&path))?;
        }
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(Self::io(&path))?;
        }
        Ok(())
    }

    fn count(&mut self, n: u64) -> Result<(), ArchiveError> {
        self.written = self.written.saturating_add(n);
        if self.written > self.limit {
            return Err(ArchiveError::TooBig { limit: self.limit });
        }
        Ok(())
    }

    /// A tar hard link: a copy of an earlier regular file, counted like one.
    fn hard_link(&mut self, rel: &Path, target: &str) -> Result<(), ArchiveError> {
        let bad = || ArchiveError::BadHardLink {
            name: rel.display().to_string(),
            target: target.to_string(),
        };
        let from = self.no_links(&safe_path(target)?)?;
        let meta = std::fs::symlink_metadata(&from).map_err(|_| bad())?;
        if !meta.file_type().is_file() {
            return Err(bad());
        }
        use std::os::unix::fs::PermissionsExt;
        let exec = meta.permissions().mode() & 0o111 != 0;
        let source = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&from)
            .map_err(Self::io(&from))?;
        self.file(rel, source, exec)
    }

    fn link(&mut self, rel: &Path, target: String) -> Result<(), ArchiveError> {
        if !pipe_engine::cache::link_stays_inside(
            self.dest,
            &self.dest.join(rel),
            Path::new(&target),
        ) {
            return Err(ArchiveError::UnsafeLink {
                name: rel.display().to_string(),
                target,
            });
        }
        self.links.push((rel.to_path_buf(), target));
        Ok(())
    }

    /// Make the symlinks, then check where each really leads; on any error,
    /// remove them all.
    fn make_links(&mut self) -> Result<(), ArchiveError> {
        let mut made = Vec::new();
        let result = self.try_make_links(&mut made);
        if result.is_err() {
            for path in made {
                let _ = std::fs::remove_file(path);
            }
        }
        result
    }

    fn try_make_links(&self, made: &mut Vec<PathBuf>) -> Result<(), ArchiveError> {
        for (rel, target) in &self.links {
            let path = self.prepare(rel)?;
            if std::fs::symlink_metadata(&path).is_ok() {
                return Err(ArchiveError::LinkClash(rel.display().to_string()));
            }
            std::os::unix::fs::symlink(target, &path).map_err(Self::io(&path))?;
            made.push(path);
        }
        for (rel, target) in &self.links {
            if !self.resolves_inside(rel)? {
                return Err(ArchiveError::UnsafeLink {
                    name: rel.display().to_string(),
                    target: target.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether the link at `rel` leads inside `dest`, following every link on
    /// the way as the kernel would; a missing component ends the lookup there.
    fn resolves_inside(&self, rel: &Path) -> Result<bool, ArchiveError> {
        let mut at: Vec<OsString> = Vec::new();
        let mut todo: VecDeque<OsString> = rel.iter().map(OsString::from).collect();
        let mut hops = 0u32;
        while let Some(part) = todo.pop_front() {
            if part == ".." {
                if at.pop().is_none() {
                    return Ok(false);
                }
                continue;
            }
            if part == "." || part.is_empty() {
                continue;
            }
            at.push(part);
            let path: PathBuf = self
                .dest
                .iter()
                .chain(at.iter().map(|p| p.as_os_str()))
                .collect();
            let target = match std::fs::read_link(&path) {
                Ok(t) => t,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::NotFound
                    ) || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    continue
                }
                Err(e) => return Err(Self::io(&path)(e)),
            };
            hops += 1;
            if hops > MAX_HOPS || target.has_root() {
                return Ok(false);
            }
            at.pop();
            for c in target.iter().rev() {
                todo.push_front(c.to_os_string());
            }
        }
        Ok(true)
    }

    fn finish(mut self) -> Result<(), ArchiveError> {
        self.make_links()?;
        match self.seen.iter().position(|s| !s) {
            Some(i) => Err(ArchiveError::Missing(self.only[i].clone())),
            None => Ok(()),
        }
    }
}

/// Read at most `limit` bytes of `reader` as a name, or fail naming `entry`.
fn bounded_name(reader: impl Read, limit: u64, entry: &str) -> Result<String, ArchiveError> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ArchiveError::Io {
            path: PathBuf::from(entry),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(ArchiveError::NameTooLong {
            name: entry.to_string(),
            limit,
        });
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The tar crate reads GNU long names and pax headers whole into memory, so
/// check their sizes in a first pass over the raw records.
fn check_tar_records(reader: impl Read, archive: &Path) -> Result<(), ArchiveError> {
    let mut tar = tar::Archive::new(reader);
    let entries = tar.entries().map_err(Sink::io(archive))?.raw(true);
    for entry in entries {
        let entry = entry.map_err(Sink::io(archive))?;
        let kind = entry.header().entry_type();
        let limit = if kind.is_gnu_longname() || kind.is_gnu_longlink() {
            MAX_NAME + 1
        } else if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
            MAX_PAX
        } else {
            continue;
        };
        if entry.size() > limit {
            return Err(ArchiveError::NameTooLong {
                name: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                limit,
            });
        }
    }
    Ok(())
}

/// Extract `archive` into `dest` (a fresh folder).
pub fn extract(
    archive: &Path,
    format: Format,
    dest: &Path,
    only: &[String],
    max_bytes: u64,
) -> Result<(), ArchiveError> {
    let open = || File::open(archive).map_err(Sink::io(archive));
    let mut sink = Sink {
        dest,
        written: 0,
        limit: max_bytes,
        only,
        seen: vec![false; only.len()],
        links: Vec::new(),
    };
    let tar_reader = |format: Format| -> Result<Box<dyn Read>, ArchiveError> {
        Ok(if format == Format::TarGz {
            Box::new(flate2::read::GzDecoder::new(open()?))
        } else {
            Box::new(std::io::BufReader::new(open()?))
        })
    };
    match format {
        Format::None => {}
        Format::Zip => {
            let mut zip = zip::ZipArchive::new(open()?)?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i)?;
                let name = entry.name().to_string();
                let rel = safe_path(&name)?;
                if !sink.wanted(&rel) {
                    continue;
                }
                let mode = entry.unix_mode().unwrap_or(0o644);
                if entry.is_dir() {
                    sink.dir(&rel)?;
                } else if mode & 0o170000 == 0o120000 {
                    let target = bounded_name(&mut entry, MAX_NAME, &name)?;
                    sink.link(&rel, target)?;
                } else {
                    sink.file(&rel, &mut entry, mode & 0o111 != 0)?;
                }
            }
        }
        Format::Tar | Format::TarGz => {
            check_tar_records(tar_reader(format)?, archive)?;
            let mut tar = tar::Archive::new(tar_reader(format)?);
            for entry in tar.entries().map_err(Sink::io(archive))? {
                let mut entry = entry.map_err(Sink::io(archive))?;
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let rel = safe_path(&name)?;
                if rel.as_os_str().is_empty() || !sink.wanted(&rel) {
                    continue;
                }
                let kind = entry.header().entry_type();
                if kind.is_dir() {
                    sink.dir(&rel)?;
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    if kind.is_hard_link() {
                        // Hard links name another entry by its archive path.
                        sink.hard_link(&rel, &target)?;
                    } else {
                        sink.link(&rel, target)?;
                    }
                } else if kind.is_file() {
                    let exec = entry
                        .header()
                        .mode()
                        .map(|m| m & 0o111 != 0)
                        .unwrap_or(false);
                    sink.file(&rel, &mut entry, exec)?;
                }
            }
        }
    }
    sink.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zip_with(entries: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut z = zip::ZipWriter::new(f.reopen().unwrap());
        for (name, data) in entries {
            z.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap();
        f
    }

    #[test]
    fn rejects_parent_paths() {
        let z = zip_with(&[("ok.txt", b"ok"), ("../evil.txt", b"evil")]);
        let out = tempfile::tempdir().unwrap();
        let e = extract(z.path(), Format::Zip, out.path(), &[], 1 << 20).unwrap_err();
        assert!(e.to_string().contains("`../evil.txt` would escape"), "{e}");
    }

    #[test]
    fn enforces_size_limit_and_subsets() {
        let z = zip_with(&[("a/x.txt", &[b'x'; 1000]), ("b.txt", b"b")]);
        let out = tempfile::tempdir().unwrap();
        assert!(matches!(
            extract(z.path(), Format::Zip, out.path(), &[], 100),
            Err(ArchiveError::TooBig { .. })
        ));
        let out = tempfile::tempdir().unwrap();
        extract(z.path(), Format::Zip, out.path(), &["b.txt".into()], 100).unwrap();
        assert!(out.path().join("b.txt").exists() && !out.path().join("a").exists());
        let e = extract(z.path(), Format::Zip, out.path(), &["nope".into()], 100).unwrap_err();
        assert!(matches!(e, ArchiveError::Missing(_)));
    }

    #[test]
    fn tar_links_outside_are_rejected() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "../../etc/passwd").unwrap();
        b.finish().unwrap();
        let out = tempfile::tempdir().unwrap();
        let e = extract(f.path(), Format::Tar, out.path(), &[], 1 << 20).unwrap_err();
        assert!(matches!(e, ArchiveError::UnsafeLink { .. }), "{e}");
    }
}
