//! Params in `kind: shell` are data: through the real `pipe` binary and `sh`,
//! a value spliced into `cmd` is one word of text wherever it stands, and
//! `$PIPE_PARAM_<NAME>` carries it too.

mod common;

use common::TestWorkspace;

const INJECT: &str = "$(touch INJECTED)`touch INJECTED2`; touch INJECTED3 'q\"";

fn manifest(cmd: &str) -> String {
    format!(
        "version: 1\nname: s\nparams:\n  g: hello\n  max-len: 128\nstages:\n  echo:\n    kind: shell\n    with:\n      cmd: |\n        {cmd}\n"
    )
}

fn no_injection(ws: &TestWorkspace) {
    for f in ["INJECTED", "INJECTED2", "INJECTED3"] {
        assert!(!ws.path(f).exists(), "{f}: the param ran as code");
    }
}

#[test]
fn set_params_are_data_not_code() {
    let ws = TestWorkspace::new();
    ws.manifest(&manifest("printf '%s\\n' ${params.g} > $PIPE_OUT/g.txt"));
    assert_eq!(ws.ran(&["--set", &format!("g={INJECT}")]), ["echo"]);
    no_injection(&ws);
    assert_eq!(ws.read(".pipe/out/s/echo/g.txt"), format!("{INJECT}\n"));
}

#[test]
fn params_inside_quotes_stay_one_word() {
    let ws = TestWorkspace::new();
    ws.manifest(&manifest(
        r#"printf '<%s>' ${params.g} "${params.g}" 'x${params.g}y' "$PIPE_PARAM_G" > $PIPE_OUT/g.txt"#,
    ));
    assert_eq!(ws.ran(&["--set", &format!("g={INJECT}")]), ["echo"]);
    no_injection(&ws);
    assert_eq!(
        ws.read(".pipe/out/s/echo/g.txt"),
        format!("<{INJECT}><{INJECT}><x{INJECT}y><{INJECT}>")
    );
    // Plain values read as before.
    assert_eq!(ws.ran(&[]), ["echo"]);
    assert_eq!(
        ws.read(".pipe/out/s/echo/g.txt"),
        "<hello><hello><xhelloy><hello>"
    );
}

#[test]
fn a_param_named_as_pipe_param_is_exported_and_keyed() {
    let ws = TestWorkspace::new();
    ws.manifest(&manifest(
        r#"printf %s "$PIPE_PARAM_MAX_LEN" > $PIPE_OUT/n.txt"#,
    ));
    assert_eq!(ws.ran(&[]), ["echo"]);
    assert_eq!(ws.read(".pipe/out/s/echo/n.txt"), "128");
    assert_eq!(ws.ran(&["--set", "max-len=64"]), ["echo"]);
    assert_eq!(ws.read(".pipe/out/s/echo/n.txt"), "64");
    // Another param does not touch this stage's key.
    assert!(ws.ran(&["--set", "max-len=64", "--set", "g=x"]).is_empty());
}

/// A `'` in a comment or a heredoc is not a quote; the value is still never
/// code (regression: the quote tracker read `don't` as opening a quote and
/// spliced the value into the script unquoted).
#[test]
fn quotes_in_comments_and_heredocs_do_not_let_a_param_run() {
    let ws = TestWorkspace::new();
    ws.manifest(
        "version: 1\nname: s\nparams:\n  g: hello\nstages:\n  echo:\n    kind: shell\n    with:\n      cmd: |\n        # don't forget\n        printf '<%s>' ${params.g} > $PIPE_OUT/g.txt\n        cat > $PIPE_OUT/h.txt <<EOF\n        it's ${params.g}\n        EOF\n",
    );
    assert_eq!(ws.ran(&["--set", &format!("g={INJECT}")]), ["echo"]);
    no_injection(&ws);
    assert_eq!(ws.read(".pipe/out/s/echo/g.txt"), format!("<{INJECT}>"));
}
