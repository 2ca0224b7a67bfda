//! `Interrupt`: stopping a run (Ctrl-C, SIGTERM), and never leaving a stage's
//! processes behind.
//!
//! Every child a stage starts goes through [`Interrupt::spawn`]: it runs in its
//! own process group, carries `PIPE_RUN=<token>` in its environment, and is
//! registered here until it is reaped. The failure stories:
//!
//! - **Ctrl-C / SIGTERM.** The CLI calls [`Interrupt::interrupt`]: the flag is
//!   set (the scheduler starts nothing new, stages that loop check it), every
//!   registered group gets SIGTERM, and whatever is left after the grace period
//!   gets SIGKILL. The killed stages fail, their staging dirs are dropped.
//! - **The stage's command exits but left children** (`sh -c 'cmd &'`). When
//!   the group leader exits, the rest of its group is killed *before* the leader
//!   is reaped, so the group id cannot have been reused by then.
//! - **`pipe` itself is SIGKILLed.** The direct child dies with it
//!   (`PR_SET_PDEATHSIG`). Its own children do not, so the run writes its token
//!   to `.pipe/run`; the next run, holding the workspace lock, kills every
//!   process whose environment carries a dead run's token (see
//!   [`reap_dead_run`]) before it cleans the staging dirs.
//!
//! A process that clears its environment *and* leaves its process group escapes
//! the last rule; nothing short of a cgroup catches that.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pipe_cache::Digest;

/// The environment variable that marks every process a run started.
pub const RUN_ENV: &str = "PIPE_RUN";

/// The file, in `.pipe/`, naming the token of the run in progress.
const RUN_FILE: &str = "run";

#[derive(Debug)]
pub struct Interrupt {
    flag: AtomicBool,
    groups: Mutex<BTreeSet<i32>>,
    emptied: Condvar,
    token: String,
}

impl Default for Interrupt {
    fn default() -> Self {
        Interrupt::new()
    }
}

impl Interrupt {
    pub fn new() -> Interrupt {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seed = format!("{}-{nanos}", std::process::id());
        Interrupt {
            flag: AtomicBool::new(false),
            groups: Mutex::new(BTreeSet::new()),
            emptied: Condvar::new(),
            token: Digest::of(seed.as_bytes()).to_hex()[..32].to_string(),
        }
    }

    /// Set once the run is interrupted.
    pub fn flag(&self) -> &AtomicBool {
        &self.flag
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Stop the run: no new stage starts, every running child's process group
    /// gets SIGTERM, then SIGKILL once `grace` has passed. Returns when every
    /// group is gone or has been sent SIGKILL.
    pub fn interrupt(&self, grace: Duration) {
        self.flag.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        let mut groups = self.lock();
        for &g in groups.iter() {
            kill_group(g, libc::SIGTERM);
        }
        while !groups.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            groups = match self.emptied.wait_timeout(groups, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        for &g in groups.iter() {
            kill_group(g, libc::SIGKILL);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start `cmd` in its own process group, marked with this run's token and
    /// dying with `pipe`. The returned child kills its whole group when it is
    /// waited for or dropped.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<GroupChild<'_>> {
        if self.is_set() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        // SAFETY: getpid has no preconditions and cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (prctl, getppid); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // `pipe` died before the line above: do not run orphaned.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        cmd.process_group(0).env(RUN_ENV, &self.token);
        let child = cmd.spawn()?;
        let pgid = child.id() as i32;
        {
            let mut groups = self.lock();
            groups.insert(pgid);
            // `interrupt` set the flag before it signalled the groups it saw.
            if self.is_set() {
                kill_group(pgid, libc::SIGTERM);
            }
        }
        Ok(GroupChild {
            child,
            interrupt: self,
            reaped: false,
        })
    }

    fn untrack(&self, pgid: i32) {
        let mut groups = self.lock();
        groups.remove(&pgid);
        if groups.is_empty() {
            self.emptied.notify_all();
        }
    }

    /// Kill what a dead run left behind, then record this run as the one in
    /// progress. Call with the workspace lock held, before cleaning staging.
    pub fn begin(&self, pipe_dir: &Path) -> pipe_cache::Result<()> {
        reap_dead_run(pipe_dir);
        // No fsync: after a power loss no process of the run is left, and a
        // torn token matches no process.
        let path = pipe_dir.join(RUN_FILE);
        std::fs::write(&path, self.token.as_bytes()).map_err(|source| pipe_cache::Error::Io {
            op: "write",
            path,
            source,
        })
    }

    /// The run ended (normally or interrupted): nothing of it is left running.
    pub fn end(&self, pipe_dir: &Path) {
        let _ = std::fs::remove_file(pipe_dir.join(RUN_FILE));
    }
}

/// A stage's child process, leader of its own process group.
pub struct GroupChild<'a> {
    child: Child,
    interrupt: &'a Interrupt,
    reaped: bool,
}

impl GroupChild<'_> {
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Wait for the command to exit, then kill whatever it left in its group.
    pub fn wait(mut self) -> io::Result<ExitStatus> {
        self.reap()
    }

    fn reap(&mut self) -> io::Result<ExitStatus> {
        let pid = self.child.id() as i32;
        drop(self.child.stdin.take());
        // Wait for the exit without reaping: while the leader is a zombie its
        // pid (the group id) cannot be reused, so killing the group is safe.
        loop {
            // SAFETY: a zeroed siginfo_t is a valid out-parameter.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid, writable siginfo_t; WNOWAIT leaves the child
            // unreaped, so `pid` still names it.
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            };
            if r == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                break;
            }
        }
        kill_group(pid, libc::SIGKILL);
        // SIGKILL is not synchronous: a member of the group still writing
        // into staging must be gone before the output is scanned.
        wait_group_gone(pid);
        let status = self.child.wait();
        self.reaped = true;
        self.interrupt.untrack(pid);
        status
    }
}

impl Drop for GroupChild<'_> {
    fn drop(&mut self) {
        if !self.reaped {
            kill_group(self.child.id() as i32, libc::SIGKILL);
            let _ = self.reap();
        }
    }
}

/// Wait (bounded, 10 s) until no live process other than the leader `pgid`
/// (a zombie until reaped) is left in process group `pgid`.
fn wait_group_gone(pgid: i32) {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(200);
    while group_has_live_members(pgid) && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
}

/// Whether a process other than `pgid` itself, not yet dead (zombie `Z` or
/// dead `X`), is in process group `pgid`.
fn group_has_live_members(pgid: i32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            return false;
        };
        if pid == pgid {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parens.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let pgrp = f.nth(1).and_then(|g| g.parse::<i32>().ok());
        pgrp == Some(pgid) && !matches!(state, Some("Z" | "X"))
    })
}

fn kill_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: plain syscall; ESRCH (group already gone) is fine.
        unsafe { libc::kill(-pgid, signal) };
    }
}

/// SIGKILL every process marked with the token of a run that did not end
/// (`pipe` was killed), and wait until they are gone.
fn reap_dead_run(pipe_dir: &Path) {
    let Ok(token) = std::fs::read_to_string(pipe_dir.join(RUN_FILE)) else {
        return;
    };
    let mark = format!("{RUN_ENV}={}", token.trim());
    let mut killed = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == mark.as_bytes()) {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.push(pid);
        }
    }
    // SIGKILL is not instant; a process still exiting could write one more byte.
    let deadline = Instant::now() + Duration::from_secs(10);
    while killed.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which ends with the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
