//! The shipped manifests end to end, offline through `--mirror ../shared/mirror`:
//! pipelines/cola.yaml (the all-MiniLM-L6-v2 CPU variant, full CoLA data, every
//! stage for real), its caching and reproducibility, and pipelines/sst2.yaml on
//! a subset.

#![allow(
    clippy::print_stderr,
    reason = "reports the metrics a full fine-tuning reached"
)]

mod common;

use std::path::Path;

use common::{http::shared_mirror, output_hash, with_status, worker, TestWorkspace};
use serde_json::Value;

/// The CPU variant of cola.yaml from the README.
const CPU: [&str; 10] = [
    "--set",
    "model=sentence-transformers/all-MiniLM-L6-v2",
    "--set",
    "lr=1e-4",
    "--set",
    "epochs=3",
    "--set",
    "batch_size=32",
    "--set",
    "warmup_ratio=0.1",
];

/// The two tests each hold both cores for minutes: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn workspace(manifest: &str) -> TestWorkspace {
    worker();
    let ws = TestWorkspace::new();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("pipelines")
            .join(manifest),
    )
    .unwrap();
    ws.manifest(&text);
    ws
}

fn run(ws: &TestWorkspace, extra: &[&str]) -> Value {
    let mirror = shared_mirror();
    let mut args = vec!["--mirror", mirror.to_str().unwrap()];
    args.extend_from_slice(&CPU);
    args.extend_from_slice(extra);
    ws.run_json(&args)
}

/// `pipe status pipe.yaml --json` with the CPU variant's params.
fn status(ws: &TestWorkspace, extra: &[&str]) -> Value {
    let mut args = vec!["status", "pipe.yaml", "--json"];
    args.extend_from_slice(&CPU);
    args.extend_from_slice(extra);
    let out = ws.pipe(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn cola_end_to_end_cached_reproducible_and_selective() {
    let _serial = serial();
    let ws = workspace("cola.yaml");
    let first = run(&ws, &[]);
    let all = [
        "data",
        "split",
        "upload",
        "pretrained",
        "finetune",
        "trace",
        "package",
        "deploy",
        "smoke",
    ];
    assert_eq!(with_status(&first, "ran"), all);
    let report = ws.json(".pipe/out/cola/smoke/report.json");
    assert_eq!(
        report["cases"][0]["text"],
        "Somebody just left - guess who."
    );
    assert_eq!(report["cases"][0]["predicted"], 1);
    let m = ws.json(".pipe/out/cola/finetune/metrics.json");
    eprintln!(
        "cola metrics: accuracy {} mcc {} samples/s {}",
        m["accuracy"], m["mcc"], m["samples_per_second"]
    );
    assert_eq!(m["train_rows"], 6413);
    assert!(
        m["mcc"].as_f64().unwrap() > 0.15,
        "the CPU variant learns: {m}"
    );

    // Nothing to do; the live endpoint is reused and the smoke test re-checked it.
    let second = run(&ws, &[]);
    assert_eq!(with_status(&second, "cached"), all, "{second}");

    // A second workspace from scratch: byte-identical artifacts.
    let other = workspace("cola.yaml");
    let again = run(&other, &["--set", "port=0"]);
    for stage in ["data", "split", "pretrained", "trace", "package"] {
        assert_eq!(
            output_hash(&first, stage),
            output_hash(&again, stage),
            "{stage} differs between two workspaces"
        );
    }
    for f in [
        "split/train.csv",
        "split/test.csv",
        "finetune/model.safetensors",
        "trace/model.pt",
        "package/model.tar.gz",
    ] {
        let rel = format!(".pipe/out/cola/{f}");
        assert!(
            std::fs::read(ws.path(&rel)).unwrap() == std::fs::read(other.path(&rel)).unwrap(),
            "{f} differs"
        );
    }
    drop(other); // and its endpoint

    // Selective reruns, decided without running them (each would be one more
    // full fine-tuning; `status` is the same plan `run` executes).
    // A new split seed: split and everything after it.
    let reseeded = status(&ws, &["--set", "split_seed=7"]);
    assert_eq!(
        with_status(&reseeded, "cached"),
        ["data", "pretrained"],
        "{reseeded}"
    );
    // A fine-tune parameter: fine-tune and what follows.
    let retuned = status(&ws, &["--set", "seed=2"]);
    assert_eq!(
        with_status(&retuned, "cached"),
        ["data", "split", "upload", "pretrained"],
        "{retuned}"
    );
    assert_eq!(
        with_status(&retuned, "pending"),
        ["finetune", "trace", "package", "deploy", "smoke"]
    );
    assert!(retuned.to_string().contains("seed changed"), "{retuned}");

    let down = ws.pipe(&["down", "--all"]);
    assert!(down.status.success());
    assert!(String::from_utf8_lossy(&ws.pipe(&["endpoints", "--json"]).stdout).trim() == "[]");
}

#[test]
fn sst2_end_to_end_on_a_subset() {
    let _serial = serial();
    let ws = workspace("sst2.yaml");
    let mirror = shared_mirror();
    let doc = ws.run_json(&[
        "--mirror",
        mirror.to_str().unwrap(),
        "--set",
        "max_rows=4000",
    ]);
    assert!(with_status(&doc, "ran").len() == 9, "{doc}");
    let m = ws.json(".pipe/out/sst2/finetune/metrics.json");
    eprintln!("sst2 metrics: {m}");
    assert_eq!(m["train_rows"], 3600);
    assert!(m["accuracy"].as_f64().unwrap() > 0.7, "{m}");
    let config = ws.json(".pipe/out/sst2/finetune/config.json");
    assert_eq!(config["id2label"]["1"], "positive");
}
