//! Finding and talking to `pipe-worker`, the binary that links libtorch.
//!
//! The worker sits beside `pipe` (cargo puts both in the same target dir;
//! `PIPE_WORKER` overrides). Its facts (libtorch version, CUDA) go into the
//! cache key of torch stages; asking costs a libtorch start-up (about half a
//! second), so the answer is remembered in the user's cache directory, keyed by
//! the worker binary, the boot, `CUDA_VISIBLE_DEVICES` and `LD_LIBRARY_PATH`:
//! a fully cached run never loads libtorch.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use pipe_engine::cache::Digest;
use pipe_engine::{StageContext, StageError};
use pipe_protocol::{Info, Message, Request};

/// The `pipe-worker` executable.
pub fn path() -> Result<PathBuf, StageError> {
    if let Some(p) = std::env::var_os("PIPE_WORKER") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live one level down, in target/<profile>/deps.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("pipe-worker");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!(
        "pipe-worker was not found beside {} (build it with `cargo build --release --bins`, or set PIPE_WORKER)",
        exe.display()
    )
    .into())
}

/// A command running the worker; it dies with `pipe`.
pub fn command(worker: &Path) -> Command {
    let mut cmd = Command::new(worker);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

fn memo_file(worker: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(worker).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let id = format!(
        "{}\0{}\0{}\0{}\0{}",
        worker.display(),
        meta.len(),
        mtime.as_nanos(),
        boot.trim(),
        environment(|name| std::env::var_os(name))
    );
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("pipe/worker-info").join(format!(
        "{}.json",
        &Digest::of(id.as_bytes()).to_hex()[..32]
    )))
}

/// The variables that change what the worker sees: which GPUs
/// (`CUDA_VISIBLE_DEVICES`; set and empty means none, unlike unset) and which
/// libtorch it loads (`LD_LIBRARY_PATH`).
fn environment(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> String {
    ["CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"]
        .map(|name| format!("{name}={:?}", get(name)))
        .join("\0")
}

/// The worker's facts, asked once per binary, boot and [`environment`].
pub fn info() -> Result<Info, StageError> {
    static INFO: OnceLock<Info> = OnceLock::new();
    if let Some(i) = INFO.get() {
        return Ok(i.clone());
    }
    let worker = path()?;
    let memo = memo_file(&worker);
    let cached = memo
        .as_ref()
        .and_then(|m| std::fs::read(m).ok())
        .and_then(|b| serde_json::from_slice::<Info>(&b).ok());
    let info = match cached {
        Some(i) => i,
        None => {
            let out = command(&worker)
                .arg("info")
                .stderr(Stdio::inherit())
                .output()?;
            if !out.status.success() {
                return Err(format!("`{} info` failed ({})", worker.display(), out.status).into());
            }
            let i: Info = serde_json::from_slice(&out.stdout).map_err(|e| {
                format!("`{} info` said something unexpected: {e}", worker.display())
            })?;
            if let Some(m) = &memo {
                if let Some(dir) = m.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = pipe_engine::cache::write_atomic(m, &serde_json::to_vec(&i)?);
            }
            i
        }
    };
    Ok(INFO.get_or_init(|| info).clone())
}

/// Runs one torch stage in the worker: the request on its stdin, progress
/// lines from its stdout to the reporter (figures to the run record, and its
/// [`Message::Failed`] to the error), its stderr into the stage log.
pub fn run_stage(ctx: &StageContext, request: &Request) -> Result<(), StageError> {
    let worker = path()?;
    let log = std::fs::File::options().append(true).open(ctx.log)?;
    let mut group = ctx
        .interrupt
        .spawn(
            command(&worker)
                .arg("stage")
                .current_dir(ctx.workspace)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log),
        )
        .map_err(|e| format!("cannot start {}: {e}", worker.display()))?;
    let child = group.child();
    let mut failed = None;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&serde_json::to_vec(request)?)?;
    }
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            match serde_json::from_str::<Message>(&line?) {
                Ok(Message::Progress(m)) => ctx.progress(&m),
                Ok(Message::Stats(stats)) => {
                    for (name, value) in stats {
                        ctx.stat(&name, value);
                    }
                }
                Ok(Message::Failed { error }) => failed = Some(error),
                Err(_) => continue,
            }
        }
    }
    let status = group.wait()?;
    if status.success() {
        return Ok(());
    }
    Err(match (failed, status.code()) {
        (Some(w), _) => w.into(),
        (None, Some(c)) => format!("pipe-worker exited with status {c}").into(),
        (None, None) => format!("pipe-worker was killed ({status})").into(),
    })
}

#[cfg(test)]
mod tests {
    use super::environment;
    use std::ffi::OsString;

    #[test]
    fn no_gpus_visible_is_not_the_same_as_unset() {
        let unset = environment(|_| None);
        let empty = environment(|name| (name == "CUDA_VISIBLE_DEVICES").then(OsString::new));
        let other_lib =
            environment(|name| (name == "LD_LIBRARY_PATH").then(|| "/opt/torch/lib".into()));
        assert_ne!(unset, empty);
        assert_ne!(unset, other_lib);
    }
}
