//! `pipe serve`, `deploy`, `smoke_test`, `pipe endpoints` and `pipe down`:
//! real HTTP on 127.0.0.1 against the real server, on a tiny model that
//! fine-tune → trace → package build in the test.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use common::{stages, tiny_bert, TestWorkspace};
use serde_json::{json, Value};

const MANIFEST: &str = r#"version: 1
name: s
params:
  epochs: 20
stages:
  finetune:
    kind: finetune
    inputs: {model: model, data: data}
    # seed 1: a recipe that classifies all 4 test rows at 20 and 21 epochs
    # (checked with finetune v7 and v8; under v6, seeds 2 and 3 did not).
    with: {epochs: "${params.epochs}", batch_size: 16, lr: 3e-3, max_len: 16, threads: 1, seed: 1}
  trace:
    kind: trace
    inputs: {model: "finetune:"}
  package:
    kind: package
    inputs: {model: "trace:"}
  deploy:
    kind: deploy
    inputs: {package: "package:"}
    with: {name: tiny, port: 0}
  smoke:
    kind: smoke_test
    inputs: {endpoint: "deploy:", data: data/test.csv}
    with:
      cases: [{text: "the film was great", expect: 1}, {text: "the plot was awful", expect: 0}]
      min_accuracy: 1.0
"#;

/// One packaged tiny model shared by the server tests.
fn package() -> PathBuf {
    static PKG: OnceLock<(TestWorkspace, PathBuf)> = OnceLock::new();
    PKG.get_or_init(|| {
        let ws = tiny_bert::workspace(MANIFEST);
        ws.run(&["--until", "package"]);
        let p = ws.path(".pipe/out/s/package/model.tar.gz");
        (ws, p)
    })
    .1
    .clone()
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Server::start_with(&package(), args, None)
    }

    /// A server of `package`, with at most `fds` file descriptors if given.
    fn start_with(package: &Path, args: &[&str], fds: Option<u64>) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pipe"));
        cmd.arg("serve")
            .arg(package)
            .args(["--port", "0", "--announce", "--threads", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(n) = fds {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        Server {
            child,
            url: ready["ready"].as_str().unwrap().to_string(),
        }
    }

    fn post(
        &self,
        body: impl Into<reqwest::blocking::Body>,
        ct: &str,
        accept: Option<&str>,
    ) -> (u16, Value) {
        let mut r = reqwest::blocking::Client::new()
            .post(format!("{}/invocations", self.url))
            .header("content-type", ct)
            .body(body);
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_slice(&r.bytes().unwrap()).unwrap())
    }

    fn json(&self, v: Value) -> (u16, Value) {
        self.post(v.to_string(), "application/json", None)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` sentences of 1 to 13 of the tiny model's words, the `k`-th word of
/// sentence `i` being word `i + k * stride`.
fn sentences(n: usize, stride: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let w = tiny_bert::WORDS;
            (0..1 + (i * 5) % 13)
                .map(|k| w[(i + k * stride) % 16])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn logits(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn sagemaker_contract_and_bad_input() {
    let s = Server::start(&[]);
    let ping = reqwest::blocking::get(format!("{}/ping", s.url)).unwrap();
    assert_eq!(ping.status(), 200);

    let (st, one) = s.json(json!("the film was great"));
    assert_eq!(st, 200);
    let one = logits(&one);
    assert_eq!(one.len(), 1);
    assert!(one[0][1] > one[0][0], "a good review is class 1: {one:?}");

    let (st, many) = s.json(json!(["the film was great", "the plot was awful", "nice"]));
    assert_eq!(st, 200);
    let many = logits(&many);
    assert_eq!(many.len(), 3);
    assert!(many[1][0] > many[1][1]);
    assert!((many[0][0] - one[0][0]).abs() < 1e-5);

    let (st, v) = s.post(
        json!(["a sad movie"]).to_string(),
        "application/json",
        Some("application/json;verbose=true"),
    );
    assert_eq!(st, 200);
    assert_eq!(v[0]["class"], 0);
    assert_eq!(v[0]["label"], "0");
    let p: Vec<f64> = serde_json::from_value(v[0]["probabilities"].clone()).unwrap();
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-6);

    // Over-long input is truncated to max_len, not refused.
    let long = vec!["good"; 500].join(" ");
    assert_eq!(s.json(json!(long)).0, 200);

    for (body, ct, status, says) in [
        (
            b"{not json".to_vec(),
            "application/json",
            400,
            "malformed JSON",
        ),
        (
            br#"["ok", 3]"#.to_vec(),
            "application/json",
            400,
            "item 1 is not a string",
        ),
        (b"[]".to_vec(), "application/json", 400, "empty"),
        (
            br#"{"a": 1}"#.to_vec(),
            "application/json",
            400,
            "a string or a list of strings",
        ),
        (b"\"\xff\xfe\"".to_vec(), "application/json", 400, "UTF-8"),
        (b"\"hi\"".to_vec(), "text/plain", 415, "application/json"),
        (vec![b'a'; 2 << 20], "application/json", 413, "limit"),
    ] {
        let (st, v) = s.post(body, ct, None);
        assert_eq!(st, status, "{says}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{v}");
    }
    // Still serving, and counting.
    assert_eq!(s.json(json!("fine")).0, 200);
    let m = reqwest::blocking::get(format!("{}/metrics", s.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains(r#"pipe_requests_total{path="/invocations",status="415"} 1"#),
        "{m}"
    );
    assert!(m.contains("pipe_request_seconds_bucket"), "{m}");
    assert!(m.contains("pipe_batch_size_bucket"), "{m}");
}

#[test]
fn concurrent_requests_are_batched_and_answered_correctly() {
    // Two workers sharing the queue; sentences of 1 to 13 words, so that
    // batches run in several length groups.
    let s = Server::start(&["--max-delay-ms", "20", "--workers", "2"]);
    let sentences = sentences(200, 7);
    // Unbatched answers, one request at a time.
    let alone: Vec<Vec<f64>> = sentences
        .iter()
        .map(|t| logits(&s.json(json!(t)).1)[0].clone())
        .collect();
    let url = s.url.clone();
    let handles: Vec<_> = sentences
        .iter()
        .cloned()
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let r = reqwest::blocking::Client::new()
                    .post(format!("{url}/invocations"))
                    .header("content-type", "application/json")
                    .body(json!(t).to_string())
                    .send()
                    .unwrap();
                assert_eq!(r.status(), 200);
                logits(&serde_json::from_slice(&r.bytes().unwrap()).unwrap())[0].clone()
            })
        })
        .collect();
    for (h, want) in handles.into_iter().zip(&alone) {
        let got = h.join().unwrap();
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() <= 1e-5, "batched {got:?} vs alone {want:?}");
        }
    }
    let m = reqwest::blocking::get(format!("{}/metrics", s.url))
        .unwrap()
        .text()
        .unwrap();
    let batches: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("pipe_batch_size_count "))
        .unwrap()
        .parse()
        .unwrap();
    // 200 alone + 200 concurrent (+ none for warm-up): batching merged some.
    assert!(
        batches < 400.0,
        "no batching happened: {batches} model calls"
    );
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    use std::io::{Read, Write};
    let mut s = Server::start(&[]);
    // A request whose body is only half sent is in flight when SIGTERM lands.
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    let body = b"[\"good\", \"bad\"]";
    write!(
        conn,
        "POST /invocations HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(&body[..5]).unwrap();
    let metrics = format!("{}/metrics", s.url);
    let held = (0..1000).any(|_| {
        reqwest::blocking::get(&metrics)
            .and_then(|r| r.text())
            .is_ok_and(|m| m.contains("pipe_in_flight_requests 1"))
    });
    assert!(held, "the request never reached the server");
    // SAFETY: kill(2) on our own child, not yet reaped, so its pid is not reused.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    conn.write_all(&body[5..]).unwrap();
    let mut answer = String::new();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !answer.contains("]]") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before the answer: {answer}");
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

fn endpoints(ws: &TestWorkspace) -> Vec<Value> {
    let out = ws.pipe(&["endpoints", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

#[test]
fn deploy_reuse_replace_and_down() {
    let ws = tiny_bert::workspace(MANIFEST);
    let first = ws.run(&[]);
    assert!(first.iter().all(|(_, s)| s == "ran"), "{first:?}");
    let ep: Value = ws.json(".pipe/out/s/deploy/endpoint.json");
    assert_eq!(ep["name"], "tiny");
    let report: Value = ws.json(".pipe/out/s/smoke/report.json");
    assert_eq!(report["accuracy"], 1.0);
    assert_eq!(report["cases"][0]["predicted"], 1);

    // Same model, live endpoint: nothing runs; the smoke test re-checked it.
    let again = ws.run(&[]);
    assert!(again.iter().all(|(_, s)| s == "cached"), "{again:?}");
    let listed = endpoints(&ws);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["health"], "healthy");
    assert_eq!(listed[0]["pid"], ep["pid"]);

    // Another model replaces the endpoint: the old server is stopped.
    let replaced = ws.run(&["--set", "epochs=21"]);
    assert!(replaced.iter().all(|(_, s)| s == "ran"), "{replaced:?}");
    let ep2: Value = ws.json(".pipe/out/s/deploy/endpoint.json");
    assert_ne!(ep2["pid"], ep["pid"]);
    assert!(!alive(ep["pid"].as_u64().unwrap()));

    // A dead endpoint is noticed and brought back up.
    let pid2 = ep2["pid"].as_u64().unwrap();
    // SAFETY: kill(2) on the server pipe started; the loop below waits for it to go.
    unsafe { libc::kill(pid2 as i32, libc::SIGKILL) };
    while alive(pid2) {
        std::thread::yield_now();
    }
    assert!(endpoints(&ws)[0]["health"]
        .as_str()
        .unwrap()
        .starts_with("down"));
    let revived = stages(&ws.run_json(&["--set", "epochs=21"]));
    assert_eq!(
        revived
            .iter()
            .filter(|(_, s)| s == "ran")
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["deploy", "smoke"]
    );

    let down = ws.pipe(&["down", "--all"]);
    assert!(down.status.success(), "{}", common::stderr(&down));
    let ep3: Value = ws.json(".pipe/out/s/deploy/endpoint.json");
    let pid3 = ep3["pid"].as_u64().unwrap();
    assert!(!alive(pid3));
    assert!(endpoints(&ws).is_empty());
    assert!(!Path::new(&ws.path(".pipe/endpoints/tiny.json")).exists());
}

/// Whether `pid` runs and is not a zombie.
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn down_stops_only_the_process_its_record_started() {
    // A live server of another workspace whose pid a stale record names:
    // once with another start time (the pid was reused), once with none.
    let s = Server::start(&[]);
    let pid = s.child.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let started: u64 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let ws = TestWorkspace::new();
    let record = |name: &str| json!({"name": name, "url": s.url, "pid": pid, "model_sha256": "0", "log": "x.log"});
    let mut reused = record("reused");
    reused["started"] = json!(started + 1);
    ws.file(".pipe/endpoints/reused.json", &reused.to_string());
    ws.file(".pipe/endpoints/old.json", &record("old").to_string());

    let down = ws.pipe(&["down", "--all"]);
    assert!(down.status.success(), "{}", common::stderr(&down));
    let said = common::stderr(&down);
    assert_eq!(
        said.matches("stale record removed, nothing killed").count(),
        2,
        "{said}"
    );
    assert!(said.contains("no start time"), "{said}");
    assert!(said.contains("is now another process"), "{said}");
    assert!(endpoints(&ws).is_empty());
    assert!(alive(pid as u64));
    let ping = reqwest::blocking::get(format!("{}/ping", s.url)).unwrap();
    assert_eq!(ping.status(), 200);
}

/// `/metrics` of a server.
fn metrics(url: &str) -> String {
    reqwest::blocking::get(format!("{url}/metrics"))
        .unwrap()
        .text()
        .unwrap()
}

/// Waits (a bounded number of polls) until `/metrics` has `line`.
fn wait_for_metric(url: &str, line: &str) {
    let seen = (0..100_000).any(|_| metrics(url).contains(line));
    assert!(seen, "/metrics never showed {line}");
}

/// Posts `sentences` on another thread; the status and body come back on the channel.
fn post_async(url: &str, sentences: Value) -> std::sync::mpsc::Receiver<(u16, Value)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let url = url.to_string();
    std::thread::spawn(move || {
        let r = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .unwrap()
            .post(format!("{url}/invocations"))
            .header("content-type", "application/json")
            .body(sentences.to_string())
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let _ = tx.send((status, serde_json::from_slice(&r.bytes().unwrap()).unwrap()));
    });
    rx
}

#[test]
fn a_big_request_runs_in_chunks_that_let_a_small_one_through() {
    let s = Server::start(&["--max-batch", "8", "--max-items", "20000"]);
    let over = vec!["nice"; 20001];
    let (st, v) = s.json(json!(over));
    assert_eq!(st, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--max-items"), "{v}");

    let big = post_async(&s.url, json!(vec!["nice"; 20000]));
    wait_for_metric(&s.url, "pipe_queued_requests 1");
    let (st, small) = s.json(json!(["the film was great", "nice"]));
    assert_eq!(st, 200);
    // The small request was answered while the big one still ran.
    assert!(
        big.try_recv().is_err(),
        "the big request finished before the small one"
    );
    let (st, big) = big.recv().unwrap();
    assert_eq!(st, 200);
    let big = logits(&big);
    assert_eq!(big.len(), 20000);
    let nice = &logits(&small)[1];
    for row in [&big[0], &big[19999]] {
        for (a, b) in row.iter().zip(nice) {
            assert!((a - b).abs() <= 1e-5, "{row:?} vs {nice:?}");
        }
    }
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let s = Server::start(&[
        "--max-batch",
        "1",
        "--max-queue",
        "1",
        "--max-items",
        "50000",
    ]);
    let _big = post_async(&s.url, json!(vec!["nice"; 50000]));
    wait_for_metric(&s.url, "pipe_queued_requests 1");
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/invocations", s.url))
        .header("content-type", "application/json")
        .body(json!("hello").to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    assert!(v["error"].as_str().unwrap().contains("busy"), "{v}");
}

#[test]
fn a_slow_body_does_not_hold_a_batch_back() {
    use std::io::Write;
    // Without the body, the half-sent request must not count as on its way:
    // a batch would wait up to --max-delay-ms (here far longer than the
    // client's patience) for it.
    let s = Server::start(&["--max-delay-ms", "600000"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /invocations HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[\"go"
    )
    .unwrap();
    wait_for_metric(&s.url, "pipe_in_flight_requests 1");
    let r = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
        .post(format!("{}/invocations", s.url))
        .header("content-type", "application/json")
        .body(json!("nice").to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn half_sent_requests_are_cut_off_and_do_not_starve_ping() {
    use std::io::{Read, Write};
    // 300 connections that never finish their request line, against a
    // server with 256 file descriptors.
    let s = Server::start_with(&package(), &["--read-timeout", "1"], Some(256));
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut slow: Vec<std::net::TcpStream> = (0..300)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            c.write_all(b"POST /invoc").unwrap();
            c
        })
        .collect();
    let ping = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
        .get(format!("{}/ping", s.url))
        .send()
        .unwrap();
    assert_eq!(ping.status(), 200);
    // The server closed the first of them (it never answers a request
    // line it did not get).
    slow[0]
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = slow[0].read_to_end(&mut buf);
    assert!(
        buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn sigterm_with_a_stuck_client_exits_0_after_the_drain_timeout() {
    use std::io::Write;
    let mut s = Server::start(&["--drain-timeout", "1"]);
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "POST /invocations HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n[\"go"
    )
    .unwrap();
    wait_for_metric(&s.url, "pipe_in_flight_requests 1");
    // SAFETY: kill(2) on our own child, not yet reaped, so its pid is not reused.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    // Bounded: before the drain deadline the server waited for the client
    // for ever.
    let status = (0..3000).find_map(|_| {
        let st = s.child.try_wait().unwrap();
        if st.is_none() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        st
    });
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "still running 60 s after SIGTERM"
    );
}

#[test]
fn a_failing_sentence_fails_only_its_own_request() {
    // The tiny model has 64 positions; with max_len raised to 200, a
    // sentence of over 64 tokens makes the model itself fail.
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::open(package()).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(dir.path())
        .unwrap();
    let config = dir.path().join("config.json");
    let mut c: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    c["max_len"] = json!(200);
    std::fs::write(&config, c.to_string()).unwrap();
    let s = Server::start_with(
        dir.path(),
        &["--max-batch", "64", "--max-items", "50000"],
        None,
    );
    let long = vec!["good"; 100].join(" ");
    let (st, v) = s.json(json!(long));
    assert_eq!(st, 500, "{v}");

    // Merged in one batch with the chunks of a big request: only the
    // request with the long sentence fails.
    let big = post_async(&s.url, json!(vec!["nice"; 50000]));
    wait_for_metric(&s.url, "pipe_queued_requests 1");
    let bad = post_async(&s.url, json!(["nice", long]));
    let good = post_async(&s.url, json!(["the film was great"]));
    let (st, v) = bad.recv().unwrap();
    assert_eq!(st, 500, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("inference failed"),
        "{v}"
    );
    let (st, v) = good.recv().unwrap();
    assert_eq!(st, 200, "{v}");
    let (st, v) = big.recv().unwrap();
    assert_eq!(st, 200);
    assert_eq!(logits(&v).len(), 50000);
    let ping = reqwest::blocking::get(format!("{}/ping", s.url)).unwrap();
    assert_eq!(ping.status(), 200);
}

/// `--int8`: the linear layers dynamically quantized; the answers stay the
/// fp32 model's (the same class, logits close).
#[test]
fn int8_linear_layers_answer_like_fp32() {
    let sentences = sentences(60, 3);
    let answers = |args: &[&str]| {
        let s = Server::start(args);
        let (status, v) = s.json(json!(sentences));
        assert_eq!(status, 200, "{v}");
        logits(&v)
    };
    let fp32 = answers(&["--bf16", "false"]);
    let int8 = answers(&["--int8"]);
    let mut worst = 0.0f64;
    for (a, b) in fp32.iter().zip(&int8) {
        let class = |r: &[f64]| usize::from(r[1] > r[0]);
        if (a[1] - a[0]).abs() > 0.05 {
            assert_eq!(class(a), class(b), "fp32 {a:?} vs int8 {b:?}");
        }
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    // Quantized (not the fp32 module again), and near. The tiny model's
    // activations quantize coarsely (its hidden size is 32): how near
    // depends on the weights training gave it (under 0.05 with finetune
    // v6's, 0.63 with v7's, on logits up to 3.5), so the bound is a quarter
    // of the logits' scale. The real model's agreement is bench/serve.sh's to
    // measure (classes on CoLA's dev set).
    let scale = fp32.iter().flatten().fold(1.0f64, |m, x| m.max(x.abs()));
    assert!(
        worst > 0.0 && worst < 0.25 * scale,
        "int8 logits {worst} from fp32's (scale {scale})"
    );
}
