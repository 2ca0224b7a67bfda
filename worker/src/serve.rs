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

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
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
use tokio::sync::oneshot;

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

/// Sentences of one request, and where its logits go.
struct Job {
    sentences: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    batch: HistogramVec,
    in_flight: IntGauge,
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
        Ok(Metrics {
            registry,
            requests,
            latency,
            batch,
            in_flight,
        })
    }
}

struct App {
    queue: std::sync::Mutex<mpsc::Sender<Job>>,
    /// Requests accepted but not yet queued: what a batch may still wait for.
    arriving: Arc<AtomicUsize>,
    labels: Vec<String>,
    metrics: Metrics,
    body_limit: usize,
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

/// One inference thread: takes a job, adds what is queued and what is on its
/// way (up to `max_batch` sentences, for at most `max_delay`), runs them, and
/// answers each.
fn infer_loop(
    rx: Arc<std::sync::Mutex<mpsc::Receiver<Job>>>,
    arriving: Arc<AtomicUsize>,
    module: FastModule,
    encoder: Encoder,
    opts: Options,
    batch_hist: HistogramVec,
) {
    let _guard = tch::no_grad_guard();
    loop {
        let mut jobs = Vec::new();
        {
            let Ok(rx) = rx.lock() else { return };
            let Ok(first) = rx.recv() else { return };
            let mut n = first.sentences.len();
            jobs.push(first);
            let deadline = Instant::now() + opts.max_delay;
            while n < opts.max_batch {
                let job = match rx.try_recv() {
                    Ok(j) => j,
                    Err(mpsc::TryRecvError::Disconnected) => break,
                    Err(mpsc::TryRecvError::Empty) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if arriving.load(Ordering::Acquire) == 0 || left.is_zero() {
                            break;
                        }
                        match rx.recv_timeout(left.min(Duration::from_micros(200))) {
                            Ok(j) => j,
                            Err(mpsc::RecvTimeoutError::Timeout) => continue,
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                };
                n += job.sentences.len();
                jobs.push(job);
            }
        }
        let sentences: Vec<String> = jobs.iter().flat_map(|j| j.sentences.clone()).collect();
        batch_hist
            .with_label_values::<&str>(&[])
            .observe(sentences.len() as f64);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_batch(&module, &encoder, &sentences)
        }))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the model panicked")));
        let mut rows = match result {
            Ok(rows) => rows.into_iter(),
            Err(e) => {
                tracing::error!("inference failed: {e:#}");
                for j in jobs {
                    let _ = j.reply.send(Err(format!("inference failed: {e:#}")));
                }
                continue;
            }
        };
        for j in jobs {
            let mine: Vec<Vec<f32>> = rows.by_ref().take(j.sentences.len()).collect();
            let _ = j.reply.send(Ok(mine));
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
/// to the long one.
fn length_groups(sorted: &[usize]) -> Vec<std::ops::Range<usize>> {
    let n = sorted.len();
    // cost[j]: the least cost of the first j sequences; start[j]: where the
    // last group of that best split starts.
    let mut cost = vec![0usize; n + 1];
    let mut start = vec![0usize; n + 1];
    for j in 1..=n {
        cost[j] = usize::MAX;
        for i in 0..j {
            let c = cost[i] + CALL_ROWS + (j - i) * sorted[j - 1];
            if c < cost[j] {
                cost[j] = c;
                start[j] = i;
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        groups.push(start[j]..j);
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
    let arriving = Arriving::new(&app.arriving);
    let bytes: Bytes = match axum::body::to_bytes(body, app.body_limit).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is over the limit of {} bytes", app.body_limit),
            )
        }
    };
    let sentences = match parse_sentences(headers, &bytes) {
        Ok(s) => s,
        Err((status, message)) => return error(status, message),
    };
    let (tx, rx) = oneshot::channel();
    // Off the count just before it is queued: a worker that finds the queue
    // empty and nothing arriving runs what it has.
    drop(arriving);
    let sent = match app.queue.lock() {
        Ok(q) => q
            .send(Job {
                sentences,
                reply: tx,
            })
            .is_ok(),
        Err(_) => false,
    };
    if !sent {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the model is not running",
        );
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
    app.metrics
        .requests
        .with_label_values(&["/ping", "200"])
        .inc();
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
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
    tracing::info!("draining in-flight requests, then exiting");
}

pub fn serve(opts: Options) -> Result<()> {
    let model = open(&opts.package)?;
    let metrics = Metrics::new()?;
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let arriving = Arc::new(AtomicUsize::new(0));
    // Each worker loads its module on its own thread: libtorch's OpenMP spins
    // its threads between ops only while no more of them exist than cores, so
    // no other thread (this one included) may start a team of its own.
    let workers = opts.workers.max(1);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
    for _ in 0..workers {
        let (rx, arriving, opts, hist, ready) = (
            rx.clone(),
            arriving.clone(),
            opts.clone(),
            metrics.batch.clone(),
            ready_tx.clone(),
        );
        let (dir, max_len) = (model.dir.clone(), model.max_len);
        std::thread::spawn(move || {
            tch::set_num_threads(opts.threads.max(1) as i32);
            match load_worker(&dir, max_len, &opts) {
                Ok((module, encoder)) => {
                    let _ = ready.send(Ok(()));
                    drop(ready);
                    infer_loop(rx, arriving, module, encoder, opts, hist)
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
        queue: std::sync::Mutex::new(tx),
        arriving,
        labels: model.labels.clone(),
        metrics,
        body_limit: opts.body_limit,
    });
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
            "serving {} on {url} ({} labels, max_len {}, max batch {}, max delay {:?}, {} workers × {} threads)",
            opts.package.display(),
            model.labels.len(),
            model.max_len,
            opts.max_batch,
            opts.max_delay,
            opts.workers,
            opts.threads
        );
        if opts.announce {
            println!("{}", json!({"ready": url, "pid": std::process::id()}));
        }
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown())
            .await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{length_groups, CALL_ROWS};

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
}
