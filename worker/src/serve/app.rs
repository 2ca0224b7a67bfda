//! The HTTP side: [`app`] routes the SageMaker inference-container contract
//! (`GET /ping`, `POST /invocations`) and `GET /metrics` to handlers that
//! parse and check a request, queue it on the [`Batcher`] and answer its
//! logits (or [`Prediction`]s). Every refusal is a [`ServeError`], which
//! renders as its status and a JSON `{"error": …}` naming what was wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pipe_protocol::serve::{ErrorBody, Prediction, INVOCATIONS, METRICS, PING, VERBOSE_PARAM};
use serde::Serialize;
use serde_json::Value;

use super::batcher::{Batcher, Refused};
use super::prom::Metrics;

/// What the handlers share.
pub struct AppState {
    pub batcher: Arc<Batcher>,
    /// Class names, index = class id.
    pub labels: Vec<String>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
}

/// What a request may be.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body, in bytes.
    pub body_limit: usize,
    /// Most sentences in one request.
    pub max_items: usize,
    /// Longest sentence, in characters, that goes to the tokenizer (the
    /// rest is cut off).
    pub max_chars: usize,
    /// Longest wait for a request's body.
    pub read_timeout: Duration,
}

/// The server's routes.
pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route(PING, get(ping))
        .route(INVOCATIONS, post(invocations))
        .route(METRICS, get(metrics))
        .with_state(state)
}

/// Why a request got no answer: a 4xx for what the client sent, a 5xx for
/// the server's state.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("body is over the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("Content-Type must be application/json, not `{0}`")]
    ContentType(String),
    #[error("body is not valid UTF-8 (at byte {at})")]
    NotUtf8 { at: usize },
    /// serde_json's message names the line and column.
    #[error("malformed JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the list of sentences is empty")]
    NoSentences,
    #[error("item {index} is not a string: {got}")]
    NotAString { index: usize, got: Value },
    #[error("expected a string or a list of strings, got {0}")]
    NotSentences(Value),
    #[error("{n} sentences is over the limit of {limit} a request (--max-items)")]
    TooManySentences { n: usize, limit: usize },
    #[error("the server is busy ({queued} requests queued); retry later")]
    Busy { queued: usize },
    #[error("the model is not running")]
    NotRunning,
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the model stopped")]
    ModelStopped,
    #[error("{stopped} of {workers} inference threads stopped")]
    Unhealthy { stopped: usize, workers: usize },
    #[error("cannot encode the metrics: {0}")]
    Metrics(#[source] prometheus::Error),
}

impl ServeError {
    pub fn status(&self) -> StatusCode {
        use ServeError::*;
        match self {
            BodyTooLarge { .. } | TooManySentences { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            NotUtf8 { .. } | Json(_) | NoSentences | NotAString { .. } | NotSentences(_) => {
                StatusCode::BAD_REQUEST
            }
            Busy { .. } | Unhealthy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            NotRunning | Inference(_) | ModelStopped | Metrics(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if matches!(self, ServeError::Busy { .. }) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `GET /ping`: 200 while every inference thread runs.
async fn ping(State(app): State<Arc<AppState>>) -> Response {
    #[derive(Serialize)]
    struct Healthy {
        status: &'static str,
    }
    let response = match app.batcher.stopped() {
        (0, _) => Json(Healthy { status: "ok" }).into_response(),
        (stopped, workers) => ServeError::Unhealthy { stopped, workers }.into_response(),
    };
    count(&app, PING, &response);
    response
}

/// `POST /invocations`: a JSON string or list of strings in; one row of
/// logits per sentence out, or with `Accept: …;verbose=true` one
/// [`Prediction`] per sentence.
async fn invocations(State(app): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    app.metrics.in_flight.inc();
    let response = invoke(&app, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    app.metrics.in_flight.dec();
    app.metrics.latency.observe(started.elapsed().as_secs_f64());
    count(&app, INVOCATIONS, &response);
    response
}

async fn invoke(app: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, ServeError> {
    let limits = app.limits;
    let bytes = tokio::time::timeout(
        limits.read_timeout,
        axum::body::to_bytes(body, limits.body_limit),
    )
    .await
    .map_err(|_| ServeError::BodyTimeout(limits.read_timeout))?
    .map_err(|_| ServeError::BodyTooLarge {
        limit: limits.body_limit,
    })?;
    // On its way to the queue only now that it is read in full: a slow
    // client does not hold a batch back.
    let arriving = app.batcher.arriving();
    let mut sentences = parse_sentences(headers, &bytes)?;
    if sentences.len() > limits.max_items {
        return Err(ServeError::TooManySentences {
            n: sentences.len(),
            limit: limits.max_items,
        });
    }
    for s in &mut sentences {
        cut_chars(s, limits.max_chars);
    }
    // Off the count just before it is queued: a worker that finds the queue
    // empty and nothing arriving runs what it has.
    drop(arriving);
    let answer = app.batcher.submit(sentences).map_err(|r| match r {
        Refused::NotRunning => ServeError::NotRunning,
        Refused::Full => ServeError::Busy {
            queued: app.batcher.capacity(),
        },
    })?;
    let rows = answer
        .await
        .map_err(|_| ServeError::ModelStopped)?
        .map_err(ServeError::Inference)?;
    let verbose = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.replace(' ', "").contains(VERBOSE_PARAM));
    if !verbose {
        return Ok(Json(rows).into_response());
    }
    let predictions: Vec<Prediction> = rows
        .into_iter()
        .map(|logits| predict(&app.labels, logits))
        .collect();
    Ok(Json(predictions).into_response())
}

/// `GET /metrics`: Prometheus' text format.
async fn metrics(State(app): State<Arc<AppState>>) -> Result<Response, ServeError> {
    let text = app.metrics.text().map_err(ServeError::Metrics)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

fn count(app: &AppState, path: &str, response: &Response) {
    app.metrics
        .requests
        .with_label_values(&[path, response.status().as_str()])
        .inc();
}

/// A request's sentences: a JSON string or a non-empty list of strings.
fn parse_sentences(headers: &HeaderMap, body: &[u8]) -> Result<Vec<String>, ServeError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ServeError::ContentType(ct.to_string()));
    }
    let text = std::str::from_utf8(body).map_err(|e| ServeError::NotUtf8 {
        at: e.valid_up_to(),
    })?;
    match serde_json::from_str(text).map_err(ServeError::Json)? {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) if items.is_empty() => Err(ServeError::NoSentences),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, v)| match v {
                Value::String(s) => Ok(s),
                got => Err(ServeError::NotAString { index, got }),
            })
            .collect(),
        other => Err(ServeError::NotSentences(other)),
    }
}

/// Keep at most `max` characters of `s` (on a character boundary), so that
/// the tokenizer's work per sentence is bounded whatever a client sends.
fn cut_chars(s: &mut String, max: usize) {
    if let Some((cut, _)) = s.char_indices().nth(max) {
        s.truncate(cut);
    }
}

fn predict(labels: &[String], logits: Vec<f32>) -> Prediction {
    let probabilities = softmax(&logits);
    let class =
        probabilities.iter().enumerate().fold(
            0,
            |best, (i, &x)| {
                if x > probabilities[best] {
                    i
                } else {
                    best
                }
            },
        );
    Prediction {
        class,
        label: labels
            .get(class)
            .cloned()
            .unwrap_or_else(|| class.to_string()),
        logits,
        probabilities,
    }
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let exp: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_cut_on_a_character_boundary() {
        let mut s = "é".repeat(10);
        cut_chars(&mut s, 4);
        assert_eq!(s, "éééé");
        let mut short = "short".to_string();
        cut_chars(&mut short, 100);
        assert_eq!(short, "short");
    }
}
