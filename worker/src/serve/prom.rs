//! The server's Prometheus metrics, served as text on `/metrics`.

use prometheus::{Encoder as _, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    registry: Registry,
    /// HTTP requests by path and status.
    pub requests: IntCounterVec,
    /// Latency of `/invocations`.
    pub latency: Histogram,
    /// Sentences per model call.
    pub batch: Histogram,
    /// Requests to `/invocations` being answered.
    pub in_flight: IntGauge,
    /// Requests waiting for the model.
    pub queued: IntGauge,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("pipe_requests_total", "HTTP requests by path and status"),
            &["path", "status"],
        )?;
        let latency = Histogram::with_opts(
            HistogramOpts::new("pipe_request_seconds", "Latency of /invocations").buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
        )?;
        let batch = Histogram::with_opts(
            HistogramOpts::new("pipe_batch_size", "Sentences per model call")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )?;
        let in_flight = IntGauge::new(
            "pipe_in_flight_requests",
            "Requests to /invocations being answered",
        )?;
        let queued = IntGauge::new(
            "pipe_queued_requests",
            "Requests waiting for the model (or for more of their chunks to run)",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(batch.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
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

    /// Every metric in Prometheus' text format.
    pub fn text(&self) -> prometheus::Result<Vec<u8>> {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(buf)
    }
}
