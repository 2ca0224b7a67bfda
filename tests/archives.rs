//! Archive extraction by `download` through the real `pipe` binary, over real
//! HTTP on 127.0.0.1: archives built to escape the output dir, to expand past
//! `max_bytes` through hard links, or to make pipe read huge link targets.

mod common;

use common::http::Server;
use common::{files_under, TestWorkspace};

/// Levels from a running stage's output dir (`.pipe/cas-v1/tmp/stage-X/out`)
/// up to the workspace root: the chained links below aim there, so a
/// regression writes inside the test's temp dir, where it is seen.
const OUT_DEPTH: usize = 5;

fn manifest(ws: &TestWorkspace, server: &Server, name: &str, extra: &str) {
    ws.manifest(&format!(
        "version: 1\nname: d\nstages:\n  get:\n    kind: download\n    with: {{url: '{}/ok/{name}', retries: 0{extra}}}\n",
        server.base
    ));
}

fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn symlink(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, name, target).unwrap();
}

fn hard_link(b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, name, target).unwrap();
}

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, name, data).unwrap();
}

/// `a/b/…/up → ../…/..` (back to the output dir), then `esc → a/b/…/up/../…`:
/// each passes a lexical check, together they lead `OUT_DEPTH` levels up.
fn escape_chain(b: &mut tar::Builder<Vec<u8>>) {
    let dirs = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let deep = dirs.join("/");
    symlink(
        b,
        &format!("{deep}/up"),
        &[".."].repeat(dirs.len()).join("/"),
    );
    symlink(
        b,
        "esc",
        &format!("{deep}/up/{}", [".."].repeat(OUT_DEPTH).join("/")),
    );
}

#[test]
fn chained_symlinks_cannot_write_outside_the_output() {
    let server = Server::start();
    server.body(
        "evil.tar",
        tar_of(|b| {
            escape_chain(b);
            file(b, "esc/PWNED", b"written through a link");
        }),
    );
    let ws = TestWorkspace::new();
    manifest(&ws, &server, "evil.tar", "");
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("archive link `esc` has the name of another entry"),
        "{err}"
    );
    let pwned: Vec<_> = files_under(ws.root())
        .into_iter()
        .filter(|p| p.ends_with("PWNED") && !p.starts_with(ws.path(".pipe")))
        .collect();
    assert!(pwned.is_empty(), "written outside the output: {pwned:?}");
    assert!(!ws.path(".pipe/out/d/get").exists());
}

#[test]
fn chained_symlinks_leading_outside_are_refused() {
    let server = Server::start();
    server.body("evil.tar", tar_of(escape_chain));
    let ws = TestWorkspace::new();
    manifest(&ws, &server, "evil.tar", "");
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("archive link `esc` →") && err.contains("points outside the output directory"),
        "{err}"
    );
    assert!(!ws.path(".pipe/out/d/get").exists());
}

#[test]
fn a_hard_link_through_a_symlink_copies_nothing_from_outside() {
    let server = Server::start();
    server.body(
        "evil.tar",
        tar_of(|b| {
            escape_chain(b);
            hard_link(b, "stolen", "esc/secret.txt");
        }),
    );
    let ws = TestWorkspace::new();
    ws.file("secret.txt", "the workspace's secret");
    manifest(&ws, &server, "evil.tar", "");
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(
        err.contains("hard link `stolen` → `esc/secret.txt` does not name a regular file"),
        "{err}"
    );
    for f in files_under(&ws.path(".pipe")) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(
            !text.contains("the workspace's secret"),
            "copied into {f:?}"
        );
    }
}

#[test]
fn hard_links_count_toward_max_bytes() {
    let server = Server::start();
    server.body(
        "bomb.tar",
        tar_of(|b| {
            file(b, "big.bin", &vec![7u8; 1 << 20]);
            for i in 0..300 {
                hard_link(b, &format!("copy{i}.bin"), "big.bin");
            }
        }),
    );
    let ws = TestWorkspace::new();
    manifest(&ws, &server, "bomb.tar", ", max_bytes: 10000000");
    let err = ws.fails(&["run", "pipe.yaml"]);
    assert!(err.contains("archive expands past 10000000 bytes"), "{err}");
    let written: u64 = files_under(&ws.path(".pipe"))
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    assert!(written < 20_000_000, "{written} bytes written");
}

/// A link target of 1 MB: refused after reading 4 KiB, in zip and tar.
#[test]
fn huge_link_targets_are_refused() {
    let target = "a/".repeat(1 << 19);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.add_symlink("link", &target, zip::write::SimpleFileOptions::default())
        .unwrap();
    let zip = zip.finish().unwrap().into_inner();
    let server = Server::start();
    server.body("long.zip", zip);
    server.body("long.tar", tar_of(|b| symlink(b, "link", &target)));
    for name in ["long.zip", "long.tar"] {
        let ws = TestWorkspace::new();
        manifest(&ws, &server, name, "");
        let err = ws.fails(&["run", "pipe.yaml"]);
        assert!(
            err.contains("a name or link target longer than"),
            "{name}: {err}"
        );
    }
}

#[test]
fn links_inside_the_output_are_kept() {
    let server = Server::start();
    server.body(
        "ok.tar",
        tar_of(|b| {
            file(b, "data/v1/train.csv", b"x,1\n");
            symlink(b, "data/latest", "v1");
            symlink(b, "train.csv", "data/latest/train.csv");
            hard_link(b, "data/copy.csv", "data/v1/train.csv");
        }),
    );
    let ws = TestWorkspace::new();
    manifest(&ws, &server, "ok.tar", "");
    assert_eq!(ws.ran(&[]), ["get"]);
    assert_eq!(ws.read(".pipe/out/d/get/train.csv"), "x,1\n");
    assert_eq!(ws.read(".pipe/out/d/get/data/copy.csv"), "x,1\n");
}
