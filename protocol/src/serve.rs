//! The contract between the model server (`pipe-worker serve`) and the `pipe`
//! side that starts and queries it (`deploy`, `smoke_test`, `pipe endpoints`):
//! the line the server prints once it listens, the routes of the SageMaker
//! inference-container contract, and the shape of a verbose prediction.

use serde::{Deserialize, Serialize};

/// Health check: 200 while every inference thread runs.
pub const PING: &str = "/ping";
/// Predictions: a JSON string or list of strings in, one row per sentence out.
pub const INVOCATIONS: &str = "/invocations";
/// Prometheus metrics (text format).
pub const METRICS: &str = "/metrics";

/// The `Accept` header that asks `/invocations` for [`Prediction`]s rather
/// than bare logits. The server looks for its `verbose=true` parameter.
pub const ACCEPT_VERBOSE: &str = "application/json;verbose=true";
/// The `Accept` parameter the server looks for (spaces ignored).
pub const VERBOSE_PARAM: &str = "verbose=true";

/// The `max_len` (tokens per sentence) of a model whose `config.json` names
/// none. The package's `inference.py` spells the same number.
pub const DEFAULT_MAX_LEN: usize = 128;

/// What the server prints as one JSON line on stdout once it listens (with
/// `--announce`), for `deploy` to record. Fields in alphabetical order, as
/// the server has always written them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub pid: u32,
    /// `http://HOST:PORT`, the port the server bound.
    pub ready: String,
}

/// One sentence's answer from `/invocations` with [`ACCEPT_VERBOSE`].
///
/// Fields in alphabetical order, as the server has always written them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The most probable class.
    pub class: usize,
    /// The class's name from the model's `id2label` (its index if none).
    pub label: String,
    pub logits: Vec<f32>,
    /// Softmax of `logits`.
    pub probabilities: Vec<f64>,
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire shapes, byte for byte: clients older than these structs
    /// (and the README) see the same JSON.
    #[test]
    fn ready_line_and_prediction_keep_their_json_shape() {
        let ready = Ready {
            pid: 7,
            ready: "http://127.0.0.1:8080".into(),
        };
        assert_eq!(
            serde_json::to_string(&ready).unwrap(),
            r#"{"pid":7,"ready":"http://127.0.0.1:8080"}"#
        );
        let p = Prediction {
            class: 1,
            label: "good".into(),
            logits: vec![-1.0, 1.0],
            probabilities: vec![0.25, 0.75],
        };
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"class":1,"label":"good","logits":[-1.0,1.0],"probabilities":[0.25,0.75]}"#
        );
    }
}
