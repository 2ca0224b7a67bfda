//! The one owner of the terminal: a human reporter (status lines on stderr;
//! on a terminal only, one live line per running stage with its latest
//! progress), a JSON reporter (one document on stdout), and the lines every
//! command prints ([`status`], [`warn`], [`error`], [`note`]; data goes to
//! [`stdout`]). Nothing else in `pipe` prints: the workspace lints
//! `print_stdout` and `print_stderr` keep it so.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipe_engine::{CacheSource, Event, Reporter, RunSummary, Status};

pub struct Human {
    quiet: bool,
    verbose: bool,
    /// The live lines, on a terminal only: status lines print above them.
    live: Option<MultiProgress>,
    /// Each running stage's live line.
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

/// `   Running upper: reason` with the verb right-aligned to 12 columns, like cargo.
pub fn line(verb: &str, rest: &str) -> String {
    format!("{verb:>12} {rest}")
}

/// One line on stderr. A closed stderr loses the line, never the command.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// A status line on stderr: `    Restored train (1a2b3c4d)`.
pub fn status(verb: &str, rest: &str) {
    note(&line(verb, rest));
}

/// `warning: …` on stderr.
pub fn warn(text: &str) {
    note(&format!("warning: {text}"));
}

/// `error: …` on stderr.
pub fn error(text: &str) {
    note(&format!("error: {text}"));
}

/// Where a command's data goes (`--json`, `pipe dag`, `pipe show`).
pub fn stdout() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
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
        let live = (std::io::stderr().is_terminal() && !quiet)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Human {
            quiet,
            verbose,
            live,
            bars: Mutex::new(BTreeMap::new()),
        }
    }

    fn print(&self, text: &str) {
        let write = || {
            let _ = writeln!(std::io::stderr(), "{text}");
        };
        match &self.live {
            Some(live) => live.suspend(write),
            None => write(),
        }
    }

    fn bars(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ProgressBar>> {
        self.bars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live line for a stage that starts: `⠋ finetune   12s epoch 1/3 · …`.
    fn start_bar(&self, stage: &str) {
        let Some(live) = &self.live else {
            return;
        };
        let bar = live.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>12.bold} {elapsed:>4} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(stage.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars().insert(stage.to_string(), bar);
    }

    fn end_bar(&self, stage: &str) {
        if let Some(bar) = self.bars().remove(stage) {
            bar.finish_and_clear();
            if let Some(live) = &self.live {
                live.remove(&bar);
            }
        }
    }

    pub fn finish(&self, summary: &RunSummary, seconds: f64) {
        for (_, bar) in std::mem::take(&mut *self.bars()) {
            bar.finish_and_clear();
        }
        if let Some(live) = &self.live {
            let _ = live.clear();
        }
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
        let interrupted = if summary.interrupted {
            " (interrupted)"
        } else {
            ""
        };
        self.print(&format!(
            "{n} stage{plural}: {} in {seconds:.2}s{interrupted}",
            parts.join(", ")
        ));
    }
}

impl Reporter for Human {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::WaitingForLock { pid } => self.print(&waiting_for_lock(pid)),
            Event::Started { stage, reason } => {
                if !self.quiet {
                    self.print(&line("Running", &format!("{stage}: {reason}")));
                }
                self.start_bar(stage);
            }
            Event::Progress { stage, message } => {
                if self.verbose {
                    self.print(&format!("{:>12} {message}", format!("[{stage}]")));
                } else if let Some(bar) = self.bars().get(stage) {
                    bar.set_message(message.to_string());
                }
            }
            Event::Job {
                stage,
                backend,
                id,
                state,
            } => {
                if !self.quiet {
                    self.print(&line(
                        "Job",
                        &format!("{stage}: {backend} job {id} {state}"),
                    ));
                }
            }
            Event::Finished(r) => {
                self.end_bar(&r.name);
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
            note(&waiting_for_lock(pid));
        }
    }
}

/// `--json`: every stage's result as one document on stdout.
pub fn json_summary(summary: &RunSummary) {
    let mut doc = serde_json::json!({ "stages": summary.results });
    if summary.interrupted {
        doc["interrupted"] = true.into();
    }
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    let _ = writeln!(stdout(), "{text}");
}
