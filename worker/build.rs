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
    println!("cargo:rerun-if-changed=src/dist/shim.hpp");
    println!("cargo:rerun-if-changed=src/dist/nccl.cpp");
    println!("cargo::rustc-check-cfg=cfg(pipe_nccl)");
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
    nccl_shim(&libtorch);
}

/// The NCCL shim (`src/dist/nccl.cpp`), a shared object of its own that
/// pipe-worker embeds and loads only for an NCCL group: it links
/// libtorch_cuda, whose CUDA libraries a machine without a GPU lacks.
/// Built when the NCCL and CUDA headers that `scripts/setup-libtorch` unpacks
/// are there (then `cfg(pipe_nccl)` and `PIPE_NCCL_SO`); without them the
/// worker refuses `backend: nccl` and says why.
fn nccl_shim(libtorch: &std::path::Path) {
    let Some(root) = libtorch.parent() else {
        return;
    };
    let nccl = root.join("nvidia/nccl/include");
    let cuda = root.join("nvidia/cu13/include");
    let lib = libtorch.join("lib");
    if !nccl.join("nccl.h").is_file()
        || !cuda.join("cublas_v2.h").is_file()
        || !lib.join("libtorch_cuda.so").is_file()
    {
        println!(
            "cargo:warning=no NCCL/CUDA headers in {}: pipe-worker is built without NCCL (run scripts/setup-libtorch)",
            root.display()
        );
        return;
    }
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let so = out.join("libpipe_nccl.so");
    let include = libtorch.join("include");
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-shared", "-fPIC", "-O2", "-std=c++17", "-w"])
        .args([
            "-D_GLIBCXX_USE_CXX11_ABI=1",
            "-DGLOG_USE_GLOG_EXPORT",
            "-DUSE_C10D_NCCL",
        ])
        .arg("-isystem")
        .arg(&include)
        .arg("-isystem")
        .arg(include.join("torch/csrc/api/include"))
        .arg("-isystem")
        .arg(&cuda)
        .arg("-isystem")
        .arg(&nccl)
        .arg("src/dist/nccl.cpp")
        .arg("-o")
        .arg(&so)
        .arg(format!("-L{}", lib.display()))
        .args(["-ltorch_cuda", "-lc10_cuda", "-ltorch_cpu", "-lc10"]);
    let status = cmd.status();
    if !matches!(status, Ok(s) if s.success()) {
        panic!("cannot build the NCCL shim ({status:?}): {cmd:?}");
    }
    println!("cargo:rustc-cfg=pipe_nccl");
    println!("cargo:rustc-env=PIPE_NCCL_SO={}", so.display());
}
