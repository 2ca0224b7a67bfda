//! Stages through a real Slurm: each test starts its own one-node cluster
//! (`common::slurm`) and drives the real `pipe` binary against it.
#![allow(
    clippy::print_stdout,
    reason = "the ignored benchmark prints its figures"
)]

mod common;

use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};

use common::s3::S3;
use common::slurm::Cluster;
use common::{output_hash, stages, stderr, TestWorkspace};

/// A shell stage that waits for a line on the fifo `gate` (the test writes
/// it once it has seen the job running) and writes it to its output.
const GATED: &str = r#"version: 1
name: s
stages:
  greet:
    kind: shell
    with:
      cmd: |
        echo "waiting on $(hostname)"
        cat gate > "$PIPE_OUT/greeting.txt"
        echo "done"
"#;

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

fn pipe(ws: &TestWorkspace, cluster: &Cluster, args: &[&str]) -> Command {
    let mut cmd = ws.cmd(args);
    cluster.env(&mut cmd);
    cmd
}

/// Start `pipe run` in the background.
fn spawn(ws: &TestWorkspace, cluster: &Cluster, args: &[&str]) -> Child {
    pipe(ws, cluster, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pipe")
}

/// The id of the one job `squeue` shows RUNNING, once it does.
fn running_job(cluster: &Cluster) -> String {
    let mut id = String::new();
    cluster.wait_for("running job", || {
        let jobs = cluster.squeue();
        match jobs.as_slice() {
            [one] if one.split_whitespace().nth(1) == Some("RUNNING") => {
                id = one
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                true
            }
            _ => false,
        }
    });
    id
}

#[test]
fn a_shell_stage_runs_as_a_slurm_job_and_is_cached_after() {
    let cluster = Cluster::start();
    let ws = TestWorkspace::new();
    ws.manifest(GATED);
    mkfifo(&ws.path("gate"));
    let mut child = spawn(&ws, &cluster, &["run", "pipe.yaml", "--executor", "slurm"]);

    // The stage is a job Slurm shows while it runs, and pipe says so.
    let id = running_job(&cluster);
    let job = cluster.job(&id);
    assert!(job.contains("JobName=pipe-s-greet"), "{job}");
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut err = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        err += &line;
        err.push('\n');
        if line.contains("RUNNING") {
            break;
        }
    }
    assert!(
        err.contains(&format!("Job greet: slurm job {id} submitted")),
        "{err}"
    );
    assert!(
        err.contains(&format!("Job greet: slurm job {id} RUNNING")),
        "{err}"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(ws.path("gate"))
        .unwrap()
        .write_all(b"hello from the test\n")
        .unwrap();
    for line in lines {
        err += &line.unwrap();
        err.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{err}\n{}", cluster.logs());
    assert!(err.contains("Ran greet"), "{err}");
    assert_eq!(
        ws.read(".pipe/out/s/greet/greeting.txt"),
        "hello from the test\n"
    );
    // The job's output is the stage log.
    let log = ws.read(".pipe/logs/s/greet.log");
    assert!(log.contains("waiting on ") && log.contains("done"), "{log}");
    cluster.wait_empty();

    // Cached, without submitting anything: locally and through Slurm alike
    // (the executor is not part of the key).
    let submitted = cluster.jobs_submitted();
    for executor in ["slurm", "local"] {
        let out = pipe(&ws, &cluster, &["run", "pipe.yaml", "--json"])
            .env("PIPE_EXECUTOR", executor)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(stages(&doc), [("greet".into(), "cached".into())]);
    }
    assert_eq!(cluster.jobs_submitted(), submitted);

    // The same result as a local run.
    let local = TestWorkspace::new();
    local.manifest(GATED);
    local.file("gate", "hello from the test\n");
    let slurm_doc = {
        let out = pipe(&ws, &cluster, &["run", "pipe.yaml", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(
        output_hash(&local.run_json(&[]), "greet"),
        output_hash(&slurm_doc, "greet")
    );
}

#[test]
fn a_failing_job_fails_its_stage_with_slurms_state() {
    let cluster = Cluster::start();
    let ws = TestWorkspace::new();
    ws.manifest(
        r#"version: 1
name: s
stages:
  bad:
    kind: shell
    executor: slurm
    resources: {cpus: 1, time: "5"}
    with:
      cmd: echo "about to fail"; exit 3
"#,
    );
    let out = pipe(&ws, &cluster, &["run", "pipe.yaml"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "FAILED (reason NonZeroExitCode, exit code 1:0): command exited with status 3"
        ),
        "{err}"
    );
    assert!(err.contains("about to fail"), "the log tail: {err}");
    assert!(!ws.path(".pipe/out/s/bad").exists());
    cluster.wait_empty();
}

/// A job cancelled behind pipe's back fails its stage with Slurm's word.
#[test]
fn a_job_cancelled_on_the_cluster_fails_its_stage() {
    let cluster = Cluster::start();
    let ws = TestWorkspace::new();
    ws.manifest(GATED);
    mkfifo(&ws.path("gate"));
    let child = spawn(&ws, &cluster, &["run", "pipe.yaml", "--executor", "slurm"]);
    let id = running_job(&cluster);
    assert!(cluster.output(&["scancel", &id]).is_some());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "Failed greet: slurm job {id} CANCELLED (reason None"
        )),
        "{err}"
    );
    assert!(!ws.path(".pipe/out/s/greet").exists());
}

#[test]
fn ctrl_c_cancels_the_job() {
    let cluster = Cluster::start();
    let ws = TestWorkspace::new();
    ws.manifest(GATED);
    mkfifo(&ws.path("gate"));
    let child = spawn(&ws, &cluster, &["run", "pipe.yaml", "--executor", "slurm"]);
    let id = running_job(&cluster);
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    // pipe waited for Slurm to end the job: nothing is left.
    assert_eq!(cluster.squeue(), Vec::<String>::new());
    assert!(
        cluster.job(&id).contains("JobState=CANCELLED"),
        "{}",
        cluster.job(&id)
    );
}

#[test]
fn a_killed_pipe_leaves_no_job_running() {
    let cluster = Cluster::start();
    let ws = TestWorkspace::new();
    ws.manifest(GATED);
    mkfifo(&ws.path("gate"));
    let mut child = pipe(&ws, &cluster, &["run", "pipe.yaml", "--executor", "slurm"])
        .env("PIPE_ORPHAN_TIMEOUT", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = running_job(&cluster);
    child.kill().unwrap();
    child.wait().unwrap();
    // The job's watchdog sees the heartbeat stop and ends the job.
    cluster.wait_empty();
    let job = cluster.job(&id);
    assert!(job.contains("JobState=FAILED"), "{job}");
    let log = ws.read(".pipe/logs/s/greet.log");
    assert!(
        log.contains("the pipe that submitted this job is gone"),
        "{log}"
    );
}

const TINY_CHAIN: &str = r#"version: 1
name: m
stages:
  finetune:
    kind: finetune
    inputs: {model: model, data: data}
    with: {epochs: 4, batch_size: 16, lr: 3e-3, warmup_ratio: 0.1, schedule: linear, threads: 1}
  trace:
    kind: trace
    inputs: {model: "finetune:"}
    with: {threads: 1}
  package:
    kind: package
    inputs: {model: "trace:"}
"#;

/// Runs `cmd` (`pipe run … -v` of the tiny chain in `ws`) and checks it
/// against a local run of the same: 3 jobs, the job's progress at the
/// reporter, cached after, the same bytes. Returns the second run's document.
fn chain_equals_a_local_run(
    cluster: &Cluster,
    ws: &TestWorkspace,
    mut cmd: Command,
) -> serde_json::Value {
    let local_doc = common::tiny_bert::workspace(TINY_CHAIN).run_json(&[]);
    let out = cmd.output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}\n{}", cluster.logs());
    // The job's progress reaches the reporter.
    assert!(err.contains("[finetune] epoch 1/4: evaluating"), "{err}");
    assert_eq!(cluster.jobs_submitted(), 3);
    let doc = ws.run_json(&[]);
    assert!(stages(&doc).iter().all(|(_, s)| s == "cached"), "{doc}");
    for stage in ["finetune", "trace", "package"] {
        assert_eq!(
            output_hash(&local_doc, stage),
            output_hash(&doc, stage),
            "{stage}"
        );
    }
    let log = ws.read(".pipe/logs/m/finetune.log");
    assert!(log.contains("Train Epoch: 1 [0/96 (0%)] Loss: "), "{log}");
    doc
}

/// The tiny-model finetune → trace → package through Slurm: the same bytes as
/// a local run, with the worker's figures and log coming back from the job.
#[test]
fn finetune_trace_package_through_slurm_equal_a_local_run() {
    let cluster = Cluster::start();
    let ws = common::tiny_bert::workspace(TINY_CHAIN);
    let mut cmd = pipe(&ws, &cluster, &["run", "pipe.yaml", "-v"]);
    cmd.env("PIPE_EXECUTOR", "slurm");
    let doc = chain_equals_a_local_run(&cluster, &ws, cmd);
    let finetune = &doc["stages"][0];
    assert!(
        finetune["stats"].as_object().is_some_and(|s| !s.is_empty()),
        "the worker's figures reach the run record: {finetune}"
    );
}

/// A Slurm cluster whose nodes do not see the workspace
/// (`--cluster-io remote`): the data travels through a real S3-compatible
/// remote cache.
struct NoSharedFs {
    s3: S3,
}

impl NoSharedFs {
    fn new() -> NoSharedFs {
        let s3 = S3::start();
        s3.create_bucket("cache");
        NoSharedFs { s3 }
    }

    fn pipe(&self, ws: &TestWorkspace, cluster: &Cluster, args: &[&str]) -> Command {
        let mut cmd = pipe(ws, cluster, args);
        cmd.env("PIPE_EXECUTOR", "slurm")
            .env("PIPE_CLUSTER_IO", "remote")
            .env("PIPE_REMOTE", "s3://cache/team")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.s3.endpoint);
        cmd
    }

    /// The jobs' files left in the remote.
    fn job_files(&self) -> Vec<String> {
        self.s3.list("cache", "team/jobs/")
    }
}

/// Without a shared filesystem the job runs in a scratch dir of the node:
/// an upstream output and a workspace file reach it through the remote, its
/// log streams back, its output is committed here, and nothing is left of
/// the job in the remote.
#[test]
fn without_a_shared_filesystem_inputs_and_outputs_travel_through_the_remote() {
    let manifest = r#"version: 1
name: s
stages:
  make:
    kind: shell
    with: {cmd: 'echo made > "$PIPE_OUT/made.txt"'}
  use:
    kind: shell
    inputs: {made: "make:made.txt", notes: notes, inner: notes/deep/b.txt}
    with:
      cmd: |
        echo "cwd $PWD"
        echo "notes at $PIPE_IN_NOTES"
        cat "$PIPE_IN_MADE" "$PIPE_IN_NOTES/a.txt" "$PIPE_IN_INNER" > "$PIPE_OUT/both.txt"
"#;
    let cluster = Cluster::start();
    let remote = NoSharedFs::new();
    let ws = TestWorkspace::new();
    // `inner` sorts first and lies inside `notes`: both arrive whole.
    ws.manifest(manifest)
        .file("notes/a.txt", "noted\n")
        .file("notes/deep/b.txt", "deep\n");
    let out = remote
        .pipe(&ws, &cluster, &["run", "pipe.yaml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), cluster.logs());
    assert_eq!(cluster.jobs_submitted(), 2);
    assert_eq!(ws.read(".pipe/out/s/use/both.txt"), "made\nnoted\ndeep\n");
    // The log came back from the job, which worked away from the workspace.
    let log = ws.read(".pipe/logs/s/use.log");
    let root = ws.root().canonicalize().unwrap();
    let root = root.to_str().unwrap();
    assert!(log.contains("cwd ") && log.contains("notes at "), "{log}");
    assert!(!log.contains(root), "the job saw the workspace: {log}");
    assert_eq!(remote.job_files(), Vec::<String>::new());
    cluster.wait_empty();

    // The results are the remote's too: a second workspace runs nothing.
    let other = TestWorkspace::new();
    other
        .manifest(manifest)
        .file("notes/a.txt", "noted\n")
        .file("notes/deep/b.txt", "deep\n");
    let out = remote
        .pipe(&other, &cluster, &["run", "pipe.yaml", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stages(&doc).iter().all(|(_, s)| s == "cached"), "{doc}");
    assert_eq!(cluster.jobs_submitted(), 2);

    // A changed workspace file is sent again; a failing job fails its
    // stage with Slurm's state, and its log tail is here.
    ws.file("notes/a.txt", "changed\n");
    ws.manifest(&manifest.replace(
        "> \"$PIPE_OUT/both.txt\"",
        "> \"$PIPE_OUT/both.txt\"; exit 3",
    ));
    let out = remote
        .pipe(&ws, &cluster, &["run", "pipe.yaml"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("FAILED (reason NonZeroExitCode"), "{err}");
    assert!(err.contains("command exited with status 3"), "{err}");
    assert!(err.contains("notes at "), "the log tail: {err}");
    assert_eq!(remote.job_files(), Vec::<String>::new());
}

/// Without a shared filesystem the heartbeat travels through the remote: a
/// killed `pipe` leaves no job running, and the job removes its files.
#[test]
fn without_a_shared_filesystem_a_killed_pipe_leaves_no_job_and_no_files() {
    let cluster = Cluster::start();
    let remote = NoSharedFs::new();
    let ws = TestWorkspace::new();
    // Runs until it is stopped.
    ws.manifest("version: 1\nname: s\nstages:\n  wait:\n    kind: shell\n    with: {cmd: 'echo started; exec sleep 600'}\n");
    let mut child = remote
        .pipe(&ws, &cluster, &["run", "pipe.yaml"])
        .env("PIPE_ORPHAN_TIMEOUT", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = running_job(&cluster);
    assert!(!remote.job_files().is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    cluster.wait_empty();
    let job = cluster.job(&id);
    assert!(job.contains("JobState=FAILED"), "{job}");
    assert_eq!(remote.job_files(), Vec::<String>::new());
}

/// The tiny-model finetune → trace → package through Slurm without a
/// shared filesystem: the same bytes as a local run.
#[test]
fn finetune_trace_package_without_a_shared_filesystem_equal_a_local_run() {
    let cluster = Cluster::start();
    let remote = NoSharedFs::new();
    let ws = common::tiny_bert::workspace(TINY_CHAIN);
    let cmd = remote.pipe(&ws, &cluster, &["run", "pipe.yaml", "-v"]);
    chain_equals_a_local_run(&cluster, &ws, cmd);
    assert_eq!(remote.job_files(), Vec::<String>::new());
}

/// More than one task: one `pipe __exec-stage` per task through `srun`, each
/// with its rank; rank 0 writes the output.
#[test]
fn a_stage_with_two_tasks_runs_one_rank_per_task() {
    let cluster = Cluster::start();
    let ws = TestWorkspace::new();
    ws.manifest(
        r#"version: 1
name: s
stages:
  ranks:
    kind: shell
    executor: slurm
    resources: {nodes: 1, tasks_per_node: 2}
    with:
      cmd: echo "rank $SLURM_PROCID of $SLURM_NTASKS"; echo "$SLURM_PROCID" > "$PIPE_OUT/rank"
"#,
    );
    let out = pipe(&ws, &cluster, &["run", "pipe.yaml"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), cluster.logs());
    assert_eq!(ws.read(".pipe/out/s/ranks/rank"), "0\n");
    let log = ws.read(".pipe/logs/s/ranks.log");
    assert!(
        log.contains("rank 0 of 2") && log.contains("rank 1 of 2"),
        "{log}"
    );
    cluster.wait_empty();
}

/// `bench/slurm.sh`: what Slurm adds to a trivial stage and to the tiny
/// fine-tune (submit → running → done → committed), against the local
/// executor, side by side on the same machine. Prints medians; asserts
/// nothing about time.
#[test]
#[ignore = "a benchmark: bench/slurm.sh"]
fn bench_slurm_overhead() {
    let rounds: usize = std::env::var("PIPE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let cluster = Cluster::start();
    let no_shared_fs = NoSharedFs::new();
    let trivial = "version: 1\nname: b\nstages:\n  s:\n    kind: shell\n    with: {cmd: 'echo hi > $PIPE_OUT/x'}\n";
    let tiny = "version: 1\nname: b\nstages:\n  s:\n    kind: finetune\n    inputs: {model: model, data: data}\n    with: {epochs: 4, batch_size: 16, lr: 3e-3, threads: 1}\n";
    for (what, manifest, rounds) in [
        ("trivial shell stage", trivial, rounds),
        ("tiny fine-tune", tiny, 3),
    ] {
        let ws = TestWorkspace::new();
        ws.manifest(manifest);
        if manifest == tiny {
            common::tiny_bert::write(&ws.path("model"));
            common::tiny_bert::data(&ws.path("data"));
        }
        let mut times = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (i, how) in ["local", "slurm", "slurm, remote io"]
                .into_iter()
                .enumerate()
            {
                let args = ["run", "pipe.yaml", "--force-all", "-q"];
                let mut cmd = match how {
                    "slurm, remote io" => no_shared_fs.pipe(&ws, &cluster, &args),
                    _ => pipe(&ws, &cluster, &args),
                };
                if how == "slurm" {
                    cmd.env("PIPE_EXECUTOR", "slurm");
                }
                let start = std::time::Instant::now();
                let out = cmd.output().unwrap();
                assert!(out.status.success(), "{}", stderr(&out));
                times[i].push(start.elapsed().as_secs_f64());
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let [local, slurm, apart] = times.map(|mut t| median(&mut t));
        println!(
            "{what}: local {local:.3} s, slurm {slurm:.3} s (overhead {:.3} s), slurm without a shared filesystem {apart:.3} s (overhead {:.3} s); medians of {rounds}",
            slurm - local,
            apart - local
        );
    }
}

/// The tiny model's 2-rank data-parallel fine-tune, with `resources`
/// (stage-level lines) after it.
fn data_parallel(resources: &str) -> String {
    format!(
        r#"version: 1
name: m
stages:
  finetune:
    kind: finetune
    inputs: {{model: model, data: data}}
    with: {{epochs: 1, batch_size: 16, lr: 3e-3, threads: 1, nproc_per_node: 2}}
{resources}"#
    )
}

/// Runs `cmd` (`pipe run` of a data-parallel stage) with its ranks meeting
/// on loopback: the test node's name is not in DNS (the job inherits the
/// submitter's environment).
fn ranks_meet(mut cmd: Command) -> std::process::Output {
    cmd.env("MASTER_ADDR", "127.0.0.1")
        .env("PIPE_DIST_TIMEOUT", "60")
        .output()
        .unwrap()
}

/// `ws`'s fine-tune succeeded as 2 gloo ranks, with the output of `local_doc`.
fn same_as_two_local_ranks(
    cluster: &Cluster,
    out: &std::process::Output,
    ws: &TestWorkspace,
    local_doc: &serde_json::Value,
) {
    assert!(out.status.success(), "{}\n{}", stderr(out), cluster.logs());
    let doc = ws.run_json(&[]);
    assert_eq!(
        output_hash(local_doc, "finetune"),
        output_hash(&doc, "finetune")
    );
    let log = ws.read(".pipe/logs/m/finetune.log");
    assert!(
        log.contains("data parallel: 2 ranks, gloo backend"),
        "{log}"
    );
}

/// The data-parallel fine-tune of the data-parallel issue through Slurm: two
/// tasks through `srun`, each a `pipe-worker` rank that joins the group from
/// `SLURM_PROCID`/`SLURM_NTASKS`; the same output as two local ranks.
#[test]
fn a_two_task_data_parallel_finetune_equals_two_local_ranks() {
    let workspace = common::tiny_bert::workspace;
    let cluster = Cluster::start();
    let local_doc = workspace(&data_parallel("")).run_json(&[]);
    let two_tasks = "    executor: slurm\n    resources: {tasks_per_node: 2}\n";
    let remote = workspace(&data_parallel(two_tasks));
    let out = ranks_meet(pipe(&remote, &cluster, &["run", "pipe.yaml"]));
    same_as_two_local_ranks(&cluster, &out, &remote, &local_doc);
    assert_eq!(cluster.jobs_submitted(), 1);

    // The same on nodes that do not share the workspace: each rank fetches
    // the inputs into a scratch dir of its own; rank 0 pushes the output.
    let no_shared_fs = NoSharedFs::new();
    let apart = workspace(&data_parallel(two_tasks));
    let out = ranks_meet(no_shared_fs.pipe(&apart, &cluster, &["run", "pipe.yaml"]));
    same_as_two_local_ranks(&cluster, &out, &apart, &local_doc);

    // A launcher's group that is not the stage's nproc_per_node is refused:
    // the key records the world size.
    let three =
        workspace(&data_parallel(two_tasks).replace("nproc_per_node: 2", "nproc_per_node: 3"));
    let out = ranks_meet(pipe(&three, &cluster, &["run", "pipe.yaml"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let log = three.read(".pipe/logs/m/finetune.log");
    assert!(
        log.contains("the launcher's group has 2 ranks but the stage has nproc_per_node: 3"),
        "{log}"
    );
}

/// Multi-node data-parallel fine-tuning: `nodes: 2, tasks_per_node: 1` on a
/// two-node cluster (two slurmds), one `pipe-worker` rank per node through
/// `srun`: with nodes that share no filesystem (each rank fetches the inputs
/// into its own scratch dir) and with a shared workspace, the same output
/// as two local ranks.
#[test]
fn two_node_data_parallel_finetunes_equal_two_local_ranks() {
    let workspace = common::tiny_bert::workspace;
    let cluster = Cluster::with_nodes(2);
    let no_shared_fs = NoSharedFs::new();
    let local_doc = workspace(&data_parallel("")).run_json(&[]);
    let ws = workspace(&data_parallel(
        "    resources: {nodes: 2, tasks_per_node: 1}\n",
    ));
    let out = ranks_meet(no_shared_fs.pipe(&ws, &cluster, &["run", "pipe.yaml"]));
    same_as_two_local_ranks(&cluster, &out, &ws, &local_doc);
    let job = cluster.job("1");
    assert!(
        job.contains("NodeList=pipe[0-1]") && job.contains("NumNodes=2"),
        "{job}"
    );
    assert_eq!(no_shared_fs.job_files(), Vec::<String>::new());

    // And with the workspace shared by the nodes.
    let shared = workspace(&data_parallel(
        "    executor: slurm\n    resources: {nodes: 2, tasks_per_node: 1}\n",
    ));
    let out = ranks_meet(pipe(&shared, &cluster, &["run", "pipe.yaml"]));
    same_as_two_local_ranks(&cluster, &out, &shared, &local_doc);
    assert!(cluster.job("2").contains("NodeList=pipe[0-1]"));
}
