//! The cache: what makes `pipe` skip work, and why it never serves a wrong result.
//!
//! ```text
//! KeyRecord ──key()──▶ Key ──Store::get──▶ RunRecord { output: Tree } ──materialize──▶ .pipe/out/…
//!     ▲                                          ▲
//!  inputs hashed by Tree::scan + StatCache    Store::commit(staged dir)
//! ```
//!
//! # What goes into a key
//! A stage's key is sha256 over the canonical JSON of its [`KeyRecord`]: the
//! stage kind and its implementation version, the pipeline params it reads, its
//! `with:` block after interpolation, the *content hash* of every input (upstream
//! outputs included: their output digest, not their key, which is what gives
//! early cutoff), its extra `env:`, and fingerprints of the machine that change
//! results (libtorch version, device type).
//!
//! # What never does
//! Absolute paths, mtimes, host names, user names, credentials. A key is the same
//! for the same manifest in another checkout on another machine; golden tests in
//! `key.rs` pin the encoding.
//!
//! # Files on disk
//! See [`store`] for the layout under `.pipe/cas-v1/` and the commit order that
//! makes a SIGKILL harmless; [`stat_cache`] for how unchanged inputs skip hashing.
//!
//! Start reading at [`KeyRecord`], then [`Store::commit`].

mod atomic;
mod digest;
mod dirty;
mod error;
mod file_stat;
mod key;
mod lock;
mod mapped;
mod redact;
pub mod stat_cache;
pub mod store;
mod tree;

pub use atomic::write_atomic;
pub use digest::Digest;
pub use dirty::DirtyReason;
pub use error::{Error, Result};
pub use file_stat::FileStat;
pub use key::{write_canonical, InputDigest, Key, KeyRecord};
pub use lock::WorkspaceLock;
pub use redact::redact_userinfo;
pub use stat_cache::StatCache;
pub use store::{make_writable, GcStats, RunRecord, Store};
pub use tree::{link_stays_inside, Entry, EntryKind, FileHasher, PlainHasher, Tree};
