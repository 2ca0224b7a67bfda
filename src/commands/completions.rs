//! `pipe completions bash|zsh|fish`: the shell's completion script on stdout.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::exit;

pub fn run<C: CommandFactory>(shell: Shell) -> i32 {
    // Into a buffer first: clap_complete panics when stdout is closed early.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut C::command(), "pipe", &mut script);
    let _ = crate::reporter::stdout().write_all(&script);
    exit::OK
}
