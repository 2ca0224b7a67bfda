//! Subcommands that live in their own file: each parses nothing itself (clap
//! does, in `main.rs`) and takes typed arguments.

pub mod completions;
pub mod init;
