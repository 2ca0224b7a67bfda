//! The conveniences of a first hour with `pipe`, through the real binary:
//! `dag` and `show` as JSON, Mermaid output that survives any stage name,
//! `pipe init`, `pipe completions`, and `pipe.yaml` as the default manifest.

mod common;

use common::{stderr, TestWorkspace};
use serde_json::{json, Value};

/// `end` is a Mermaid keyword and `a--b` reads as an edge: both as stages.
const AWKWARD: &str = r#"version: 1
name: awkward
stages:
  end:
    kind: shell
    with:
      cmd: echo hi > $PIPE_OUT/a.txt
  a--b:
    kind: shell
    inputs:
      src: end:a.txt
    with:
      cmd: cp $PIPE_IN_SRC $PIPE_OUT/b.txt
"#;

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

#[test]
fn mermaid_quotes_stage_names_and_uses_safe_ids() {
    let ws = TestWorkspace::new();
    ws.manifest(AWKWARD);
    let mermaid = stdout(&ws.pipe(&["dag", "pipe.yaml", "--format", "mermaid"]));
    assert_eq!(
        mermaid,
        "graph TD\n  s0[\"end (shell)\"]\n  s1[\"a--b (shell)\"]\n  s0 --> s1\n"
    );
}

#[test]
fn dag_json_lists_stages_in_run_order_with_their_deps() {
    let ws = TestWorkspace::new();
    ws.manifest(AWKWARD);
    let doc: Value = serde_json::from_str(&stdout(&ws.pipe(&["dag", "pipe.yaml", "--json"])))
        .expect("one JSON document");
    assert_eq!(
        doc,
        json!({"pipeline": "awkward", "stages": [
            {"name": "end", "kind": "shell", "deps": []},
            {"name": "a--b", "kind": "shell", "deps": ["end"]},
        ]})
    );
    let out = ws.pipe(&["dag", "pipe.yaml", "--json", "--format", "dot"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn show_json_has_the_text_facts() {
    let ws = TestWorkspace::new();
    ws.manifest(AWKWARD);
    ws.run(&[]);
    let doc: Value =
        serde_json::from_str(&stdout(&ws.pipe(&["show", "pipe.yaml", "end", "--json"])))
            .expect("one JSON document");
    let text = stdout(&ws.pipe(&["show", "pipe.yaml", "end"]));
    assert_eq!(doc["stage"], "end");
    assert_eq!(doc["kind"], "shell");
    for field in ["key", "output"] {
        let value = doc[field].as_str().expect(field);
        assert_eq!(value.len(), 64, "{field}: {value}");
        assert!(text.contains(value), "{text}");
    }
    let path = doc["path"].as_str().expect("path");
    assert!(std::path::Path::new(path).join("a.txt").is_file(), "{path}");
    assert_eq!(
        doc["files"],
        json!([{
            "path": "a.txt",
            "size": 3,
            "sha256": "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4",
            "executable": false,
        }])
    );
    assert!(doc["stats"].is_object(), "{doc}");
}

#[test]
fn init_writes_a_manifest_that_runs_and_ignores_the_store_once() {
    let ws = TestWorkspace::new();
    let out = ws.pipe(&["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Created pipe.yaml"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ws.read(".gitignore"), ".pipe/\n");
    // Every command falls back to pipe.yaml in the current folder.
    for args in [&["validate"][..], &["dag"], &["status"]] {
        let out = ws.pipe(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    let done = ws.run(&[]);
    assert!(done.iter().all(|(_, status)| status == "ran"), "{done:?}");
    let out = ws.pipe(&["show", "upper", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A second init refuses: the manifest and .gitignore stay as they are.
    std::fs::write(ws.path("pipe.yaml"), "# mine\n").unwrap();
    let out = ws.pipe(&["init"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("pipe.yaml already exists; not overwriting it"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ws.read("pipe.yaml"), "# mine\n");

    // Another template appends nothing to a .gitignore that ignores .pipe/.
    let out = ws.pipe(&["init", "--template", "cola"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ws.read(".gitignore"), ".pipe/\n");
    let out = ws.pipe(&["validate", "cola.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(ws.read("cola.yaml").contains("pipe run cola.yaml"));
}

#[test]
fn init_appends_to_an_existing_gitignore() {
    let ws = TestWorkspace::new();
    ws.file(".gitignore", "target");
    let out = ws.pipe(&["init", "--template", "sst2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ws.read(".gitignore"), "target\n.pipe/\n");
    assert!(ws.path("sst2.yaml").is_file());
    assert!(!ws.path("pipe.yaml").exists());
}

#[test]
fn commands_without_a_manifest_say_there_is_no_pipe_yaml() {
    let ws = TestWorkspace::new();
    for args in [
        &["run"][..],
        &["status"],
        &["dag"],
        &["validate"],
        &["show", "make"],
    ] {
        let out = ws.pipe(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains(
                "no pipe.yaml in the current folder: name a manifest, or create one with `pipe init`"
            ),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(!ws.path(".pipe").exists());
}

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    let ws = TestWorkspace::new();
    for (shell, marker) in [
        ("bash", "_pipe()"),
        ("zsh", "#compdef pipe"),
        ("fish", "complete -c pipe"),
    ] {
        let script = stdout(&ws.pipe(&["completions", shell]));
        assert!(script.contains(marker), "{shell}: {script}");
        for cmd in ["run", "status", "init", "completions"] {
            assert!(script.contains(cmd), "{shell}: no {cmd}");
        }
    }
    let out = ws.pipe(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Off a terminal, progress is plain lines (with `-v`) or nothing: no spinner,
/// no escape codes. A download's lines carry bytes, rate and time left.
#[test]
fn progress_off_a_terminal_is_plain_lines_with_bytes_rate_and_eta() {
    let server = common::http::Server::start();
    server.body("big.bin", vec![7; 9_000_000]);
    let ws = TestWorkspace::new();
    ws.manifest(&format!(
        "version: 1\nname: big\nstages:\n  big:\n    kind: download\n    with: {{url: \"{}/ok/big.bin\"}}\n",
        server.base
    ));
    let out = ws.pipe(&["run", "pipe.yaml", "-v"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let progress: Vec<&str> = err.lines().filter(|l| l.contains("[big]")).collect();
    assert!(
        progress
            .iter()
            .any(|l| l.starts_with("       [big] big.bin: ")
                && l.contains("/9.0 MB · ")
                && l.contains(" MB/s · ETA ")),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert!(err.contains("\n1 stage: 1 ran in "), "{err}");

    let again = ws.pipe(&["run", "pipe.yaml", "--force", "big"]);
    let err = stderr(&again);
    assert_eq!(again.status.code(), Some(0), "{err}");
    assert!(!err.contains("[big]") && !err.contains('\u{1b}'), "{err}");
}
