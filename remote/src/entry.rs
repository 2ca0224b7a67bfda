//! `Entry`: the result of one stage as the remote keeps it at `ac/<key>`, and
//! how small files are packed.
//!
//! ```text
//! ac/<key>      Entry { key, record, output_hash, tree, packs, pipe, signature }
//! cas/<sha256>  a file, a tree listing (the output's `Tree` as JSON), or a pack
//! ```
//!
//! A pack is the concatenation of small files (under [`SMALL`] bytes), in tree
//! order, each distinct content once; packs are cut at [`PACK_MAX`] bytes. The
//! members of each pack follow from the tree listing alone, so an entry only
//! names each pack's digest, size and member count: 20,000 files of 1 KB are
//! one pack, one request.

use hmac::{Hmac, Mac};
use pipe_cache::{Digest, Key, KeyRecord, RunRecord, Tree};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Files smaller than this go into packs; larger ones are blobs of their own.
pub const SMALL: u64 = 1 << 20;
/// A pack is cut before it grows past this.
pub const PACK_MAX: u64 = 32 << 20;
/// Format version of `ac/` entries: bump on any change.
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    /// The pipe that wrote it.
    pub pipe: String,
    pub key: Key,
    /// The key record that explains the key.
    pub record: KeyRecord,
    /// The Merkle hash of the output tree.
    pub output_hash: Digest,
    /// The `cas/` digest of the tree listing.
    pub tree: Digest,
    pub packs: Vec<Pack>,
    pub seconds: f64,
    #[serde(default)]
    pub pins: std::collections::BTreeMap<String, String>,
    /// Figures the producing run recorded (timings), not part of the output.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stats: std::collections::BTreeMap<String, f64>,
    /// HMAC-SHA256 of the entry without this field, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pack {
    pub sha256: Digest,
    pub size: u64,
    /// How many files of the member list it holds.
    pub count: usize,
}

/// A distinct small file content of a tree: `(sha256, size, executable)`.
pub type Member = (Digest, u64, bool);

/// The distinct small files of `tree`, in tree order: the members of its packs.
pub fn small_files(tree: &Tree) -> Vec<Member> {
    let mut seen = std::collections::HashSet::new();
    tree.files()
        .filter(|(_, _, _, size)| *size < SMALL)
        .filter(|(_, d, _, _)| seen.insert(*d))
        .map(|(_, d, x, size)| (d, size, x))
        .collect()
}

/// The distinct large files of `tree`: blobs of their own.
pub fn large_files(tree: &Tree) -> Vec<Member> {
    let mut seen = std::collections::HashSet::new();
    tree.files()
        .filter(|(_, _, _, size)| *size >= SMALL)
        .filter(|(_, d, _, _)| seen.insert(*d))
        .map(|(_, d, x, size)| (d, size, x))
        .collect()
}

/// Cut `members` into packs of at most [`PACK_MAX`] bytes (a pack holds at least one).
pub fn cut(members: &[Member]) -> Vec<&[Member]> {
    let mut packs = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, m) in members.iter().enumerate() {
        if i > start && bytes.saturating_add(m.1) > PACK_MAX {
            packs.push(&members[start..i]);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(m.1);
    }
    if start < members.len() {
        packs.push(&members[start..]);
    }
    packs
}

impl Entry {
    pub fn new(run: &RunRecord, tree: Digest, packs: Vec<Pack>) -> Entry {
        Entry {
            version: VERSION,
            pipe: env!("CARGO_PKG_VERSION").to_string(),
            key: run.key,
            record: run.record.clone(),
            output_hash: run.output_hash,
            tree,
            packs,
            seconds: run.seconds,
            pins: run.pins.clone(),
            stats: run.stats.clone(),
            signature: None,
        }
    }

    fn mac(&self, secret: &[u8]) -> Hmac<Sha256> {
        let unsigned = Entry {
            signature: None,
            ..self.clone()
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(&serde_json::to_vec(&unsigned).unwrap_or_default());
        mac
    }

    pub fn sign(&mut self, secret: &[u8]) {
        self.signature = Some(hex::encode(self.mac(secret).finalize().into_bytes()));
    }

    /// Whether the entry carries a valid signature by `secret`.
    pub fn signed_by(&self, secret: &[u8]) -> bool {
        let Some(sig) = self.signature.as_deref().and_then(|s| hex::decode(s).ok()) else {
            return false;
        };
        self.mac(secret).verify_slice(&sig).is_ok()
    }

    /// The run record the entry describes, given its tree listing.
    pub fn run_record(&self, output: Tree) -> RunRecord {
        RunRecord {
            key: self.key,
            record: self.record.clone(),
            output_hash: self.output_hash,
            output,
            seconds: self.seconds,
            pins: self.pins.clone(),
            stats: self.stats.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let record = KeyRecord {
            kind: "shell".into(),
            kind_version: 1,
            params: Default::default(),
            with: serde_json::json!({"cmd": "true"}),
            inputs: Default::default(),
            env: Default::default(),
            fingerprints: Default::default(),
        };
        let run = RunRecord {
            key: record.key(),
            record,
            output_hash: Digest::of(b"out"),
            output: Tree::default(),
            seconds: 1.25,
            pins: Default::default(),
            stats: Default::default(),
        };
        Entry::new(&run, Digest::of(b"tree"), vec![])
    }

    #[test]
    fn signature_survives_a_round_trip_and_catches_edits() {
        let mut e = entry();
        e.sign(b"secret");
        let back: Entry = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert!(back.signed_by(b"secret"));
        assert!(!back.signed_by(b"other"));
        let mut forged = back.clone();
        forged.output_hash = Digest::of(b"evil");
        assert!(!forged.signed_by(b"secret"));
        assert!(!entry().signed_by(b"secret"));
    }

    #[test]
    fn packs_are_cut_at_pack_max() {
        let m = |n: u8, size| (Digest::of(&[n]), size, false);
        let members = [m(1, PACK_MAX - 10), m(2, 5), m(3, 20), m(4, 1)];
        let packs = cut(&members);
        assert_eq!(packs.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 2]);
        assert!(cut(&[]).is_empty());
    }
}
