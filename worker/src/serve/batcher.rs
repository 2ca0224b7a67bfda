//! The batch queue between the HTTP handlers and the inference threads.
//!
//! A request's sentences are queued as one [`Pending`]; each inference thread
//! ([`Batcher::work`]) takes up to `max_batch` sentences at a time, in chunks
//! taken round-robin from the waiting requests, runs them through its
//! [`Infer`] in one call, and hands each request its rows. A thread waits for
//! more only while requests are on their way (read, not yet queued:
//! [`Batcher::arriving`]), and at most `max_delay`: a lone request never
//! waits. A failed call is retried chunk by chunk, so that only the requests
//! whose sentences fail get an error.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, IntGauge};
use tokio::sync::oneshot;

/// What runs a batch of sentences: the libtorch model
/// ([`super::model::Model`]), or a stub in tests.
pub trait Infer {
    /// One row of logits per sentence, in order.
    fn infer(&self, sentences: &[String]) -> anyhow::Result<Vec<Vec<f32>>>;
}

/// Logits of every sentence of a request, or why the model failed on them.
pub type Answer = Result<Vec<Vec<f32>>, String>;

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No inference thread runs.
    NotRunning,
    /// The queue holds its capacity of requests already.
    Full,
}

pub struct Batcher {
    queue: Mutex<Queue>,
    more: Condvar,
    /// Most requests waiting.
    capacity: usize,
    max_batch: usize,
    max_delay: Duration,
    /// Requests read in full but not yet queued: what a batch may still wait for.
    arriving: AtomicUsize,
    /// Inference threads running.
    alive: AtomicUsize,
    /// Inference threads started, of which `alive` still run.
    workers: usize,
    depth: IntGauge,
    batch_sizes: Histogram,
}

/// The requests waiting for the model, each with the index of its first
/// sentence not yet taken. Workers take chunks round-robin: a request with
/// more left goes to the back, so a big request never holds up a small one
/// for more than a batch or two.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<(Arc<Pending>, usize)>,
    /// Set by [`Batcher::close`]: the inference threads stop.
    closed: bool,
}

/// How a [`Batcher`] batches.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Inference threads that will run [`Batcher::work`].
    pub workers: usize,
    /// Most sentences in one model call.
    pub max_batch: usize,
    /// Longest wait for requests on their way before a batch runs.
    pub max_delay: Duration,
    /// Most requests waiting (more are refused).
    pub capacity: usize,
}

impl Batcher {
    /// `depth` follows the queue's length; `batch_sizes` counts the
    /// sentences of each model call.
    pub fn new(config: Config, depth: IntGauge, batch_sizes: Histogram) -> Batcher {
        Batcher {
            queue: Mutex::new(Queue::default()),
            more: Condvar::new(),
            capacity: config.capacity.max(1),
            max_batch: config.max_batch.max(1),
            max_delay: config.max_delay,
            arriving: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            workers: config.workers.max(1),
            depth,
            batch_sizes,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Inference threads stopped (by a panic) of those started.
    pub fn stopped(&self) -> (usize, usize) {
        let alive = self.alive.load(Ordering::Acquire);
        (self.workers.saturating_sub(alive), self.workers)
    }

    /// Counts a request as on its way to the queue until the guard is
    /// dropped: a batch may wait for it (at most `max_delay`).
    pub fn arriving(&self) -> Arriving<'_> {
        self.arriving.fetch_add(1, Ordering::AcqRel);
        Arriving(&self.arriving)
    }

    /// Counts the calling thread as a running inference thread until the
    /// guard is dropped (a panic included).
    pub fn enlist(&self) -> Alive<'_> {
        self.alive.fetch_add(1, Ordering::AcqRel);
        Alive(&self.alive)
    }

    /// Queues a request's sentences; the receiver gets their logits.
    pub fn submit(&self, sentences: Vec<String>) -> Result<oneshot::Receiver<Answer>, Refused> {
        if self.alive.load(Ordering::Acquire) == 0 {
            return Err(Refused::NotRunning);
        }
        let (tx, rx) = oneshot::channel();
        let Ok(mut queue) = self.queue.lock() else {
            return Err(Refused::Full);
        };
        if queue.waiting.len() >= self.capacity {
            return Err(Refused::Full);
        }
        queue
            .waiting
            .push_back((Arc::new(Pending::new(sentences, tx)), 0));
        self.depth.set(queue.waiting.len() as i64);
        drop(queue);
        self.more.notify_one();
        Ok(rx)
    }

    /// Stops every inference thread once it has finished its batch.
    pub fn close(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.closed = true;
        }
        self.more.notify_all();
    }

    /// An inference thread: takes chunks of queued requests, runs them
    /// through `model`, and answers each, until [`Batcher::close`].
    pub fn work(&self, model: &impl Infer) {
        let run = |sentences: &[String]| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.infer(sentences)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the model panicked")))
        };
        while let Some(pieces) = self.take() {
            let sentences: Vec<String> = pieces
                .iter()
                .flat_map(|p| p.sentences().iter().cloned())
                .collect();
            self.batch_sizes.observe(sentences.len() as f64);
            match run(&sentences) {
                Ok(rows) if rows.len() == sentences.len() => {
                    let mut rows = rows.into_iter();
                    for p in pieces {
                        let mine = rows.by_ref().take(p.range.len()).collect();
                        p.request.finish(p.range, Ok(mine));
                    }
                }
                Ok(rows) => {
                    let e = format!("{} rows for {} sentences", rows.len(), sentences.len());
                    tracing::error!("inference failed: {e}");
                    for p in pieces {
                        p.request.finish(p.range, Err(e.clone()));
                    }
                }
                Err(e) if pieces.len() == 1 => {
                    tracing::error!("inference failed: {e:#}");
                    for p in pieces {
                        p.request.finish(p.range, Err(format!("{e:#}")));
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
                            format!("{e:#}")
                        });
                        p.request.finish(p.range, result);
                    }
                }
            }
        }
    }

    /// Waits for work, then takes up to `max_batch` sentences: what is
    /// queued, and while requests are on their way, what comes within
    /// `max_delay`. `None` once closed (or the queue is broken).
    fn take(&self) -> Option<Vec<Piece>> {
        let max = self.max_batch;
        let mut queue = self.queue.lock().ok()?;
        while queue.waiting.is_empty() && !queue.closed {
            queue = self.more.wait(queue).ok()?;
        }
        if queue.closed {
            return None;
        }
        let deadline = Instant::now() + self.max_delay;
        let mut pieces = Vec::new();
        let mut n = 0;
        while n < max {
            let Some((request, next)) = queue.waiting.pop_front() else {
                let left = deadline.saturating_duration_since(Instant::now());
                if pieces.is_empty() {
                    // Every waiting request was abandoned: wait for more.
                    queue = self.more.wait(queue).ok()?;
                    if queue.closed {
                        return None;
                    }
                    continue;
                }
                if self.arriving.load(Ordering::Acquire) == 0 || left.is_zero() {
                    break;
                }
                queue = self
                    .more
                    .wait_timeout(queue, left.min(Duration::from_micros(200)))
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
                queue.waiting.push_back((request.clone(), end));
            }
            pieces.push(Piece {
                request,
                range: next..end,
            });
        }
        self.depth.set(queue.waiting.len() as i64);
        if !queue.waiting.is_empty() {
            // The rest of a big request: another worker may run it meanwhile.
            self.more.notify_one();
        }
        Some(pieces)
    }
}

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
    reply: Option<oneshot::Sender<Answer>>,
}

impl Pending {
    fn new(sentences: Vec<String>, reply: oneshot::Sender<Answer>) -> Pending {
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
    fn finish(&self, range: Range<usize>, result: Answer) {
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

/// See [`Batcher::arriving`].
pub struct Arriving<'a>(&'a AtomicUsize);

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// See [`Batcher::enlist`].
pub struct Alive<'a>(&'a AtomicUsize);

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        tracing::error!("an inference thread stopped");
    }
}
