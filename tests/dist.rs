//! Data-parallel fine-tuning on libtorch's c10d (gloo, loopback), through the
//! real `pipe` and `pipe-worker` binaries, on the tests' tiny BERT.

mod common;

use std::process::Command;

use common::{stderr, worker};

/// Two ranks (rank 0 starts rank 1) sum `[rank + 1, 10 (rank + 1)]`.
#[test]
fn allreduce_of_known_tensors_across_two_ranks() {
    let out = Command::new(worker())
        .args(["allreduce-check", "2"])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("MASTER_PORT")
        .env("PIPE_DIST_TIMEOUT", "60")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: pipe_protocol::AllreduceCheck = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc,
        pipe_protocol::AllreduceCheck {
            world: 2,
            sum: vec![3.0, 30.0]
        }
    );
}

/// NCCL where libtorch sees no GPU: refused before any rank starts, naming
/// the backend and why, instead of timing out on the rendezvous.
#[test]
fn nccl_without_a_gpu_is_refused_up_front() {
    let out = Command::new(worker())
        .args(["allreduce-check", "2", "nccl"])
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env_remove("SLURM_PROCID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("MASTER_PORT")
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("PIPE_DIST_TIMEOUT", "60")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("backend nccl"), "{err}");
    assert!(
        err.contains("no CUDA device") || err.contains("built without the NCCL headers"),
        "{err}"
    );
    assert!(!err.contains("rank 1"), "no rank was started: {err}");
}

/// The tiny BERT without dropout, 80 training rows: 10 steps of 16 in 2 epochs.
fn workspace(manifest: &str) -> common::TestWorkspace {
    let ws = common::tiny_bert::workspace(manifest);
    let config = ws
        .read("model/config.json")
        .replace("\"hidden_dropout_prob\":0.1", "\"hidden_dropout_prob\":0.0")
        .replace(
            "\"attention_probs_dropout_prob\":0.1",
            "\"attention_probs_dropout_prob\":0.0",
        );
    assert!(!config.contains("0.1"), "{config}");
    ws.file("model/config.json", &config);
    let train = ws.read("data/train.csv");
    let head: Vec<&str> = train.lines().take(81).collect();
    ws.file("data/train.csv", &(head.join("\n") + "\n"));
    ws
}

const PIPELINE: &str = r#"version: 1
name: m
stages:
  one:
    kind: finetune
    inputs: {model: model, data: data}
    with: {epochs: 2, batch_size: 16, lr: 3e-3, warmup_ratio: 0.1, schedule: linear, threads: 1, bf16: false}
  two:
    kind: finetune
    inputs: {model: model, data: data}
    with: {epochs: 2, batch_size: 16, lr: 3e-3, warmup_ratio: 0.1, schedule: linear, threads: 2, nproc_per_node: 2, bf16: false}
  one_group:
    kind: finetune
    inputs: {model: model, data: data}
    with: {epochs: 2, batch_size: 16, lr: 3e-3, warmup_ratio: 0.1, schedule: linear, threads: 1, bf16: false, backend: gloo}
  one_odd:
    kind: finetune
    inputs: {model: model, data: data}
    with: {epochs: 1, batch_size: 13, lr: 3e-3, threads: 1, bf16: false}
  two_odd:
    kind: finetune
    inputs: {model: model, data: data}
    with: {epochs: 1, batch_size: 13, lr: 3e-3, threads: 2, nproc_per_node: 2, bf16: false}
  trace:
    kind: trace
    inputs: {model: "two:"}
    with: {threads: 1}
  package:
    kind: package
    inputs: {model: "trace:"}
"#;

fn weights(path: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn largest_difference(a: &std::path::Path, b: &std::path::Path) -> f32 {
    let (one, two) = (weights(a), weights(b));
    assert_eq!(one.len(), two.len());
    let mut worst = 0f32;
    for ((n1, a), (n2, b)) in one.iter().zip(&two) {
        assert_eq!(n1, n2);
        assert_eq!(a.len(), b.len(), "{n1}");
        for (x, y) in a.iter().zip(b) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

/// 2 ranks at global batch 16 end with the weights of 1 process at batch 16
/// (10 steps, dropout 0, fp32: bf16 rounds differently for other shapes),
/// agree byte for byte (checked by the ranks), and
/// feed trace and package; a second run is all cached.
#[test]
fn two_ranks_train_like_one_process_and_are_cached() {
    let ws = workspace(PIPELINE);
    let doc = ws.run_json(&[]);
    assert!(
        common::stages(&doc).iter().all(|(_, s)| s == "ran"),
        "{doc}"
    );

    // Even slices (8 + 8), and uneven ones (batches of 13 and a last of 2:
    // 6 + 7, 1 + 1), where each slice's loss must be weighted by its share.
    for (a, b) in [("one", "two"), ("one_odd", "two_odd")] {
        let worst = largest_difference(
            &ws.path(&format!(".pipe/out/m/{a}/model.safetensors")),
            &ws.path(&format!(".pipe/out/m/{b}/model.safetensors")),
        );
        assert!(
            worst <= 1e-5,
            "{a} vs {b}: largest weight difference {worst}"
        );
    }
    // A backend named with one rank runs the data-parallel path as a group
    // of one: the same bytes as no group.
    assert_eq!(
        std::fs::read(ws.path(".pipe/out/m/one_group/model.safetensors")).unwrap(),
        std::fs::read(ws.path(".pipe/out/m/one/model.safetensors")).unwrap(),
    );
    let log = ws.read(".pipe/logs/m/one_group.log");
    assert!(
        log.contains("data parallel: 1 ranks, gloo backend"),
        "{log}"
    );
    let m = ws.json(".pipe/out/m/two/metrics.json");
    assert_eq!(m["steps"], 10, "{m}");
    assert_eq!(m["world_size"], 2, "{m}");
    assert_eq!(m["test_rows"], 4, "{m}");
    let log = ws.read(".pipe/logs/m/two.log");
    assert!(
        log.contains("data parallel: 2 ranks, gloo backend"),
        "{log}"
    );
    assert!(log.contains("weights identical on the 2 ranks"), "{log}");

    let again = ws.run_json(&[]);
    assert!(
        common::stages(&again).iter().all(|(_, s)| s == "cached"),
        "{again}"
    );
}

const LONG: &str = r#"version: 1
name: m
stages:
  two:
    kind: finetune
    inputs: {model: model, data: data}
    with: {epochs: 1000, batch_size: 16, threads: 2, nproc_per_node: 2}
"#;

/// The pid of the rank `rank` a `pipe` of `ws` started, once it runs.
fn find_rank(ws: &common::TestWorkspace, rank: usize) -> Option<i32> {
    let cache = format!("XDG_CACHE_HOME={}", ws.path(".cache").display());
    let want = format!("RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        let has = |v: &str| vars.contains(&v.as_bytes());
        (has(&cache) && has(&want)).then_some(pid)
    })
}

fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Running or stopped (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !matches!(
                s.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next()),
                Some("Z") | None
            )
        })
        .unwrap_or(false)
}

/// Kills `pid` when the test ends, whatever happened.
struct Reaper(i32);

impl Drop for Reaper {
    fn drop(&mut self) {
        if alive(self.0) {
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// Sends `signal` to rank 1 once it runs; the stage must fail naming it,
/// leave no rank running and cache nothing.
fn a_faulty_rank_fails_the_stage(signal: i32, expect: &str) {
    let ws = workspace(LONG);
    let child = ws
        .cmd(&["run", "pipe.yaml"])
        .env("PIPE_DIST_TIMEOUT", "5")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = Reaper(child.id() as i32);
    // Waits for the condition "rank 1 exists", polling /proc.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let rank1 = loop {
        if let Some(pid) = find_rank(&ws, 1) {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "rank 1 never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _r1 = Reaper(rank1);
    // ... and trains (a step is logged after its all-reduce).
    while !std::fs::read_to_string(ws.path(".pipe/logs/m/two.log"))
        .unwrap_or_default()
        .contains("Train Epoch: 2 ")
    {
        assert!(std::time::Instant::now() < deadline, "no step was logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let rank0 = parent(rank1).unwrap();
    let _r0 = Reaper(rank0);
    unsafe { libc::kill(rank1, signal) };
    let out = child.wait_with_output().unwrap();
    drop(pipe);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let log = ws.read(".pipe/logs/m/two.log");
    assert!(
        log.contains(expect),
        "{expect:?} not in the log:\n{log}\n{err}"
    );
    assert!(!alive(rank0), "rank 0 is still running");
    if signal == libc::SIGKILL {
        assert!(!alive(rank1), "rank 1 is still running");
    }
    assert!(
        !ws.path(".pipe/out/m/two").exists(),
        "a failed stage left an output"
    );
    let status = ws.pipe(&["status", "pipe.yaml"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("will run"), "{status}");
}

#[test]
fn a_killed_rank_fails_the_stage_and_is_named() {
    a_faulty_rank_fails_the_stage(libc::SIGKILL, "rank 1 exited (signal: 9 (SIGKILL))");
}

#[test]
fn a_hung_rank_fails_the_stage_after_the_timeout() {
    a_faulty_rank_fails_the_stage(libc::SIGSTOP, "rank 1 did not answer");
}
