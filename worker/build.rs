//! Find libtorch the way torch-sys does (`$LIBTORCH`, set for this workspace in
//! `.cargo/config.toml` to the `.libtorch/` that `scripts/setup-libtorch`
//! fills), and give the worker's binaries an rpath to it, so that nothing has
//! to be exported to run them. Also bakes in the libtorch version for cache
//! fingerprints, and compiles the server's C++ module shim (`src/fast_cpu.cpp`),
//! the training ops shim (`src/train.cpp`: bf16 autocast, fused AdamW)
//! and the collectives shim (`src/dist/c10d.cpp`) against libtorch's headers,
//! with the flags torch-sys uses.

#![allow(
    clippy::print_stdout,
    reason = "a build script talks to cargo on its stdout"
)]

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=src/fast_cpu.cpp");
    println!("cargo:rerun-if-changed=src/train.cpp");
    println!("cargo:rerun-if-changed=src/dist/c10d.cpp");
    println!("cargo:rerun-if-changed=src/dist/gloo_api");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        println!("cargo:rustc-env=PIPE_LIBTORCH_VERSION=unknown");
        return;
    };
    let version = std::fs::read_to_string(libtorch.join("version.py"))
        .ok()
        .and_then(|v| {
            v.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|s| s.trim_matches(|c| c == '\'' || c == '"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PIPE_LIBTORCH_VERSION={version}");
    // libtorch's own rpath finds the CUDA runtime wheels beside it.
    println!(
        "cargo:rustc-link-arg=-Wl,-rpath,{}",
        libtorch.join("lib").display()
    );
    let include = libtorch.join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        // libtorch's headers as system headers: their warnings are not
        // ours, while the shim's own show (cc's -Wall -Wextra).
        .flag("-isystem")
        .flag(&include)
        .flag("-isystem")
        .flag(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("src/fast_cpu.cpp")
        .file("src/train.cpp")
        .compile("pipe_fast_cpu");
    // The c10d shim (`src/dist/c10d.cpp`): libtorch's gloo backend, with the
    // few gloo declarations its header needs (`src/dist/gloo_api/README.md`).
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include("src/dist/gloo_api")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .define("USE_C10D_GLOO", None)
        .file("src/dist/c10d.cpp")
        .compile("pipe_c10d");
}
