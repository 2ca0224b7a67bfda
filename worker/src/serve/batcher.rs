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

/// What runs a batch of sentences: the libtorch model as one inference
/// thread runs it, or a stub in tests.
pub trait Infer {
    /// One row of logits per sentence, in order. `alone`: no other lane is
    /// busy and no more work waits, so the call may use every core.
    fn infer(&self, sentences: &[String], alone: bool) -> anyhow::Result<Vec<Vec<f32>>>;
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
    /// One per lane: a lane is woken only when it may take the work.
    wake: Vec<Condvar>,
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
    /// What each inference thread does, by lane: lane `k` takes work only
    /// while lanes `0..k` are busy, so a lone request always runs on lane 0
    /// (whose threads are warm, and which may use every core).
    lanes: Vec<LaneState>,
    /// Set by [`Batcher::close`]: the inference threads stop.
    closed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaneState {
    /// Waiting for work.
    Idle,
    /// Taking a batch, waiting up to `max_delay` for requests on their way.
    Forming,
    /// Running a batch.
    Busy,
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
            queue: Mutex::new(Queue {
                lanes: vec![LaneState::Busy; config.workers.max(1)],
                ..Queue::default()
            }),
            wake: (0..config.workers.max(1)).map(|_| Condvar::new()).collect(),
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
        // The first idle lane takes it, or a lane forming a batch.
        for (lane, state) in queue.lanes.iter().enumerate() {
            if *state == LaneState::Forming {
                self.wake[lane].notify_one();
            }
        }
        self.wake_first_idle(&queue);
        Ok(rx)
    }

    /// Stops every inference thread once it has finished its batch.
    pub fn close(&self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.closed = true;
        }
        for wake in &self.wake {
            wake.notify_all();
        }
    }

    /// Wake the first idle lane: the one that may take queued work.
    fn wake_first_idle(&self, queue: &Queue) {
        if let Some(lane) = queue.lanes.iter().position(|s| *s == LaneState::Idle) {
            self.wake[lane].notify_one();
        }
    }

    /// Inference thread number `lane` (of `Config::workers`): takes chunks
    /// of queued requests, runs them through `model`, and answers each,
    /// until [`Batcher::close`].
    pub fn work(&self, lane: usize, model: &impl Infer) {
        let run = |sentences: &[String], alone: bool| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                model.infer(sentences, alone)
            }))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the model panicked")))
        };
        while let Some((pieces, alone)) = self.take(lane) {
            let sentences: Vec<String> = pieces
                .iter()
                .flat_map(|p| p.sentences().iter().cloned())
                .collect();
            self.batch_sizes.observe(sentences.len() as f64);
            let ran = run(&sentences, alone);
            // Idle from here, before the answers go out: a client's next
            // request must find this lane free, not the next one.
            self.idle(lane);
            match ran {
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
                        let result = run(p.sentences(), false).map_err(|e| {
                            tracing::error!("inference failed: {e:#}");
                            format!("{e:#}")
                        });
                        p.request.finish(p.range, result);
                    }
                }
            }
        }
    }

    fn idle(&self, lane: usize) {
        if let Ok(mut queue) = self.queue.lock() {
            if let Some(state) = queue.lanes.get_mut(lane) {
                *state = LaneState::Idle;
            }
        }
    }

    /// Waits for work, then takes up to `max_batch` sentences: what is
    /// queued, and while requests are on their way, what comes within
    /// `max_delay`; and whether the batch runs alone (nothing else running
    /// or waiting). `None` once closed (or the queue is broken).
    fn take(&self, lane: usize) -> Option<(Vec<Piece>, bool)> {
        let max = self.max_batch;
        let mut queue = self.queue.lock().ok()?;
        let lane = lane.min(queue.lanes.len().saturating_sub(1));
        'wait: loop {
            queue.lanes[lane] = LaneState::Idle;
            while !queue.closed
                && (queue.waiting.is_empty() || queue.lanes[..lane].contains(&LaneState::Idle))
            {
                queue = self.wake[lane].wait(queue).ok()?;
            }
            if queue.closed {
                return None;
            }
            queue.lanes[lane] = LaneState::Forming;
            // With lanes idle after this one, share what waits: each runs
            // its part on its own cores, rather than one running it all on
            // every core (fewer thread hand-offs inside a call).
            let idle_after = queue.lanes[lane + 1..]
                .iter()
                .filter(|s| **s == LaneState::Idle)
                .count();
            let max = if idle_after == 0 {
                max
            } else {
                let queued: usize = queue
                    .waiting
                    .iter()
                    .map(|(r, next)| r.sentences.len().saturating_sub(*next))
                    .sum();
                queued.div_ceil(idle_after + 1).clamp(1, max)
            };
            let deadline = Instant::now() + self.max_delay;
            let mut pieces = Vec::new();
            let mut n = 0;
            while n < max {
                let Some((request, next)) = queue.waiting.pop_front() else {
                    if pieces.is_empty() {
                        // Every waiting request was abandoned: wait for more.
                        continue 'wait;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if self.arriving.load(Ordering::Acquire) == 0 || left.is_zero() {
                        break;
                    }
                    queue = self.wake[lane]
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
            queue.lanes[lane] = LaneState::Busy;
            self.depth.set(queue.waiting.len() as i64);
            // More than a batch waits (or the rest of a big request): the
            // next lane may run it meanwhile.
            if !queue.waiting.is_empty() {
                self.wake_first_idle(&queue);
            }
            let alone = queue.waiting.is_empty()
                && queue
                    .lanes
                    .iter()
                    .enumerate()
                    .all(|(i, s)| i == lane || *s == LaneState::Idle);
            return Some((pieces, alone));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers each sentence with its lane's number; lane 0 holds its call
    /// until the test lets it go.
    struct Lane {
        lane: usize,
        hold: Option<Mutex<std::sync::mpsc::Receiver<()>>>,
        started: std::sync::mpsc::Sender<usize>,
    }

    impl Infer for Lane {
        fn infer(&self, sentences: &[String], _: bool) -> anyhow::Result<Vec<Vec<f32>>> {
            let _ = self.started.send(self.lane);
            if let Some(hold) = &self.hold {
                let _ = hold.lock().unwrap().recv();
            }
            Ok(vec![vec![self.lane as f32]; sentences.len()])
        }
    }

    fn answer(rx: oneshot::Receiver<Answer>) -> f32 {
        rx.blocking_recv().unwrap().unwrap()[0][0]
    }

    /// A lone request runs on lane 0 whenever lane 0 is idle; lane 1 takes
    /// work only while lane 0 is busy.
    #[test]
    fn lane_zero_takes_the_work_while_it_is_idle() {
        let config = Config {
            workers: 2,
            max_batch: 4,
            max_delay: Duration::ZERO,
            capacity: 16,
        };
        let batcher = Arc::new(Batcher::new(
            config,
            IntGauge::new("q", "q").unwrap(),
            Histogram::with_opts(prometheus::HistogramOpts::new("b", "b")).unwrap(),
        ));
        let (release, hold) = std::sync::mpsc::channel();
        let (started_tx, started) = std::sync::mpsc::channel();
        let mut hold = Some(hold);
        let threads: Vec<_> = (0..2)
            .map(|lane| {
                let (batcher, started) = (batcher.clone(), started_tx.clone());
                let hold = if lane == 0 { hold.take() } else { None };
                std::thread::spawn(move || {
                    let _alive = batcher.enlist();
                    let model = Lane {
                        lane,
                        hold: hold.map(Mutex::new),
                        started,
                    };
                    batcher.work(lane, &model);
                })
            })
            .collect();
        while batcher.queue.lock().unwrap().lanes != [LaneState::Idle; 2] {
            std::thread::yield_now();
        }
        // Lane 0 is idle: it takes the request (and holds it).
        let first = batcher.submit(vec!["a".into()]).unwrap();
        assert_eq!(started.recv().unwrap(), 0);
        // Lane 0 is busy: lane 1 runs the next ones.
        for _ in 0..3 {
            let next = batcher.submit(vec!["b".into()]).unwrap();
            assert_eq!(answer(next), 1.0);
            assert_eq!(started.recv().unwrap(), 1);
        }
        release.send(()).unwrap();
        assert_eq!(answer(first), 0.0);
        // Idle again (back waiting for work): lane 0 takes it, every time.
        let lane_zero_idle = || {
            while batcher.queue.lock().unwrap().lanes[0] != LaneState::Idle {
                std::thread::yield_now();
            }
        };
        for _ in 0..3 {
            release.send(()).unwrap();
            lane_zero_idle();
            let next = batcher.submit(vec!["c".into()]).unwrap();
            assert_eq!(answer(next), 0.0);
        }
        batcher.close();
        drop(release);
        for t in threads {
            t.join().unwrap();
        }
    }
}
