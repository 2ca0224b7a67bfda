//! A tiny real HTTP/1.1 server on 127.0.0.1 for download tests, with faults
//! chosen by the first path segment:
//!
//! - `/ok/PATH`: the file `../shared/mirror/PATH` (or an in-memory body), with
//!   `Accept-Ranges` and `Range` support
//! - `/flaky/PATH`: HTTP 500 on the first request for PATH, then as `/ok/`
//! - `/truncated/PATH`: promises the full length, sends half, closes
//! - `/cutonce/PATH`: like `/truncated/` on the first request, then as `/ok/`
//! - `/hang/PATH`: reads the request and never answers
//! - `/nolength/PATH`: as `/ok/`, without `Content-Length` (the body ends at close)
//! - `/busy/PATH`: HTTP 429 with `Retry-After: 1` on the first request, then as `/ok/`
//! - `/unavailable/PATH`: HTTP 503 with a `Retry-After` date (in the past) on
//!   the first request, then as `/ok/`
//!
//! Every request is counted by path so tests can assert retries.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub fn shared_mirror() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/mirror");
    assert!(
        dir.is_dir(),
        "the tests need ../shared/mirror beside the checkout ({})",
        dir.display()
    );
    dir
}

#[derive(Default)]
struct State {
    hits: HashMap<String, usize>,
    /// `Range` start of each request, by path.
    ranges: HashMap<String, Vec<usize>>,
    bodies: HashMap<String, Vec<u8>>,
}

pub struct Server {
    pub base: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || handle(conn, &s));
            }
        });
        Server { base, state }
    }

    /// Serve `body` at `/ok/PATH` (and the fault variants) instead of a mirror file.
    pub fn body(&self, path: &str, body: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .bodies
            .insert(path.to_string(), body);
    }

    pub fn ranges(&self, path: &str) -> Vec<usize> {
        self.state
            .lock()
            .unwrap()
            .ranges
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

fn handle(conn: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range_start = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    let mut conn = conn;
    let (mode, path) = target
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", ""));
    let hits = {
        let mut st = state.lock().unwrap();
        let n = st.hits.entry(path.to_string()).or_default();
        *n += 1;
        let n = *n;
        st.ranges
            .entry(path.to_string())
            .or_default()
            .push(range_start);
        n
    };
    if mode == "hang" {
        let _ = reader.read(&mut [0u8; 1]);
        return;
    }
    if mode == "busy" && hits == 1 {
        let _ = conn.write_all(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    if mode == "unavailable" && hits == 1 {
        let _ = conn.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    if mode == "flaky" && hits == 1 {
        let _ = conn.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    let body = state
        .lock()
        .unwrap()
        .bodies
        .get(path)
        .cloned()
        .or_else(|| std::fs::read(shared_mirror().join(path)).ok());
    let Some(body) = body else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = range_start.min(body.len());
    let status = if start > 0 {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let rest = &body[start..];
    let head = if mode == "nolength" {
        format!("HTTP/1.1 {status}\r\nConnection: close\r\n\r\n")
    } else {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            rest.len()
        )
    };
    let _ = conn.write_all(head.as_bytes());
    if mode == "truncated" || (mode == "cutonce" && hits == 1) {
        let _ = conn.write_all(&rest[..rest.len() / 2]);
    } else {
        let _ = conn.write_all(rest);
    }
}
