//! A small HTTP load generator for `bench/serve.sh`: posts one sentence per
//! request to `URL/invocations` from C concurrent clients (keep-alive), and
//! prints a JSON line with latency percentiles, throughput and errors.
//!
//!   cargo run --release --example load -- URL SENTENCES.txt CLIENTS REQUESTS_PER_CLIENT

#![allow(
    clippy::print_stdout,
    reason = "prints its figures as a JSON line for bench/serve.sh"
)]

use std::time::Instant;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, file, clients, per] = args.as_slice() else {
        bail!("usage: load URL SENTENCES.txt CLIENTS REQUESTS_PER_CLIENT");
    };
    let sentences: Vec<String> = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {file}"))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::Value::from(l).to_string())
        .collect();
    if sentences.is_empty() {
        bail!("{file} holds no sentences");
    }
    let clients: usize = clients.parse().context("CLIENTS is not a number")?;
    let per: usize = per.parse().context("REQUESTS_PER_CLIENT is not a number")?;
    let url = format!("{url}/invocations");
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (url, sentences) = (url.clone(), sentences.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut lat = Vec::with_capacity(per);
                let mut errors = 0;
                for i in 0..per {
                    let body = sentences[(c * per + i) % sentences.len()].clone();
                    let t = Instant::now();
                    let ok = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .and_then(|r| r.error_for_status())
                        .and_then(|r| r.bytes())
                        .is_ok();
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    errors += usize::from(!ok);
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in handles {
        let Ok((l, e)) = h.join() else {
            bail!("a client thread panicked")
        };
        lat.extend(l);
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    if lat.is_empty() {
        bail!("no requests sent");
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{}",
        serde_json::json!({
            "clients": clients, "requests": lat.len(), "errors": errors,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "requests_per_s": lat.len() as f64 / secs,
        })
    );
    Ok(())
}
