//! `kind: upload`: publish every file of the input to an object store, like
//! the blog's `sagemaker_session.upload_data`, and keep a receipt.
//!
//! ```yaml
//! with: {to: s3://BUCKET/PREFIX, endpoint: http://127.0.0.1:9000, region: us-east-1, allow_http: true}
//! with: {to: file:///srv/datasets/cola}     # or a workspace-relative dir: {to: uploads/cola}
//! ```
//!
//! Credentials come from the standard AWS environment variables, else from the
//! profile `AWS_PROFILE` (or `default`) in `~/.aws/credentials`; they are never
//! part of `with`, the key, the receipt, the lock file or any message. User info
//! written into `endpoint` is masked in every message (but, being part of
//! `with`, is in the key record and the receipt: keep secrets in the environment).
//!
//! An upload is an effect: its output is `uploaded.json` (URI, size and sha256
//! of each object). Objects already holding the same bytes are not sent again;
//! each sent object is read back and checked. On a cache hit the receipt is
//! verified against the store (each object still there with the same sha256),
//! and the stage runs again only if something drifted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::{path::Path as ObjectPath, ObjectStore, PutPayload};
use pipe_engine::cache::Digest;
use pipe_engine::{StageContext, StageError, StageKind, WithError};
use pipe_remote::location::{is_loopback, s3_builder};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    to: String,
    endpoint: Option<String>,
    region: Option<String>,
    #[serde(default)]
    allow_http: bool,
    /// `to`, checked by `validate`.
    #[serde(skip)]
    dest: Dest,
}

#[derive(Serialize, Deserialize)]
struct Receipt {
    destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    objects: Vec<Object>,
}

#[derive(Serialize, Deserialize)]
struct Object {
    path: String,
    uri: String,
    size: u64,
    sha256: String,
}

#[derive(Default)]
enum Dest {
    S3 {
        bucket: String,
        prefix: String,
    },
    /// An absolute directory, from `file:///…`.
    File(PathBuf),
    /// A directory relative to the workspace root.
    Workspace(PathBuf),
    /// Not checked yet.
    #[default]
    Unchecked,
}

fn parse(w: &Upload) -> Result<Dest, WithError> {
    let dest = if let Some(rest) = w.to.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(WithError::field(
                "to",
                format!("`{}` names no bucket", w.to),
            ));
        }
        Dest::S3 {
            bucket: bucket.into(),
            prefix: prefix.trim_matches('/').into(),
        }
    } else if let Some(path) = w.to.strip_prefix("file://") {
        if !Path::new(path).is_absolute() {
            return Err(WithError::field(
                "to",
                format!("`{}`: a file:// URI needs an absolute path", w.to),
            ));
        }
        Dest::File(path.into())
    } else if w.to.contains("://") {
        return Err(WithError::field(
            "to",
            format!(
                "unsupported destination `{}` (use s3://, file:// or a workspace dir)",
                w.to
            ),
        ));
    } else {
        let p = PathBuf::from(&w.to);
        if p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(WithError::field(
                "to",
                format!(
                    "`{}` must be inside the workspace (or use file:///ABS/DIR)",
                    w.to
                ),
            ));
        }
        Dest::Workspace(p)
    };
    if !matches!(dest, Dest::S3 { .. })
        && (w.endpoint.is_some() || w.region.is_some() || w.allow_http)
    {
        return Err(WithError::field(
            "endpoint",
            "`endpoint`, `region` and `allow_http` apply to s3:// destinations",
        ));
    }
    if w.allow_http && !w.endpoint.as_deref().is_some_and(is_loopback) {
        return Err(WithError::field(
            "allow_http",
            "`allow_http` is only allowed for a loopback `endpoint` (127.0.0.1, localhost, ::1)",
        ));
    }
    Ok(dest)
}

/// The store, the object-path prefix, and the URI prefix of a destination.
fn open(
    w: &Upload,
    workspace: &Path,
) -> Result<(Arc<dyn ObjectStore>, String, String), StageError> {
    let dest = &w.dest;
    Ok(match dest {
        Dest::S3 { bucket, prefix } => {
            let mut b = s3_builder(bucket);
            if let Some(region) = &w.region {
                b = b.with_region(region);
            }
            if let Some(endpoint) = &w.endpoint {
                b = b.with_endpoint(endpoint).with_allow_http(w.allow_http);
            }
            let store = b
                .build()
                .map_err(|e| format!("cannot configure s3://{bucket}: {e}"))?;
            (
                Arc::new(store),
                prefix.clone(),
                format!("s3://{bucket}/{}", with_slash(prefix)),
            )
        }
        Dest::File(dir) | Dest::Workspace(dir) => {
            let abs = workspace.join(dir);
            std::fs::create_dir_all(&abs)
                .map_err(|e| format!("cannot create {}: {e}", abs.display()))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&abs)?;
            let uri = match dest {
                Dest::File(_) => format!("file://{}/", abs.display()),
                _ => with_slash(&dir.to_string_lossy()),
            };
            (Arc::new(store), String::new(), uri)
        }
        Dest::Unchecked => return Err(format!("upload to `{}`: not checked", w.to).into()),
    })
}

fn with_slash(s: &str) -> String {
    let s = s.trim_matches('/');
    if s.is_empty() {
        String::new()
    } else {
        format!("{s}/")
    }
}

fn object_path(prefix: &str, rel: &str) -> Result<ObjectPath, StageError> {
    let full = if prefix.is_empty() {
        rel.to_string()
    } else {
        format!("{prefix}/{rel}")
    };
    Ok(ObjectPath::parse(full)?)
}

/// sha256 of the object at `path`, or `None` if it does not exist.
async fn remote_sha256(
    store: &dyn ObjectStore,
    path: &ObjectPath,
) -> Result<Option<(u64, String)>, StageError> {
    match store.get(path).await {
        Ok(r) => {
            let bytes = r.bytes().await?;
            Ok(Some((bytes.len() as u64, Digest::of(&bytes).to_hex())))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, StageError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Downloads the objects of the receipt `uploaded` into `dest` (at their
/// relative paths), checking each against the receipt's sha256: how a later
/// stage reads what an `upload` published.
pub fn fetch(uploaded: &Path, dest: &Path, workspace: &Path) -> Result<(), StageError> {
    let receipt: Receipt = serde_json::from_slice(&std::fs::read(uploaded)?)
        .map_err(|e| format!("{}: not an upload receipt: {e}", uploaded.display()))?;
    let mut w = Upload {
        to: receipt.destination.clone(),
        allow_http: receipt
            .endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://") && is_loopback(e)),
        endpoint: receipt.endpoint.clone(),
        region: receipt.region.clone(),
        dest: Dest::Unchecked,
    };
    w.validate(&[])
        .map_err(|e| format!("{}: {e}", uploaded.display()))?;
    let (store, prefix, _) = open(&w, workspace)?;
    let rt = runtime()?;
    for o in &receipt.objects {
        let rel = Path::new(&o.path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(format!(
                "{}: object path `{}` leaves the folder",
                uploaded.display(),
                o.path
            )
            .into());
        }
        let path = object_path(&prefix, &o.path)?;
        let bytes = rt
            .block_on(async { store.get(&path).await?.bytes().await })
            .map_err(|e| format!("cannot fetch {}: {e}", o.uri))?;
        let got = Digest::of(&bytes).to_hex();
        if got != o.sha256 {
            return Err(format!(
                "{} changed since it was uploaded (sha256 {got}, receipt {})",
                o.uri, o.sha256
            )
            .into());
        }
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &bytes)?;
    }
    Ok(())
}

impl StageKind for Upload {
    const NAME: &'static str = "upload";
    const VERSION: u32 = 2;

    fn validate(&mut self, _inputs: &[&str]) -> Result<(), WithError> {
        self.dest = parse(self)?;
        Ok(())
    }

    fn is_effect(&self) -> bool {
        true
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let w = self;
        let mut inputs = ctx.inputs.values();
        let (Some(src), None) = (inputs.next(), inputs.next()) else {
            return Err("upload takes exactly one input: the file or folder to publish".into());
        };
        let (store, prefix, uri) = open(w, ctx.workspace)?;
        // One scan lists and hashes every file (a single file is a tree whose
        // root is that file, named by its file name).
        let tree = pipe_engine::cache::Tree::scan(src, &pipe_engine::cache::PlainHasher)?;
        let (root, single) = if src.is_dir() {
            (src.clone(), None)
        } else {
            let name = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (
                src.parent().unwrap_or(Path::new("/")).to_path_buf(),
                Some(name),
            )
        };
        let rt = runtime()?;
        let mut objects = Vec::new();
        for (rel, digest, _, size) in tree.files() {
            let rel = single.clone().unwrap_or_else(|| rel.to_string());
            let sha256 = digest.to_hex();
            let path = object_path(&prefix, &rel)?;
            let target = format!("{uri}{rel}");
            rt.block_on(async {
                if let Some((s, h)) = remote_sha256(store.as_ref(), &path).await? {
                    if s == size && h == sha256 {
                        ctx.progress(&format!("{target}: unchanged"));
                        return Ok::<(), StageError>(());
                    }
                }
                let bytes = std::fs::read(root.join(&rel))?;
                store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map_err(|e| format!("cannot upload {target}: {e}"))?;
                match remote_sha256(store.as_ref(), &path).await? {
                    Some((s, h)) if s == size && h == sha256 => Ok(()),
                    _ => Err(format!(
                        "{target}: read back after upload does not match what was sent"
                    )
                    .into()),
                }
            })?;
            ctx.progress(&format!("{target}: {size} bytes"));
            objects.push(Object {
                path: rel,
                uri: target,
                size,
                sha256,
            });
        }
        let receipt = Receipt {
            destination: w.to.clone(),
            endpoint: w.endpoint.clone(),
            region: w.region.clone(),
            objects,
        };
        crate::write_json(ctx, "uploaded.json", &receipt)?;
        Ok(())
    }

    fn verify(&self, ctx: &StageContext) -> Result<Option<String>, StageError> {
        let receipt: Receipt =
            serde_json::from_slice(&std::fs::read(ctx.out.join("uploaded.json"))?)?;
        let (store, prefix, _) = open(self, ctx.workspace)?;
        let rt = runtime()?;
        for o in &receipt.objects {
            let path = object_path(&prefix, &o.path)?;
            match rt.block_on(remote_sha256(store.as_ref(), &path))? {
                Some((_, h)) if h == o.sha256 => {}
                Some(_) => return Ok(Some(format!("{} was changed", o.uri))),
                None => return Ok(Some(format!("{} is gone", o.uri))),
            }
        }
        Ok(None)
    }
}
