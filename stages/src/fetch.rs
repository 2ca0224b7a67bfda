//! `fetch`: one URL to one file, over HTTP(S) with retries, resume and an
//! offline mirror.
//!
//! Retries (exponential backoff with jitter, bounded count) cover connect
//! errors, timeouts, 5xx and 429 answers and bodies cut short; other 4xx
//! answers fail at once. A 429 or 503 with `Retry-After` (seconds or an HTTP
//! date) waits that long, at most [`MAX_RETRY_AFTER`]. A retry resumes with
//! `Range` when the server advertised `Accept-Ranges: bytes`. A body larger
//! than `max_bytes` fails at once, without retries. A mirror dir
//! (`--mirror DIR` / `PIPE_MIRROR`) is consulted first: `https://HOST/PATH` is
//! looked up as `DIR/HOST/PATH`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, ACCEPT_RANGES, CONTENT_LENGTH, RANGE, RETRY_AFTER};
use reqwest::StatusCode;

/// The longest wait a server's `Retry-After` can ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

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
    #[error("GET {url}: larger than `max_bytes` ({limit} bytes; raise it if this is expected)")]
    TooBig { url: String, limit: u64 },
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
    max_bytes: u64,
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
    /// A fetcher giving up after `retries` retries or past `max_bytes` bytes,
    /// looking up `https://HOST/PATH` as `MIRROR/HOST/PATH` first.
    pub fn new(
        timeout: Duration,
        retries: u32,
        max_bytes: u64,
        mirror: Option<PathBuf>,
    ) -> Result<Fetcher, reqwest::Error> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("pipe/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Fetcher {
            client,
            retries,
            max_bytes,
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
        let too_big = |shown: String| FetchError::TooBig {
            url: shown,
            limit: self.max_bytes,
        };
        if let Some(local) = self.mirrored(&parsed) {
            tracing::info!(url = %shown, mirror = %local.display(), "from mirror");
            if std::fs::metadata(&local).map_err(io)?.len() > self.max_bytes {
                return Err(too_big(shown));
            }
            std::fs::copy(&local, dest).map_err(io)?;
            return Ok(());
        }
        let mut have = 0u64;
        let mut resumable = false;
        let mut last = String::new();
        let mut retry_after = None;
        for attempt in 0..=self.retries {
            if cancel.load(Ordering::Relaxed) {
                return Err(FetchError::Cancelled);
            }
            if attempt > 0 {
                let (delay, why) = match retry_after.take() {
                    Some(d) => (d, " (Retry-After)"),
                    None => (backoff(attempt), ""),
                };
                tracing::warn!(url = %shown, attempt, error = %last, "retrying in {delay:?}{why}");
                if !sleep_unless_cancelled(delay, cancel) {
                    return Err(FetchError::Cancelled);
                }
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
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                last = format!("HTTP {status}");
                if matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) {
                    retry_after = parse_retry_after(resp.headers(), SystemTime::now());
                }
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
            let total = length.map(|l| l.saturating_add(have));
            if total.is_some_and(|t| t > self.max_bytes) {
                return Err(too_big(shown));
            }
            let mut file = OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(dest)
                .map_err(io)?;
            match copy(
                &mut resp,
                &mut file,
                &mut have,
                total,
                self.max_bytes,
                cancel,
                progress,
            ) {
                Ok(()) => {}
                Err(CopyError::TooBig) => return Err(too_big(shown)),
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

/// Exponential backoff from 200 ms, times a random factor in [0.5, 1.5) so
/// that clients failed together do not retry together.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200u64 << attempt.saturating_sub(1).min(6));
    base.mul_f64(0.5 + fastrand::f64())
}

/// The wait a 429 or 503 asks for: `Retry-After: SECONDS` or an HTTP date,
/// at most [`MAX_RETRY_AFTER`].
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Sleep `delay`, waking early (and returning false) when cancelled.
fn sleep_unless_cancelled(delay: Duration, cancel: &AtomicBool) -> bool {
    let step = Duration::from_millis(50);
    let mut left = delay;
    while !left.is_zero() {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        let nap = left.min(step);
        std::thread::sleep(nap);
        left -= nap;
    }
    !cancel.load(Ordering::Relaxed)
}

enum CopyError {
    TooBig,
    Read(std::io::Error),
    Io(std::io::Error),
    Cancelled,
}

fn copy(
    from: &mut impl Read,
    to: &mut File,
    have: &mut u64,
    total: Option<u64>,
    limit: u64,
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
        if have.saturating_add(n as u64) > limit {
            return Err(CopyError::TooBig);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, value.parse().unwrap());
        h
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_capped() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let wait = |v: &str| parse_retry_after(&headers(v), now);
        assert_eq!(wait("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            wait("Wed, 21 Oct 2015 07:28:05 GMT"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(wait("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(wait("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(wait("soon"), None);
    }

    #[test]
    fn backoff_grows_with_jitter() {
        for attempt in 1..10 {
            let base = Duration::from_millis(200u64 << (attempt - 1).min(6));
            let d = backoff(attempt);
            assert!(d >= base / 2 && d < base * 3 / 2, "{attempt}: {d:?}");
        }
    }
}
