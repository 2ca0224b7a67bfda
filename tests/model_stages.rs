//! finetune → trace → package through the real `pipe` binary and its
//! `pipe-worker`, on a tiny BERT the tests write themselves.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{output_hash, stages, tiny_bert, worker, TestWorkspace};
use serde_json::Value;

const MANIFEST: &str = r#"version: 1
name: m
params:
  epochs: 20
stages:
  finetune:
    kind: finetune
    inputs: {model: model, data: data}
    with: {epochs: "${params.epochs}", batch_size: 16, lr: 3e-3, warmup_ratio: 0.1, schedule: linear, threads: 1}
  trace:
    kind: trace
    inputs: {model: "finetune:"}
    with: {threads: 1}
  package:
    kind: package
    inputs: {model: "trace:"}
"#;

fn workspace() -> TestWorkspace {
    tiny_bert::workspace(MANIFEST)
}

#[test]
fn finetune_trace_package_and_reproduce() {
    let ws = workspace();
    let doc = ws.run_json(&[]);
    assert!(stages(&doc).iter().all(|(_, s)| s == "ran"), "{doc}");

    let m = ws.json(".pipe/out/m/finetune/metrics.json");
    for k in ["accuracy", "mcc", "f1", "train_loss"] {
        assert!(m[k].is_number(), "{k} missing in {m}");
    }
    assert_eq!(m["accuracy"], 1.0, "the tiny separable set is learnt: {m}");
    let config = ws.json(".pipe/out/m/finetune/config.json");
    assert_eq!(config["id2label"]["1"], "1");
    assert_eq!(config["num_labels"], 2);
    let log = ws.read(".pipe/logs/m/finetune.log");
    assert!(log.contains("Train Epoch: 1 [0/96 (0%)] Loss: "), "{log}");
    assert!(log.contains("Test set: Accuracy: 1.0000"), "{log}");
    assert!(
        ws.json(".pipe/out/m/trace/trace.json")["max_abs_logit_diff"]
            .as_f64()
            .unwrap()
            <= 1e-5
    );

    // The archive: sorted, normalised entries, SageMaker layout.
    let file = std::fs::File::open(ws.path(".pipe/out/m/package/model.tar.gz")).unwrap();
    let mut gz = flate2::read::GzDecoder::new(file);
    let header = gz.header().unwrap();
    assert!(header.filename().is_none() && header.mtime() == 0);
    let mut raw = Vec::new();
    gz.read_to_end(&mut raw).unwrap();
    let mut archive = tar::Archive::new(raw.as_slice());
    let mut names = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header();
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.mtime().unwrap(), 946_684_800);
        let mode = h.mode().unwrap();
        assert!(mode == 0o644 || mode == 0o755, "{mode:o}");
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if name == "code/inference.py" {
            let mut py = String::new();
            e.read_to_string(&mut py).unwrap();
            for f in [
                "def model_fn",
                "def input_fn",
                "def predict_fn",
                "torch.jit.load",
            ] {
                assert!(py.contains(f), "inference.py lacks {f}");
            }
        }
        names.push(name);
    }
    assert_eq!(
        names,
        [
            "code",
            "code/inference.py",
            "code/requirements.txt",
            "config.json",
            "model.pt",
            "vocab.txt"
        ]
    );

    // A second workspace from scratch: byte-identical weights, metrics,
    // model.pt and archive.
    let again = workspace();
    let doc2 = again.run_json(&[]);
    for stage in ["finetune", "trace", "package"] {
        assert_eq!(
            output_hash(&doc, stage),
            output_hash(&doc2, stage),
            "{stage}"
        );
    }
    let weights = |w: &TestWorkspace| {
        std::fs::read(w.path(".pipe/out/m/finetune/model.safetensors")).unwrap()
    };
    assert!(weights(&ws) == weights(&again));
}

/// A fully cached run does not start the worker (no libtorch load), and a
/// changed parameter reruns fine-tuning and what follows.
#[test]
fn cached_runs_do_not_start_the_worker() {
    let ws = workspace();
    ws.manifest(&MANIFEST.replace("epochs: 20", "epochs: 2"));
    let calls = ws.path("worker-calls");
    let wrapper = ws.path("worker.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\nexec '{}' \"$@\"\n",
            calls.display(),
            worker().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["run", "pipe.yaml", "--json"];
        all.extend_from_slice(args);
        let out = ws.cmd(&all).env("PIPE_WORKER", &wrapper).output().unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        stages(&doc)
    };
    run(&[]);
    let first = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        first.lines().collect::<Vec<_>>(),
        ["info", "stage", "stage"]
    );
    let second = run(&[]);
    assert!(second.iter().all(|(_, s)| s == "cached"), "{second:?}");
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        first,
        "a cached run started the worker"
    );
    let third = run(&["--set", "epochs=3"]);
    assert_eq!(
        third
            .iter()
            .map(|(n, s)| format!("{n}:{s}"))
            .collect::<Vec<_>>(),
        ["finetune:ran", "trace:ran", "package:ran"]
    );
}

#[test]
fn finetune_reads_the_data_an_upload_published() {
    let ws = workspace();
    ws.manifest(
        r#"version: 1
name: u
stages:
  publish:
    kind: upload
    inputs: {data: data}
    with: {to: bucket/cola}
  finetune:
    kind: finetune
    inputs: {model: model, data: "publish:"}
    with: {epochs: 1, batch_size: 16, threads: 1}
"#,
    );
    ws.run(&[]);
    assert!(ws
        .read(".pipe/out/u/publish/uploaded.json")
        .contains("bucket/cola/train.csv"));
    let m = ws.json(".pipe/out/u/finetune/metrics.json");
    assert_eq!(
        (m["train_rows"].as_u64(), m["test_rows"].as_u64()),
        (Some(96), Some(4))
    );
}

#[test]
fn bad_parameters_and_checkpoints_are_named() {
    let ws = workspace();
    ws.manifest(&MANIFEST.replace("batch_size: 16", "batch_size: 0"));
    let out = ws.pipe(&["run", "pipe.yaml"]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("batch_size") && err.contains("must be at least 1"),
        "{err}"
    );
    assert!(err.contains("pipe.yaml:9:"), "{err}");

    ws.manifest(&MANIFEST.replace("schedule: linear", "schedule: cosine"));
    let err = common::stderr(&ws.pipe(&["run", "pipe.yaml"]));
    assert!(err.contains("unknown variant `cosine`"), "{err}");

    ws.manifest(&MANIFEST.replace("linear, threads: 1}", "linear, threads: 1, bf16: maybe}"));
    let err = common::stderr(&ws.pipe(&["run", "pipe.yaml"]));
    assert!(
        err.contains("bf16") && err.contains("expected true, false or auto"),
        "{err}"
    );

    ws.manifest(&MANIFEST.replace(
        "linear, threads: 1}",
        "linear, threads: 1, device: cpu, backend: nccl}",
    ));
    let err = common::stderr(&ws.pipe(&["run", "pipe.yaml"]));
    assert!(
        err.contains("backend") && err.contains("nccl runs on CUDA only"),
        "{err}"
    );

    // A checkpoint that lacks a tensor: the stage fails and names it.
    ws.manifest(MANIFEST);
    let bytes = std::fs::read(ws.path("model/model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "encoder.layer.1.output.dense.weight")
        .collect();
    let without = safetensors::serialize(kept, None).unwrap();
    std::fs::write(ws.path("model/model.safetensors"), without).unwrap();
    let err = ws.fails(&["run", "pipe.yaml"]);
    // The worker's own `Failed` message, not just the log tail, says why.
    let failed = err
        .lines()
        .find(|l| l.trim_start().starts_with("Failed finetune:"));
    assert!(
        failed.is_some_and(|l| l.contains("`bert.encoder.layer.1.output.dense.weight` is missing")),
        "{err}"
    );
    assert!(!Path::new(&ws.path(".pipe/out/m/finetune")).exists());
}

/// Wall-clock figures stay out of `finetune`'s output (which is then a
/// function of its inputs) and go to the run record: shown by `pipe show` and
/// `--json`, also when cached; a forced rerun gives the same output hash, so
/// `trace` and `package` stay cached (early cutoff).
#[test]
fn finetune_timings_go_to_the_run_record_and_reruns_cut_off() {
    let ws = workspace();
    ws.manifest(&MANIFEST.replace("epochs: 20", "epochs: 2"));
    let first = ws.run_json(&[]);
    let finetune = |doc: &Value| -> Value {
        doc["stages"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == "finetune"))
            .cloned()
            .unwrap_or_else(|| panic!("no finetune in {doc}"))
    };
    for k in [
        "train_seconds",
        "samples_per_second",
        "epoch_2_train_seconds",
    ] {
        assert!(
            finetune(&first)["stats"][k]
                .as_f64()
                .is_some_and(|v| v > 0.0),
            "{k} in {}",
            finetune(&first)
        );
    }
    let metrics = ws.read(".pipe/out/m/finetune/metrics.json");
    assert!(!metrics.contains("seconds"), "{metrics}");

    let forced = ws.run_json(&["--force", "finetune"]);
    assert_eq!(
        stages(&forced)
            .iter()
            .map(|(n, s)| format!("{n}:{s}"))
            .collect::<Vec<_>>(),
        ["finetune:ran", "trace:cached", "package:cached"]
    );
    assert_eq!(
        output_hash(&first, "finetune"),
        output_hash(&forced, "finetune")
    );

    // Cached: the figures of the run that produced the output.
    let cached = ws.run_json(&[]);
    assert_eq!(finetune(&cached)["status"], "cached");
    assert_eq!(finetune(&cached)["stats"], finetune(&forced)["stats"]);

    let out = ws.pipe(&["show", "pipe.yaml", "finetune"]);
    let show = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(show.contains("stats (not part of the output):"), "{show}");
    assert!(show.contains("  train_seconds: "), "{show}");
    assert!(show.contains("  samples_per_second: "), "{show}");
}

/// `-v` off a terminal: each fine-tuning step line names the epoch, the step,
/// the loss and the time left.
#[test]
fn finetune_progress_shows_epoch_step_loss_and_eta() {
    let ws = workspace();
    let out = ws.pipe(&[
        "run",
        "pipe.yaml",
        "-v",
        "--only",
        "finetune",
        "--set",
        "epochs=2",
    ]);
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("  [finetune] epoch 1/2 · step 1/6 · loss "))
        .unwrap_or_else(|| panic!("no step line in:\n{err}"));
    assert!(line.contains(" samples/s · ETA "), "{line}");
}

#[test]
fn finetune_declares_its_metrics_and_per_step_table() {
    let ws = workspace();
    ws.manifest(&MANIFEST.replace("epochs: 20", "epochs: 2"));
    ws.run_json(&["--until", "finetune"]);
    let steps = ws.read(".pipe/out/m/finetune/steps.csv");
    let mut lines = steps.lines();
    assert_eq!(lines.next(), Some("step,epoch,loss,lr"));
    let rows: Vec<Vec<f64>> = lines
        .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
        .collect();
    let metrics = ws.json(".pipe/out/m/finetune/metrics.json");
    assert_eq!(rows.len() as u64, metrics["steps"].as_u64().unwrap());
    assert_eq!(rows.last().unwrap()[1], 2.0, "{steps}");
    assert!(rows.iter().all(|r| r[2] > 0.0 && r[3] >= 0.0), "{steps}");

    let out = ws.pipe(&["metrics", "show", "pipe.yaml", "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["finetune"]["mcc"], metrics["mcc"]);

    let out = ws.pipe(&["plots", "pipe.yaml", "-o", "plots.html"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let html = ws.read("plots.html");
    for chart in [
        "finetune: loss per step",
        "finetune: lr per step",
        "finetune: mcc per epoch",
        "finetune: confusion matrix",
    ] {
        assert!(html.contains(chart), "missing {chart}");
    }
}

/// `bf16: true` trains under bf16 autocast (on any CPU: forced) and says so
/// in the log and `metrics.json`; `false` is fp32, keyed apart.
#[test]
fn precision_is_chosen_logged_and_recorded() {
    let ws = workspace();
    let short = MANIFEST.replace("epochs: 20", "epochs: 2");
    for (bf16, precision, logged) in [
        ("true", "bf16", "bf16 autocast"),
        ("false", "fp32", ", fp32"),
    ] {
        let with = format!("linear, threads: 1, bf16: {bf16}}}");
        ws.manifest(&short.replace("linear, threads: 1}", &with));
        let doc = ws.run_json(&["--until", "finetune"]);
        assert_eq!(stages(&doc)[0].1, "ran", "{doc}");
        assert_eq!(
            ws.json(".pipe/out/m/finetune/metrics.json")["precision"],
            precision
        );
        let log = ws.read(".pipe/logs/m/finetune.log");
        assert!(log.contains(logged), "{log}");
    }
}
