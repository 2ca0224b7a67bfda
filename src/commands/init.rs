//! `pipe init [--template shell|cola|sst2]`: a manifest to start from in the
//! current folder, and `.pipe/` in `.gitignore`. Never overwrites a file.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::ValueEnum;

use crate::exit::{self, Failure};
use crate::reporter;

#[derive(Clone, Copy, ValueEnum)]
pub enum Template {
    /// Two shell stages and a param (`pipe.yaml`).
    Shell,
    /// The blog's pipeline: CoLA, BERT fine-tuning, endpoint (`cola.yaml`).
    Cola,
    /// The same on SST-2 (`sst2.yaml`).
    Sst2,
}

impl Template {
    /// The file to write, the manifest, and the path it names itself by in
    /// its own comments.
    fn source(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Template::Shell => (
                "pipe.yaml",
                include_str!("../../pipelines/demo.yaml"),
                "pipelines/demo.yaml",
            ),
            Template::Cola => (
                "cola.yaml",
                include_str!("../../pipelines/cola.yaml"),
                "pipelines/cola.yaml",
            ),
            Template::Sst2 => (
                "sst2.yaml",
                include_str!("../../pipelines/sst2.yaml"),
                "pipelines/sst2.yaml",
            ),
        }
    }
}

pub fn run(dir: &Path, template: Template) -> Result<i32, Failure> {
    let (name, text, origin) = template.source();
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Failure::usage(anyhow::anyhow!(
                "{name} already exists; not overwriting it"
            )))
        }
        Err(e) => {
            return Err(Failure::usage(
                anyhow::Error::new(e).context(format!("cannot create {}", path.display())),
            ))
        }
    };
    file.write_all(text.replace(origin, name).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    reporter::status("Created", name);
    if ignore_store(dir)? {
        reporter::status("Updated", ".gitignore (.pipe/)");
    }
    reporter::note(&format!(
        "run it with `pipe run{}`",
        if name == "pipe.yaml" {
            String::new()
        } else {
            format!(" {name}")
        }
    ));
    Ok(exit::OK)
}

/// Add `.pipe/` to `dir/.gitignore` unless a line already ignores it; whether
/// the file changed.
fn ignore_store(dir: &Path) -> anyhow::Result<bool> {
    let path = dir.join(".gitignore");
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display())))
        }
    };
    let ignored = old
        .lines()
        .any(|l| matches!(l.trim(), ".pipe" | ".pipe/" | "/.pipe" | "/.pipe/"));
    if ignored {
        return Ok(false);
    }
    let sep = if old.is_empty() || old.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{sep}.pipe/\n").as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}
