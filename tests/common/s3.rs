//! A real S3-compatible server (moto, installed by `scripts/setup-test-tools`)
//! on a free 127.0.0.1 port, stopped when dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct S3 {
    pub endpoint: String,
    child: Child,
}

impl S3 {
    pub fn start() -> S3 {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/moto/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/setup-test-tools (scripts/test does)",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        // Block until the server says it is listening.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "moto_server exited before listening"
            );
            if line.contains("Running on") {
                break;
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in err.lines() {});
        S3 {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        }
    }

    /// moto answers anonymous reads with 403; it does not check signatures, so
    /// any well-formed Authorization header makes a request the test account's.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        reqwest::blocking::Client::new().request(method, format!("{}/{path}", self.endpoint)).header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
        )
    }

    pub fn create_bucket(&self, bucket: &str) {
        let r = self.request(reqwest::Method::PUT, bucket).send().unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let r = self
            .request(reqwest::Method::GET, &format!("{bucket}/{key}"))
            .send()
            .unwrap();
        r.status().is_success().then(|| r.bytes().unwrap().to_vec())
    }

    /// The keys under `prefix` (the first 1000).
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let r = self
            .request(
                reqwest::Method::GET,
                &format!("{bucket}?list-type=2&prefix={prefix}"),
            )
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let text = r.text().unwrap();
        text.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        let r = self
            .request(reqwest::Method::DELETE, &format!("{bucket}/{key}"))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
