//! The Slurm backend: `sbatch` a script that runs the job command (through
//! `srun` when the stage asks for more than one task), follow the job with
//! `scontrol show job` (`sacct` once the controller has forgotten it), and
//! `scancel` it on interrupt or when `pipe` gives it up.
//!
//! The job's output file is the stage log (`--output`, appended to), so the
//! log grows while the job runs. The job inherits `pipe`'s environment
//! (`sbatch` exports it by default) and runs in the workspace; on a node
//! that does not see the workspace (`--cluster-io remote`), in `/tmp`, its
//! output discarded (the job sends the stage log through the remote).

use std::process::Command;
use std::time::{Duration, Instant};

use super::{Backend, Job};
use crate::event::Event;
use crate::stage::{StageContext, StageError};

pub struct Slurm;

/// How a job ended, or where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobState {
    pub state: String,
    pub reason: String,
    pub exit_code: String,
}

impl JobState {
    /// Whether the job is over (and gone from `squeue`).
    fn is_final(&self) -> bool {
        matches!(
            self.state.as_str(),
            "COMPLETED"
                | "FAILED"
                | "CANCELLED"
                | "TIMEOUT"
                | "PREEMPTED"
                | "NODE_FAIL"
                | "OUT_OF_MEMORY"
                | "BOOT_FAIL"
                | "DEADLINE"
                | "SPECIAL_EXIT"
                | "REVOKED"
        )
    }

    /// `PENDING (Priority)`, `RUNNING`.
    fn describe(&self) -> String {
        match self.reason.as_str() {
            "" | "None" => self.state.clone(),
            reason => format!("{} ({reason})", self.state),
        }
    }
}

/// Single-quote `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn run_tool(cmd: &mut Command) -> Result<String, StageError> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run `{name}`: {e} (is Slurm installed, and on the PATH?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("`{name}` failed ({}): {}", out.status, err.trim()).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Cancels the job unless it was seen to end.
struct Submitted {
    id: String,
    ended: bool,
}

impl Drop for Submitted {
    fn drop(&mut self) {
        if !self.ended {
            let _ = run_tool(Command::new("scancel").arg(&self.id));
        }
    }
}

impl Backend for Slurm {
    fn run(&self, ctx: &StageContext, job: &Job) -> Result<(), StageError> {
        let script = job.dir.join("job.sh");
        let command: Vec<String> = job
            .command
            .iter()
            .map(|a| sh_quote(&a.to_string_lossy()))
            .collect();
        // One task: the command itself; more: one rank per task through srun.
        let launcher = if job.resources.tasks() > 1 {
            "srun "
        } else {
            ""
        };
        // Ranks of a data-parallel stage meet at the first node on a port of
        // this job's own (pipe-worker reads MASTER_PORT, see worker/src/dist/env.rs).
        let port = if job.resources.tasks() > 1 {
            "MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 40000))}; export MASTER_PORT\n"
        } else {
            ""
        };
        let text = format!("#!/bin/sh\n{port}exec {launcher}{}\n", command.join(" "));
        std::fs::write(&script, text)
            .map_err(|e| format!("cannot write {}: {e}", script.display()))?;

        let name = format!("pipe-{}-{}", ctx.pipeline.name, ctx.stage.name);
        // A node that does not see the workspace: the job works in a scratch
        // dir of its own and streams the stage log itself.
        let output = job
            .log
            .map_or("/dev/null".to_string(), |l| l.display().to_string());
        let chdir = job.workspace.unwrap_or(std::path::Path::new("/tmp"));
        let mut sbatch = Command::new("sbatch");
        sbatch
            .arg("--parsable")
            .arg(format!("--job-name={name}"))
            // `%` starts a pattern in Slurm's file names (`%j`); `%%` is `%`.
            .arg(format!("--output={}", output.replace('%', "%%")))
            .arg("--open-mode=append")
            .arg(format!("--chdir={}", chdir.display()))
            .args(job.resources.sbatch_args())
            .args(job.options)
            .arg(&script);
        let out = run_tool(&mut sbatch)?;
        // `--parsable`: `ID` or `ID;CLUSTER`.
        let id = out.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("sbatch gave no job id: `{}`", out.trim()).into());
        }
        let mut job = Submitted { id, ended: false };
        let report = |state: &str| {
            ctx.reporter.event(Event::Job {
                stage: &ctx.stage.name,
                backend: "slurm",
                id: &job.id,
                state,
            })
        };
        report("submitted");

        let mut seen = String::new();
        let mut pause = Duration::from_millis(100);
        let state = loop {
            if ctx.interrupt.is_set() {
                let _ = run_tool(Command::new("scancel").arg(&job.id));
                // Wait (bounded) until Slurm says it ended: nothing of it is
                // left running once `pipe` exits.
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    if query(&job.id)?.is_final() {
                        job.ended = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                return Err(format!("interrupted (slurm job {} cancelled)", job.id).into());
            }
            let state = query(&job.id)?;
            let now = state.describe();
            if now != seen && !state.is_final() {
                report(&now);
                seen = now;
            }
            if state.is_final() {
                break state;
            }
            // Polling Slurm: quick at first (a trivial job ends in a second),
            // then at most once a second.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        };
        job.ended = true;
        if state.state == "COMPLETED" {
            return Ok(());
        }
        Err(format!(
            "slurm job {} {} (reason {}, exit code {})",
            job.id, state.state, state.reason, state.exit_code
        )
        .into())
    }
}

/// Where job `id` is: `scontrol show job`, else `sacct` (accounting keeps
/// jobs the controller has forgotten).
fn query(id: &str) -> Result<JobState, StageError> {
    match run_tool(Command::new("scontrol").args(["show", "job", "-o", id])) {
        Ok(text) => parse_scontrol(&text)
            .ok_or_else(|| format!("`scontrol show job {id}` said: {}", text.trim()).into()),
        Err(scontrol) => {
            let text = run_tool(Command::new("sacct").args([
                "-n",
                "-P",
                "-X",
                "-j",
                id,
                "-o",
                "State,Reason,ExitCode",
            ]))
            .map_err(|_| scontrol)?;
            parse_sacct(&text)
                .ok_or_else(|| format!("slurm job {id} is unknown to scontrol and sacct").into())
        }
    }
}

/// `JobId=5 JobName=x … JobState=FAILED Reason=NonZeroExitCode … ExitCode=3:0 …`.
fn parse_scontrol(text: &str) -> Option<JobState> {
    let field = |key: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some(JobState {
        state: field("JobState")?,
        reason: field("Reason").unwrap_or_default(),
        exit_code: field("ExitCode").unwrap_or_default(),
    })
}

/// `FAILED|NonZeroExitCode|3:0` (`CANCELLED by 0` for a cancelled job).
fn parse_sacct(text: &str) -> Option<JobState> {
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    let mut f = line.split('|');
    Some(JobState {
        state: f.next()?.split_whitespace().next()?.to_string(),
        reason: f.next().unwrap_or_default().to_string(),
        exit_code: f.next().unwrap_or_default().trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_scontrol_and_sacct() {
        let s = parse_scontrol("JobId=5 JobName=wrap UserId=root(0) Priority=1 JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 RunTime=00:00:01\n").unwrap();
        assert_eq!(
            s,
            JobState {
                state: "FAILED".into(),
                reason: "NonZeroExitCode".into(),
                exit_code: "3:0".into()
            }
        );
        assert!(s.is_final());
        let s = parse_sacct("CANCELLED by 0|None|0:15\n").unwrap();
        assert_eq!(s.state, "CANCELLED");
        assert_eq!(s.exit_code, "0:15");
        let p = parse_scontrol("JobId=6 JobState=PENDING Reason=Priority ExitCode=0:0").unwrap();
        assert_eq!(p.describe(), "PENDING (Priority)");
        assert!(!p.is_final());
    }

    #[test]
    fn quoting_for_sh() {
        assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
