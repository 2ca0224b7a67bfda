//! The run history and what reads it, through the real `pipe` binary: `pipe
//! runs`, `pipe metrics show|diff`, `pipe checkout`, `pipe logs`, `pipe plots`.
//! A shell stage writes a `metrics.json` and a per-step `steps.csv` whose
//! numbers are its `lr` param, so each run's figures are known.

mod common;

use common::{stderr, TestWorkspace};
use serde_json::Value;

const MANIFEST: &str = r#"version: 1
name: m
params:
  lr: 0.1
  seed: 1
stages:
  train:
    kind: shell
    metrics: [metrics.json]
    plots: [steps.csv, metrics.json]
    with:
      cmd: |
        echo "training with lr ${params.lr}"
        printf '{"mcc": %s, "eval": {"acc": 0.5}, "epochs": [{"epoch": 1, "mcc": 0.05}, {"epoch": 2, "mcc": %s}], "confusion": [[3, 1], [2, 4]], "labels": ["no", "yes"]}\n' ${params.lr} ${params.lr} > $PIPE_OUT/metrics.json
        printf 'step,loss,lr\n1,0.9,%s\n2,0.5,%s\n' ${params.lr} ${params.lr} > $PIPE_OUT/steps.csv
  report:
    kind: shell
    inputs: {m: train:metrics.json}
    with: {cmd: 'cp $PIPE_IN_M $PIPE_OUT/copy.json'}
"#;

fn workspace() -> TestWorkspace {
    let ws = TestWorkspace::new();
    ws.manifest(MANIFEST);
    ws
}

/// `pipe ARGS`, asserting success; stdout.
fn ok(ws: &TestWorkspace, args: &[&str]) -> String {
    let out = ws.pipe(args);
    assert!(out.status.success(), "pipe {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).expect("UTF-8 stdout")
}

fn runs(ws: &TestWorkspace) -> Vec<Value> {
    let doc: Value = serde_json::from_str(&ok(ws, &["runs", "pipe.yaml", "--json"])).unwrap();
    doc.as_array().expect("a list of runs").clone()
}

fn git(ws: &TestWorkspace, args: &[&str]) {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(ws.root())
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
}

#[test]
fn every_run_is_recorded_with_params_statuses_and_metrics() {
    let ws = workspace();
    ws.run(&[]);
    ws.run(&["--set", "lr=0.2"]);
    assert!(ws.ran(&["--set", "lr=0.2"]).is_empty());
    let runs = runs(&ws);
    assert_eq!(runs.len(), 3);
    let ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "run ids sort by time");
    let mcc: Vec<f64> = runs
        .iter()
        .map(|r| r["metrics"]["train.mcc"].as_f64().unwrap())
        .collect();
    assert_eq!(mcc, [0.1, 0.2, 0.2]);
    assert_eq!(runs[1]["params"]["lr"], 0.2);
    assert_eq!(runs[0]["metrics"]["train.eval.acc"], 0.5);
    assert_eq!(runs[1]["stages"]["train"], "ran");
    assert_eq!(runs[2]["stages"]["train"], "cached");

    // The table shows the param that changed, not the one that did not.
    let table = ok(&ws, &["runs", "pipe.yaml"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("lr") && header.contains("train.mcc"),
        "{table}"
    );
    assert!(!header.contains("seed"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    let record = ws.json(&format!(".pipe/runs/m/{}.json", ids[0]));
    assert!(record["stages"][0]["key"].is_string(), "{record}");
    assert!(record["lock"].as_str().unwrap().contains("train:"));
}

#[test]
fn metrics_show_reads_the_outputs_of_the_configuration() {
    let ws = workspace();
    ws.run(&[]);
    ws.run(&["--set", "lr=0.2"]);
    let show = |set: &str| -> Value {
        serde_json::from_str(&ok(
            &ws,
            &["metrics", "show", "pipe.yaml", "--set", set, "--json"],
        ))
        .unwrap()
    };
    assert_eq!(show("lr=0.1")["train"]["mcc"], 0.1);
    assert_eq!(show("lr=0.2")["train"]["mcc"], 0.2);
    assert_eq!(show("lr=0.3")["train"], Value::Null, "never ran");
    let text = ok(&ws, &["metrics", "show", "pipe.yaml"]);
    assert!(text.contains("train.mcc       0.1\n"), "{text}");
}

#[test]
fn metrics_diff_against_the_committed_lock_and_a_run() {
    let ws = workspace();
    ws.run(&[]);
    git(&ws, &["init", "-q"]);
    git(&ws, &["add", "pipe.yaml", "pipe.lock"]);
    git(&ws, &["commit", "-q", "-m", "lr 0.1"]);
    let first = runs(&ws)[0]["id"].as_str().unwrap().to_string();
    ws.run(&["--set", "lr=0.25"]);
    let diff = ok(&ws, &["metrics", "diff", "pipe.yaml"]);
    assert!(
        diff.contains("train.mcc       0.1  →  0.25  (+0.15)"),
        "{diff}"
    );
    assert!(diff.contains("train.eval.acc  0.5  →  0.5\n"), "{diff}");
    let doc: Value = serde_json::from_str(&ok(
        &ws,
        &["metrics", "diff", "pipe.yaml", &first, "--json"],
    ))
    .unwrap();
    assert_eq!(doc["train.mcc"]["old"], 0.1);
    assert_eq!(doc["train.mcc"]["new"], 0.25);
    let out = ws.pipe(&["metrics", "diff", "pipe.yaml", "no-such-rev"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("`no-such-rev` is neither a run id nor a git revision"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn checkout_restores_outputs_and_lock_without_running() {
    let ws = workspace();
    ws.run(&[]);
    let lock_a = ws.read("pipe.lock");
    ws.run(&["--set", "lr=0.2"]);
    let ids: Vec<String> = runs(&ws)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let out = ws.pipe(&["checkout", &ids[0]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ws.read("pipe.lock"), lock_a);
    assert!(ws
        .read(".pipe/out/m/train/metrics.json")
        .contains("\"mcc\": 0.1,"));
    assert!(ws
        .read(".pipe/out/m/report/copy.json")
        .contains("\"mcc\": 0.1,"));
    // Switching back costs nothing: everything is cached.
    assert!(ws.ran(&[]).is_empty());

    // `gc` drops what the lock (now run 0's) does not name; run 1 is gone.
    ok(&ws, &["gc", "pipe.yaml"]);
    let out = ws.pipe(&["checkout", &ids[1]]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("no longer holds the output of train, report")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(ws.read("pipe.lock"), lock_a);
    let out = ws.pipe(&["checkout", "19990101"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no run `19990101`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn logs_show_the_run_that_produced_a_cached_output() {
    let ws = workspace();
    ws.run(&[]);
    ws.run(&["--set", "lr=0.2"]);
    assert!(ws.ran(&[]).is_empty(), "lr=0.1 is cached");
    let log = ok(&ws, &["logs", "pipe.yaml", "train"]);
    assert!(log.contains("training with lr 0.1"), "{log}");
    assert!(!log.contains("0.2"), "{log}");
    let out = ws.pipe(&["logs", "pipe.yaml", "trian"]);
    assert!(stderr(&out).contains("no stage named `trian`"));
}

#[test]
fn plots_overlay_one_series_per_run_in_one_offline_file() {
    let ws = workspace();
    ws.run(&[]);
    ws.run(&["--set", "lr=0.2"]);
    ws.run(&[]);
    let ids: Vec<String> = runs(&ws)
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ok(&ws, &["plots", "pipe.yaml", "-o", "p.html"]);
    let html = ws.read("p.html");
    for chart in [
        "train: loss per step",
        "train: lr per step",
        "train: mcc per epoch",
    ] {
        assert!(html.contains(chart), "missing {chart}");
    }
    // Each distinct result once (run 2 repeats run 0): 3 charts × 2 runs.
    assert_eq!(html.matches("class=\"series\"").count(), 6);
    for id in &ids[1..] {
        assert_eq!(html.matches(&format!("data-run=\"{id}\"")).count(), 3);
    }
    assert_eq!(html.matches("confusion matrix").count(), 2);
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("href="));

    ok(&ws, &["plots", "pipe.yaml", &ids[0], "-o", "one.html"]);
    assert_eq!(ws.read("one.html").matches("class=\"series\"").count(), 3);
}

#[test]
fn a_declared_metrics_file_that_is_missing_is_named() {
    let ws = TestWorkspace::new();
    ws.manifest(
        "version: 1\nname: m\nstages:\n  train:\n    kind: shell\n    metrics: [scores.json]\n    with: {cmd: 'echo 1 > $PIPE_OUT/other.txt'}\n",
    );
    let out = ws.pipe(&["run", "pipe.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("warning: stage `train`: its output has no metrics file `scores.json`"),
        "{}",
        stderr(&out)
    );
    let out = ws.pipe(&["metrics", "show", "pipe.yaml"]);
    assert!(
        stderr(&out).contains("stage `train`: its output has no metrics file `scores.json`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_history_commands_default_to_pipe_yaml() {
    let ws = workspace();
    ws.run(&[]);
    git(&ws, &["init", "-q"]);
    git(&ws, &["add", "pipe.yaml", "pipe.lock"]);
    git(&ws, &["commit", "-q", "-m", "lr 0.1"]);
    ws.run(&["--set", "lr=0.25"]);
    let first = runs(&ws)[0]["id"].as_str().unwrap().to_string();

    // `pipe runs` and DVC's `pipe exp show` print the same table.
    let table = ok(&ws, &["runs"]);
    assert!(table.contains("0.25"), "{table}");
    assert_eq!(ok(&ws, &["exp", "show"]), table);
    assert_eq!(
        ok(&ws, &["exp", "show", "pipe.yaml", "--json"]),
        ok(&ws, &["runs", "--json"])
    );

    // `metrics diff [MANIFEST] [REV]`: a lone argument that is no manifest is the revision.
    let head = ok(&ws, &["metrics", "diff"]);
    assert!(head.contains("train.mcc       0.1  →  0.25"), "{head}");
    assert_eq!(ok(&ws, &["metrics", "diff", "HEAD"]), head);
    assert_eq!(ok(&ws, &["metrics", "diff", &first]), head);

    let log = ok(&ws, &["logs", "train"]);
    assert!(log.contains("training with lr 0.25"), "{log}");

    ok(&ws, &["plots", &first, "-o", "one.html"]);
    assert_eq!(ws.read("one.html").matches("class=\"series\"").count(), 3);
    ok(&ws, &["plots", "-o", "all.html"]);
    assert_eq!(ws.read("all.html").matches("class=\"series\"").count(), 6);

    // Elsewhere, each says what it missed.
    std::fs::rename(ws.path("pipe.yaml"), ws.path("other.yaml")).unwrap();
    for args in [
        &["runs"][..],
        &["exp", "show"],
        &["metrics", "diff"],
        &["logs", "train"],
    ] {
        let out = ws.pipe(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("no pipe.yaml in the current folder"),
            "{args:?}"
        );
    }
}
