//! `KeyRecord`: everything that decides a stage's result, and its `Key`.
//!
//! The key is sha256 over a domain tag and the canonical JSON encoding of the
//! record (object keys sorted at every level, no whitespace). The record is kept
//! whole in the run record so that `pipe status` can explain a miss field by
//! field (see [`KeyRecord::compare`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Digest, DirtyReason};

/// Bump when the meaning of any field changes; every key changes with it.
const DOMAIN: &[u8] = b"pipe-key-v1\0";

/// A stage's cache key.
pub type Key = Digest;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Stage kind, e.g. `shell`, `download`.
    pub kind: String,
    /// The kind's implementation version; bumped when its output changes.
    pub kind_version: u32,
    /// The pipeline parameters this stage reads, after `--set`.
    pub params: BTreeMap<String, Value>,
    /// The stage's `with:` block after parameter interpolation.
    pub with: Value,
    /// Content hash of each named input, with the reference it came from.
    pub inputs: BTreeMap<String, InputDigest>,
    /// Extra environment variables the stage runs with.
    pub env: BTreeMap<String, String>,
    /// Facts about the machine that change results (libtorch version, device
    /// type). Never paths, host names or times.
    pub fingerprints: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputDigest {
    /// The reference as written: `make:greeting.txt` or `data/train.tsv`.
    pub source: String,
    pub hash: Digest,
}

impl KeyRecord {
    pub fn key(&self) -> Key {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut bytes = DOMAIN.to_vec();
        write_canonical(&value, &mut bytes);
        Digest::of(&bytes)
    }

    /// Why a stage whose last record was `old` must run again, checking fields
    /// in a fixed order; `None` when the records are equal.
    pub fn compare(&self, old: &KeyRecord) -> Option<DirtyReason> {
        if self.kind != old.kind {
            return Some(DirtyReason::KindChanged {
                old: old.kind.clone(),
                new: self.kind.clone(),
            });
        }
        if self.kind_version != old.kind_version {
            return Some(DirtyReason::KindVersionChanged {
                old: old.kind_version,
                new: self.kind_version,
            });
        }
        if let Some((name, old, new)) = first_difference(&old.params, &self.params) {
            return Some(DirtyReason::ParamChanged { name, old, new });
        }
        if self.with != old.with {
            let (field, old, new) = match (&old.with, &self.with) {
                (Value::Object(o), Value::Object(n)) => {
                    let o: BTreeMap<_, _> = o.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    let n: BTreeMap<_, _> = n.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    // Two unequal objects differ in some field; should they not,
                    // the whole `with:` is what changed.
                    first_difference(&o, &n).unwrap_or_else(|| {
                        (
                            String::new(),
                            Some(old.with.clone()),
                            Some(self.with.clone()),
                        )
                    })
                }
                (o, n) => (String::new(), Some(o.clone()), Some(n.clone())),
            };
            return Some(DirtyReason::WithChanged { field, old, new });
        }
        for (name, new) in &self.inputs {
            match old.inputs.get(name) {
                None => return Some(DirtyReason::InputAdded { name: name.clone() }),
                Some(o) if o != new => {
                    return Some(DirtyReason::InputChanged {
                        name: name.clone(),
                        source: new.source.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(name) = old.inputs.keys().find(|n| !self.inputs.contains_key(*n)) {
            return Some(DirtyReason::InputRemoved { name: name.clone() });
        }
        if let Some((name, _, _)) = first_difference(&old.env, &self.env) {
            return Some(DirtyReason::EnvChanged { name });
        }
        if let Some((name, old, new)) = first_difference(&old.fingerprints, &self.fingerprints) {
            return Some(DirtyReason::FingerprintChanged { name, old, new });
        }
        None
    }
}

fn first_difference<V: PartialEq + Clone>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
) -> Option<(String, Option<V>, Option<V>)> {
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    names.into_iter().find_map(|n| {
        let (o, v) = (old.get(n), new.get(n));
        (o != v).then(|| (n.clone(), o.cloned(), v.cloned()))
    })
}

/// Canonical JSON: object keys sorted bytewise at every level, no whitespace.
/// Independent of serde_json's map ordering features.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(&Value::String(k.clone()), out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        // A scalar's `Display` is its compact JSON, and cannot fail.
        scalar => out.extend(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> KeyRecord {
        KeyRecord {
            kind: "shell".into(),
            kind_version: 1,
            params: [("greeting".to_string(), json!("hello"))].into(),
            with: json!({"cmd": "echo hello > $PIPE_OUT/greeting.txt"}),
            inputs: [(
                "src".to_string(),
                InputDigest {
                    source: "make:greeting.txt".into(),
                    hash: Digest::of(b"hello\n"),
                },
            )]
            .into(),
            env: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        }
    }

    /// The encoding is a contract: a remote cache shared between machines and
    /// versions relies on it. Change it only together with `DOMAIN`.
    #[test]
    fn golden_key() {
        assert_eq!(
            record().key().to_hex(),
            "fb08d76f0ae75e148d7ffe4cb23f8c018f52efbba284763cc54bb866a94108e7"
        );
    }

    #[test]
    fn map_order_does_not_matter() {
        let mut a = record();
        let mut b = record();
        a.with = serde_json::from_str(r#"{"x": 1, "y": {"p": 1, "q": 2}}"#).unwrap();
        b.with = serde_json::from_str(r#"{"y": {"q": 2, "p": 1}, "x": 1}"#).unwrap();
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn every_field_changes_the_key() {
        let base = record().key();
        let mut r = record();
        r.kind_version = 2;
        assert_ne!(r.key(), base);
        let mut r = record();
        r.env.insert("A".into(), "1".into());
        assert_ne!(r.key(), base);
        let mut r = record();
        r.fingerprints.insert("device".into(), "cuda".into());
        assert_ne!(r.key(), base);
    }

    #[test]
    fn compare_names_the_param_first() {
        let old = record();
        let mut new = record();
        new.params.insert("greeting".into(), json!("hi"));
        new.with = json!({"cmd": "echo hi > $PIPE_OUT/greeting.txt"});
        assert_eq!(
            new.compare(&old).unwrap().to_string(),
            "param greeting changed: hello → hi"
        );
        assert_eq!(old.compare(&old), None);
    }

    #[test]
    fn compare_names_the_input() {
        let old = record();
        let mut new = record();
        new.inputs.get_mut("src").unwrap().hash = Digest::of(b"other");
        assert_eq!(
            new.compare(&old).unwrap().to_string(),
            "input make:greeting.txt changed"
        );
    }
}
