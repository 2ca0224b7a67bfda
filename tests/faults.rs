//! Faults through the real `pipe` binary: signals, SIGKILL at random moments,
//! stage processes left behind, values that used to panic a stage.

#![allow(clippy::print_stdout, reason = "reports what the SIGKILL loop checked")]

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Instant;

use common::{files_under, stderr, TestWorkspace};
use pipe_engine::cache::{Digest, RunRecord};

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// `slow`, while `gate` is a FIFO, starts a background grandchild (its pid in
/// `bg.pid`), reports on `gate` and blocks reading `release`.
const GATED: &str = "version: 1\nname: g\nstages:\n  first:\n    kind: shell\n    with: {cmd: 'echo 1 > $PIPE_OUT/one'}\n  slow:\n    kind: shell\n    inputs: {x: 'first:'}\n    with: {cmd: 'if [ -p gate ]; then (sleep 600; echo late > $PIPE_OUT/late) & echo $! > bg.pid; echo started > $PIPE_OUT/partial; echo started > gate; cat release > /dev/null; fi; echo done > $PIPE_OUT/done'}\n";

fn gated_workspace() -> TestWorkspace {
    let ws = TestWorkspace::new();
    ws.manifest(GATED);
    mkfifo(&ws.path("gate"));
    mkfifo(&ws.path("release"));
    ws
}

/// Starts `pipe run` and blocks until `slow` has started its grandchild.
fn start_until_slow_runs(ws: &TestWorkspace) -> (Child, Grandchild) {
    let child = ws
        .cmd(&["run", "pipe.yaml", "-j", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut started = String::new();
    std::fs::File::open(ws.path("gate"))
        .unwrap()
        .read_to_string(&mut started)
        .unwrap();
    assert_eq!(started.trim(), "started");
    let pid = ws.read("bg.pid").trim().parse().unwrap();
    (child, Grandchild(pid))
}

/// A stage's background process; killed when the test ends, whatever happened.
struct Grandchild(i32);

impl Grandchild {
    fn alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.0)) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        }
    }
}

impl Drop for Grandchild {
    fn drop(&mut self) {
        if self.alive() {
            // SAFETY: kill(2) on a pid checked alive above; at worst it is already gone.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

#[test]
fn sigint_and_sigterm_stop_the_stage_group_and_exit_130() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let ws = gated_workspace();
        let (child, bg) = start_until_slow_runs(&ws);
        assert!(bg.alive());
        // SAFETY: kill(2) on our own child, not yet reaped, so its pid is not reused.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(130), "signal {signal}: {err}");
        assert!(err.contains("(interrupted)"), "{err}");
        assert!(err.contains("error: interrupted"), "{err}");
        // The whole process group went, not only the shell.
        assert!(!bg.alive(), "the stage's background process survived");
        // Staging was discarded; only `first` was committed.
        assert!(files_under(&ws.path(".pipe/cas-v1/tmp")).is_empty());
        assert_eq!(files_under(&ws.path(".pipe/cas-v1/runs")).len(), 1);
        std::fs::remove_file(ws.path("gate")).unwrap();
        assert_eq!(
            ws.run(&[]),
            [
                ("first".into(), "cached".into()),
                ("slow".into(), "ran".into())
            ]
        );
        assert!(!ws.path(".pipe/out/g/slow/partial").exists());
    }
}

#[test]
fn sigkill_of_pipe_leaves_no_stage_process_behind() {
    let ws = gated_workspace();
    let (mut child, bg) = start_until_slow_runs(&ws);
    // SAFETY: kill(2) on our own child, not yet reaped, so its pid is not reused.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    std::fs::remove_file(ws.path("gate")).unwrap();
    // The next run, before anything else, stops what the dead run left.
    assert_eq!(
        ws.run(&[]),
        [
            ("first".into(), "cached".into()),
            ("slow".into(), "ran".into())
        ]
    );
    assert!(!bg.alive(), "the killed run's grandchild is still running");
    assert!(!ws.path(".pipe/out/g/slow/late").exists());
    assert!(files_under(&ws.path(".pipe/cas-v1/tmp")).is_empty());
}

#[test]
fn a_stage_cannot_leave_processes_running_after_it_exits() {
    let ws = TestWorkspace::new();
    ws.manifest("version: 1\nname: b\nstages:\n  s:\n    kind: shell\n    with: {cmd: '(sleep 600) & echo $! > bg.pid; echo ok > $PIPE_OUT/ok'}\n");
    ws.run(&[]);
    let bg = Grandchild(ws.read("bg.pid").trim().parse().unwrap());
    assert!(!bg.alive(), "the stage's background process outlived it");
}

#[test]
fn huge_timeouts_are_manifest_errors_not_panics() {
    for (kind, extra) in [
        ("download", "url: 'http://127.0.0.1:9/x', "),
        ("deploy", ""),
    ] {
        for bad in ["1e300", "-1", "0"] {
            let ws = TestWorkspace::new();
            let yaml = format!("version: 1\nname: t\nstages:\n  s:\n    kind: {kind}\n    with: {{{extra}timeout: {bad}}}\n");
            ws.manifest(&yaml);
            for cmd in ["validate", "run"] {
                let out = ws.pipe(&[cmd, "pipe.yaml"]);
                let err = stderr(&out);
                assert_eq!(out.status.code(), Some(2), "{kind} {bad} {cmd}: {err}");
                assert!(err.contains("stage `s`"), "{err}");
                assert!(err.contains("positive number of seconds"), "{err}");
                assert!(err.contains("pipe.yaml:6"), "{err}");
            }
            assert!(!ws.path(".pipe/lock").exists());
        }
    }
}

/// A small deterministic PRNG (splitmix64): the kill moments are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Every file under `dir` (relative path → bytes).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Every run record parses and names only objects whose content hashes to
/// their name; every object does; no temp file of an interrupted write is
/// left. Returns (records, objects) checked.
fn check_store(ws: &TestWorkspace) -> (usize, usize) {
    let cas = ws.path(".pipe/cas-v1");
    let mut records = 0;
    for rec in files_under(&cas.join("runs")) {
        let bytes = std::fs::read(&rec).unwrap();
        let run: RunRecord = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("corrupt run record {}: {e}", rec.display()));
        for (_, digest, exec, _) in run.output.files() {
            let hex = digest.to_hex();
            let name = if exec {
                format!("{hex}-x")
            } else {
                hex.clone()
            };
            let obj = cas.join("objects").join(&hex[..2]).join(name);
            assert!(obj.is_file(), "{} names a missing object", rec.display());
        }
        records += 1;
    }
    let mut objects = 0;
    for obj in files_under(&cas.join("objects")) {
        let name = obj.file_name().unwrap().to_str().unwrap();
        let hex = name.trim_end_matches("-x");
        assert_eq!(
            Digest::of_file(&obj).unwrap().to_hex(),
            hex,
            "corrupt object {}",
            obj.display()
        );
        objects += 1;
    }
    (records, objects)
}

/// SIGKILL `pipe run` at 50 random moments (fixed seed) of a pipeline of shell
/// and download stages, rerunning after each: the store never holds a corrupt
/// entry, every rerun succeeds, and the outputs always equal a clean run's.
#[test]
fn sigkill_at_random_moments_never_corrupts_the_store() {
    let server = common::http::Server::start();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    server.body("data.bin", body);
    let manifest = format!(
        "version: 1\nname: f\nparams: {{salt: ''}}\nstages:\n  get:\n    kind: download\n    with: {{url: '{}/ok/data.bin'}}\n  a:\n    kind: shell\n    inputs: {{d: 'get:'}}\n    with: {{cmd: 'for i in 1 2 3 4 5 6; do cat $PIPE_IN_D/* | cksum > $PIPE_OUT/a$i; echo ${{params.salt}} >> $PIPE_OUT/a$i; done'}}\n  b:\n    kind: shell\n    with: {{cmd: 'mkdir $PIPE_OUT/d; for i in 1 2 3 4; do head -c 400000 /dev/zero | tr \"\\\\0\" $i > $PIPE_OUT/d/$i; done; echo ${{params.salt}} > $PIPE_OUT/salt'}}\n  c:\n    kind: shell\n    inputs: {{a: 'a:', b: 'b:'}}\n    with: {{cmd: 'cat $PIPE_IN_A/* $PIPE_IN_B/d/* | sh -c \"cksum\" > $PIPE_OUT/c; cp -r $PIPE_IN_B/d $PIPE_OUT/copy'}}\n  d:\n    kind: shell\n    inputs: {{c: 'c:', g: 'get:'}}\n    with: {{cmd: 'cat $PIPE_IN_C/c > $PIPE_OUT/d; ls $PIPE_IN_G >> $PIPE_OUT/d'}}\n",
        server.base
    );

    // The reference: a clean run in its own workspace.
    let reference = TestWorkspace::new();
    reference.manifest(&manifest);
    let started = Instant::now();
    reference.run(&[]);
    let clean_run = started.elapsed();
    let expected = snapshot(&reference.path(".pipe/out/f"));
    assert_eq!(expected.len(), 1 + 6 + 5 + 5 + 1, "{:?}", expected.keys());

    let ws = TestWorkspace::new();
    ws.manifest(&manifest);
    let mut rng = Rng(0x5EED_0011);
    let mut window = clean_run;
    let (mut mid_run, mut records, mut objects) = (0, 0, 0);
    for i in 0..50 {
        // Start from varied states: an empty store, everything to redo, or a
        // different param whose outputs must not leak into the next run.
        let args: Vec<String> = match i % 5 {
            0 => {
                let _ = std::fs::remove_dir_all(ws.path(".pipe"));
                vec![]
            }
            1 | 3 => vec!["--force-all".into()],
            _ => vec!["--set".into(), format!("salt={i}")],
        };
        let mut all = vec!["run", "pipe.yaml", "-j", "3"];
        all.extend(args.iter().map(String::as_str));
        let mut child = ws
            .cmd(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // A random moment within `window`, which adapts to how long runs
        // take on this machine now: it shrinks after a kill that came too
        // late and grows after one that landed mid-run.
        std::thread::sleep(window.mul_f64(rng.unit()));
        if child.try_wait().unwrap().is_none() {
            mid_run += 1;
            window = window.mul_f64(1.1);
        } else {
            window = window.mul_f64(0.7);
        }
        child.kill().unwrap();
        child.wait().unwrap();

        let doc = ws.run_json(&[]);
        assert_eq!(
            snapshot(&ws.path(".pipe/out/f")),
            expected,
            "kill {i}: outputs differ from the clean run: {doc}"
        );
        let (r, o) = check_store(&ws);
        records += r;
        objects += o;
    }
    println!(
        "50 SIGKILLs ({mid_run} while pipe was running; clean run {:.0} ms): {records} run records and {objects} objects checked, 0 corrupt, 0 wrong outputs, 50/50 reruns succeeded",
        clean_run.as_secs_f64() * 1000.0
    );
    // Kills after the run ended prove nothing; most land mid-run.
    assert!(mid_run > 10, "only {mid_run} kills landed during a run");
}
