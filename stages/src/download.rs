//! `kind: download`: fetch a URL (optionally extracting it) or files of a
//! Hugging Face Hub repo into the stage output.
//!
//! ```yaml
//! with: {url: https://…/cola_public_1.1.zip, sha256: …, extract: zip, files: [cola_public/raw/in_domain_train.tsv]}
//! with: {hf: sentence-transformers/all-MiniLM-L6-v2, revision: main, files: [config.json, model.safetensors]}
//! ```
//!
//! The key holds the URL(s) and the pin. Without a `sha256` pin, the content
//! hash of the first download is recorded in the manifest's lock file and every
//! later download of the same thing (another machine, a cleared cache) must
//! match it, until `pipe run --force STAGE` accepts new content (like `dvc
//! update`). A pin is named after what was downloaded (see [`pin_name`]), so a
//! stage whose URL changed is never held to the old URL's pin.

use std::path::{Path, PathBuf};

use pipe_engine::{StageContext, StageError, StageKind, WithError};
use pipe_protocol::eta;
use serde::Deserialize;

use crate::archive::{self, Format};
use crate::fetch::{redact, Fetcher};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Download {
    url: Option<String>,
    sha256: Option<String>,
    extract: Option<Format>,
    #[serde(default)]
    files: Vec<String>,
    hf: Option<String>,
    revision: Option<String>,
    #[serde(default = "default_retries")]
    retries: u32,
    /// Seconds without progress before a request counts as timed out.
    #[serde(default = "default_timeout")]
    timeout: f64,
    /// `timeout` once checked.
    #[serde(skip)]
    timeout_after: std::time::Duration,
    /// Look up `https://HOST/PATH` as `MIRROR/HOST/PATH` first (`--mirror`;
    /// set by the binary, see [`crate::Settings`]).
    #[serde(skip)]
    pub mirror: Option<PathBuf>,
    /// Size limit in bytes: of each file downloaded, and of what an archive
    /// expands to (hard-link copies included).
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
}

fn default_retries() -> u32 {
    4
}
fn default_timeout() -> f64 {
    60.0
}
/// 20 GiB: far above any data set or model this tool fetches, far below a full disk.
fn default_max_bytes() -> u64 {
    20 << 30
}

fn check(w: &Download) -> Result<(), WithError> {
    match (&w.url, &w.hf) {
        (Some(_), Some(_)) => {
            return Err(WithError::field(
                "hf",
                "give either `url` or `hf`, not both",
            ))
        }
        (None, None) => {
            return Err(WithError {
                field: None,
                message: "missing field `url` (or `hf` for a Hugging Face Hub repo)".into(),
            })
        }
        (None, Some(repo)) => {
            if w.files.is_empty() {
                return Err(WithError::field(
                    "files",
                    "an `hf` download needs `files`: the repo files to fetch",
                ));
            }
            if repo.split('/').any(|p| p.is_empty() || p == "..") {
                return Err(WithError::field(
                    "hf",
                    format!("`{repo}` is not a repo name like ORG/NAME"),
                ));
            }
            if w.sha256.is_some() || w.extract.is_some() {
                return Err(WithError::field(
                    "hf",
                    "`sha256` and `extract` apply to `url` downloads",
                ));
            }
        }
        (Some(url), None) => {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| WithError::field("url", format!("invalid URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(WithError::field(
                    "url",
                    format!("unsupported scheme `{}`", parsed.scheme()),
                ));
            }
            if w.revision.is_some() {
                return Err(WithError::field(
                    "revision",
                    "`revision` applies to `hf` downloads",
                ));
            }
        }
    }
    if let Some(s) = &w.sha256 {
        if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(WithError::field(
                "sha256",
                format!("`{s}` is not a sha256 hex digest"),
            ));
        }
    }
    for f in &w.files {
        if Path::new(f).is_absolute() || f.split('/').any(|p| p == "..") {
            return Err(WithError::field(
                "files",
                format!("`{f}` must be a relative path"),
            ));
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String, StageError> {
    let digest = pipe_engine::cache::Digest::of_file(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(digest.to_hex())
}

/// The lock's name for a download's pin: `sha256:URL` (without user-info) or
/// `sha256:hf://REPO@REVISION/FILE`.
fn pin_name(source: &str) -> String {
    format!("sha256:{source}")
}

/// `url` without user-info: a pin name is written to the lock file.
fn url_pin(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_fragment(None);
    pin_name(u.as_str())
}

/// Check the downloaded content against the manifest's pin, else the lock's.
fn check_pin(
    ctx: &StageContext,
    url: &str,
    pin_name: &str,
    explicit: Option<&str>,
    actual: &str,
) -> Result<(), StageError> {
    if let Some(expected) = explicit {
        if !expected.eq_ignore_ascii_case(actual) {
            return Err(format!(
                "sha256 mismatch for {}: expected {expected}, got {actual}",
                redact(url)
            )
            .into());
        }
    } else if let Some(locked) = ctx.locked_pins.get(pin_name) {
        if locked != actual {
            return Err(format!(
                "{} changed since {} recorded it (sha256 {locked}, now {actual}); run `pipe run --force {}` to accept the new content",
                redact(url),
                ctx.pipeline
                    .lock_file()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                ctx.stage.name
            )
            .into());
        }
    }
    ctx.pin(pin_name, actual);
    Ok(())
}

impl StageKind for Download {
    const NAME: &'static str = "download";
    const VERSION: u32 = 1;

    fn validate(&mut self, _inputs: &[&str]) -> Result<(), WithError> {
        self.timeout_after = WithError::seconds("timeout", self.timeout)?;
        check(self)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let w = self;
        let fetcher = Fetcher::new(w.timeout_after, w.retries, w.max_bytes, w.mirror.clone())?;
        // `model.safetensors: 120.4/440.5 MB · 35.2 MB/s · ETA 9s`
        let progress = |name: &str| {
            let name = name.to_string();
            let started = std::time::Instant::now();
            move |have: u64, total: Option<u64>| {
                let elapsed = started.elapsed();
                let rate = have as f64 / 1e6 / elapsed.as_secs_f64().max(1e-3);
                let mut text = match total {
                    Some(t) => format!("{name}: {:.1}/{:.1} MB", have as f64 / 1e6, t as f64 / 1e6),
                    None => format!("{name}: {:.1} MB", have as f64 / 1e6),
                };
                text += &format!(" · {rate:.1} MB/s");
                if let Some(eta) = total.and_then(|t| eta(have as f64, t as f64, elapsed)) {
                    text += &format!(" · {eta}");
                }
                ctx.progress(&text);
            }
        };
        if let Some(repo) = &w.hf {
            let base =
                std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
            let revision = w.revision.as_deref().unwrap_or("main");
            for file in &w.files {
                let url = format!(
                    "{}/{repo}/resolve/{revision}/{file}",
                    base.trim_end_matches('/')
                );
                let dest = ctx.out.join(file);
                if let Some(dir) = dest.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                fetcher.fetch(&url, &dest, ctx.cancel, &progress(file))?;
                let actual = sha256_file(&dest)?;
                let pin = pin_name(&format!("hf://{repo}@{revision}/{file}"));
                check_pin(ctx, &url, &pin, None, &actual)?;
            }
            return Ok(());
        }
        let url = w.url.as_deref().unwrap_or_default();
        let parsed = reqwest::Url::parse(url)?;
        let name = parsed
            .path_segments()
            .and_then(|mut s| s.next_back().map(str::to_string))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "download".into());
        let format = w.extract.unwrap_or_else(|| Format::from_name(&name));
        let staged = ctx.out.join(format!(".partial-{name}"));
        fetcher.fetch(url, &staged, ctx.cancel, &progress(&name))?;
        let actual = sha256_file(&staged)?;
        check_pin(ctx, url, &url_pin(&parsed), w.sha256.as_deref(), &actual)?;
        if format == Format::None {
            if !w.files.is_empty() {
                return Err(
                    "`files` selects entries of an archive; this download is not extracted".into(),
                );
            }
            std::fs::rename(&staged, ctx.out.join(&name))?;
        } else {
            archive::extract(&staged, format, ctx.out, &w.files, w.max_bytes).map_err(|e| {
                format!(
                    "{}: {}",
                    redact(url),
                    pipe_engine::executor::error_chain(&e)
                )
            })?;
            std::fs::remove_file(&staged)?;
        }
        Ok(())
    }
}
