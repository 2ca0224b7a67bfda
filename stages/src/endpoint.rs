//! Endpoints: model servers that `deploy` started, recorded under
//! `.pipe/endpoints/NAME.json` so that later runs, `pipe endpoints` and
//! `pipe down` find them. A record is never trusted blindly: [`Record::health`]
//! checks that its process is still our server and that it answers `/ping`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pipe_engine::StageError;
use pipe_protocol::serve::{Ready, PING};
use serde::{Deserialize, Serialize};

use crate::worker;

/// What `deploy` writes as `endpoint.json` and in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub url: String,
    pub pid: u32,
    /// When the process started (field 22 of `/proc/PID/stat`, clock ticks
    /// since boot): with `pid` it names one process, even once the pid is
    /// reused. A record without it is stale.
    #[serde(default)]
    pub started: Option<u64>,
    pub model_sha256: String,
    /// The server's log file.
    pub log: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    Healthy,
    /// Why not (process gone, not our server, no answer).
    Down(String),
}

pub fn registry_dir(workspace: &Path) -> PathBuf {
    workspace.join(".pipe/endpoints")
}

fn record_path(workspace: &Path, name: &str) -> PathBuf {
    registry_dir(workspace).join(format!("{name}.json"))
}

/// Every recorded endpoint, sorted by name.
pub fn list(workspace: &Path) -> Vec<Record> {
    let mut out: Vec<Record> = std::fs::read_dir(registry_dir(workspace))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn get(workspace: &Path, name: &str) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(record_path(workspace, name)).ok()?).ok()
}

/// What `/proc/PID/stat` says of a process: its state and start time.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold anything, so split after its
    // last `)`; the state is field 3 and the start time field 22.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let started = fields.nth(18)?.parse().ok()?;
    Some((state, started))
}

/// The start time of a running process, for [`Record::started`].
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, started)| started)
}

/// Whether `pid` is a running `pipe-worker serve`.
fn is_server(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
        args.first().is_some_and(|a| a.ends_with(b"pipe-worker"))
            && args.get(1).is_some_and(|a| *a == b"serve")
    })
}

/// What [`Record::stop`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stopped {
    /// The server was stopped.
    Server,
    /// The record named no live server of ours (why): it was removed and
    /// nothing was killed.
    Stale(String),
}

impl Record {
    /// Why the record's process is not (or no longer) the server it started:
    /// gone, a zombie, or its pid reused by another process.
    fn not_ours(&self) -> Option<String> {
        let pid = self.pid;
        let Some(recorded) = self.started else {
            return Some(format!(
                "the record has no start time for process {pid} (written by an older pipe)"
            ));
        };
        match stat(pid) {
            None | Some(('Z' | 'X', _)) => Some(format!("process {pid} is not running")),
            Some((_, started)) if started != recorded => Some(format!(
                "pid {pid} is now another process (started at tick {started}, not {recorded})"
            )),
            Some(_) if !is_server(pid) => Some(format!("process {pid} is not a model server")),
            Some(_) => None,
        }
    }

    /// Whether the record's process (same pid, same start time) has not
    /// exited yet.
    fn running(&self) -> bool {
        matches!(stat(self.pid), Some((state, started))
            if !matches!(state, 'Z' | 'X') && Some(started) == self.started)
    }

    pub fn health(&self) -> Health {
        if let Some(why) = self.not_ours() {
            return Health::Down(why);
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build();
        match client.and_then(|c| c.get(format!("{}{PING}", self.url)).send()) {
            Ok(r) if r.status().is_success() => Health::Healthy,
            Ok(r) => Health::Down(format!("{PING} answered {}", r.status())),
            Err(e) => Health::Down(format!("{PING} failed: {e}")),
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after `grace`) and removes the
    /// record. Only the very process the record names is signalled: a record
    /// whose pid is gone or reused (another start time) is stale, and only
    /// removed.
    pub fn stop(&self, workspace: &Path, grace: Duration) -> Result<Stopped, StageError> {
        let outcome = match self.not_ours() {
            Some(why) => Stopped::Stale(why),
            None => {
                let Ok(pid) = i32::try_from(self.pid) else {
                    return Err(format!("pid {} is out of range", self.pid).into());
                };
                // SAFETY: kill(2) on the process we checked is our server.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                // Until it has exited, not merely until it stops looking like
                // our server: an exiting process has an empty cmdline for a
                // while before it is a zombie.
                let deadline = Instant::now() + grace;
                while self.running() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if self.running() {
                    // SAFETY: as above (same pid and start time).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    let deadline = Instant::now() + grace;
                    while self.running() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Stopped::Server
            }
        };
        match std::fs::remove_file(record_path(workspace, &self.name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(outcome),
        }
    }

    pub fn save(&self, workspace: &Path) -> Result<(), StageError> {
        std::fs::create_dir_all(registry_dir(workspace))?;
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        pipe_engine::cache::write_atomic(&record_path(workspace, &self.name), &bytes)?;
        Ok(())
    }
}

/// How to start a server.
pub struct Launch<'a> {
    pub name: &'a str,
    pub package: &'a Path,
    pub model_sha256: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub extra_args: Vec<String>,
    pub timeout: Duration,
}

/// Starts `pipe-worker serve` detached (its own session, outliving `pipe`),
/// waits until it listens and answers `/ping`, and records it.
pub fn start(workspace: &Path, l: &Launch) -> Result<Record, StageError> {
    let dir = registry_dir(workspace);
    std::fs::create_dir_all(&dir)?;
    let log = dir.join(format!("{}.log", l.name));
    let log_file = std::fs::File::create(&log)?;
    let worker = worker::path()?;
    let mut cmd = std::process::Command::new(&worker);
    cmd.arg("serve")
        .arg(l.package)
        .args([
            "--host",
            l.host,
            "--port",
            &l.port.to_string(),
            "--announce",
        ])
        .args(&l.extra_args)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    // SAFETY: setsid is async-signal-safe; the server leaves our process
    // group so that ^C on `pipe` does not stop it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", worker.display()))?;
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let _ = tx.send(line);
    });
    let tail = |log: &Path| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    let line = match rx.recv_timeout(l.timeout) {
        Ok(line) if !line.trim().is_empty() => line,
        Ok(_) => {
            let status = child.wait()?;
            return Err(format!(
                "the model server exited ({status}) before it was ready; its log ({}):\n{}",
                log.display(),
                tail(&log)
            )
            .into());
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the model server was not ready within {:?}; its log ({}):\n{}",
                l.timeout,
                log.display(),
                tail(&log)
            )
            .into());
        }
    };
    let ready: Ready = serde_json::from_str(&line)
        .map_err(|e| format!("the model server said something unexpected ({e}): {line}"))?;
    // The server lives on in its own session; reaping it is init's job now.
    std::mem::forget(child);
    let record = Record {
        name: l.name.to_string(),
        url: ready.ready,
        pid: ready.pid,
        started: start_time(ready.pid),
        model_sha256: l.model_sha256.to_string(),
        log,
    };
    if let Health::Down(why) = record.health() {
        return Err(format!("the model server started but is not healthy: {why}").into());
    }
    record.save(workspace)?;
    Ok(record)
}
