//! `Location`: where a remote cache lives, parsed from its URL, and the
//! `object_store` that reaches it.
//!
//! `s3://BUCKET/PREFIX` takes credentials, region and endpoint from the
//! standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` …), else from the profile `AWS_PROFILE` (or `default`)
//! in `~/.aws/credentials`; plain HTTP is allowed only to a loopback endpoint.
//! `file:///ABS/DIR` is a directory on a shared filesystem. Credentials are
//! read here and nowhere else, and never kept in a message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;

use crate::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    File(PathBuf),
}

impl Location {
    pub fn parse(url: &str) -> Result<Location, Error> {
        let bad = |why: &str| Error::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("it names no bucket"));
            }
            Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            })
        } else if let Some(path) = url.strip_prefix("file://") {
            if !Path::new(path).is_absolute() {
                return Err(bad(
                    "a file:// URL needs an absolute path (file:///ABS/DIR)",
                ));
            }
            Ok(Location::File(PathBuf::from(path)))
        } else {
            Err(bad("use s3://BUCKET/PREFIX or file:///ABS/DIR"))
        }
    }

    /// The object store and the prefix of every path inside it.
    pub fn open(&self) -> Result<(Arc<dyn ObjectStore>, String), Error> {
        match self {
            Location::S3 { bucket, prefix } => Ok((Arc::new(s3(bucket)?), prefix.clone())),
            Location::File(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                    op: "create directory",
                    path: dir.clone(),
                    source,
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(
                    |source| Error::Store {
                        what: format!("file://{}", dir.display()),
                        source,
                    },
                )?;
                Ok((Arc::new(store), String::new()))
            }
        }
    }
}

/// An S3 client builder for `bucket`: the standard AWS variables, else the
/// profile `AWS_PROFILE` (or `default`) in `~/.aws/credentials`.
pub fn s3_builder(bucket: &str) -> object_store::aws::AmazonS3Builder {
    let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        if let Some((key, secret, token)) = profile_credentials() {
            b = b.with_access_key_id(key).with_secret_access_key(secret);
            if let Some(t) = token {
                b = b.with_token(t);
            }
        }
    }
    b
}

fn s3(bucket: &str) -> Result<object_store::aws::AmazonS3, Error> {
    let mut b = s3_builder(bucket);
    // Fail fast when the remote is away: a cache that cannot be reached is a miss.
    let retry = object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(60),
        ..Default::default()
    };
    let client =
        object_store::ClientOptions::new().with_connect_timeout(std::time::Duration::from_secs(5));
    // Before the endpoint: client options replace `allow_http`.
    b = b.with_retry(retry).with_client_options(client);
    let endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
        .iter()
        .find_map(|v| std::env::var(v).ok());
    if let Some(endpoint) = endpoint {
        if endpoint.starts_with("http://") {
            if !is_loopback(&endpoint) {
                return Err(Error::Url {
                    url: endpoint,
                    why: "plain HTTP is only allowed to a loopback endpoint (127.0.0.1, localhost, ::1)".into(),
                });
            }
            b = b.with_allow_http(true);
        }
        b = b.with_endpoint(endpoint);
    }
    b.build().map_err(|source| Error::Store {
        what: format!("s3://{bucket}"),
        source,
    })
}

/// Whether `endpoint` is an URL to this machine.
pub fn is_loopback(endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `(access key, secret, session token)` of the profile `AWS_PROFILE` (or
/// `default`) in `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`).
pub fn profile_credentials() -> Option<(String, String, Option<String>)> {
    let home = std::env::var_os("HOME")?;
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".aws/credentials"));
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let text = std::fs::read_to_string(file).ok()?;
    let mut section = String::new();
    let mut values = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
        } else if section == profile {
            if let Some((k, v)) = line.split_once('=') {
                values.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    Some((
        values.remove("aws_access_key_id")?,
        values.remove("aws_secret_access_key")?,
        values.remove("aws_session_token"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_and_file_urls() {
        assert_eq!(
            Location::parse("s3://b/team/cache/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "team/cache".into()
            }
        );
        assert_eq!(
            Location::parse("file:///srv/cache").unwrap(),
            Location::File("/srv/cache".into())
        );
        assert!(Location::parse("file://rel/dir").is_err());
        assert!(Location::parse("s3:///p").is_err());
        assert!(Location::parse("gs://b").is_err());
    }

    #[test]
    fn loopback_only() {
        assert!(is_loopback("http://127.0.0.1:9000"));
        assert!(is_loopback("http://[::1]:9000"));
        assert!(is_loopback("http://localhost"));
        assert!(!is_loopback("http://10.0.0.1:9000"));
        assert!(!is_loopback("http://127.0.0.1.example.com"));
    }
}
