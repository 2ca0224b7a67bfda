//! `kind: package`: `model.tar.gz` in the layout the SageMaker PyTorch serving
//! container expects — `model.pt`, `config.json` and the tokenizer files at the
//! root, `code/inference.py` (+ `code/requirements.txt`) — so the same artifact
//! deploys there unchanged.
//!
//! Byte-reproducible: entries sorted, mtime fixed, uid/gid 0, modes 0644/0755,
//! no user names, a gzip header without time or name, compression level 6.
//! Also writes `package.json`: the archive's sha256, size and entries.

use std::io::Write;
use std::path::Path;

use flate2::{Compression, GzBuilder};
use pipe_engine::cache::Digest;
use pipe_engine::{StageContext, StageError, StageKind};
use serde::Deserialize;
use serde_json::json;

const INFERENCE_PY: &str = include_str!("inference.py");
const REQUIREMENTS: &str = "transformers\n";
/// 2000-01-01T00:00:00Z: fixed, and not so old that `tar` warns about it.
const MTIME: u64 = 946_684_800;

fn header(path: &str, size: u64, dir: bool) -> Result<tar::Header, StageError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_cksum();
    Ok(h)
}

/// Writes the archive of `entries` (path, bytes; `None` for a directory).
pub fn write_tar_gz(out: &Path, entries: &[(String, Option<Vec<u8>>)]) -> Result<(), StageError> {
    let mut sorted: Vec<&(String, Option<Vec<u8>>)> = entries.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let file = std::fs::File::create(out)?;
    let gz = GzBuilder::new()
        .mtime(0)
        .write(std::io::BufWriter::new(file), Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    for (path, data) in sorted {
        match data {
            Some(bytes) => {
                tar.append(&header(path, bytes.len() as u64, false)?, bytes.as_slice())?
            }
            None => tar.append(&header(path, 0, true)?, std::io::empty())?,
        }
    }
    let mut w = tar.into_inner()?.finish()?;
    w.flush()?;
    Ok(())
}

/// `kind: package` takes no `with:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {}

impl StageKind for Package {
    const NAME: &'static str = "package";
    const VERSION: u32 = 1;

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let Some(model) = ctx.inputs.get("model") else {
            return Err("`package` needs an input named `model` (a trace stage's output)".into());
        };
        let mut entries = Vec::new();
        let root = ["model.pt", "config.json"].into_iter();
        for name in root.chain(pipe_protocol::TOKENIZER_FILES) {
            let p = model.join(name);
            if p.is_file() {
                entries.push((name.to_string(), Some(std::fs::read(&p)?)));
            } else if matches!(name, "model.pt" | "config.json") {
                return Err(format!(
                    "{} is missing: is `model` a trace stage's output?",
                    p.display()
                )
                .into());
            }
        }
        entries.push(("code".into(), None));
        entries.push((
            "code/inference.py".into(),
            Some(INFERENCE_PY.as_bytes().to_vec()),
        ));
        entries.push((
            "code/requirements.txt".into(),
            Some(REQUIREMENTS.as_bytes().to_vec()),
        ));
        let archive = ctx.out.join("model.tar.gz");
        write_tar_gz(&archive, &entries)?;
        let mut names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        let summary = json!({
            "file": "model.tar.gz",
            "sha256": Digest::of_file(&archive)?.to_hex(),
            "size": std::fs::metadata(&archive)?.len(),
            "entries": names,
        });
        crate::write_json(ctx, "package.json", &summary)?;
        ctx.progress(&format!(
            "model.tar.gz sha256 {}",
            &summary["sha256"].as_str().unwrap_or_default()[..12]
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use pipe_protocol::serve::DEFAULT_MAX_LEN;

    /// SageMaker's server and `pipe serve` cut sentences alike when a
    /// model's `config.json` names no `max_len`.
    #[test]
    fn inference_py_defaults_to_the_servers_max_len() {
        let default = format!(r#"config.get("max_len", {DEFAULT_MAX_LEN})"#);
        assert!(super::INFERENCE_PY.contains(&default), "{default}");
    }
}
