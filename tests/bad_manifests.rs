//! Every manifest in `tests/manifests/bad/` must be rejected with exit code 2,
//! write nothing, print the message in the `# expect:` lines at its top, and
//! none of the `# not:` lines.

mod common;

use common::{stderr, TestWorkspace};

#[test]
fn bad_manifests_are_rejected_with_located_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        let ws = TestWorkspace::new();
        ws.manifest(&src);
        for cmd in ["validate", "run"] {
            let out = ws.pipe(&[cmd, "pipe.yaml"]);
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{}: {cmd}: {err}",
                path.display()
            );
            for expect in src.lines().filter_map(|l| l.strip_prefix("# expect: ")) {
                assert!(
                    err.contains(expect),
                    "{}: expected {expect:?} in:\n{err}",
                    path.display()
                );
            }
            for reject in src.lines().filter_map(|l| l.strip_prefix("# not: ")) {
                assert!(
                    !err.contains(reject),
                    "{}: did not expect {reject:?} in:\n{err}",
                    path.display()
                );
            }
        }
        assert!(
            !ws.path(".pipe").exists(),
            "{}: wrote .pipe",
            path.display()
        );
        assert!(!ws.path("pipe.lock").exists());
        checked += 1;
    }
    assert!(checked >= 6);
}
