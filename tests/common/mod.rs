//! `TestWorkspace`: a temp dir with a manifest, driven through the real `pipe` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub struct TestWorkspace {
    dir: tempfile::TempDir,
}

impl TestWorkspace {
    pub fn new() -> TestWorkspace {
        TestWorkspace {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn file(&self, rel: &str, content: &str) -> &Self {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
        self
    }

    pub fn manifest(&self, yaml: &str) -> &Self {
        self.file("pipe.yaml", yaml)
    }

    /// A JSON file of the workspace.
    pub fn json(&self, rel: &str) -> Value {
        serde_json::from_str(&self.read(rel)).expect("a JSON file")
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pipe"));
        c.args(args)
            .current_dir(self.root())
            .env("XDG_CACHE_HOME", self.path(".cache"));
        for var in [
            "RUST_LOG",
            "PIPE_MIRROR",
            "HF_ENDPOINT",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_ENDPOINT",
            "AWS_ENDPOINT_URL",
            "AWS_REGION",
            "PIPE_WORKER",
            "PIPE_REMOTE",
            "PIPE_REMOTE_WRITE",
            "PIPE_REMOTE_SIGNING_KEY",
            "PIPE_EXECUTOR",
            "PIPE_ORPHAN_TIMEOUT",
            // A launcher's group (pipe-worker would join it).
            "RANK",
            "WORLD_SIZE",
            "MASTER_ADDR",
            "MASTER_PORT",
            "SLURM_PROCID",
            "JOB_COMPLETION_INDEX",
            "PIPE_DIST_TIMEOUT",
        ] {
            c.env_remove(var);
        }
        c
    }

    pub fn pipe(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run pipe")
    }

    /// `pipe run pipe.yaml --json ARGS`, asserting success; stage name → status.
    pub fn run(&self, args: &[&str]) -> Vec<(String, String)> {
        let out = self.run_json(args);
        stages(&out)
    }

    pub fn run_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["run", "pipe.yaml", "--json"];
        all.extend_from_slice(args);
        let out = self.pipe(&all);
        assert!(
            out.status.success(),
            "pipe {all:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).expect("JSON on stdout")
    }

    /// `pipe ARGS`, asserting that a stage failed (exit code 1); its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.pipe(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "pipe {args:?}: {err}");
        err
    }

    /// Names of the stages that ran.
    pub fn ran(&self, args: &[&str]) -> Vec<String> {
        with_status(&self.run_json(args), "ran")
    }
}

/// Endpoints a test deployed do not outlive it, even when it fails.
impl Drop for TestWorkspace {
    fn drop(&mut self) {
        if self.path(".pipe/endpoints").is_dir() {
            let _ = self.pipe(&["down", "--all"]);
        }
    }
}

/// Names of the stages of a `--json` document with this status.
pub fn with_status(doc: &Value, status: &str) -> Vec<String> {
    stages(doc)
        .into_iter()
        .filter(|(_, s)| s == status)
        .map(|(n, _)| n)
        .collect()
}

/// A stage's output hash in a `--json` document.
pub fn output_hash(doc: &Value, stage: &str) -> String {
    doc["stages"]
        .as_array()
        .expect("stages array")
        .iter()
        .find(|s| s["name"] == stage)
        .and_then(|s| s["output_hash"].as_str())
        .unwrap_or_else(|| panic!("no output hash for {stage}"))
        .to_string()
}

pub fn stages(doc: &Value) -> Vec<(String, String)> {
    doc["stages"]
        .as_array()
        .expect("stages array")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `pipe-worker`, which `cargo test --workspace` builds beside `pipe`.
pub fn worker() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_pipe")).with_file_name("pipe-worker");
    assert!(
        p.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p pipe-worker` first)",
        p.display()
    );
    p
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Files under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
pub mod http;
pub mod s3;
pub mod slurm;
pub mod tiny_bert;
