//! Ctrl-C and SIGTERM. Both are blocked in every thread and taken by one
//! thread with `sigwait`, so no code runs inside a signal handler. During a
//! run the first one stops it ([`Interrupt::interrupt`]: stages' process
//! groups get SIGTERM, then SIGKILL after [`GRACE`]) and `pipe` exits 130 once
//! the run has wound down; a second one, or one outside a run, exits 130 at
//! once (the next run cleans up after it).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pipe_engine::Interrupt;

/// How long stages get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(3);

static RUN: OnceLock<Arc<Interrupt>> = OnceLock::new();

/// Call first thing in `main`, before any thread starts: threads inherit the
/// signal mask. (Children do not: `std::process::Command` resets it.)
pub fn install() {
    // SAFETY: plain libc calls on a local, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        std::thread::spawn(move || loop {
            let mut sig = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            match RUN.get() {
                Some(run) if !run.is_set() => {
                    let run = run.clone();
                    std::thread::spawn(move || run.interrupt(GRACE));
                }
                _ => std::process::exit(crate::exit::INTERRUPTED),
            }
        });
    }
}

/// Unblock SIGINT and SIGTERM in this thread: call right before `exec`,
/// which keeps the signal mask (unlike spawning a child), so that the program
/// `pipe` becomes (`pipe serve`) gets its signals as usual.
pub fn unblock() {
    // SAFETY: plain libc calls on a local, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The run that a signal stops from now on.
pub fn watch(run: Arc<Interrupt>) {
    let _ = RUN.set(run);
}
