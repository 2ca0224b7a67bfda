//! Hash files the way `pipe` hashes inputs (fresh, no stat cache) and print the
//! throughput. Used by `bench/engine.sh`:
//! `cargo run --release -p pipe-cache --example hash -- FILE...`

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line example: its output is the point"
)]

use std::time::Instant;

fn main() {
    let paths: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    if paths.is_empty() {
        eprintln!("usage: hash FILE...");
        std::process::exit(2);
    }
    for path in paths {
        let started = Instant::now();
        match pipe_cache::Tree::scan(&path, &pipe_cache::PlainHasher) {
            Ok(tree) => {
                let secs = started.elapsed().as_secs_f64();
                let bytes: u64 = tree.files().map(|(_, _, _, size)| size).sum();
                println!(
                    "{}  {}  {:.3} s  {:.2} GB/s",
                    tree.hash(),
                    path.display(),
                    secs,
                    bytes as f64 / secs / 1e9
                );
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
}
