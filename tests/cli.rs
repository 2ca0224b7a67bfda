//! The conveniences of a first hour with `pipe`, through the real binary:
//! `dag` and `show` as JSON, Mermaid output that survives any stage name.

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
