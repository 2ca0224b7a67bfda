//! `pipe serve PACKAGE [OPTIONS]`: become `pipe-worker serve` (exec), which
//! serves a packaged model over HTTP (SageMaker's /ping and /invocations).

use crate::exit::Failure;
use crate::signals;

pub fn serve(args: &[String]) -> Result<i32, Failure> {
    let worker = pipe_stages::worker::path().map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?;
    signals::unblock();
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(&worker).arg("serve").args(args),
    );
    Err(anyhow::anyhow!("cannot start {}: {err}", worker.display()).into())
}
