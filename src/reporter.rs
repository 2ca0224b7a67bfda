//! The one owner of the terminal: a human reporter (status lines on stderr, a
//! spinner on a terminal only) and a JSON reporter (one document on stdout).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipe_engine::{CacheSource, Event, Reporter, RunSummary, Status};

pub struct Human {
    quiet: bool,
    verbose: bool,
    bar: ProgressBar,
    running: Mutex<Vec<String>>,
}

/// `   Running upper: reason` with the verb right-aligned to 12 columns, like cargo.
fn line(verb: &str, rest: &str) -> String {
    format!("{verb:>12} {rest}")
}

/// Why nothing happens yet: printed by every reporter, and by `gc`.
pub fn waiting_for_lock(pid: Option<u32>) -> String {
    let who = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    line(
        "Blocking",
        &format!("waiting for another pipe run on this workspace{who}"),
    )
}

impl Human {
    pub fn new(quiet: bool, verbose: bool) -> Human {
        let bar = if std::io::stderr().is_terminal() && !quiet {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        Human {
            quiet,
            verbose,
            bar,
            running: Mutex::new(Vec::new()),
        }
    }

    fn print(&self, text: &str) {
        self.bar.suspend(|| {
            let _ = writeln!(std::io::stderr(), "{text}");
        });
    }

    fn set_running(&self, f: impl FnOnce(&mut Vec<String>)) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut running);
        self.bar.set_message(if running.is_empty() {
            String::new()
        } else {
            format!("running {}", running.join(", "))
        });
    }

    pub fn finish(&self, summary: &RunSummary, seconds: f64) {
        self.bar.finish_and_clear();
        if self.quiet {
            return;
        }
        let count = |s: Status| summary.results.iter().filter(|r| r.status == s).count();
        let mut parts = vec![];
        for (s, word) in [
            (Status::Cached, "cached"),
            (Status::Ran, "ran"),
            (Status::Failed, "failed"),
            (Status::Skipped, "skipped"),
            (Status::Pending, "would run"),
        ] {
            let n = count(s);
            if n > 0 {
                parts.push(format!("{n} {word}"));
            }
        }
        let n = summary.results.len();
        let plural = if n == 1 { "" } else { "s" };
        self.print(&format!(
            "{n} stage{plural}: {} in {seconds:.2}s",
            parts.join(", ")
        ));
    }
}

impl Reporter for Human {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::WaitingForLock { pid } => self.print(&waiting_for_lock(pid)),
            Event::Started { stage, reason } => {
                self.set_running(|r| r.push(stage.to_string()));
                if !self.quiet {
                    self.print(&line("Running", &format!("{stage}: {reason}")));
                }
            }
            Event::Progress { stage, message } => {
                if self.verbose {
                    self.print(&format!("{:>12} {message}", format!("[{stage}]")));
                } else {
                    self.bar.set_message(format!("{stage}: {message}"));
                }
            }
            Event::Finished(r) => {
                self.set_running(|run| run.retain(|s| *s != r.name));
                let short = r.output_hash.map(|h| h.short()).unwrap_or_default();
                let text = match r.status {
                    Status::Cached if !self.quiet => line(
                        if r.cache == Some(CacheSource::Remote) {
                            "Fetched"
                        } else {
                            "Cached"
                        },
                        &format!("{} ({short})", r.name),
                    ),
                    Status::Ran if !self.quiet => {
                        line("Ran", &format!("{} ({short}) in {:.2}s", r.name, r.seconds))
                    }
                    Status::Failed => {
                        let mut t = line(
                            "Failed",
                            &format!("{}: {}", r.name, r.error.as_deref().unwrap_or("failed")),
                        );
                        if let Some(tail) = &r.log_tail {
                            for l in tail.lines() {
                                t.push_str(&format!("\n{:>12} {l}", "|"));
                            }
                        }
                        t
                    }
                    Status::Skipped => line(
                        "Skipped",
                        &format!("{}: {}", r.name, r.error.as_deref().unwrap_or("")),
                    ),
                    _ => return,
                };
                self.print(&text);
            }
        }
    }
}

/// Stays quiet while running (but for waiting on the lock, which stderr must
/// explain); `main` prints the summary as JSON at the end.
pub struct Json;

impl Reporter for Json {
    fn event(&self, event: Event<'_>) {
        if let Event::WaitingForLock { pid } = event {
            eprintln!("{}", waiting_for_lock(pid));
        }
    }
}

pub fn json_summary(summary: &RunSummary) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "stages": summary.results }))
        .unwrap_or_default()
}
