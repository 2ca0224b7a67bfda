//! Lock files through the real `pipe` binary: one lock per manifest, pins
//! that belong to what was downloaded, unreadable locks refused, and the one
//! workspace-root rule.

mod common;

use common::http::Server;
use common::{files_under, stderr, TestWorkspace};

/// A pipeline `name` whose stage `data` downloads `url` (unpinned) and whose
/// stage `count` reads it.
fn manifest(name: &str, url: &str) -> String {
    format!(
        "version: 1\nname: {name}\nstages:\n  data:\n    kind: download\n    with: {{url: '{url}', retries: 1, timeout: 5}}\n  count:\n    kind: shell\n    inputs: {{d: 'data:'}}\n    with: {{cmd: 'ls $PIPE_IN_D > $PIPE_OUT/ls.txt'}}\n"
    )
}

fn sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

fn run_ok(ws: &TestWorkspace, args: &[&str]) -> String {
    let out = ws.pipe(args);
    assert!(out.status.success(), "pipe {args:?}: {}", stderr(&out));
    stderr(&out)
}

#[test]
fn two_manifests_in_one_folder_keep_their_own_locks_and_pins() {
    let server = Server::start();
    server.body("cola.tsv", b"cola\n".to_vec());
    server.body("sst2.tsv", b"sst2\n".to_vec());
    let ws = TestWorkspace::new();
    ws.file(
        "cola.yaml",
        &manifest("cola", &format!("{}/ok/cola.tsv", server.base)),
    );
    ws.file(
        "sst2.yaml",
        &manifest("sst2", &format!("{}/ok/sst2.tsv", server.base)),
    );
    run_ok(&ws, &["run", "cola.yaml"]);
    run_ok(&ws, &["run", "sst2.yaml"]);
    assert!(!ws.path("pipe.lock").exists());
    let (cola, sst2) = (ws.read("cola.lock"), ws.read("sst2.lock"));
    assert!(
        cola.starts_with("# cola.lock: written by `pipe run`"),
        "{cola}"
    );
    assert!(cola.contains("pipeline: cola") && cola.contains(&sha256(b"cola\n")));
    assert!(!cola.contains(&sha256(b"sst2\n")), "{cola}");
    assert!(sst2.contains("pipeline: sst2") && sst2.contains(&sha256(b"sst2\n")));
    // Each is still cached, and its record is its own.
    for m in ["cola.yaml", "sst2.yaml"] {
        let out = ws.pipe(&["status", m]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().all(|l| l.contains("cached")), "{m}: {text}");
    }
}

#[test]
fn a_legacy_pipe_lock_is_taken_over_once_by_its_own_pipeline() {
    let server = Server::start();
    server.body("a.tsv", b"a v1\n".to_vec());
    server.body("b.tsv", b"b\n".to_vec());
    let ws = TestWorkspace::new();
    // An older layout: `pipe.lock` written for pipeline `a`.
    ws.file(
        "pipe.yaml",
        &manifest("a", &format!("{}/ok/a.tsv", server.base)),
    );
    run_ok(&ws, &["run", "pipe.yaml"]);
    let legacy = ws.read("pipe.lock");
    std::fs::rename(ws.path("pipe.yaml"), ws.path("a.yaml")).unwrap();
    ws.file(
        "b.yaml",
        &manifest("b", &format!("{}/ok/b.tsv", server.base)),
    );

    // `b` has stages of the same names but takes nothing from `a`'s lock.
    run_ok(&ws, &["run", "b.yaml"]);
    let b = ws.read("b.lock");
    assert!(
        b.contains(&sha256(b"b\n")) && !b.contains(&sha256(b"a v1\n")),
        "{b}"
    );

    // `a` keeps its pin: changed upstream bytes are refused on a fresh cache.
    server.body("a.tsv", b"a v2\n".to_vec());
    std::fs::remove_dir_all(ws.path(".pipe")).unwrap();
    let err = ws.fails(&["run", "a.yaml"]);
    assert!(
        err.contains("changed since") && err.contains("--force data"),
        "{err}"
    );
    run_ok(&ws, &["run", "a.yaml", "--force", "data"]);
    assert!(ws.read("a.lock").contains(&sha256(b"a v2\n")));
    // The legacy lock is left as it was (another manifest may still need it).
    assert_eq!(ws.read("pipe.lock"), legacy);
}

#[test]
fn a_pin_belongs_to_the_url_not_to_the_stage_name() {
    let server = Server::start();
    server.body("one.tsv", b"one\n".to_vec());
    server.body("two.tsv", b"two\n".to_vec());
    let ws = TestWorkspace::new();
    ws.manifest(&manifest("p", &format!("{}/ok/one.tsv", server.base)));
    run_ok(&ws, &["run", "pipe.yaml"]);
    // The stage now downloads another URL: it is not judged against one.tsv's pin.
    ws.manifest(&manifest("p", &format!("{}/ok/two.tsv", server.base)));
    run_ok(&ws, &["run", "pipe.yaml"]);
    let lock = ws.read("pipe.lock");
    assert!(
        lock.contains("two.tsv") && lock.contains(&sha256(b"two\n")),
        "{lock}"
    );
    assert!(!lock.contains(&sha256(b"one\n")), "{lock}");
    // Credentials in the URL never reach the lock.
    let with_user = format!("{}/ok/two.tsv", server.base).replace("://", "://user:s3cret@");
    ws.manifest(&manifest("p", &with_user));
    run_ok(&ws, &["run", "pipe.yaml", "--force", "data"]);
    assert!(!ws.read("pipe.lock").contains("s3cret"));
}

const SHELL: &str = "version: 1\nname: s\nstages:\n  a:\n    kind: shell\n    with: {cmd: 'touch ran-a; echo a > $PIPE_OUT/a.txt'}\n  b:\n    kind: shell\n    inputs: {a: 'a:'}\n    with: {cmd: 'cp $PIPE_IN_A/a.txt $PIPE_OUT/b.txt'}\n";

/// Ways a committed lock gets broken, and the line the error must name.
fn broken_locks(good: &str) -> Vec<(&'static str, String, usize)> {
    let lines: Vec<&str> = good.lines().collect();
    let key_line = lines
        .iter()
        .position(|l| l.trim_start().starts_with("key:"))
        .unwrap();
    let mut conflict = lines.clone();
    let ours = lines[key_line].to_string();
    let theirs = ours.replace("key: ", "key: 0");
    let block = [
        "<<<<<<< HEAD",
        ours.as_str(),
        "=======",
        theirs.as_str(),
        ">>>>>>> other",
    ];
    conflict.splice(key_line..=key_line, block);
    let truncated = good[..good.find("output:").unwrap()].to_string();
    let wrong_type = good.replacen("stages:\n", "stages:\n  a: 5\n", 1);
    vec![
        ("conflict markers", conflict.join("\n") + "\n", key_line + 1),
        ("truncation", truncated, 0),
        ("a wrong type", wrong_type, 0),
    ]
}

#[test]
fn a_lock_that_cannot_be_parsed_is_an_error_and_nothing_runs() {
    let ws = TestWorkspace::new();
    ws.manifest(SHELL);
    run_ok(&ws, &["run", "pipe.yaml"]);
    let good = ws.read("pipe.lock");
    std::fs::remove_file(ws.path("ran-a")).unwrap();
    let records = || files_under(&ws.path(".pipe/cas-v1/runs")).len();
    let before = records();
    assert!(before >= 2);
    for (what, text, line) in broken_locks(&good) {
        ws.file("pipe.lock", &text);
        for cmd in [
            vec!["run", "pipe.yaml", "--force-all"],
            vec!["status", "pipe.yaml"],
            vec!["show", "pipe.yaml", "a"],
            vec!["gc", "pipe.yaml"],
        ] {
            let out = ws.pipe(&cmd);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{what}: {cmd:?}: {err}");
            assert!(
                err.contains("lock file pipe.lock:")
                    && (err.contains("cannot be parsed") || err.contains("merge conflict")),
                "{what}: {cmd:?}: {err}"
            );
            if line > 0 {
                assert!(
                    err.contains(&format!("pipe.lock:{line}:")),
                    "{what}: {cmd:?}: {err}"
                );
            }
        }
        assert!(!ws.path("ran-a").exists(), "{what}: a stage ran");
        assert_eq!(records(), before, "{what}: gc removed run records");
        assert_eq!(ws.read("pipe.lock"), text, "{what}: the lock was rewritten");
    }
    // A missing lock is fine: everything is still cached.
    std::fs::remove_file(ws.path("pipe.lock")).unwrap();
    run_ok(&ws, &["run", "pipe.yaml"]);
    assert!(!ws.path("ran-a").exists());
}

#[test]
fn every_command_finds_the_workspace_root_by_the_same_rule() {
    let ws = TestWorkspace::new();
    std::fs::create_dir_all(ws.path(".git")).unwrap();
    ws.file("pipelines/s.yaml", SHELL);
    std::fs::create_dir_all(ws.path("pipelines/notes")).unwrap();
    // Before any run there is no `.pipe`: the `.git` marks the root for every command.
    let out = ws
        .cmd(&["endpoints"])
        .current_dir(ws.path("pipelines/notes"))
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains(&format!("no endpoints in {}\n", ws.root().display())),
        "{}",
        stderr(&out)
    );
    run_ok(&ws, &["run", "pipelines/s.yaml"]);
    assert!(ws.path(".pipe").is_dir() && !ws.path("pipelines/.pipe").exists());
    // `pipe gc` from a subfolder cleans that workspace's store.
    let out = ws
        .cmd(&["gc"])
        .current_dir(ws.path("pipelines/notes"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("Removed"), "{}", stderr(&out));
}
