//! `DirtyReason`: why a stage runs. Each renders as one line for `pipe status`.

use std::fmt;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub enum DirtyReason {
    NeverRun,
    Forced,
    NotCached,
    KindChanged {
        old: String,
        new: String,
    },
    KindVersionChanged {
        old: u32,
        new: u32,
    },
    ParamChanged {
        name: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    WithChanged {
        field: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    InputAdded {
        name: String,
    },
    InputRemoved {
        name: String,
    },
    InputChanged {
        name: String,
        source: String,
    },
    EnvChanged {
        name: String,
    },
    FingerprintChanged {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
    /// An upstream stage will run first, so this stage's inputs are not known yet.
    UpstreamWillRun {
        stage: String,
    },
    /// The stored output failed verification.
    OutputCorrupt {
        detail: String,
    },
    /// An effect's receipt no longer matches the outside world.
    Drift {
        detail: String,
    },
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(unset)".into(),
        Some(Value::String(s)) => crate::redact_userinfo(s),
        Some(v) => crate::redact_userinfo(&v.to_string()),
    }
}

impl fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DirtyReason::*;
        match self {
            NeverRun => write!(f, "never run"),
            Forced => write!(f, "forced"),
            NotCached => write!(f, "cache: false"),
            KindChanged { old, new } => write!(f, "kind changed: {old} → {new}"),
            KindVersionChanged { old, new } => {
                write!(f, "stage implementation changed: v{old} → v{new}")
            }
            ParamChanged { name, old, new } => {
                write!(f, "param {name} changed: {} → {}", show(old), show(new))
            }
            WithChanged { field, old, new } if field.is_empty() => {
                write!(f, "with changed: {} → {}", show(old), show(new))
            }
            WithChanged { field, old, new } => {
                write!(f, "with.{field} changed: {} → {}", show(old), show(new))
            }
            InputAdded { name } => write!(f, "input {name} added"),
            InputRemoved { name } => write!(f, "input {name} removed"),
            InputChanged { source, .. } => write!(f, "input {source} changed"),
            EnvChanged { name } => write!(f, "env {name} changed"),
            FingerprintChanged { name, old, new } => write!(
                f,
                "{name} changed: {} → {}",
                old.as_deref().unwrap_or("(unset)"),
                new.as_deref().unwrap_or("(unset)")
            ),
            UpstreamWillRun { stage } => write!(f, "upstream {stage} will run"),
            OutputCorrupt { detail } => write!(f, "stored output is corrupt: {detail}"),
            Drift { detail } => write!(f, "receipt no longer holds: {detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DirtyReason;
    use serde_json::json;

    #[test]
    fn a_rotated_url_password_is_not_shown() {
        let reason = DirtyReason::WithChanged {
            field: "endpoint".into(),
            old: Some(json!("http://k:old-secret@127.0.0.1:9000")),
            new: Some(json!("http://k:new-secret@127.0.0.1:9000")),
        };
        assert_eq!(
            reason.to_string(),
            "with.endpoint changed: http://***@127.0.0.1:9000 → http://***@127.0.0.1:9000"
        );
    }
}
