//! `pipe serve`: the packaged model behind the SageMaker inference-container
//! contract (`GET /ping`, `POST /invocations`), plus `GET /metrics`.
//!
//! Requests are parsed on a small async executor; inference runs on dedicated
//! threads. Concurrent requests are queued and run together (up to
//! `max_batch` sentences), in groups of similar length each padded to its
//! longest sentence; the model is frozen with its linear layers on packed
//! oneDNN weights (`fast`). A worker waits for more only while requests are
//! on their way (accepted, not yet queued), and at most `max_delay`: a lone
//! request never waits.
//!
//! Under abuse it stays up and fair: a big request runs as `max_batch`
//! chunks taken round-robin with the other requests (over `max_items`
//! sentences it is refused with 413); each sentence is cut to a bounded
//! number of characters before tokenizing; a connection that is slow to
//! send its headers or body is closed after `read_timeout`; no more than
//! `max_connections` sockets are open at once (beyond, they wait in the
//! listen backlog); a full queue answers 503 with `Retry-After`. On SIGTERM
//! the server stops accepting, drains for at most `drain_timeout`, and
//! exits 0. A failed model call is retried request by request, so only the
//! sentences that caused it fail; `/ping` answers 503 once an inference
//! thread is gone.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
};
use serde_json::{json, Value};
use tch::Kind;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::fast::FastModule;
use crate::tokenize::{pad, Encoder};

#[derive(Debug, Clone)]
pub struct Options {
    pub package: PathBuf,
    pub host: String,
    pub port: u16,
    pub max_batch: usize,
    pub max_delay: Duration,
    /// Inference threads, each with its own copy of the module.
    pub workers: usize,
    /// libtorch intra-op threads of each worker.
    pub threads: usize,
    pub body_limit: usize,
    /// Most sentences in one request (more: 413).
    pub max_items: usize,
    /// Most requests waiting for the model (more: 503).
    pub max_queue: usize,
    /// Most open connections; the rest wait in the listen backlog.
    pub max_connections: usize,
    /// Longest wait for a request's headers, and for its body.
    pub read_timeout: Duration,
    /// Longest wait for open requests after SIGTERM.
    pub drain_timeout: Duration,
    /// Print `{"ready": URL}` on stdout once serving (for `deploy`).
    pub announce: bool,
}

/// A loaded package: the unpacked directory and what `config.json` says.
struct Model {
    dir: PathBuf,
    labels: Vec<String>,
    max_len: usize,
    _unpacked: Option<tempfile::TempDir>,
}

fn open(package: &Path) -> Result<Model> {
    let (dir, unpacked) = if package.is_dir() {
        (package.to_path_buf(), None)
    } else {
        let tmp = tempfile::Builder::new().prefix("pipe-serve-").tempdir()?;
        let file = std::fs::File::open(package)
            .with_context(|| format!("cannot open {}", package.display()))?;
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(tmp.path())
            .with_context(|| format!("{}: not a model.tar.gz", package.display()))?;
        (tmp.path().to_path_buf(), Some(tmp))
    };
    let config: Value = serde_json::from_slice(
        &std::fs::read(dir.join("config.json"))
            .with_context(|| format!("{}: no config.json", package.display()))?,
    )?;
    let max_len = config["max_len"].as_u64().unwrap_or(128) as usize;
    let mut labels: Vec<(usize, String)> = config["id2label"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    labels.sort();
    let labels = labels.into_iter().map(|(_, l)| l).collect();
    Ok(Model {
        dir,
        labels,
        max_len,
        _unpacked: unpacked,
    })
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, String>>;

/// One request's sentences on their way through the model, in chunks that
/// workers may run at the same time.
struct Pending {
    sentences: Vec<String>,
    progress: Mutex<Progress>,
}

struct Progress {
    rows: Vec<Vec<f32>>,
    /// Sentences not answered yet.
    left: usize,
    /// Taken once the request is answered (or failed).
    reply: Option<Reply>,
}

impl Pending {
    fn new(sentences: Vec<String>, reply: Reply) -> Pending {
        let n = sentences.len();
        Pending {
            sentences,
            progress: Mutex::new(Progress {
                rows: vec![Vec::new(); n],
                left: n,
                reply: Some(reply),
            }),
        }
    }

    /// Whether nobody waits for it any more (answered, failed, or the
    /// client went away): its other chunks need not run.
    fn abandoned(&self) -> bool {
        self.progress
            .lock()
            .map_or(true, |p| p.reply.as_ref().is_none_or(|r| r.is_closed()))
    }

    /// Records a chunk's logits (or its failure); answers once complete.
    fn finish(&self, range: Range<usize>, result: Result<Vec<Vec<f32>>, String>) {
        let Ok(mut p) = self.progress.lock() else {
            return;
        };
        match result {
            Ok(rows) => {
                p.left = p.left.saturating_sub(range.len());
                for (slot, row) in p.rows[range].iter_mut().zip(rows) {
                    *slot = row;
                }
                if p.left == 0 {
                    let rows = std::mem::take(&mut p.rows);
                    if let Some(reply) = p.reply.take() {
                        let _ = reply.send(Ok(rows));
                    }
                }
            }
            Err(e) => {
                if let Some(reply) = p.reply.take() {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
}

/// A chunk of a request that one model call runs.
struct Piece {
    request: Arc<Pending>,
    range: Range<usize>,
}

impl Piece {
    fn sentences(&self) -> &[String] {
        &self.request.sentences[self.range.clone()]
    }
}

/// The requests waiting for the model, each with the index of its first
/// sentence not yet taken. Workers take chunks round-robin: a request with
/// more left goes to the back, so a big request never holds up a small one
/// for more than a batch or two.
struct Queue {
    waiting: Mutex<VecDeque<(Arc<Pending>, usize)>>,
    more: Condvar,
    capacity: usize,
    depth: IntGauge,
}

/// The queue holds `capacity` requests already.
struct Full;

impl Queue {
    fn push(&self, request: Pending) -> Result<(), Full> {
        let Ok(mut waiting) = self.waiting.lock() else {
            return Err(Full);
        };
        if waiting.len() >= self.capacity {
            return Err(Full);
        }
        waiting.push_back((Arc::new(request), 0));
        self.depth.set(waiting.len() as i64);
        drop(waiting);
        self.more.notify_one();
        Ok(())
    }

    /// Waits for work, then takes up to `max` sentences: what is queued, and
    /// while requests are on their way (`arriving`), what comes within
    /// `max_delay`. `None` once the queue is broken.
    fn take(&self, max: usize, max_delay: Duration, arriving: &AtomicUsize) -> Option<Vec<Piece>> {
        let mut waiting = self.waiting.lock().ok()?;
        while waiting.is_empty() {
            waiting = self.more.wait(waiting).ok()?;
        }
        let deadline = Instant::now() + max_delay;
        let mut pieces = Vec::new();
        let mut n = 0;
        while n < max {
            let Some((request, next)) = waiting.pop_front() else {
                let left = deadline.saturating_duration_since(Instant::now());
                if pieces.is_empty() {
                    // Every waiting request was abandoned: wait for more.
                    waiting = self.more.wait(waiting).ok()?;
                    continue;
                }
                if arriving.load(Ordering::Acquire) == 0 || left.is_zero() {
                    break;
                }
                waiting = self
                    .more
                    .wait_timeout(waiting, left.min(Duration::from_micros(200)))
                    .ok()?
                    .0;
                continue;
            };
            if request.abandoned() {
                continue;
            }
            let end = request.sentences.len().min(next + (max - n));
            n += end - next;
            if end < request.sentences.len() {
                waiting.push_back((request.clone(), end));
            }
            pieces.push(Piece {
                request,
                range: next..end,
            });
        }
        self.depth.set(waiting.len() as i64);
        if !waiting.is_empty() {
            // The rest of a big request: another worker may run it meanwhile.
            self.more.notify_one();
        }
        Some(pieces)
    }
}

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    batch: HistogramVec,
    in_flight: IntGauge,
    queued: IntGauge,
}

impl Metrics {
    fn new() -> Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("pipe_requests_total", "HTTP requests by path and status"),
            &["path", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("pipe_request_seconds", "Latency of /invocations").buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
            &[],
        )?;
        let batch = HistogramVec::new(
            HistogramOpts::new("pipe_batch_size", "Sentences per model call")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            &[],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        let in_flight = IntGauge::new(
            "pipe_in_flight_requests",
            "Requests to /invocations being answered",
        )?;
        registry.register(Box::new(batch.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let queued = IntGauge::new(
            "pipe_queued_requests",
            "Requests waiting for the model (or for more of their chunks to run)",
        )?;
        registry.register(Box::new(queued.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            batch,
            in_flight,
            queued,
        })
    }
}

struct App {
    queue: Arc<Queue>,
    /// Requests read in full but not yet queued: what a batch may still wait for.
    arriving: Arc<AtomicUsize>,
    /// Inference threads still running, of `workers`.
    alive: Arc<AtomicUsize>,
    workers: usize,
    labels: Vec<String>,
    metrics: Metrics,
    body_limit: usize,
    max_items: usize,
    /// Longest sentence, in characters, that goes to the tokenizer.
    max_chars: usize,
    read_timeout: Duration,
}

/// Characters kept of a sentence per token of `max_len`: more than any
/// WordPiece token spans (100 characters give one `[UNK]`), so cutting
/// there keeps the first `max_len` tokens of all but degenerate text while
/// bounding the tokenizer's work.
const CHARS_PER_TOKEN: usize = 32;

/// Keep at most `max` characters of `s` (on a character boundary), so that
/// the tokenizer's work per sentence is bounded whatever a client sends.
fn cut_chars(s: &mut String, max: usize) {
    if let Some((cut, _)) = s.char_indices().nth(max) {
        s.truncate(cut);
    }
}

/// Counts a running inference thread until dropped (a panic included).
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        tracing::error!("an inference thread stopped");
    }
}

/// A worker's module and tokenizer, warmed up.
fn load_worker(dir: &Path, max_len: usize, opts: &Options) -> Result<(FastModule, Encoder)> {
    let module = FastModule::load(&dir.join("model.pt"))
        .with_context(|| format!("cannot load {}/model.pt", opts.package.display()))?;
    tracing::debug!("{} linear layers on packed weights", module.packed);
    let encoder = Encoder::load(dir, max_len)?;
    // Warm up: the first calls of a TorchScript module optimise its graph.
    for n in [1usize, 2] {
        let warm: Vec<String> = vec!["warm up".to_string(); n];
        run_batch(&module, &encoder, &warm).context("the model fails on a test sentence")?;
    }
    Ok((module, encoder))
}

/// One inference thread: takes chunks of queued requests (up to
/// `max_batch` sentences, waiting at most `max_delay` for more), runs them,
/// and answers each. A failed call is retried chunk by chunk, so that only
/// the requests whose sentences fail get an error.
fn infer_loop(
    queue: Arc<Queue>,
    arriving: Arc<AtomicUsize>,
    module: FastModule,
    encoder: Encoder,
    opts: Options,
    batch_hist: HistogramVec,
) {
    let _guard = tch::no_grad_guard();
    let run = |sentences: &[String]| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_batch(&module, &encoder, sentences)
        }))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the model panicked")))
    };
    while let Some(pieces) = queue.take(opts.max_batch, opts.max_delay, &arriving) {
        let sentences: Vec<String> = pieces
            .iter()
            .flat_map(|p| p.sentences().iter().cloned())
            .collect();
        batch_hist
            .with_label_values::<&str>(&[])
            .observe(sentences.len() as f64);
        match run(&sentences) {
            Ok(rows) => {
                let mut rows = rows.into_iter();
                for p in pieces {
                    let mine = rows.by_ref().take(p.range.len()).collect();
                    p.request.finish(p.range, Ok(mine));
                }
            }
            Err(e) if pieces.len() == 1 => {
                tracing::error!("inference failed: {e:#}");
                for p in pieces {
                    p.request
                        .finish(p.range, Err(format!("inference failed: {e:#}")));
                }
            }
            Err(e) => {
                tracing::warn!(
                    "a batch of {} requests failed ({e:#}); running them one by one",
                    pieces.len()
                );
                for p in pieces {
                    let result = run(p.sentences()).map_err(|e| {
                        tracing::error!("inference failed: {e:#}");
                        format!("inference failed: {e:#}")
                    });
                    p.request.finish(p.range, result);
                }
            }
        }
    }
}

/// Runs `sentences` through the model, in groups of similar length (see
/// [`length_groups`]); logits in the order given.
fn run_batch(
    module: &FastModule,
    encoder: &Encoder,
    sentences: &[String],
) -> Result<Vec<Vec<f32>>> {
    let ids = encoder.encode(sentences)?;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let lens: Vec<usize> = order.iter().map(|&i| ids[i].len()).collect();
    let mut rows = vec![Vec::new(); ids.len()];
    for group in length_groups(&lens) {
        let members = &order[group];
        let seqs: Vec<&[i64]> = members.iter().map(|&i| ids[i].as_slice()).collect();
        let (x, m) = pad(&seqs, None);
        let logits = module.forward(&[x, m])?.to_kind(Kind::Float);
        let n = logits.size();
        if n.len() != 2 || n[0] != members.len() as i64 {
            bail!(
                "the model returned shape {n:?} for {} sentences",
                members.len()
            );
        }
        let flat = Vec::<f32>::try_from(logits.flatten(0, -1))?;
        for (row, &i) in flat.chunks(n[1] as usize).zip(members) {
            rows[i] = row.to_vec();
        }
    }
    Ok(rows)
}

/// What one more model call costs, in padded token rows: each call streams
/// every weight once (measured on all-MiniLM-L6-v2: a one-row call takes
/// about as long as 20 to 25 rows of a large batch).
const CALL_ROWS: usize = 24;

/// Splits sorted sequence lengths into consecutive groups, each padded to its
/// longest, so that the padded rows plus [`CALL_ROWS`] per group are fewest:
/// a batch of short sentences and one long one is two calls, not one padded
/// to the long one. A group never splits a run of equal lengths (that adds a
/// call and saves no padding), so the search runs over the distinct lengths:
/// O(n) after the sort, plus the square of the distinct lengths (at most
/// `max_len`).
fn length_groups(sorted: &[usize]) -> Vec<Range<usize>> {
    // ends[k]: one past the last sequence of the k-th distinct length.
    let mut ends: Vec<usize> = Vec::new();
    for (i, w) in sorted.windows(2).enumerate() {
        if w[0] != w[1] {
            ends.push(i + 1);
        }
    }
    if !sorted.is_empty() {
        ends.push(sorted.len());
    }
    let k = ends.len();
    // cost[j]: the least cost of the first j distinct lengths; start[j]:
    // where the last group of that best split starts (in distinct lengths).
    let mut cost = vec![0usize; k + 1];
    let mut start = vec![0usize; k + 1];
    let end_of = |j: usize| if j == 0 { 0 } else { ends[j - 1] };
    for j in 1..=k {
        cost[j] = usize::MAX;
        let longest = sorted[ends[j - 1] - 1];
        for i in 0..j {
            let rows = (end_of(j) - end_of(i)).saturating_mul(longest);
            let c = cost[i].saturating_add(CALL_ROWS).saturating_add(rows);
            if c < cost[j] {
                cost[j] = c;
                start[j] = i;
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = k;
    while j > 0 {
        groups.push(end_of(start[j])..end_of(j));
        j = start[j];
    }
    groups.reverse();
    groups
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

/// A request error: status and message.
fn bad(status: StatusCode, message: impl Into<String>) -> (StatusCode, String) {
    (status, message.into())
}

fn parse_sentences(headers: &HeaderMap, body: &[u8]) -> Result<Vec<String>, (StatusCode, String)> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, not `{ct}`"),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        bad(
            StatusCode::BAD_REQUEST,
            format!("body is not valid UTF-8 (at byte {})", e.valid_up_to()),
        )
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        bad(
            StatusCode::BAD_REQUEST,
            format!(
                "malformed JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    match value {
        Value::String(s) => Ok(vec![s]),
        Value::Array(items) if items.is_empty() => Err(bad(
            StatusCode::BAD_REQUEST,
            "the list of sentences is empty",
        )),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                other => Err(bad(
                    StatusCode::BAD_REQUEST,
                    format!("item {i} is not a string: {other}"),
                )),
            })
            .collect(),
        other => Err(bad(
            StatusCode::BAD_REQUEST,
            format!("expected a string or a list of strings, got {other}"),
        )),
    }
}

fn softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let exp: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

async fn invocations(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    app.metrics.in_flight.inc();
    let response = invoke(&app, &headers, body).await;
    app.metrics.in_flight.dec();
    app.metrics
        .latency
        .with_label_values::<&str>(&[])
        .observe(started.elapsed().as_secs_f64());
    app.metrics
        .requests
        .with_label_values(&["/invocations", response.status().as_str()])
        .inc();
    response
}

/// Counts a request as on its way to the queue until dropped.
struct Arriving<'a>(&'a AtomicUsize);

impl<'a> Arriving<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Arriving(count)
    }
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn invoke(app: &App, headers: &HeaderMap, body: Body) -> Response {
    let bytes: Bytes =
        match tokio::time::timeout(app.read_timeout, axum::body::to_bytes(body, app.body_limit))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body is over the limit of {} bytes", app.body_limit),
                )
            }
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {:?}", app.read_timeout),
                )
            }
        };
    // On its way to the queue only now that it is read in full: a slow
    // client does not hold a batch back.
    let arriving = Arriving::new(&app.arriving);
    let mut sentences = match parse_sentences(headers, &bytes) {
        Ok(s) => s,
        Err((status, message)) => return error(status, message),
    };
    if sentences.len() > app.max_items {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} sentences is over the limit of {} a request (--max-items)",
                sentences.len(),
                app.max_items
            ),
        );
    }
    for s in &mut sentences {
        cut_chars(s, app.max_chars);
    }
    let (tx, rx) = oneshot::channel();
    // Off the count just before it is queued: a worker that finds the queue
    // empty and nothing arriving runs what it has.
    drop(arriving);
    if app.alive.load(Ordering::Acquire) == 0 {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model is not running",
        );
    }
    if app.queue.push(Pending::new(sentences, tx)).is_err() {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is busy ({} requests queued); retry later",
                app.queue.capacity
            ),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    }
    let rows = match rx.await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "the model stopped"),
    };
    let verbose = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.replace(' ', "").contains("verbose=true"));
    if !verbose {
        return axum::Json(rows).into_response();
    }
    let out: Vec<Value> = rows
        .iter()
        .map(|row| {
            let p = softmax(row);
            let class = p
                .iter()
                .enumerate()
                .fold(0, |best, (i, &x)| if x > p[best] { i } else { best });
            json!({
                "label": app.labels.get(class).cloned().unwrap_or_else(|| class.to_string()),
                "class": class,
                "probabilities": p,
                "logits": row,
            })
        })
        .collect();
    axum::Json(out).into_response()
}

async fn ping(State(app): State<Arc<App>>) -> Response {
    let alive = app.alive.load(Ordering::Acquire);
    let response = if alive < app.workers {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} of {} inference threads stopped",
                app.workers - alive,
                app.workers
            ),
        )
    } else {
        (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
    };
    app.metrics
        .requests
        .with_label_values(&["/ping", response.status().as_str()])
        .inc();
    response
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&app.metrics.registry.gather(), &mut buf)
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Accepts connections until SIGTERM/SIGINT, at most `max_connections`
/// open at once, each closed when its headers take over `read_timeout`;
/// then lets open requests finish for at most `drain_timeout`.
async fn accept_loop(listener: tokio::net::TcpListener, router: Router, opts: &Options) {
    let open = Arc::new(Semaphore::new(opts.max_connections));
    let (drain_tx, drain_rx) = watch::channel(());
    let mut conns = tokio::task::JoinSet::new();
    let stop = shutdown();
    tokio::pin!(stop);
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = open.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or the peer gone already:
                    // back off a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut drain = drain_rx.clone();
        let read_timeout = opts.read_timeout;
        conns.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = drain.changed() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    tracing::info!(
        "draining {} open connections (at most {:?}), then exiting",
        conns.len(),
        opts.drain_timeout
    );
    let _ = drain_tx.send(());
    let drained = tokio::time::timeout(opts.drain_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connections still open after {:?}: closing them",
            conns.len(),
            opts.drain_timeout
        );
        conns.abort_all();
    }
}

/// `max_connections`, less what the file descriptor limit allows: every
/// connection is a descriptor, and the model, the listener and the runtime
/// need some (`RESERVED_FDS`).
fn connection_cap(wanted: usize) -> usize {
    const RESERVED_FDS: u64 = 64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    let fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        u64::MAX
    };
    let allowed = usize::try_from(fds.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    wanted.min(allowed).max(1)
}

pub fn serve(opts: Options) -> Result<()> {
    let model = open(&opts.package)?;
    let metrics = Metrics::new()?;
    let queue = Arc::new(Queue {
        waiting: Mutex::new(VecDeque::new()),
        more: Condvar::new(),
        capacity: opts.max_queue.max(1),
        depth: metrics.queued.clone(),
    });
    let arriving = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicUsize::new(0));
    // Each worker loads its module on its own thread: libtorch's OpenMP spins
    // its threads between ops only while no more of them exist than cores, so
    // no other thread (this one included) may start a team of its own.
    let workers = opts.workers.max(1);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    for _ in 0..workers {
        let (queue, arriving, alive, opts, hist, ready) = (
            queue.clone(),
            arriving.clone(),
            alive.clone(),
            opts.clone(),
            metrics.batch.clone(),
            ready_tx.clone(),
        );
        let (dir, max_len) = (model.dir.clone(), model.max_len);
        std::thread::spawn(move || {
            tch::set_num_threads(opts.threads.max(1) as i32);
            match load_worker(&dir, max_len, &opts) {
                Ok((module, encoder)) => {
                    alive.fetch_add(1, Ordering::AcqRel);
                    let _alive = Alive(alive);
                    let _ = ready.send(Ok(()));
                    drop(ready);
                    infer_loop(queue, arriving, module, encoder, opts, hist)
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        });
    }
    drop(ready_tx);
    for _ in 0..workers {
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("an inference thread died while loading"))??;
    }
    let app = Arc::new(App {
        queue,
        arriving,
        alive,
        workers,
        labels: model.labels.clone(),
        metrics,
        body_limit: opts.body_limit,
        max_items: opts.max_items.max(1),
        max_chars: model.max_len.saturating_mul(CHARS_PER_TOKEN),
        read_timeout: opts.read_timeout,
    });
    let opts = Options {
        max_connections: connection_cap(opts.max_connections),
        ..opts
    };
    let router = Router::new()
        .route("/ping", get(ping))
        .route("/invocations", post(invocations))
        .route("/metrics", get(metrics_text))
        .with_state(app);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let addr: SocketAddr = format!("{}:{}", opts.host, opts.port)
            .parse()
            .with_context(|| format!("bad address {}:{}", opts.host, opts.port))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let url = format!("http://{local}");
        tracing::info!(
            "serving {} on {url} ({} labels, max_len {}, max batch {}, max delay {:?}, {} workers × {} threads, at most {} connections)",
            opts.package.display(),
            model.labels.len(),
            model.max_len,
            opts.max_batch,
            opts.max_delay,
            opts.workers,
            opts.threads,
            opts.max_connections
        );
        if opts.announce {
            println!("{}", json!({"ready": url, "pid": std::process::id()}));
        }
        accept_loop(listener, router, &opts).await;
        anyhow::Ok(())
    })?;
    Ok(())
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

    /// `/ping` answers 503 once an inference thread has gone, e.g. by a
    /// panic: its `Alive` guard is dropped while unwinding.
    #[test]
    fn ping_is_unhealthy_once_an_inference_thread_is_gone() {
        let metrics = Metrics::new().unwrap();
        let queue = Arc::new(Queue {
            waiting: Mutex::new(VecDeque::new()),
            more: Condvar::new(),
            capacity: 1,
            depth: metrics.queued.clone(),
        });
        let alive = Arc::new(AtomicUsize::new(2));
        let app = Arc::new(App {
            queue,
            arriving: Arc::new(AtomicUsize::new(0)),
            alive: alive.clone(),
            workers: 2,
            labels: vec![],
            metrics,
            body_limit: 1,
            max_items: 1,
            max_chars: 1,
            read_timeout: Duration::from_secs(1),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let status = |app: &Arc<App>| rt.block_on(ping(State(app.clone()))).status();
        assert_eq!(status(&app), StatusCode::OK);
        let guard = Alive(alive);
        let died = std::thread::spawn(move || {
            let _guard = guard;
            panic!("an inference thread dies");
        })
        .join();
        assert!(died.is_err());
        assert_eq!(status(&app), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn length_groups_cover_every_sentence_in_order() {
        assert!(length_groups(&[]).is_empty());
        assert_eq!(length_groups(&[7]), vec![0..1]);
        // Similar lengths: one call.
        assert_eq!(length_groups(&[9, 10, 11, 12]), vec![0..4]);
        // Short ones and a long one: padding all to 64 costs more than a call.
        assert_eq!(length_groups(&[5, 5, 6, 6, 64]), vec![0..4, 4..5]);
        let lens: Vec<usize> = (0..32).map(|i| 3 + i * i / 8).collect();
        let groups = length_groups(&lens);
        assert_eq!(groups.first().map(|g| g.start), Some(0));
        assert_eq!(groups.last().map(|g| g.end), Some(32));
        assert!(groups.windows(2).all(|w| w[0].end == w[1].start));
        let padded: usize = groups
            .iter()
            .map(|g| g.len() * lens[g.end - 1] + CALL_ROWS)
            .sum();
        assert!(padded < 32 * lens[31] + CALL_ROWS);
    }

    #[test]
    fn length_groups_of_a_huge_batch_never_split_equal_lengths() {
        // 200,000 sentences: quadratic in the sentences this would not end;
        // over the 128 distinct lengths it is instant.
        let lens: Vec<usize> = (0..200_000).map(|i| 3 + i * 128 / 200_000).collect();
        let groups = length_groups(&lens);
        assert_eq!(groups.first().map(|g| g.start), Some(0));
        assert_eq!(groups.last().map(|g| g.end), Some(lens.len()));
        assert!(groups.windows(2).all(|w| w[0].end == w[1].start));
        assert!(groups
            .windows(2)
            .all(|w| lens[w[0].end - 1] != lens[w[1].start]));
    }
}
