//! Safe archive extraction: zip, tar and tar.gz.
//!
//! Entries with absolute paths or `..`, and links pointing outside the output
//! dir, are rejected; so is an archive that expands past `max_bytes` (archive
//! bombs). With `only`, just those entries (files, or folders and what is
//! below them) are extracted, and each must exist.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive entry `{0}` would escape the output directory")]
    Unsafe(String),
    #[error("archive link `{name}` → `{target}` points outside the output directory")]
    UnsafeLink { name: String, target: String },
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

    fn file(
        &mut self,
        rel: &Path,
        mut reader: impl Read,
        executable: bool,
    ) -> Result<(), ArchiveError> {
        let path = self.dest.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Self::io(dir))?;
        }
        let mut f = File::create(&path).map_err(Self::io(&path))?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(Self::io(&path))?;
            if n == 0 {
                break;
            }
            self.written += n as u64;
            if self.written > self.limit {
                return Err(ArchiveError::TooBig { limit: self.limit });
            }
            f.write_all(&buf[..n]).map_err(Self::io(&path))?;
        }
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(Self::io(&path))?;
        }
        Ok(())
    }

    fn link(&mut self, rel: &Path, target: &str) -> Result<(), ArchiveError> {
        let path = self.dest.join(rel);
        if !pipe_engine::cache::link_stays_inside(self.dest, &path, Path::new(target)) {
            return Err(ArchiveError::UnsafeLink {
                name: rel.display().to_string(),
                target: target.to_string(),
            });
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Self::io(dir))?;
        }
        std::os::unix::fs::symlink(target, &path).map_err(Self::io(&path))
    }

    fn finish(self) -> Result<(), ArchiveError> {
        match self.seen.iter().position(|s| !s) {
            Some(i) => Err(ArchiveError::Missing(self.only[i].clone())),
            None => Ok(()),
        }
    }
}

/// Extract `archive` into `dest`.
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
                    let p = dest.join(&rel);
                    std::fs::create_dir_all(&p).map_err(Sink::io(&p))?;
                } else if mode & 0o170000 == 0o120000 {
                    let mut target = String::new();
                    entry
                        .read_to_string(&mut target)
                        .map_err(Sink::io(archive))?;
                    sink.link(&rel, &target)?;
                } else {
                    sink.file(&rel, &mut entry, mode & 0o111 != 0)?;
                }
            }
        }
        Format::Tar | Format::TarGz => {
            let reader: Box<dyn Read> = if format == Format::TarGz {
                Box::new(flate2::read::GzDecoder::new(open()?))
            } else {
                Box::new(open()?)
            };
            let mut tar = tar::Archive::new(reader);
            for entry in tar.entries().map_err(Sink::io(archive))? {
                let mut entry = entry.map_err(Sink::io(archive))?;
                let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let rel = safe_path(&name)?;
                if rel.as_os_str().is_empty() || !sink.wanted(&rel) {
                    continue;
                }
                let kind = entry.header().entry_type();
                if kind.is_dir() {
                    let p = dest.join(&rel);
                    std::fs::create_dir_all(&p).map_err(Sink::io(&p))?;
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry
                        .link_name()
                        .ok()
                        .flatten()
                        .map(|t| t.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if kind.is_hard_link() {
                        // Hard links name another entry by its archive path.
                        let target_rel = safe_path(&target)?;
                        let from = dest.join(&target_rel);
                        let to = dest.join(&rel);
                        std::fs::copy(&from, &to).map_err(Sink::io(&to))?;
                    } else {
                        sink.link(&rel, &target)?;
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
