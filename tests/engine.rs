//! End-to-end tests of the engine through the real `pipe` binary: caching,
//! reruns, early cutoff, failures, crash safety, locking, gc and corruption.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use common::{files_under, stderr, TestWorkspace};

const DEMO: &str = r#"version: 1
name: demo
params:
  greeting: hello
  other: x
stages:
  make:
    kind: shell
    with:
      cmd: echo ${params.greeting} > $PIPE_OUT/greeting.txt
  upper:
    kind: shell
    inputs:
      src: make:greeting.txt
    with:
      cmd: tr a-z A-Z < $PIPE_IN_SRC > $PIPE_OUT/upper.txt
  side:
    kind: shell
    with:
      cmd: echo ${params.other} > $PIPE_OUT/side.txt
"#;

#[test]
fn first_run_runs_all_second_runs_none() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    assert_eq!(ws.ran(&[]), ["make", "upper", "side"]);
    assert_eq!(ws.read(".pipe/out/demo/upper/upper.txt"), "HELLO\n");
    assert!(ws.ran(&[]).is_empty());
    assert!(ws.read("pipe.lock").contains("greeting: hello"));
}

#[test]
fn set_param_reruns_exactly_its_users_and_dependents() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    ws.run(&[]);
    let status = ws.pipe(&["status", "pipe.yaml", "--set", "greeting=hi"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("make   will run: param greeting changed: hello → hi"),
        "{text}"
    );
    assert!(
        text.contains("upper  will run: upstream make will run"),
        "{text}"
    );
    assert!(text.contains("side   cached"), "{text}");
    assert_eq!(ws.ran(&["--set", "greeting=hi"]), ["make", "upper"]);
    assert_eq!(ws.read(".pipe/out/demo/upper/upper.txt"), "HI\n");
    // Going back is served from the cache.
    assert!(ws.ran(&[]).is_empty());
    assert_eq!(ws.read(".pipe/out/demo/upper/upper.txt"), "HELLO\n");
}

#[test]
fn editing_a_workspace_input_reruns_its_consumers() {
    let ws = TestWorkspace::new();
    ws.file("data/in.txt", "one\n").manifest(
        "version: 1\nname: w\nstages:\n  count:\n    kind: shell\n    inputs: {data: data/in.txt}\n    with: {cmd: wc -l < $PIPE_IN_DATA > $PIPE_OUT/n}\n  other:\n    kind: shell\n    with: {cmd: echo > $PIPE_OUT/o}\n",
    );
    assert_eq!(ws.ran(&[]), ["count", "other"]);
    ws.file("data/in.txt", "one\ntwo\n");
    let status = String::from_utf8_lossy(&ws.pipe(&["status", "pipe.yaml"]).stdout).into_owned();
    assert!(
        status.contains("count  will run: input data/in.txt changed"),
        "{status}"
    );
    assert_eq!(ws.ran(&[]), ["count"]);
    assert_eq!(ws.read(".pipe/out/w/count/n").trim(), "2");
}

#[test]
fn editing_a_file_in_a_folder_input_reruns_even_beside_a_sibling_that_sorts_between() {
    // `raw` < `raw.tsv` < `raw/x`: the folder `raw` must still cover `raw/x`.
    let ws = TestWorkspace::new();
    ws.file("data/raw/x", "one\n")
        .file("data/raw.tsv", "t\n")
        .manifest(
            "version: 1\nname: w\nstages:\n  cat:\n    kind: shell\n    inputs: {data: data}\n    with: {cmd: cat $PIPE_IN_DATA/raw/x > $PIPE_OUT/x}\n",
        );
    assert_eq!(ws.ran(&[]), ["cat"]);
    assert!(ws.ran(&[]).is_empty());
    ws.file("data/raw/x", "two\n");
    assert_eq!(ws.ran(&[]), ["cat"]);
    assert_eq!(ws.read(".pipe/out/w/cat/x"), "two\n");
}

/// Many folders of settled files (old enough for the stat cache to trust),
/// so that a no-op run is served by the parallel walk and the stat cache.
fn settled_folders(ws: &TestWorkspace, folders: usize, files: usize) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    for d in 0..folders {
        for f in 0..files {
            let rel = format!("data/d{d:02}/f{f:03}.txt");
            ws.file(&rel, &format!("{d:02}-{f:03}\n"));
            let file = std::fs::File::options()
                .write(true)
                .open(ws.path(&rel))
                .unwrap();
            file.set_modified(old).unwrap();
        }
    }
}

#[test]
fn a_no_op_over_many_folders_still_sees_a_same_size_same_mtime_edit_of_one_file() {
    let ws = TestWorkspace::new();
    settled_folders(&ws, 24, 60);
    ws.manifest(
        "version: 1\nname: w\nstages:\n  pick:\n    kind: shell\n    inputs: {data: data}\n    with: {cmd: cat $PIPE_IN_DATA/d17/f042.txt > $PIPE_OUT/x}\n",
    );
    assert_eq!(ws.ran(&[]), ["pick"]);
    // The first run recorded every file: the second is served by the stat cache.
    assert!(ws.ran(&[]).is_empty());
    assert!(ws.ran(&[]).is_empty());
    // Same size, and the mtime put back: only the ctime tells.
    let edited = ws.path("data/d17/f042.txt");
    let mtime = std::fs::metadata(&edited).unwrap().modified().unwrap();
    std::fs::write(&edited, "XX-XXX\n").unwrap();
    let file = std::fs::File::options().write(true).open(&edited).unwrap();
    file.set_modified(mtime).unwrap();
    assert_eq!(
        std::fs::metadata(&edited).unwrap().modified().unwrap(),
        mtime
    );
    assert_eq!(ws.ran(&[]), ["pick"]);
    assert_eq!(ws.read(".pipe/out/w/pick/x"), "XX-XXX\n");
    assert!(ws.ran(&[]).is_empty());
    // A file in another folder, edited plainly, among the cached ones.
    ws.file("data/d03/f059.txt", "changed\n");
    assert_eq!(ws.ran(&[]), ["pick"]);
}

#[test]
fn early_cutoff_keeps_downstream_cached() {
    let ws = TestWorkspace::new();
    ws.manifest(
        "version: 1\nname: c\nparams: {n: 1}\nstages:\n  a:\n    kind: shell\n    with: {cmd: 'echo ${params.n} > /dev/null; echo same > $PIPE_OUT/o'}\n  b:\n    kind: shell\n    inputs: {x: 'a:'}\n    with: {cmd: 'cat $PIPE_IN_X/o > $PIPE_OUT/o'}\n",
    );
    assert_eq!(ws.ran(&[]), ["a", "b"]);
    assert_eq!(
        ws.run(&["--set", "n=2"]),
        [("a".into(), "ran".into()), ("b".into(), "cached".into())]
    );
}

#[test]
fn failing_stage_stops_dependents_others_finish() {
    let ws = TestWorkspace::new();
    ws.manifest(
        "version: 1\nname: f\nstages:\n  bad:\n    kind: shell\n    with: {cmd: 'echo boom-detail >&2; exit 7'}\n  child:\n    kind: shell\n    inputs: {x: 'bad:'}\n    with: {cmd: 'true'}\n  fine:\n    kind: shell\n    with: {cmd: 'echo ok > $PIPE_OUT/ok'}\n",
    );
    let out = ws.pipe(&["run", "pipe.yaml", "-j", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("Failed bad: command exited with status 7"),
        "{err}"
    );
    assert!(err.contains("boom-detail"), "{err}");
    assert!(
        err.contains("Skipped child: upstream stage `bad` did not complete"),
        "{err}"
    );
    assert!(err.contains("Ran fine"), "{err}");
    assert_eq!(ws.read(".pipe/out/f/fine/ok"), "ok\n");
}

#[test]
fn json_has_the_documented_shape() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    let doc = ws.run_json(&[]);
    for s in doc["stages"].as_array().unwrap() {
        for field in [
            "name",
            "status",
            "key",
            "output_hash",
            "output_dir",
            "seconds",
        ] {
            assert!(s.get(field).is_some(), "missing {field} in {s}");
        }
        assert_eq!(s["key"].as_str().unwrap().len(), 64);
    }
}

#[test]
fn moving_the_workspace_keeps_the_keys() {
    let a = TestWorkspace::new();
    let b = TestWorkspace::new();
    a.manifest(DEMO);
    b.manifest(DEMO);
    let keys = |ws: &TestWorkspace| -> Vec<String> {
        ws.run_json(&[])["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(&a), keys(&b));
}

#[test]
fn effect_receipt_is_verified_not_trusted() {
    let ws = TestWorkspace::new();
    ws.manifest(
        "version: 1\nname: e\nstages:\n  publish:\n    kind: shell\n    with:\n      cmd: 'echo v1 > published.txt; echo published.txt > $PIPE_OUT/receipt'\n      verify: 'test -f \"$(cat $PIPE_OUT/receipt)\"'\n",
    );
    assert_eq!(ws.ran(&[]), ["publish"]);
    assert_eq!(ws.run(&[]), [("publish".into(), "cached".into())]);
    std::fs::remove_file(ws.path("published.txt")).unwrap();
    let status = String::from_utf8_lossy(&ws.pipe(&["run", "pipe.yaml"]).stderr).into_owned();
    assert!(
        status.contains("Running publish: receipt no longer holds"),
        "{status}"
    );
    assert!(ws.path("published.txt").exists());
}

#[test]
fn corrupted_store_object_is_detected_and_rebuilt() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    ws.run(&[]);
    for obj in files_under(&ws.path(".pipe/cas-v1/objects")) {
        let content = std::fs::read(&obj).unwrap();
        if content == b"HELLO\n" {
            std::fs::set_permissions(&obj, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::write(&obj, b"EVIL!\n").unwrap();
        }
    }
    let out = ws.pipe(&["run", "pipe.yaml"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Running upper: stored output is corrupt"),
        "{err}"
    );
    assert_eq!(ws.read(".pipe/out/demo/upper/upper.txt"), "HELLO\n");
}

#[test]
fn gc_keeps_referenced_objects_and_drops_the_rest() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    ws.run(&[]);
    ws.run(&["--set", "greeting=hi"]);
    let before = files_under(&ws.path(".pipe/cas-v1/objects")).len();
    let out = ws.pipe(&["gc", "pipe.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = files_under(&ws.path(".pipe/cas-v1/objects")).len();
    assert!(after < before, "{before} -> {after}");
    // What the lock references is still served from cache; the rest reruns.
    assert!(ws.ran(&["--set", "greeting=hi"]).is_empty());
    assert_eq!(ws.ran(&[]), ["make", "upper"]);
}

#[test]
fn gc_says_what_it_removed_and_refuses_a_workspace_without_a_store() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    let out = ws.pipe(&["gc", "pipe.yaml"]);
    let root = ws.root().canonicalize().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!("error: no pipe store in {}\n", root.display())
    );
    ws.run(&[]);
    let out = ws.pipe(&["gc", "pipe.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("     Removed 0 objects (0.0 MB) and 0 run records; kept "),
        "{err}"
    );
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// A manifest whose `slow` stage, while `gate` is a FIFO, reports on it and then
/// blocks until `release` (also a FIFO) is written.
const GATED: &str = "version: 1\nname: g\nstages:\n  first:\n    kind: shell\n    with: {cmd: 'echo 1 > $PIPE_OUT/one'}\n  slow:\n    kind: shell\n    inputs: {x: 'first:'}\n    with: {cmd: 'if [ -p gate ]; then echo started > $PIPE_OUT/partial; echo started > gate; cat release > /dev/null; fi; echo done > $PIPE_OUT/done'}\n";

fn gated_workspace() -> TestWorkspace {
    let ws = TestWorkspace::new();
    ws.manifest(GATED);
    mkfifo(&ws.path("gate"));
    mkfifo(&ws.path("release"));
    ws
}

/// Blocks until `slow` has written its partial output and opened the gate.
fn wait_until_slow_started(ws: &TestWorkspace) {
    let mut started = String::new();
    std::fs::File::open(ws.path("gate"))
        .unwrap()
        .read_to_string(&mut started)
        .unwrap();
    assert_eq!(started.trim(), "started");
}

#[test]
fn sigkill_mid_stage_leaves_no_partial_entry() {
    let ws = gated_workspace();
    let mut child = ws
        .cmd(&["run", "pipe.yaml", "-j", "1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_slow_started(&ws);
    // SAFETY: kill(2) on our own child, not yet reaped, so its pid is not reused.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let records = files_under(&ws.path(".pipe/cas-v1/runs"));
    assert_eq!(records.len(), 1, "only `first` was committed: {records:?}");
    std::fs::remove_file(ws.path("gate")).unwrap();
    assert_eq!(
        ws.run(&[]),
        [
            ("first".into(), "cached".into()),
            ("slow".into(), "ran".into())
        ]
    );
    assert_eq!(ws.read(".pipe/out/g/slow/done"), "done\n");
    assert!(!ws.path(".pipe/out/g/slow/partial").exists());
    assert!(files_under(&ws.path(".pipe/cas-v1/tmp")).is_empty());
}

#[test]
fn a_second_run_waits_for_the_lock() {
    let ws = gated_workspace();
    let first = ws
        .cmd(&["run", "pipe.yaml", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_slow_started(&ws);
    let mut second = ws
        .cmd(&["run", "pipe.yaml", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The second run says it is waiting before doing anything.
    let mut err = BufReader::new(second.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(
        line.contains("Blocking") && line.contains("waiting for another pipe run"),
        "{line}"
    );
    std::fs::remove_file(ws.path("gate")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(ws.path("release"))
        .unwrap()
        .write_all(b"go")
        .unwrap();
    let first = first.wait_with_output().unwrap();
    let second = second.wait_with_output().unwrap();
    assert!(first.status.success() && second.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(
        common::stages(&doc),
        [
            ("first".into(), "cached".into()),
            ("slow".into(), "cached".into())
        ]
    );
}

#[test]
fn only_and_until_select_stages() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    assert_eq!(ws.ran(&["--until", "make"]), ["make"]);
    assert_eq!(ws.ran(&["--only", "upper"]), ["upper"]);
    assert_eq!(ws.ran(&["--force", "make"]), ["make", "side"]);
}

#[test]
fn only_with_an_uncached_upstream_skips_without_running() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    let out = ws.pipe(&["run", "pipe.yaml", "--only", "upper", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        common::stages(&doc),
        [
            ("make".into(), "skipped".into()),
            ("upper".into(), "skipped".into())
        ]
    );
    assert!(doc["stages"][0]["error"]
        .as_str()
        .unwrap()
        .contains("not selected and not cached"));
    assert!(!ws.path(".pipe/out/demo/make").exists());
}

#[test]
fn dag_formats() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    let dot = String::from_utf8(ws.pipe(&["dag", "pipe.yaml", "--format", "dot"]).stdout).unwrap();
    assert!(dot.contains("\"make\" -> \"upper\";"), "{dot}");
    let mermaid =
        String::from_utf8(ws.pipe(&["dag", "pipe.yaml", "--format", "mermaid"]).stdout).unwrap();
    assert!(mermaid.contains("s0[\"make (shell)\"]"), "{mermaid}");
    assert!(mermaid.contains("s0 --> s1"), "{mermaid}");
}

/// `pipe` must start in milliseconds: libtorch's static initialisers alone take
/// half a second. Only `pipe-worker` may link it.
#[test]
fn pipe_binary_does_not_link_libtorch() {
    let out = std::process::Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_pipe"))
        .output()
        .expect("ldd");
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{libs}");
    // Library names only: a hex load address may hold "c10".
    let names: Vec<&str> = libs
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("torch") || n.contains("c10")),
        "{libs}"
    );
}

/// Replace every store object holding `from` with `to` (made writable first).
fn tamper_objects(ws: &TestWorkspace, from: &[u8], to: Option<&[u8]>) -> usize {
    let mut n = 0;
    for obj in files_under(&ws.path(".pipe/cas-v1/objects")) {
        if std::fs::read(&obj).unwrap() == from {
            n += 1;
            match to {
                Some(to) => {
                    std::fs::set_permissions(&obj, std::fs::Permissions::from_mode(0o644)).unwrap();
                    std::fs::write(&obj, to).unwrap();
                }
                None => std::fs::remove_file(&obj).unwrap(),
            }
        }
    }
    n
}

#[test]
fn missing_store_object_is_a_miss_and_repaired() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    ws.run(&[]);
    assert_eq!(tamper_objects(&ws, b"HELLO\n", None), 1);
    let out = ws.pipe(&["run", "pipe.yaml"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Running upper: stored output is corrupt: object"),
        "{err}"
    );
    assert!(err.contains("is missing"), "{err}");
    assert_eq!(ws.read(".pipe/out/demo/upper/upper.txt"), "HELLO\n");
    // Repaired: the next run is fully cached.
    assert!(ws.ran(&[]).is_empty());
}

#[test]
fn truncated_run_record_is_a_miss_and_repaired() {
    let ws = TestWorkspace::new();
    ws.manifest(DEMO);
    ws.run(&[]);
    for rec in files_under(&ws.path(".pipe/cas-v1/runs")) {
        let bytes = std::fs::read(&rec).unwrap();
        std::fs::write(&rec, &bytes[..bytes.len() / 2]).unwrap();
    }
    assert_eq!(ws.ran(&[]), ["make", "upper", "side"]);
    assert!(ws.ran(&[]).is_empty());
    assert_eq!(ws.read(".pipe/out/demo/upper/upper.txt"), "HELLO\n");
}

#[test]
fn corrupt_object_shared_by_parallel_stages_is_repaired() {
    let ws = TestWorkspace::new();
    let mut yaml = String::from("version: 1\nname: s\nstages:\n");
    for i in 0..6 {
        yaml += &format!("  s{i}:\n    kind: shell\n    with: {{cmd: 'echo {i} > /dev/null; echo shared > $PIPE_OUT/x'}}\n");
    }
    ws.manifest(&yaml);
    ws.run(&["-j", "6"]);
    assert_eq!(tamper_objects(&ws, b"shared\n", Some(b"EVIL!!\n")), 1);
    let doc = ws.run_json(&["-j", "6"]);
    // Each stage either reran or found the object already repaired by another.
    let ran = common::with_status(&doc, "ran").len();
    assert!(ran >= 1, "{doc}");
    assert_eq!(ran + common::with_status(&doc, "cached").len(), 6, "{doc}");
    for i in 0..6 {
        assert_eq!(ws.read(&format!(".pipe/out/s/s{i}/x")), "shared\n");
    }
    assert!(ws.ran(&["-j", "6"]).is_empty());
}

#[test]
fn workspace_input_through_a_link_to_outside_is_rejected() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), "outside\n").unwrap();
    let ws = TestWorkspace::new();
    std::os::unix::fs::symlink(outside.path(), ws.path("linkdir")).unwrap();
    ws.manifest("version: 1\nname: l\nstages:\n  s:\n    kind: shell\n    inputs: {data: linkdir/secret}\n    with: {cmd: 'cat $PIPE_IN_DATA > $PIPE_OUT/o'}\n");
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("Failed s: input `data`: `linkdir/secret` resolves to"),
        "{err}"
    );
    assert!(err.contains("outside the workspace"), "{err}");
    assert!(!ws.path(".pipe/out/l/s/o").exists());
}

#[test]
fn workspace_input_through_a_link_inside_is_hashed_by_content() {
    let ws = TestWorkspace::new();
    ws.file("real/data.txt", "one\n");
    std::os::unix::fs::symlink("real", ws.path("linkdir")).unwrap();
    std::os::unix::fs::symlink("real/data.txt", ws.path("link.txt")).unwrap();
    ws.manifest("version: 1\nname: l\nstages:\n  s:\n    kind: shell\n    inputs: {a: linkdir/data.txt, b: link.txt}\n    with: {cmd: 'cat $PIPE_IN_A $PIPE_IN_B > $PIPE_OUT/o'}\n");
    assert_eq!(ws.ran(&[]), ["s"]);
    assert!(ws.ran(&[]).is_empty());
    ws.file("real/data.txt", "two\n");
    assert_eq!(ws.ran(&[]), ["s"]);
    assert_eq!(ws.read(".pipe/out/l/s/o"), "two\ntwo\n");
}

#[test]
fn dot_input_never_hashes_pipe_state_or_lock_files() {
    let ws = TestWorkspace::new();
    ws.file("data.txt", "x\n").manifest(
        "version: 1\nname: d\nstages:\n  all:\n    kind: shell\n    inputs: {ws: .}\n    with: {cmd: 'cat $PIPE_IN_WS/data.txt > $PIPE_OUT/o'}\n  other:\n    kind: shell\n    with: {cmd: 'echo > $PIPE_OUT/o'}\n",
    );
    let lock = |n: &str| {
        format!("# other.lock: written by `pipe run`. Commit it with the manifest.\nversion: 1\npipeline: o\nstages: {{}}\n# {n}\n")
    };
    ws.file("other.yaml", "version: 1\nname: o\nstages: {}\n");
    ws.file("other.lock", &lock("one"));
    ws.file("Chart.yaml", "name: c\n");
    ws.file("Chart.lock", "one\n");
    assert_eq!(ws.ran(&[]), ["all", "other"]);
    // The run wrote .pipe/ and the lock file; another manifest's lock changed.
    ws.file("other.lock", &lock("two"));
    assert!(ws.ran(&["--force", "other"]) == ["other"]);
    assert!(ws.ran(&[]).is_empty());
    // A real change still counts, another tool's lock file included.
    ws.file("data.txt", "y\n");
    assert_eq!(ws.ran(&[]), ["all"]);
    ws.file("Chart.lock", "two\n");
    assert_eq!(ws.ran(&[]), ["all"]);
}
