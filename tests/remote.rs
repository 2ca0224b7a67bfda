//! The shared remote cache through the real `pipe` binary, against a
//! directory (`file://`) and a real S3-compatible server on 127.0.0.1: push
//! from one workspace, fetch in a fresh one, pull then run offline, damaged
//! and forged remote entries, concurrent pushers, and no credentials anywhere.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::s3::S3;
use common::{files_under, stderr, TestWorkspace};
use serde_json::Value;

/// Small files (one pack), a 3 MB file (a blob of its own, streamed), an
/// executable, and a downstream stage.
const DEMO: &str = r#"version: 1
name: demo
stages:
  make:
    kind: shell
    with:
      cmd: >-
        mkdir -p $PIPE_OUT/d && echo hello > $PIPE_OUT/greeting.txt &&
        for i in $(seq 1 50); do echo "line $i" > $PIPE_OUT/d/$i.txt; done &&
        yes pipe | head -c 3000000 > $PIPE_OUT/big.bin &&
        printf '#!/bin/sh\necho hi\n' > $PIPE_OUT/run.sh && chmod +x $PIPE_OUT/run.sh
  upper:
    kind: shell
    inputs:
      src: make:greeting.txt
    with:
      cmd: tr a-z A-Z < $PIPE_IN_SRC > $PIPE_OUT/upper.txt
"#;

fn url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

fn workspace() -> TestWorkspace {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    ws
}

/// stage name → `"cache"` field of a `--json` document.
fn cache_of(doc: &Value) -> Vec<(String, String)> {
    doc["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                format!(
                    "{}:{}",
                    s["status"].as_str().unwrap_or_default(),
                    s["cache"].as_str().unwrap_or("-")
                ),
            )
        })
        .collect()
}

fn all(status: &str) -> Vec<(String, String)> {
    vec![
        ("make".to_string(), status.to_string()),
        ("upper".to_string(), status.to_string()),
    ]
}

fn key(doc: &Value, stage: &str) -> String {
    doc["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == stage)
        .and_then(|s| s["key"].as_str())
        .unwrap()
        .to_string()
}

/// Relative path → (content, executable) of every file of the outputs.
fn outputs(ws: &TestWorkspace) -> Vec<(PathBuf, Vec<u8>, bool)> {
    let root = ws.path(".pipe/out");
    let mut v: Vec<_> = files_under(&root)
        .into_iter()
        .map(|p| {
            let exec = std::fs::metadata(&p).unwrap().permissions().mode() & 0o111 != 0;
            (
                p.strip_prefix(&root).unwrap().to_path_buf(),
                std::fs::read(&p).unwrap(),
                exec,
            )
        })
        .collect();
    v.sort();
    v
}

/// The `cas/` blobs of stage `key`'s entry in a `file://` remote: (big file, first pack).
fn blobs(remote: &Path, key: &str) -> (PathBuf, PathBuf) {
    let entry: Value =
        serde_json::from_slice(&std::fs::read(remote.join("ac").join(key)).unwrap()).unwrap();
    let tree_digest = entry["tree"].as_str().unwrap();
    let tree: Value =
        serde_json::from_slice(&std::fs::read(remote.join("cas").join(tree_digest)).unwrap())
            .unwrap();
    let big = tree["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "big.bin")
        .and_then(|e| e["sha256"].as_str())
        .unwrap();
    let pack = entry["packs"][0]["sha256"].as_str().unwrap();
    (remote.join("cas").join(big), remote.join("cas").join(pack))
}

#[test]
fn push_from_one_workspace_and_a_fresh_one_fetches_every_stage() {
    let remote = tempfile::tempdir().unwrap();
    let url = url(remote.path());
    let a = workspace();
    let first = a.run_json(&["--remote", &url, "--push"]);
    assert_eq!(cache_of(&first), all("ran:-"));

    let b = workspace();
    let fetched = b.run_json(&["--remote", &url]);
    assert_eq!(cache_of(&fetched), all("cached:remote"));
    assert_eq!(
        outputs(&a),
        outputs(&b),
        "byte-identical outputs, modes kept"
    );
    assert_eq!(a.read("pipe.lock"), b.read("pipe.lock"));
    // Now local.
    assert_eq!(
        cache_of(&b.run_json(&["--remote", &url])),
        all("cached:local")
    );

    // Humans see `Fetched`.
    let c = workspace();
    let out = c.pipe(&["run", "pipe.yaml", "--remote", &url]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Fetched make ("), "{err}");
    assert!(err.contains("Fetched upper ("), "{err}");
    assert!(err.contains("2 stages: 2 cached"), "{err}");
}

#[test]
fn status_reports_results_the_remote_holds_without_downloading() {
    let remote = tempfile::tempdir().unwrap();
    let url = url(remote.path());
    workspace().run_json(&["--remote", &url, "--push"]);
    let b = workspace();
    let out = b.pipe(&["status", "pipe.yaml", "--remote", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("make   cached ("), "{text}");
    assert!(text.contains("in the remote cache"), "{text}");
    assert!(!b.path(".pipe").exists(), "status touched the workspace");
}

#[test]
fn reading_is_the_default_writing_needs_push() {
    let remote = tempfile::tempdir().unwrap();
    let url = url(remote.path());
    workspace().run_json(&["--remote", &url]);
    assert!(
        files_under(remote.path()).is_empty(),
        "a plain run wrote to the remote"
    );
    let a = workspace();
    let out = a
        .cmd(&["run", "pipe.yaml", "--json"])
        .env("PIPE_REMOTE", &url)
        .env("PIPE_REMOTE_WRITE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cache_of(&workspace().run_json(&["--remote", &url])),
        all("cached:remote")
    );
}

#[test]
fn pull_then_offline_run_reports_everything_cached() {
    let remote = tempfile::tempdir().unwrap();
    let url = url(remote.path());
    let a = workspace();
    a.run(&[]);
    let out = a.pipe(&["push", "pipe.yaml", "--remote", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Pushed make"), "{}", stderr(&out));
    // A no-op push sends nothing.
    let again = a.pipe(&["push", "pipe.yaml", "--remote", &url]);
    assert!(
        stderr(&again).contains("sent 0 blobs"),
        "{}",
        stderr(&again)
    );

    // A fresh clone: the manifest, its lock and the committed workspace setting.
    let b = workspace();
    b.file("pipe.lock", &a.read("pipe.lock"));
    b.file("pipe.config.yaml", &format!("remote: {url}\n"));
    let out = b.pipe(&["pull", "pipe.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Fetched upper"), "{}", stderr(&out));
    std::fs::remove_file(b.path("pipe.config.yaml")).unwrap();
    std::fs::remove_dir_all(remote.path()).unwrap();
    assert_eq!(cache_of(&b.run_json(&[])), all("cached:local"));
    assert_eq!(outputs(&a), outputs(&b));
}

#[test]
fn pull_names_results_the_remote_lacks() {
    let remote = tempfile::tempdir().unwrap();
    let a = workspace();
    a.run(&[]);
    let out = a.pipe(&["pull", "pipe.yaml", "--remote", &url(remote.path())]);
    // Everything is local already: nothing to fetch, nothing missing.
    assert!(out.status.success(), "{}", stderr(&out));
    let b = workspace();
    b.file("pipe.lock", &a.read("pipe.lock"));
    let out = b.pipe(&["pull", "pipe.yaml", "--remote", &url(remote.path())]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not in the remote cache: make, upper"),
        "{}",
        stderr(&out)
    );
}

/// Run in a fresh workspace with `--push`: `make` must rerun (its entry names
/// a damaged blob) and the push repairs the remote for the next workspace.
fn rerun_repairs(url: &str, warning: &str) {
    let b = workspace();
    let out = b
        .cmd(&["run", "pipe.yaml", "--json", "--remote", url, "--push"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        cache_of(&doc),
        [
            ("make".to_string(), "ran:-".to_string()),
            ("upper".to_string(), "cached:remote".to_string())
        ]
    );
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));
    let c = workspace();
    assert_eq!(
        cache_of(&c.run_json(&["--remote", url])),
        all("cached:remote")
    );
    assert_eq!(outputs(&b), outputs(&c));
}

#[test]
fn a_deleted_blob_makes_a_miss_and_a_writer_repairs_it() {
    let remote = tempfile::tempdir().unwrap();
    let url = url(remote.path());
    let doc = workspace().run_json(&["--remote", &url, "--push"]);
    let (big, _) = blobs(remote.path(), &key(&doc, "make"));
    std::fs::remove_file(&big).unwrap();
    rerun_repairs(&url, "is missing");
    assert!(big.is_file());
}

#[test]
fn a_corrupt_blob_makes_a_miss_and_a_writer_repairs_it() {
    let remote = tempfile::tempdir().unwrap();
    let url = url(remote.path());
    let doc = workspace().run_json(&["--remote", &url, "--push"]);
    let (_, pack) = blobs(remote.path(), &key(&doc, "make"));
    let good = std::fs::read(&pack).unwrap();
    let mut bad = good.clone();
    bad[0] ^= 1;
    std::fs::write(&pack, &bad).unwrap();
    rerun_repairs(&url, "is corrupt");
    assert_eq!(std::fs::read(&pack).unwrap(), good);
}

#[test]
fn a_forged_entry_is_ignored_with_a_signing_key() {
    let remote = tempfile::tempdir().unwrap();
    let url = url(remote.path());
    let a = workspace();
    let out = a
        .cmd(&["run", "pipe.yaml", "--json", "--remote", &url, "--push"])
        .env("PIPE_REMOTE_SIGNING_KEY", "team-secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Someone without the key rewrites `upper`'s entry.
    let path = remote.path().join("ac").join(key(&doc, "upper"));
    let mut entry: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    entry["pins"] = serde_json::json!({"forged": "yes"});
    std::fs::write(&path, serde_json::to_vec(&entry).unwrap()).unwrap();

    let b = workspace();
    let out = b
        .cmd(&["run", "pipe.yaml", "--json", "--remote", &url])
        .env("PIPE_REMOTE_SIGNING_KEY", "team-secret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        cache_of(&doc),
        [
            ("make".to_string(), "cached:remote".to_string()),
            ("upper".to_string(), "ran:-".to_string())
        ]
    );
    let err = stderr(&out);
    assert_eq!(
        err.matches("ignored 1 remote result entry without a valid signature")
            .count(),
        1,
        "{err}"
    );
    assert!(!b.read("pipe.lock").contains("forged"));
}

#[test]
fn two_concurrent_pushers_both_succeed_and_leave_one_consistent_entry() {
    let remote = tempfile::tempdir().unwrap();
    let url = url(remote.path());
    let (a, b) = (workspace(), workspace());
    a.run(&[]);
    b.run(&[]);
    let mut pushers: Vec<_> = [&a, &b]
        .iter()
        .map(|ws| {
            ws.cmd(&["push", "pipe.yaml", "--remote", &url])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in pushers.iter_mut() {
        let status = p.wait().unwrap();
        assert!(status.success());
    }
    let c = workspace();
    assert_eq!(
        cache_of(&c.run_json(&["--remote", &url])),
        all("cached:remote")
    );
    assert_eq!(outputs(&a), outputs(&c));
}

#[test]
fn s3_remote_round_trip_keeps_credentials_out_of_every_file_and_message() {
    let s3 = S3::start();
    s3.create_bucket("cache");
    let key_id = "AKIAPIPEREMOTE0001";
    let secret = "remote-secret-7f3a9c";
    let run = |ws: &TestWorkspace, args: &[&str]| {
        let out = ws
            .cmd(args)
            .env("PIPE_REMOTE", "s3://cache/team/pipe")
            .env("AWS_ACCESS_KEY_ID", key_id)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &s3.endpoint)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        for text in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(text);
            assert!(!text.contains(secret) && !text.contains(key_id), "{text}");
        }
        out
    };
    let a = workspace();
    run(&a, &["run", "pipe.yaml", "--json", "--push"]);
    assert!(s3.get("cache", "team/pipe/ac").is_none());
    let b = workspace();
    let out = run(&b, &["run", "pipe.yaml", "--json", "-v"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cache_of(&doc), all("cached:remote"));
    assert_eq!(outputs(&a), outputs(&b));
    let c = workspace();
    c.file("pipe.lock", &a.read("pipe.lock"));
    run(&c, &["pull", "pipe.yaml"]);
    run(&a, &["push", "pipe.yaml"]);
    for ws in [&a, &b, &c] {
        let mut files = files_under(&ws.path(".pipe"));
        files.push(ws.path("pipe.lock"));
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(secret) && !text.contains(key_id),
                "{} holds a credential",
                f.display()
            );
        }
    }
}

#[test]
fn plain_http_remote_endpoints_must_be_loopback() {
    let ws = workspace();
    let out = ws
        .cmd(&["run", "pipe.yaml", "--remote", "s3://cache/p"])
        .env("AWS_ENDPOINT_URL", "http://10.1.2.3:9000")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("only allowed to a loopback endpoint"),
        "{}",
        stderr(&out)
    );
    let out = ws.pipe(&["run", "pipe.yaml", "--remote", "ftp://x/y"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("use s3://BUCKET/PREFIX or file:///ABS/DIR"));
}

#[test]
fn a_fetched_effect_is_still_verified_on_this_machine() {
    let remote = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let to = url(shared.path());
    let url = url(remote.path());
    let manifest = format!(
        "version: 1\nname: eff\nstages:\n  make:\n    kind: shell\n    with: {{cmd: 'echo hello > $PIPE_OUT/a.txt'}}\n  up:\n    kind: upload\n    inputs: {{data: 'make:'}}\n    with: {{to: '{}'}}\n",
        to
    );
    let a = TestWorkspace::new();
    a.manifest(&manifest);
    a.run_json(&["--remote", &url, "--push"]);

    // The upload's receipt checks out against its store: served from the remote.
    let b = TestWorkspace::new();
    b.manifest(&manifest);
    let doc = b.run_json(&["--remote", &url]);
    assert_eq!(
        cache_of(&doc),
        [
            ("make".to_string(), "cached:remote".to_string()),
            ("up".to_string(), "cached:remote".to_string())
        ]
    );
    // The uploaded object is gone: the fetched receipt is not trusted, it uploads again.
    std::fs::remove_file(shared.path().join("a.txt")).unwrap();
    let c = TestWorkspace::new();
    c.manifest(&manifest);
    let doc = c.run_json(&["--remote", &url]);
    assert_eq!(
        cache_of(&doc),
        [
            ("make".to_string(), "cached:remote".to_string()),
            ("up".to_string(), "ran:-".to_string())
        ]
    );
    assert!(shared.path().join("a.txt").is_file());
}

#[test]
fn an_unreachable_remote_is_a_miss_reported_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ws = workspace();
    let out = ws
        .cmd(&[
            "run",
            "pipe.yaml",
            "--json",
            "--remote",
            "s3://cache/p",
            "--push",
        ])
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cache_of(&doc), all("ran:-"));
    let err = stderr(&out);
    assert_eq!(err.matches("cannot reach").count(), 1, "{err}");
}

/// `--cluster-io remote` carries cluster jobs' data through the remote
/// cache: without one it is a usage error before anything runs.
#[test]
fn cluster_io_remote_needs_a_remote() {
    let ws = workspace();
    let out = ws.pipe(&[
        "run",
        "pipe.yaml",
        "--executor",
        "slurm",
        "--cluster-io",
        "remote",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--cluster-io remote") && err.contains("--remote URL"),
        "{err}"
    );
    assert!(!ws.path(".pipe/out").exists(), "{err}");
}
