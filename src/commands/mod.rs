//! Subcommands that live in their own file: one file per command, each with
//! one entry function the dispatch in `main.rs` calls (clap parses in `main.rs`).

pub mod checkout;
pub mod completions;
pub mod exec_stage;
pub mod init;
pub mod logs;
pub mod metrics;
pub mod plots;
pub mod runs;

/// Rows of cells as aligned columns (two spaces apart, no trailing spaces).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            line += cell;
            line += &" ".repeat(pad + 2);
        }
        s += line.trim_end();
        s += "\n";
    }
    s
}

/// A mistake in what the user asked for (an unknown run, stage or revision,
/// nothing recorded yet): exit code 2 rather than 3.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// `bail!` with a [`Usage`] error.
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err($crate::commands::Usage(format!($($arg)*)).into())
    };
}
pub(crate) use usage;

/// The exit code of a command's error: 2 for [`Usage`], else 3.
pub fn failure(error: anyhow::Error) -> crate::exit::Failure {
    if error.downcast_ref::<Usage>().is_some() {
        crate::exit::Failure::usage(error)
    } else {
        error.into()
    }
}
