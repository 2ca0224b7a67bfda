//! `download`, `split` and `upload` end to end through the `pipe` binary, over
//! real HTTP on 127.0.0.1 (with injected faults), against a real S3-compatible
//! server, on the real CoLA corpus from `../shared/mirror`.

mod common;

use std::io::Write;

use common::http::{shared_mirror, Server};
use common::s3::S3;
use common::{files_under, stderr, TestWorkspace};

const COLA: &str = "nyu-mll.github.io/CoLA/cola_public_1.1.zip";
const COLA_SHA256: &str = "1c3f62f7e53049cd460edf0a1195b5c85ef7cc55fb3a150c8a670e24f587c4c5";
const TRAIN_TSV: &str = "cola_public/raw/in_domain_train.tsv";

fn download_manifest(url: &str, extra: &str) -> String {
    format!("version: 1\nname: d\nstages:\n  get:\n    kind: download\n    with: {{url: '{url}', retries: 2, timeout: 5{extra}}}\n")
}

#[test]
fn download_retries_after_a_server_error() {
    let server = Server::start();
    let ws = TestWorkspace::new();
    ws.manifest(&download_manifest(
        &format!("{}/flaky/{COLA}", server.base),
        ", extract: none",
    ));
    assert_eq!(ws.ran(&[]), ["get"]);
    assert_eq!(server.hits(COLA), 2);
    let got = std::fs::read(ws.path(".pipe/out/d/get/cola_public_1.1.zip")).unwrap();
    assert_eq!(got, std::fs::read(shared_mirror().join(COLA)).unwrap());
}

#[test]
fn too_many_requests_waits_as_retry_after_says() {
    let server = Server::start();
    server.body("data.txt", b"rows\n".to_vec());
    let ws = TestWorkspace::new();
    ws.manifest(&download_manifest(
        &format!("{}/busy/data.txt", server.base),
        "",
    ));
    let out = ws.pipe(&["run", "pipe.yaml"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("retrying in 1s (Retry-After)"), "{err}");
    assert_eq!(server.hits("data.txt"), 2);
    assert_eq!(ws.read(".pipe/out/d/get/data.txt"), "rows\n");
}

#[test]
fn service_unavailable_honours_a_retry_after_date() {
    let server = Server::start();
    server.body("data.txt", b"rows\n".to_vec());
    let ws = TestWorkspace::new();
    ws.manifest(&download_manifest(
        &format!("{}/unavailable/data.txt", server.base),
        "",
    ));
    let out = ws.pipe(&["run", "pipe.yaml"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // The date is past: retry at once.
    assert!(err.contains("retrying in 0ns (Retry-After)"), "{err}");
    assert_eq!(server.hits("data.txt"), 2);
}

#[test]
fn max_bytes_caps_a_plain_download() {
    let server = Server::start();
    server.body("big.bin", vec![0u8; 2_000_000]);
    let ws = TestWorkspace::new();
    ws.manifest(&download_manifest(
        &format!("{}/ok/big.bin", server.base),
        ", max_bytes: 1000000",
    ));
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("/ok/big.bin: larger than `max_bytes` (1000000 bytes"),
        "{err}"
    );
    assert_eq!(server.hits("big.bin"), 1, "no retries");
    assert!(files_under(&ws.path(".pipe/cas-v1/runs")).is_empty());
    // Without a Content-Length, the stream is cut at the limit.
    ws.manifest(&download_manifest(
        &format!("{}/nolength/big.bin", server.base),
        ", max_bytes: 1000000",
    ));
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("/nolength/big.bin: larger than `max_bytes` (1000000 bytes"),
        "{err}"
    );
    assert_eq!(server.hits("big.bin"), 2, "no retries");
}

#[test]
fn truncated_body_fails_and_caches_nothing() {
    let server = Server::start();
    let ws = TestWorkspace::new();
    ws.manifest(&download_manifest(
        &format!("{}/truncated/{COLA}", server.base),
        "",
    ));
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("gave up after 3 attempts") && err.contains("truncated"),
        "{err}"
    );
    assert!(files_under(&ws.path(".pipe/cas-v1/runs")).is_empty());
    assert!(!ws.path(".pipe/out/d/get").exists());
}

#[test]
fn a_cut_download_resumes_with_range() {
    let server = Server::start();
    let ws = TestWorkspace::new();
    ws.manifest(&download_manifest(
        &format!("{}/cutonce/{COLA}", server.base),
        &format!(", sha256: {COLA_SHA256}"),
    ));
    assert_eq!(ws.ran(&[]), ["get"]);
    let ranges = server.ranges(COLA);
    let size = std::fs::metadata(shared_mirror().join(COLA)).unwrap().len() as usize;
    assert_eq!(
        ranges,
        [0, size / 2],
        "the second request asks only for the rest"
    );
}

#[test]
fn sha256_mismatch_is_an_error() {
    let server = Server::start();
    let ws = TestWorkspace::new();
    let wrong = "0".repeat(64);
    ws.manifest(&download_manifest(
        &format!("{}/ok/{COLA}", server.base),
        &format!(", sha256: {wrong}"),
    ));
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains(&format!(
            "sha256 mismatch for {}/ok/{COLA}: expected {wrong}, got {COLA_SHA256}",
            server.base
        )),
        "{err}"
    );
    assert!(files_under(&ws.path(".pipe/cas-v1/runs")).is_empty());
}

#[test]
fn a_hanging_server_hits_the_timeout() {
    let server = Server::start();
    let ws = TestWorkspace::new();
    ws.manifest(&format!("version: 1\nname: d\nstages:\n  get:\n    kind: download\n    with: {{url: '{}/hang/x.bin', retries: 0, timeout: 0.5}}\n", server.base));
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(err.contains("timed out"), "{err}");
}

#[test]
fn zip_entries_escaping_the_output_are_rejected() {
    let server = Server::start();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("../evil.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    zip.write_all(b"evil").unwrap();
    server.body("evil.zip", zip.finish().unwrap().into_inner());
    let ws = TestWorkspace::new();
    ws.manifest(&download_manifest(
        &format!("{}/ok/evil.zip", server.base),
        "",
    ));
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("archive entry `../evil.txt` would escape the output directory"),
        "{err}"
    );
    assert!(!ws.path(".pipe/out/evil.txt").exists());
}

#[test]
fn unpinned_download_is_held_to_the_lock_until_forced() {
    let server = Server::start();
    server.body("data.txt", b"version 1\n".to_vec());
    let ws = TestWorkspace::new();
    ws.manifest(&download_manifest(
        &format!("{}/ok/data.txt", server.base),
        "",
    ));
    assert_eq!(ws.ran(&[]), ["get"]);
    let v1 = pipe_sha256(b"version 1\n");
    assert!(
        ws.read("pipe.lock").contains(&format!(": {v1}")),
        "{}",
        ws.read("pipe.lock")
    );
    // The same URL on a machine without the cache, after upstream changed.
    server.body("data.txt", b"version 2\n".to_vec());
    std::fs::remove_dir_all(ws.path(".pipe")).unwrap();
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("changed since pipe.lock recorded it") && err.contains("--force get"),
        "{err}"
    );
    assert_eq!(ws.ran(&["--force", "get"]), ["get"]);
    assert_eq!(ws.read(".pipe/out/d/get/data.txt"), "version 2\n");
    assert!(ws.read("pipe.lock").contains(&pipe_sha256(b"version 2\n")));
}

fn pipe_sha256(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    out.stdin.as_ref().unwrap().write_all(bytes).unwrap();
    String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()[..64].to_string()
}

#[test]
fn hub_files_come_from_hf_endpoint() {
    let server = Server::start();
    let ws = TestWorkspace::new();
    ws.manifest("version: 1\nname: h\nstages:\n  model:\n    kind: download\n    with: {hf: sentence-transformers/all-MiniLM-L6-v2, files: [config.json, vocab.txt]}\n");
    let out = ws
        .cmd(&["run", "pipe.yaml"])
        .env("HF_ENDPOINT", format!("{}/ok/huggingface.co", server.base))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ws
        .read(".pipe/out/h/model/config.json")
        .contains("\"hidden_size\": 384"));
    assert_eq!(
        server.hits("huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main/vocab.txt"),
        1
    );
}

/// download → split → upload on the real CoLA zip, offline through `--mirror`.
fn cola_manifest(to: &str, upload_extra: &str) -> String {
    format!(
        r#"version: 1
name: cola
params:
  seed: 42
stages:
  download:
    kind: download
    with:
      url: https://{COLA}
      sha256: {COLA_SHA256}
      files: [{TRAIN_TSV}]
  split:
    kind: split
    inputs:
      data: download:{TRAIN_TSV}
    with: {{format: tsv, header: false, text_column: 3, label_column: 1, test_fraction: 0.25, seed: "${{params.seed}}"}}
  upload:
    kind: upload
    inputs:
      data: "split:"
    with: {{to: '{to}'{upload_extra}}}
"#
    )
}

#[test]
fn cola_download_split_upload_offline_then_fully_cached() {
    let ws = TestWorkspace::new();
    ws.manifest(&cola_manifest("uploads/cola", ""));
    let mirror = shared_mirror();
    let mirror = mirror.to_str().unwrap();
    assert_eq!(
        ws.ran(&["--mirror", mirror]),
        ["download", "split", "upload"]
    );
    let stats: serde_json::Value = ws.json(".pipe/out/cola/split/stats.json");
    assert_eq!(stats["train"]["rows"], 6413);
    assert_eq!(stats["test"]["rows"], 2138);
    // The same rows as scikit-learn's train_test_split(random_state=42): its
    // train set starts with TSV rows 438, 5261, … (tests/fixtures/numpy_permutation.py).
    let tsv =
        std::fs::read_to_string(ws.path(&format!(".pipe/out/cola/download/{TRAIN_TSV}"))).unwrap();
    let row438: Vec<&str> = tsv.lines().nth(438).unwrap().split('\t').collect();
    let train = ws.read(".pipe/out/cola/split/train.csv");
    let mut lines = train.lines();
    assert_eq!(lines.next(), Some("sentence,label"));
    let first = lines.next().unwrap();
    assert!(
        first.ends_with(&format!(",{}", row438[1])) && first.contains(row438[3].trim_matches('"')),
        "{first} vs {row438:?}"
    );
    assert_eq!(ws.read("uploads/cola/train.csv"), train);
    let receipt = ws.read(".pipe/out/cola/upload/uploaded.json");
    assert!(
        receipt.contains("\"uri\": \"uploads/cola/test.csv\""),
        "{receipt}"
    );
    // Second run: nothing runs, the upload's receipt is verified.
    assert_eq!(
        ws.run(&["--mirror", mirror])
            .iter()
            .filter(|(_, s)| s == "cached")
            .count(),
        3
    );
    // A deleted object is put back.
    std::fs::remove_file(ws.path("uploads/cola/test.csv")).unwrap();
    assert_eq!(ws.ran(&["--mirror", mirror]), ["upload"]);
    assert!(ws.path("uploads/cola/test.csv").exists());
}

#[test]
fn split_is_byte_identical_across_workspaces() {
    let outputs: Vec<String> = (0..2)
        .map(|_| {
            let ws = TestWorkspace::new();
            ws.manifest(&cola_manifest("up", ""));
            let doc = ws.run_json(&[
                "--mirror",
                shared_mirror().to_str().unwrap(),
                "--until",
                "split",
            ]);
            doc["stages"][1]["output_hash"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn split_bad_rows_name_the_file_and_line() {
    let ws = TestWorkspace::new();
    ws.file("data/sms.tsv", "label\ttext\nham\thello there\nspam\tWIN \"money\" now\nham\n").manifest(
        "version: 1\nname: s\nstages:\n  split:\n    kind: split\n    inputs: {data: data/sms.tsv}\n    with: {text_column: text, label_column: label, labels: {ham: 0, spam: 1}}\n",
    );
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("data/sms.tsv:4: expected 2 columns, found 1"),
        "{err}"
    );
    // Skipping bad rows instead; quotes in TSV are plain characters.
    ws.file(
        "pipe.yaml",
        &ws.read("pipe.yaml").replace(
            "labels: {ham: 0, spam: 1}",
            "labels: {ham: 0, spam: 1}, on_bad_row: skip, test_fraction: 0.5",
        ),
    );
    assert_eq!(ws.ran(&[]), ["split"]);
    let stats: serde_json::Value = ws.json(".pipe/out/s/split/stats.json");
    assert_eq!(stats["skipped_rows"], 1);
    let all = ws.read(".pipe/out/s/split/train.csv") + &ws.read(".pipe/out/s/split/test.csv");
    assert!(all.contains("\"WIN \"\"money\"\" now\",1"), "{all}");
}

#[test]
fn upload_to_s3_reads_back_and_keeps_credentials_out() {
    let s3 = S3::start();
    s3.create_bucket("pipe-test");
    let ws = TestWorkspace::new();
    ws.manifest(&cola_manifest(
        "s3://pipe-test/cola/data",
        &format!(
            ", endpoint: '{}', region: us-east-1, allow_http: true",
            s3.endpoint
        ),
    ));
    let secret = "sEcReT-do-not-leak-42";
    let run = |args: &[&str]| {
        let mut all = vec![
            "run",
            "pipe.yaml",
            "--json",
            "--mirror",
            shared_mirror().to_str().unwrap().to_string().leak(),
        ];
        all.extend_from_slice(args);
        let out = ws
            .cmd(&all)
            .env("AWS_ACCESS_KEY_ID", "AKIAPIPETEST0001")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
        common::stages(&serde_json::from_slice(&out.stdout).unwrap())
    };
    assert!(run(&[]).iter().all(|(_, s)| s == "ran"));
    let train = ws.read(".pipe/out/cola/split/train.csv");
    let remote = s3
        .get("pipe-test", "cola/data/train.csv")
        .expect("object uploaded");
    assert!(
        remote == train.as_bytes(),
        "remote object differs: {} vs {} bytes",
        remote.len(),
        train.len()
    );
    let receipt = ws.read(".pipe/out/cola/upload/uploaded.json");
    assert!(
        receipt.contains("\"uri\": \"s3://pipe-test/cola/data/train.csv\""),
        "{receipt}"
    );
    assert!(run(&[]).iter().all(|(_, s)| s == "cached"));
    s3.delete("pipe-test", "cola/data/test.csv");
    assert_eq!(
        run(&[]).last().unwrap(),
        &("upload".to_string(), "ran".to_string())
    );
    assert!(s3.get("pipe-test", "cola/data/test.csv").is_some());
    for f in files_under(&ws.path(".pipe"))
        .into_iter()
        .chain([ws.path("pipe.lock")])
    {
        if let Ok(text) = std::fs::read_to_string(&f) {
            assert!(
                !text.contains(secret) && !text.contains("AKIAPIPETEST0001"),
                "{} holds a credential",
                f.display()
            );
        }
    }
}

#[test]
fn endpoint_user_info_is_masked_in_messages() {
    // A loopback port nothing listens on: the upload fails, and the client's
    // error names the URL it was given.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = "sEcReT-in-the-url-42";
    let ws = TestWorkspace::new();
    ws.file("data.txt", "rows\n").manifest(&format!(
        "version: 1\nname: u\nstages:\n  up:\n    kind: upload\n    inputs: {{data: data.txt}}\n    with: {{to: 's3://b/p', endpoint: 'http://user:{secret}@127.0.0.1:{port}', region: us-east-1, allow_http: true}}\n"
    ));
    for args in [&["run", "pipe.yaml"][..], &["run", "pipe.yaml", "--json"]] {
        let out = ws
            .cmd(args)
            .env("AWS_ACCESS_KEY_ID", "AKIAPIPETEST0001")
            .env("AWS_SECRET_ACCESS_KEY", "not-this-one")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let all = stderr(&out) + &String::from_utf8_lossy(&out.stdout);
        assert!(
            all.contains(&format!("http://***@127.0.0.1:{port}")),
            "{all}"
        );
        assert!(!all.contains(secret), "{all}");
    }
}

#[test]
fn allow_http_is_refused_for_non_loopback_endpoints() {
    let ws = TestWorkspace::new();
    ws.manifest("version: 1\nname: u\nstages:\n  up:\n    kind: upload\n    inputs: {data: pipe.yaml}\n    with: {to: 's3://b/p', endpoint: 'http://10.1.2.3:9000', allow_http: true}\n");
    let out = ws.pipe(&["validate", "pipe.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("only allowed for a loopback `endpoint`"),
        "{}",
        stderr(&out)
    );
}

/// `stratify: true` is scikit-learn's `train_test_split(..., stratify=labels)`
/// row for row: the sizes (test = ceil(n × fraction): 1115 of SMS spam's 5574
/// rows at 0.2) and the rows, in order (tests/fixtures/stratified_split.py).
#[test]
fn split_stratified_matches_scikit_learn() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/stratified_split.json")).unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut csv = String::from("sentence,label\n");
        for (i, label) in case["labels"].as_str().unwrap().chars().enumerate() {
            csv += &format!("s{i},{label}\n");
        }
        let ws = TestWorkspace::new();
        ws.file("data.csv", &csv);
        ws.manifest(&format!(
            "version: 1\nname: s\nstages:\n  split:\n    kind: split\n    inputs: {{data: data.csv}}\n    with: {{text_column: sentence, label_column: label, test_fraction: {}, seed: {}, stratify: true}}\n",
            case["test_fraction"], case["seed"]
        ));
        ws.run(&[]);
        for set in ["train", "test"] {
            let got: Vec<u64> = ws
                .read(&format!(".pipe/out/s/split/{set}.csv"))
                .lines()
                .skip(1)
                .map(|l| l.split(',').next().unwrap()[1..].parse().unwrap())
                .collect();
            let want: Vec<u64> = case[set]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(got.len(), want.len(), "{name}: {set} size");
            assert!(got == want, "{name}: {set} rows differ from scikit-learn's");
        }
    }
}

/// Like scikit-learn, a label with a single row cannot be stratified.
#[test]
fn split_stratified_refuses_a_label_with_one_row() {
    let ws = TestWorkspace::new();
    ws.file("data.csv", "sentence,label\na,0\nb,0\nc,1\nd,0\n");
    ws.manifest("version: 1\nname: s\nstages:\n  split:\n    kind: split\n    inputs: {data: data.csv}\n    with: {text_column: sentence, label_column: label, stratify: true}\n");
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("data.csv: label 1 has 1 row; `stratify` needs at least 2 rows of each label"),
        "{err}"
    );
}
