//! `pipe serve`: the packaged model behind the SageMaker inference-container
//! contract (`GET /ping`, `POST /invocations`), plus `GET /metrics`.
//!
//! Requests are parsed on a small async executor; inference runs on dedicated
//! threads (lanes) sharing one copy of the model. Concurrent requests are
//! queued and run together (up to `max_batch` sentences), in groups of
//! similar length each padded to its longest sentence; the model is frozen
//! with its linear layers on packed oneDNN weights (`fast`). A worker waits
//! for more only while requests are on their way (accepted, not yet queued),
//! and at most `max_delay`: a lone request never waits. Lane 0 takes the
//! work whenever it is idle and runs a call that is alone on every core;
//! under load the lanes share what waits and the cores.
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
//!
//! The parts:
//! - `mod.rs` (here): the lifecycle: load, start the inference threads,
//!   accept connections, drain on SIGTERM.
//! - [`app`]: the routes, request parsing and [`ServeError`]; a function of
//!   its state, so tests call it in-process.
//! - [`batcher`]: the queue and the inference threads' loop, over any
//!   [`batcher::Infer`].
//! - [`model`]: the libtorch [`batcher::Infer`]: tokenizer, length groups,
//!   the packed module.
//! - [`package`]: the unpacked `model.tar.gz` and its `config.json`.
//! - [`prom`]: the Prometheus metrics.

pub mod app;
pub mod batcher;
pub mod model;
pub mod package;
pub mod prom;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use pipe_protocol::serve::Ready;
use tokio::sync::{watch, Semaphore};

pub use app::{app, AppState, Limits, ServeError};
use batcher::Batcher;
use model::Model;
use package::Package;
use prom::Metrics;

#[derive(Debug, Clone)]
pub struct Options {
    pub package: PathBuf,
    pub host: String,
    pub port: u16,
    pub max_batch: usize,
    pub max_delay: Duration,
    /// Inference threads, sharing one copy of the module.
    pub workers: usize,
    /// libtorch intra-op threads of each worker while others are busy too; a
    /// worker that runs alone uses `workers × threads`.
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
    /// Print the [`Ready`] line on stdout once serving (for `deploy`).
    pub announce: bool,
    /// The linear layers' arithmetic.
    pub linears: crate::fast::Linears,
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

/// Characters kept of a sentence per token of `max_len`: more than any
/// WordPiece token spans (100 characters give one `[UNK]`), so cutting
/// there keeps the first `max_len` tokens of all but degenerate text while
/// bounding the tokenizer's work.
const CHARS_PER_TOKEN: usize = 32;

pub fn serve(opts: Options) -> Result<()> {
    let package = Package::open(&opts.package)?;
    let metrics = Arc::new(Metrics::new()?);
    let workers = opts.workers.max(1);
    let batcher = Arc::new(Batcher::new(
        batcher::Config {
            workers,
            max_batch: opts.max_batch,
            max_delay: opts.max_delay,
            capacity: opts.max_queue,
        },
        metrics.queued.clone(),
        metrics.batch.clone(),
    ));
    // One copy of the model, loaded by lane 0 and run by every inference
    // thread. libtorch's OpenMP spins its threads between ops only while no
    // more of them exist than cores, so no other thread (this one included)
    // may start a team of its own: each inference thread sets its own
    // thread count (`Lane`).
    let lanes = Arc::new(Lanes {
        alone: workers.saturating_mul(opts.threads).max(1),
        shared: opts.threads.max(1),
    });
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Arc<Model>>>();
    let start = |index: usize, model: Option<Arc<Model>>| {
        let (batcher, ready, lanes) = (batcher.clone(), ready_tx.clone(), lanes.clone());
        let (dir, max_len, linears) = (package.dir.clone(), package.max_len, opts.linears);
        std::thread::spawn(move || {
            let lane = Lane::new(lanes, index);
            let loaded = match model {
                Some(model) => Ok(model),
                None => Model::load(&dir, max_len, linears).map(Arc::new),
            };
            match loaded.and_then(|model| lane.warm_up(model)) {
                Ok(model) => {
                    let _alive = batcher.enlist();
                    let _ = ready.send(Ok(model.clone()));
                    drop(ready);
                    batcher.work(index, &lane.with(&model));
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        });
    };
    let loaded = || -> Result<Arc<Model>> {
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("an inference thread died while loading"))?
            .with_context(|| format!("cannot serve {}", opts.package.display()))
    };
    start(0, None);
    let model = loaded()?;
    for index in 1..workers {
        start(index, Some(model.clone()));
    }
    for _ in 1..workers {
        loaded()?;
    }
    drop(model);
    let router = app(Arc::new(AppState {
        batcher,
        labels: package.labels.clone(),
        metrics,
        limits: Limits {
            body_limit: opts.body_limit,
            max_items: opts.max_items.max(1),
            max_chars: package.max_len.saturating_mul(CHARS_PER_TOKEN),
            read_timeout: opts.read_timeout,
        },
    }));
    let opts = Options {
        max_connections: connection_cap(opts.max_connections),
        ..opts
    };
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
            package.labels.len(),
            package.max_len,
            opts.max_batch,
            opts.max_delay,
            workers,
            opts.threads,
            opts.max_connections
        );
        if opts.announce {
            announce(&Ready {
                pid: std::process::id(),
                ready: url,
            })?;
        }
        accept_loop(listener, router, &opts).await;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Prints the one line `deploy` waits for on the server's stdout.
#[allow(
    clippy::print_stdout,
    reason = "the ready line is the server's protocol with `deploy`"
)]
fn announce(ready: &Ready) -> Result<()> {
    println!("{}", serde_json::to_string(ready)?);
    Ok(())
}

/// The inference threads' share of the cores: a call that runs while no
/// other does and nothing waits uses `alone` intra-op threads (a lone
/// request gets every core), one that runs beside others `shared` (a full
/// queue keeps every lane busy on cores of its own, with fewer thread
/// hand-offs inside a call).
struct Lanes {
    alone: usize,
    shared: usize,
}

/// One inference thread's side of [`Lanes`]. The batcher gives lane 0 the
/// work whenever it is idle, and lane `k` only while lanes `0..k` are busy;
/// so only lane 0 runs alone, and the other lanes always use their share.
struct Lane {
    lanes: Arc<Lanes>,
    /// Whether the count changes with the load (lane 0, of several).
    adapts: bool,
    threads: Cell<usize>,
}

impl Lane {
    fn new(lanes: Arc<Lanes>, index: usize) -> Lane {
        let threads = if index == 0 {
            lanes.alone
        } else {
            lanes.shared
        };
        tch::set_num_threads(threads as i32);
        Lane {
            adapts: index == 0 && lanes.alone != lanes.shared,
            lanes,
            threads: Cell::new(threads),
        }
    }

    fn set(&self, threads: usize) {
        if self.threads.get() != threads {
            // Per thread: OpenMP's and MKL's counts are the calling thread's.
            tch::set_num_threads(threads as i32);
            self.threads.set(threads);
        }
    }

    /// Run the model at each thread count this lane will use, so that no
    /// request pays for the first call's set-up.
    fn warm_up(&self, model: Arc<Model>) -> Result<Arc<Model>> {
        let counts = if self.adapts {
            vec![self.lanes.shared, self.lanes.alone]
        } else {
            vec![self.threads.get()]
        };
        for threads in counts {
            self.set(threads);
            model.warm_up()?;
        }
        Ok(model)
    }

    fn with<'a>(&'a self, model: &'a Model) -> LaneModel<'a> {
        LaneModel { lane: self, model }
    }
}

/// The shared model as one inference thread runs it.
struct LaneModel<'a> {
    lane: &'a Lane,
    model: &'a Model,
}

impl batcher::Infer for LaneModel<'_> {
    fn infer(&self, sentences: &[String], alone: bool) -> Result<Vec<Vec<f32>>> {
        if self.lane.adapts {
            let lanes = &self.lane.lanes;
            self.lane
                .set(if alone { lanes.alone } else { lanes.shared });
        }
        self.model.infer(sentences)
    }
}
