//! The worker links the libtorch that `scripts/setup-libtorch` installed and
//! runs without any environment set up.

#[test]
fn worker_reports_libtorch() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pipe-worker"))
        .arg("info")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run pipe-worker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(
        info["libtorch"].as_str().unwrap().starts_with("2.11.0"),
        "{info}"
    );
    assert!(info["threads"].as_i64().unwrap() >= 1);
}
