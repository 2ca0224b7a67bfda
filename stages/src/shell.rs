//! `kind: shell`: run a command with `sh -ec` (the first failing command fails the stage).
//!
//! The command runs in the workspace root with `$PIPE_OUT` (its output dir),
//! `$PIPE_IN_<NAME>` for each input, `$PIPE_PARAM_<NAME>` for each param it
//! reads, and the stage's `env:`. A `${params.NAME}` in `cmd` or `verify` is
//! spliced in shell-quoted: a value is data, never code. stdout and stderr
//! go to the stage log. With `verify:`, the stage is an effect: on a cache hit
//! the verify command runs with `$PIPE_OUT` pointing at the stored receipt, and
//! a non-zero exit makes the stage run again.

use std::fs::File;
use std::process::{Command, Stdio};

use pipe_engine::manifest::{param_env_var, param_text};
use pipe_engine::{StageContext, StageError, StageKind};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shell {
    cmd: String,
    #[serde(default)]
    verify: Option<String>,
}

impl Shell {
    fn command(ctx: &StageContext, script: &str) -> Result<Command, StageError> {
        let log = File::options().append(true).open(ctx.log)?;
        let mut cmd = Command::new("sh");
        cmd.arg("-ec")
            .arg(script)
            .current_dir(ctx.workspace)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("PIPE_OUT", ctx.out)
            .env("PIPE_STAGE", &ctx.stage.name)
            .env("PIPE_WORKSPACE", ctx.workspace);
        for (name, path) in &ctx.inputs {
            cmd.env(format!("PIPE_IN_{}", name.to_uppercase()), path);
        }
        for (name, value) in &ctx.stage.params_used {
            cmd.env(param_env_var(name), param_text(value));
        }
        cmd.envs(&ctx.stage.env);
        Ok(cmd)
    }

    /// Run a script to the end in its own process group (killed with the run,
    /// and with whatever it left running when it exits).
    fn status(ctx: &StageContext, script: &str) -> Result<std::process::ExitStatus, StageError> {
        let mut cmd = Self::command(ctx, script)?;
        Ok(ctx.interrupt.spawn(&mut cmd)?.wait()?)
    }
}

impl StageKind for Shell {
    const NAME: &'static str = "shell";
    const VERSION: u32 = 1;
    const SCRIPT_FIELDS: &'static [&'static str] = &["cmd", "verify"];

    fn is_effect(&self) -> bool {
        self.verify.is_some()
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let status = Self::status(ctx, &self.cmd)?;
        if !status.success() {
            return Err(match status.code() {
                Some(code) => format!("command exited with status {code}").into(),
                None => format!("command was killed ({status})").into(),
            });
        }
        Ok(())
    }

    fn verify(&self, ctx: &StageContext) -> Result<Option<String>, StageError> {
        let Some(verify) = &self.verify else {
            return Ok(None);
        };
        let status = Self::status(ctx, verify)?;
        Ok((!status.success()).then(|| format!("verify command exited with {status}")))
    }
}
