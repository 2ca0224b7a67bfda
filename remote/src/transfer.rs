//! Moving results between the local store and the remote: `fetch` (entry,
//! tree listing, then packs and files in parallel, each checked against its
//! sha256 before it enters the store) and `push` (blobs the remote lacks, in
//! parallel, then the entry).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use pipe_cache::{Digest, Key, RunRecord, Store, Tree};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::entry::{cut, large_files, small_files, Entry, Member, Pack};
use crate::{Error, Remote, PARALLEL};

/// What a push sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    pub blobs: usize,
    pub bytes: u64,
    /// Whether the entry was written (false: the remote already had it all).
    pub entry: bool,
}

fn io(op: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

impl Remote {
    pub(crate) fn path(&self, dir: &str, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(format!("{dir}/{name}"))
        } else {
            ObjectPath::from(format!("{}/{dir}/{name}", self.prefix))
        }
    }

    fn cas(&self, d: &Digest) -> ObjectPath {
        self.path("cas", &d.to_hex())
    }

    fn store_err(&self, path: &ObjectPath) -> impl FnOnce(object_store::Error) -> Error {
        let what = path.to_string();
        move |source| Error::Store { what, source }
    }

    fn is_bad(&self, d: &Digest) -> bool {
        self.bad
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(d)
    }

    fn mark_bad(&self, d: Digest) {
        self.bad.lock().unwrap_or_else(|e| e.into_inner()).insert(d);
    }

    /// A whole small object, `None` if absent.
    pub(crate) async fn get_bytes(&self, path: &ObjectPath) -> Result<Option<Bytes>, Error> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(self.store_err(path))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err(path)(e)),
        }
    }

    /// A blob checked against its digest (and size); missing or corrupt is an error.
    async fn get_blob(&self, d: &Digest) -> Result<Bytes, Error> {
        let bytes = self.get_bytes(&self.cas(d)).await?.ok_or_else(|| {
            self.mark_bad(*d);
            Error::Missing(*d)
        })?;
        let actual = Digest::of(&bytes);
        if actual != *d {
            self.mark_bad(*d);
            return Err(Error::Corrupt { digest: *d, actual });
        }
        Ok(bytes)
    }

    /// The entry of `key`: `None` if absent or (with a signing key) unsigned.
    async fn entry(&self, key: &Key) -> Result<Option<Entry>, Error> {
        let path = self.path("ac", &key.to_hex());
        let Some(bytes) = self.get_bytes(&path).await? else {
            return Ok(None);
        };
        let bad = |why: String| Error::Entry {
            path: path.to_string(),
            why,
        };
        let entry: Entry = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if let Some(secret) = &self.secret {
            if !entry.signed_by(secret) {
                self.note(|r| r.unsigned += 1);
                return Ok(None);
            }
        }
        if entry.key != *key || entry.record.key() != *key {
            return Err(bad("its key record does not hash to its key".into()));
        }
        Ok(Some(entry))
    }

    /// The output tree of `entry`, checked against its digest and output hash.
    async fn tree(&self, entry: &Entry) -> Result<Tree, Error> {
        let bytes = self.get_blob(&entry.tree).await?;
        let tree: Tree = serde_json::from_slice(&bytes).map_err(|e| Error::Entry {
            path: self.cas(&entry.tree).to_string(),
            why: format!("not a tree listing: {e}"),
        })?;
        if tree.hash() != entry.output_hash {
            return Err(Error::Entry {
                path: self.path("ac", &entry.key.to_hex()).to_string(),
                why: "its tree listing does not hash to its output hash".into(),
            });
        }
        Ok(tree)
    }

    /// Look up `key`; with a store, also download its objects and commit the
    /// run record (objects first).
    pub(crate) async fn fetch(
        &self,
        key: &Key,
        store: Option<&Store>,
    ) -> Result<Option<RunRecord>, Error> {
        let Some(entry) = self.entry(key).await? else {
            return Ok(None);
        };
        let tree = self.tree(&entry).await?;
        let Some(store) = store else {
            return Ok(Some(entry.run_record(tree)));
        };
        // Every (content, executable) pair the store lacks.
        let mut wanted: HashMap<Digest, Vec<bool>> = HashMap::new();
        for (_, d, x, _) in tree.files() {
            if !store.has_object(&d, x) {
                let v = wanted.entry(d).or_default();
                if !v.contains(&x) {
                    v.push(x);
                }
            }
        }
        let small = small_files(&tree);
        let mut members = small.as_slice();
        let mut jobs: Vec<BoxFuture<'_, Result<u64, Error>>> = Vec::new();
        for pack in &entry.packs {
            if pack.count > members.len() {
                return Err(Error::Entry {
                    path: self.path("ac", &key.to_hex()).to_string(),
                    why: "its packs list more files than its tree".into(),
                });
            }
            let (these, rest) = members.split_at(pack.count);
            members = rest;
            if these.iter().any(|m| wanted.contains_key(&m.0)) {
                jobs.push(self.fetch_pack(pack, these, &wanted, store).boxed());
            }
        }
        if !members.is_empty() {
            return Err(Error::Entry {
                path: self.path("ac", &key.to_hex()).to_string(),
                why: "its packs miss files of its tree".into(),
            });
        }
        for (d, size, _) in large_files(&tree) {
            if let Some(modes) = wanted.get(&d) {
                for &x in modes {
                    jobs.push(self.fetch_file(d, size, x, store).boxed());
                }
            }
        }
        let bytes: u64 = futures::stream::iter(jobs)
            .buffer_unordered(PARALLEL)
            .try_collect::<Vec<u64>>()
            .await?
            .into_iter()
            .sum();
        let run = entry.run_record(tree);
        store.put_record(&run)?;
        self.note(|r| {
            r.fetched += 1;
            r.bytes_fetched += bytes;
        });
        Ok(Some(run))
    }

    async fn fetch_pack(
        &self,
        pack: &Pack,
        members: &[Member],
        wanted: &HashMap<Digest, Vec<bool>>,
        store: &Store,
    ) -> Result<u64, Error> {
        if pack.size > crate::entry::PACK_MAX {
            return Err(Error::Entry {
                path: self.cas(&pack.sha256).to_string(),
                why: format!(
                    "a pack of {} bytes is over the limit of {}",
                    pack.size,
                    crate::entry::PACK_MAX
                ),
            });
        }
        let bytes = self.get_blob(&pack.sha256).await?;
        let short = || Error::Entry {
            path: self.cas(&pack.sha256).to_string(),
            why: "the pack is shorter than the files its entry lists".into(),
        };
        let mut at = 0usize;
        for (d, size, _) in members {
            let end = usize::try_from(*size)
                .ok()
                .and_then(|s| at.checked_add(s))
                .filter(|&e| e <= bytes.len())
                .ok_or_else(short)?;
            let content = &bytes[at..end];
            at = end;
            for &x in wanted.get(d).into_iter().flatten() {
                let actual = Digest::of(content);
                if actual != *d {
                    return Err(Error::Corrupt { digest: *d, actual });
                }
                let tmp = tempfile::NamedTempFile::new_in(store.tmp_dir())
                    .map_err(io("create a temp file in", &store.tmp_dir()))?;
                tmp.as_file()
                    .write_all(content)
                    .map_err(io("write", tmp.path()))?;
                let tmp = tmp.into_temp_path();
                store.insert_object(&tmp, d, x)?;
            }
        }
        Ok(bytes.len() as u64)
    }

    /// Stream a large blob into the store's tmp dir, hashing as it comes.
    async fn fetch_file(
        &self,
        d: Digest,
        size: u64,
        executable: bool,
        store: &Store,
    ) -> Result<u64, Error> {
        let path = self.cas(&d);
        let got = match self.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                self.mark_bad(d);
                return Err(Error::Missing(d));
            }
            Err(e) => return Err(self.store_err(&path)(e)),
        };
        let tmp = tempfile::NamedTempFile::new_in(store.tmp_dir())
            .map_err(io("create a temp file in", &store.tmp_dir()))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(self.store_err(&path))?;
            hasher.update(&chunk);
            total = total.saturating_add(chunk.len() as u64);
            if total > size {
                // Longer than the entry says: stop before it fills the disk.
                self.mark_bad(d);
                return Err(Error::Corrupt {
                    digest: d,
                    actual: Digest(hasher.finalize().into()),
                });
            }
            file.write_all(&chunk).map_err(io("write", tmp.path()))?;
        }
        file.flush().map_err(io("write", tmp.path()))?;
        drop(file);
        let actual = Digest(hasher.finalize().into());
        if actual != d || total != size {
            self.mark_bad(d);
            return Err(Error::Corrupt { digest: d, actual });
        }
        let tmp = tmp.into_temp_path();
        store.insert_object(&tmp, &d, executable)?;
        Ok(total)
    }

    /// Whether the remote holds blob `d` of `size` bytes (and it is not known bad).
    async fn has(&self, d: &Digest, size: u64) -> Result<bool, Error> {
        if self.is_bad(d) {
            return Ok(false);
        }
        let path = self.cas(d);
        match self.store.head(&path).await {
            Ok(meta) => Ok(meta.size == size),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_err(&path)(e)),
        }
    }

    /// Delete every object under `prefix` (in batches where the store
    /// has them: S3's DeleteObjects).
    pub(crate) async fn delete_prefix(&self, prefix: &ObjectPath) -> Result<(), Error> {
        let names = self
            .store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .boxed();
        self.store
            .delete_stream(names)
            .try_for_each(|_| futures::future::ready(Ok(())))
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(()),
                e => Err(self.store_err(prefix)(e)),
            })
    }

    pub(crate) async fn put(&self, path: &ObjectPath, bytes: Bytes) -> Result<(), Error> {
        self.store
            .put(path, PutPayload::from_bytes(bytes))
            .await
            .map_err(self.store_err(path))?;
        Ok(())
    }

    /// Send blob `bytes` (digest `d`) unless the remote has it: bytes sent.
    async fn put_blob(&self, d: Digest, bytes: Bytes) -> Result<u64, Error> {
        let size = bytes.len() as u64;
        if self.has(&d, size).await? {
            return Ok(0);
        }
        self.put(&self.cas(&d), bytes).await?;
        Ok(size)
    }

    /// Send a large file from the store, streamed in parts, unless the remote has it.
    async fn put_file(&self, d: Digest, size: u64, x: bool, store: &Store) -> Result<u64, Error> {
        if self.has(&d, size).await? {
            return Ok(0);
        }
        let src = store.object_path(&d, x);
        let mut file = std::fs::File::open(&src).map_err(io("open", &src))?;
        let path = self.cas(&d);
        let mut w = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            path.clone(),
            16 << 20,
        );
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io("read", &src))?;
            if n == 0 {
                break;
            }
            if let Err(e) = w.write_all(&buf[..n]).await {
                let _ = w.abort().await;
                return Err(Error::Io {
                    op: "upload",
                    path: src,
                    source: e,
                });
            }
        }
        w.shutdown().await.map_err(io("upload", &src))?;
        Ok(size)
    }

    /// Upload `run`: blobs the remote lacks, then the entry.
    pub(crate) async fn push(&self, run: &RunRecord, store: &Store) -> Result<Pushed, Error> {
        let listing = Bytes::from(serde_json::to_vec(&run.output).unwrap_or_default());
        let tree = Digest::of(&listing);
        let small = small_files(&run.output);
        let large = large_files(&run.output);
        // Already there (a no-op push): one GET and one HEAD per blob, no reads.
        if let Some(old) = self.entry(&run.key).await.ok().flatten() {
            if old.tree == tree && old.output_hash == run.output_hash {
                let mut checks: Vec<BoxFuture<'_, Result<bool, Error>>> =
                    vec![self.has(&tree, listing.len() as u64).boxed()];
                for p in &old.packs {
                    checks.push(self.has(&p.sha256, p.size).boxed());
                }
                for (d, size, _) in &large {
                    checks.push(self.has(d, *size).boxed());
                }
                let present: Vec<bool> = futures::stream::iter(checks)
                    .buffer_unordered(PARALLEL)
                    .try_collect()
                    .await?;
                if present.iter().all(|&p| p) {
                    return Ok(Pushed::default());
                }
            }
        }
        // Only what is intact leaves this machine (readers check every blob anyway).
        store.verify(run)?;
        let mut packs = Vec::new();
        let mut jobs: Vec<BoxFuture<'_, Result<u64, Error>>> = Vec::new();
        for members in cut(&small) {
            let mut bytes = Vec::new();
            for (d, size, x) in members {
                let src = store.object_path(d, *x);
                let before = bytes.len();
                std::fs::File::open(&src)
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .map_err(io("read", &src))?;
                if (bytes.len() - before) as u64 != *size {
                    return Err(pipe_cache::Error::Corrupt {
                        digest: *d,
                        actual: Digest::of(&bytes[before..]),
                    }
                    .into());
                }
            }
            let bytes = Bytes::from(bytes);
            let sha256 = Digest::of(&bytes);
            packs.push(Pack {
                sha256,
                size: bytes.len() as u64,
                count: members.len(),
            });
            jobs.push(self.put_blob(sha256, bytes).boxed());
        }
        for &(d, size, x) in &large {
            jobs.push(self.put_file(d, size, x, store).boxed());
        }
        jobs.push(self.put_blob(tree, listing).boxed());
        let sent: Vec<u64> = futures::stream::iter(jobs)
            .buffer_unordered(PARALLEL)
            .try_collect()
            .await?;
        let mut entry = Entry::new(run, tree, packs);
        if let Some(secret) = &self.secret {
            entry.sign(secret);
        }
        let bytes = serde_json::to_vec_pretty(&entry).unwrap_or_default();
        self.put(&self.path("ac", &run.key.to_hex()), Bytes::from(bytes))
            .await?;
        // Everything the entry names is in place now.
        let sent_ok: HashSet<Digest> = std::iter::once(tree)
            .chain(entry.packs.iter().map(|p| p.sha256))
            .chain(large.iter().map(|m| m.0))
            .collect();
        self.bad
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d| !sent_ok.contains(d));
        Ok(Pushed {
            blobs: sent.iter().filter(|&&b| b > 0).count(),
            bytes: sent.iter().sum(),
            entry: true,
        })
    }
}
