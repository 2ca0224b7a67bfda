//! The HTTP contract, in-process: requests go through [`app`] with
//! `tower::ServiceExt::oneshot` to the real [`Batcher`], whose inference
//! threads run a stub model instead of libtorch. The real server on a real
//! port is tested in the workspace's `tests/serve.rs`.

use std::sync::mpsc;
use std::thread::JoinHandle;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use pipe_protocol::serve::{ErrorBody, Prediction, ACCEPT_VERBOSE};
use serde_json::json;
use tower::ServiceExt as _;

use super::batcher::{self, Batcher, Infer};
use super::*;

/// Logits `[-len, len]` of each sentence; a sentence `fail` fails the call.
struct Stub;

impl Infer for Stub {
    fn infer(&self, sentences: &[String], _: bool) -> Result<Vec<Vec<f32>>> {
        sentences
            .iter()
            .map(|s| {
                anyhow::ensure!(s != "fail", "the stub fails on `fail`");
                let n = s.chars().count() as f32;
                Ok(vec![-n, n])
            })
            .collect()
    }
}

/// An app over a batcher with `workers` stub inference threads, stopped
/// when dropped.
struct Harness {
    state: Arc<AppState>,
    threads: Vec<JoinHandle<()>>,
}

fn limits() -> Limits {
    Limits {
        body_limit: 1 << 10,
        max_items: 8,
        max_chars: 40,
        read_timeout: Duration::from_secs(30),
    }
}

fn state(config: batcher::Config, limits: Limits) -> Arc<AppState> {
    let metrics = Arc::new(Metrics::new().unwrap());
    let batcher = Batcher::new(config, metrics.queued.clone(), metrics.batch.clone());
    Arc::new(AppState {
        batcher: Arc::new(batcher),
        labels: vec!["bad".into(), "good".into()],
        metrics,
        limits,
    })
}

fn config(workers: usize) -> batcher::Config {
    batcher::Config {
        workers,
        max_batch: 4,
        max_delay: Duration::ZERO,
        capacity: 16,
    }
}

impl Harness {
    fn new(workers: usize) -> Harness {
        let config = config(workers);
        let state = state(config, limits());
        let (ready_tx, ready_rx) = mpsc::channel();
        let threads = (0..config.workers)
            .map(|lane| {
                let (batcher, ready) = (state.batcher.clone(), ready_tx.clone());
                std::thread::spawn(move || {
                    let _alive = batcher.enlist();
                    let _ = ready.send(());
                    batcher.work(lane, &Stub);
                })
            })
            .collect();
        for _ in 0..config.workers {
            ready_rx.recv().unwrap();
        }
        Harness { state, threads }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.state.batcher.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Status, headers and body of one request through the app.
async fn call(
    state: &Arc<AppState>,
    request: Request<Body>,
) -> (StatusCode, header::HeaderMap, Vec<u8>) {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    (parts.status, parts.headers, body.to_vec())
}

fn invocation(body: impl Into<Body>, content_type: &str, accept: Option<&str>) -> Request<Body> {
    let mut r = Request::post("/invocations").header(header::CONTENT_TYPE, content_type);
    if let Some(a) = accept {
        r = r.header(header::ACCEPT, a);
    }
    r.body(body.into()).unwrap()
}

fn sentences(v: serde_json::Value) -> Request<Body> {
    invocation(v.to_string(), "application/json", None)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// The error message of an error answer, which must be `{"error": …}`.
fn error(body: &[u8]) -> String {
    let e: ErrorBody = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)));
    e.error
}

#[tokio::test]
async fn invocations_answer_one_row_of_logits_per_sentence_in_order() {
    let h = Harness::new(1);
    let (status, headers, body) = call(&h.state, sentences(json!("four"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let rows: Vec<Vec<f32>> = serde_json::from_slice(&body).unwrap();
    assert_eq!(rows, vec![vec![-4.0, 4.0]]);

    // More sentences than `max_batch`: run in chunks, answered in order.
    let many: Vec<String> = (1..=8).map(|n| "x".repeat(n)).collect();
    let (status, _, body) = call(&h.state, sentences(json!(many))).await;
    assert_eq!(status, StatusCode::OK);
    let rows: Vec<Vec<f32>> = serde_json::from_slice(&body).unwrap();
    let expected: Vec<Vec<f32>> = (1..=8).map(|n| vec![-(n as f32), n as f32]).collect();
    assert_eq!(rows, expected);
}

#[tokio::test]
async fn verbose_invocations_answer_predictions_with_label_names() {
    let h = Harness::new(1);
    for accept in [ACCEPT_VERBOSE, "application/json; verbose=true"] {
        let (status, _, body) = call(
            &h.state,
            invocation(
                json!(["ab", ""]).to_string(),
                "application/json",
                Some(accept),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let p: Vec<Prediction> = serde_json::from_slice(&body).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].class, p[0].label.as_str()), (1, "good"));
        assert_eq!(p[0].logits, vec![-2.0, 2.0]);
        assert!((p[0].probabilities.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(p[0].probabilities[1] > 0.98);
        // A tie goes to the first class.
        assert_eq!((p[1].class, p[1].label.as_str()), (0, "bad"));
    }
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_status_and_a_message_naming_the_problem() {
    let h = Harness::new(1);
    let too_many = json!(vec!["a"; 9]).to_string();
    let cases: [(Vec<u8>, &str, StatusCode, &str); 8] = [
        (
            b"{not json".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed JSON: key must be a string at line 1 column 2",
        ),
        (
            br#"["ok", 3]"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "item 1 is not a string: 3",
        ),
        (
            b"[]".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "the list of sentences is empty",
        ),
        (
            br#"{"a": 1}"#.to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            r#"expected a string or a list of strings, got {"a":1}"#,
        ),
        (
            b"\"\xff\xfe\"".to_vec(),
            "application/json",
            StatusCode::BAD_REQUEST,
            "body is not valid UTF-8 (at byte 1)",
        ),
        (
            b"\"hi\"".to_vec(),
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json, not `text/plain`",
        ),
        (
            vec![b'a'; 2 << 10],
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
            "body is over the limit of 1024 bytes",
        ),
        (
            too_many.into_bytes(),
            "application/json",
            StatusCode::PAYLOAD_TOO_LARGE,
            "9 sentences is over the limit of 8 a request (--max-items)",
        ),
    ];
    for (body, ct, status, says) in cases {
        let (st, _, body) = call(&h.state, invocation(body, ct, None)).await;
        assert_eq!((st, error(&body).as_str()), (status, says));
    }
    // Still serving, and counting by status.
    assert_eq!(
        call(&h.state, sentences(json!("fine"))).await.0,
        StatusCode::OK
    );
    let (status, headers, body) = call(&h.state, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; version=0.0.4");
    let text = String::from_utf8(body).unwrap();
    for line in [
        r#"pipe_requests_total{path="/invocations",status="400"} 5"#,
        r#"pipe_requests_total{path="/invocations",status="413"} 2"#,
        r#"pipe_requests_total{path="/invocations",status="415"} 1"#,
        r#"pipe_requests_total{path="/invocations",status="200"} 1"#,
        "pipe_request_seconds_count 9",
        "pipe_in_flight_requests 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn a_long_sentence_is_cut_before_the_model_sees_it() {
    let h = Harness::new(1);
    let (status, _, body) = call(&h.state, sentences(json!("é".repeat(100)))).await;
    assert_eq!(status, StatusCode::OK);
    let rows: Vec<Vec<f32>> = serde_json::from_slice(&body).unwrap();
    // `max_chars` is 40.
    assert_eq!(rows, vec![vec![-40.0, 40.0]]);
}

#[tokio::test]
async fn a_failing_sentence_is_a_500_naming_the_model_error() {
    let h = Harness::new(1);
    let (status, _, body) = call(&h.state, sentences(json!(["ok", "fail"]))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error(&body), "inference failed: the stub fails on `fail`");
    assert_eq!(
        call(&h.state, sentences(json!("ok"))).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    // One inference thread counted as running but taking nothing: the
    // queue (capacity 1) stays as filled.
    let state = state(
        batcher::Config {
            capacity: 1,
            ..config(1)
        },
        limits(),
    );
    let _alive = state.batcher.enlist();
    let _queued = state.batcher.submit(vec!["first".into()]).unwrap();
    let (status, headers, body) = call(&state, sentences(json!("second"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(
        error(&body),
        "the server is busy (1 requests queued); retry later"
    );
}

#[tokio::test]
async fn without_a_running_model_invocations_are_a_500() {
    let state = state(config(1), limits());
    let (status, _, body) = call(&state, sentences(json!("hello"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error(&body), "the model is not running");
}

/// `/ping` answers 503 once an inference thread has gone, e.g. by a panic:
/// its `enlist` guard is dropped while unwinding.
#[tokio::test]
async fn ping_is_unhealthy_once_an_inference_thread_is_gone() {
    let state = state(config(2), limits());
    let _running = state.batcher.enlist();
    let (started_tx, started_rx) = mpsc::channel();
    let (die_tx, die_rx) = mpsc::channel::<()>();
    let batcher = state.batcher.clone();
    let dying = std::thread::spawn(move || {
        let _alive = batcher.enlist();
        let _ = started_tx.send(());
        let _ = die_rx.recv();
        panic!("an inference thread dies");
    });
    started_rx.recv().unwrap();
    let (status, _, body) = call(&state, get("/ping")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, br#"{"status":"ok"}"#);

    die_tx.send(()).unwrap();
    assert!(dying.join().is_err());
    let (status, _, body) = call(&state, get("/ping")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error(&body), "1 of 2 inference threads stopped");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_refused() {
    let h = Harness::new(1);
    assert_eq!(call(&h.state, get("/nope")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        call(&h.state, get("/invocations")).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}
