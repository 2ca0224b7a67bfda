//! `fetch`: one URL to one file, over HTTP(S) with retries, resume and an
//! offline mirror.
//!
//! Retries (exponential backoff, bounded count) cover connect errors, timeouts,
//! 5xx answers and bodies cut short; 4xx answers fail at once. A retry resumes
//! with `Range` when the server advertised `Accept-Ranges: bytes`. A mirror dir
//! (`--mirror DIR` / `PIPE_MIRROR`) is consulted first: `https://HOST/PATH` is
//! looked up as `DIR/HOST/PATH`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::header::{ACCEPT_RANGES, CONTENT_LENGTH, RANGE};
use reqwest::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid URL `{url}`")]
    Url { url: String },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("GET {url}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("cannot write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted")]
    Cancelled,
}

pub struct Fetcher {
    client: reqwest::blocking::Client,
    retries: u32,
    mirror: Option<PathBuf>,
}

/// A URL safe to print: no user info, no query (which may carry tokens).
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.to_string()
        }
        Err(_) => "<invalid URL>".into(),
    }
}

impl Fetcher {
    pub fn new(timeout: Duration, retries: u32) -> Result<Fetcher, reqwest::Error> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("pipe/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mirror = std::env::var_os("PIPE_MIRROR")
            .filter(|m| !m.is_empty())
            .map(PathBuf::from);
        Ok(Fetcher {
            client,
            retries,
            mirror,
        })
    }

    /// Where `url` would be found in the mirror, if it is there.
    fn mirrored(&self, url: &reqwest::Url) -> Option<PathBuf> {
        let dir = self.mirror.as_ref()?;
        let host = url.host_str()?;
        let path = dir.join(host).join(url.path().trim_start_matches('/'));
        path.is_file().then_some(path)
    }

    /// Download `url` into `dest` (replacing it). `progress` gets (bytes so far, total).
    pub fn fetch(
        &self,
        url: &str,
        dest: &Path,
        cancel: &AtomicBool,
        progress: &dyn Fn(u64, Option<u64>),
    ) -> Result<(), FetchError> {
        let shown = redact(url);
        let parsed =
            reqwest::Url::parse(url).map_err(|_| FetchError::Url { url: shown.clone() })?;
        let io = |source| FetchError::Io {
            path: dest.to_path_buf(),
            source,
        };
        if let Some(local) = self.mirrored(&parsed) {
            tracing::info!(url = %shown, mirror = %local.display(), "from mirror");
            std::fs::copy(&local, dest).map_err(io)?;
            return Ok(());
        }
        let mut have = 0u64;
        let mut resumable = false;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if cancel.load(Ordering::Relaxed) {
                return Err(FetchError::Cancelled);
            }
            if attempt > 0 {
                let backoff = Duration::from_millis(200u64 << (attempt - 1).min(6));
                tracing::warn!(url = %shown, attempt, error = %last, "retrying in {backoff:?}");
                std::thread::sleep(backoff);
            }
            let mut req = self.client.get(parsed.clone());
            if have > 0 && resumable {
                req = req.header(RANGE, format!("bytes={have}-"));
            }
            let mut resp = match req.send() {
                Ok(r) => r,
                Err(e) => {
                    last = describe(&e);
                    continue;
                }
            };
            let status = resp.status();
            if status.is_server_error() {
                last = format!("HTTP {status}");
                continue;
            }
            if !status.is_success() {
                return Err(FetchError::Status { url: shown, status });
            }
            let append = status == StatusCode::PARTIAL_CONTENT && have > 0;
            if !append {
                have = 0;
            }
            resumable = resp
                .headers()
                .get(ACCEPT_RANGES)
                .is_some_and(|v| v.as_bytes() == b"bytes");
            let length = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let total = length.map(|l| l + have);
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(dest)
                .map_err(io)?;
            match copy(&mut resp, &mut file, &mut have, total, cancel, progress) {
                Ok(()) => {}
                Err(CopyError::Io(e)) => return Err(io(e)),
                Err(CopyError::Cancelled) => return Err(FetchError::Cancelled),
                Err(CopyError::Read(e)) => {
                    last = format!("body cut short after {have} bytes: {e}");
                    continue;
                }
            }
            if let Some(total) = total {
                if have != total {
                    last = format!("truncated body: got {have} of {total} bytes");
                    continue;
                }
            }
            file.sync_all().map_err(io)?;
            return Ok(());
        }
        Err(FetchError::GaveUp {
            url: shown,
            attempts: self.retries + 1,
            last,
        })
    }
}

enum CopyError {
    Read(std::io::Error),
    Io(std::io::Error),
    Cancelled,
}

fn copy(
    from: &mut impl Read,
    to: &mut File,
    have: &mut u64,
    total: Option<u64>,
    cancel: &AtomicBool,
    progress: &dyn Fn(u64, Option<u64>),
) -> Result<(), CopyError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut reported = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(CopyError::Cancelled);
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buf[..n]).map_err(CopyError::Io)?;
        *have += n as u64;
        if *have - reported >= 4 << 20 {
            reported = *have;
            progress(*have, total);
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut s = kind.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
