//! A real Slurm cluster for a test: `munged`, `slurmctld` and one `slurmd`
//! per node in the foreground, children of the test, with their config,
//! key, state and logs in a temp dir and their ports picked free on the
//! loopback. Every cluster is its own, so tests may run side by side.
//! Dropping it cancels what is left of its jobs and stops the daemons.
//!
//! Nodes are `pipe0`, `pipe1`, …: slurmds of their own (`slurmd -N NAME`,
//! each with its port, spool dir, pid and log file) on this machine, so a
//! job on two nodes runs its tasks under two daemons, as on two machines.
//!
//! Needs Debian's `slurm-wlm` and `munge` (`scripts/setup-test-tools`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Cluster {
    dir: tempfile::TempDir,
    daemons: Vec<(&'static str, Child)>,
    nodes: usize,
}

/// How long the cluster gets to come up, and jobs to go.
const DEADLINE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on the loopback")
        .port()
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Cluster {
    /// A one-node cluster.
    pub fn start() -> Cluster {
        Cluster::with_nodes(1)
    }

    /// A cluster of `nodes` nodes of 2 CPUs each.
    pub fn with_nodes(nodes: usize) -> Cluster {
        for tool in ["munged", "slurmctld", "slurmd", "sbatch"] {
            let found = std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()));
            assert!(
                found,
                "`{tool}` is not installed: run scripts/setup-test-tools (Debian's slurm-wlm and munge)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("pipe-slurm-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        std::fs::create_dir(d.join("state")).unwrap();
        let names: Vec<String> = (0..nodes).map(|i| format!("pipe{i}")).collect();
        let mut node_lines = String::new();
        for name in &names {
            std::fs::create_dir(d.join(format!("spool-{name}"))).unwrap();
            node_lines += &format!(
                "NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={} CPUs=2 State=UNKNOWN\n",
                free_port()
            );
        }
        let mut key = vec![0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key)
            .unwrap();
        let key_file = d.join("munge.key");
        std::fs::write(&key_file, key).unwrap();
        set_mode(&key_file, 0o400);
        let user = user();
        let conf = format!(
            "ClusterName=pipetest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool-%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=5
{node_lines}PartitionName=debug Nodes={} Default=YES MaxTime=INFINITE State=UP
",
            names.join(","),
            ctld = free_port(),
            d = d.display(),
        );
        std::fs::write(d.join("slurm.conf"), conf).unwrap();

        let mut cluster = Cluster {
            dir,
            daemons: Vec::new(),
            nodes,
        };
        let d = cluster.dir.path().to_path_buf();
        let munged = Command::new("munged")
            .arg("-F")
            .arg("-f")
            .arg(format!("--socket={}", d.join("munge.sock").display()))
            .arg(format!("--key-file={}", key_file.display()))
            .arg(format!("--log-file={}", d.join("munged.log").display()))
            .arg(format!("--pid-file={}", d.join("munged.pid").display()))
            .arg(format!("--seed-file={}", d.join("munged.seed").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start munged");
        cluster.daemons.push(("munged", munged));
        cluster.wait_for("munged", || d.join("munge.sock").exists());
        let daemons = std::iter::once(("slurmctld", vec!["-D", "-i"])).chain(
            names
                .iter()
                .map(|n| ("slurmd", vec!["-D", "-N", n.as_str()])),
        );
        for (name, args) in daemons {
            let child = cluster
                .command(name)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {name}: {e}"));
            cluster.daemons.push((name, child));
        }
        cluster.wait_for("every node to be idle", || {
            cluster
                .output(&["sinfo", "-h", "-N", "-o", "%T"])
                .is_some_and(|s| s.lines().filter(|l| l.trim() == "idle").count() == nodes)
        });
        cluster
    }

    /// The cluster's `slurm.conf`: `SLURM_CONF` for every Slurm command.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// A Slurm command (or `pipe`) talking to this cluster.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.env(&mut cmd);
        cmd
    }

    /// Point `cmd` at this cluster.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("SLURM_CONF", self.conf());
    }

    /// stdout of a successful command.
    pub fn output(&self, args: &[&str]) -> Option<String> {
        let out = self.command(args[0]).args(&args[1..]).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `JOBID STATE NAME` of each job `squeue` lists.
    pub fn squeue(&self) -> Vec<String> {
        self.output(&["squeue", "-h", "-o", "%i %T %j"])
            .expect("squeue")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `scontrol show job -o ID`.
    pub fn job(&self, id: &str) -> String {
        self.output(&["scontrol", "show", "job", "-o", id])
            .unwrap_or_default()
    }

    /// How many jobs the controller has seen (the next job id - 1).
    pub fn jobs_submitted(&self) -> usize {
        self.output(&["scontrol", "show", "job", "-o"])
            .map(|s| s.lines().filter(|l| l.starts_with("JobId=")).count())
            .unwrap_or(0)
    }

    /// Poll `ready` until it holds; panic with the daemons' logs at the deadline.
    pub fn wait_for(&self, what: &str, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ready() {
            assert!(
                start.elapsed() < DEADLINE,
                "slurm test cluster: no {what} after {DEADLINE:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until `squeue` lists no job.
    pub fn wait_empty(&self) {
        self.wait_for("empty queue", || self.squeue().is_empty());
    }

    pub fn logs(&self) -> String {
        let slurmds = (0..self.nodes).map(|i| format!("slurmd-pipe{i}.log"));
        ["munged.log".to_string(), "slurmctld.log".to_string()]
            .into_iter()
            .chain(slurmds)
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.path().join(&f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {f}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first: slurmd's job steps would outlive it.
        if self.daemons.len() == 2 + self.nodes {
            let _ = self.command("scancel").args(["--user", &user()]).output();
            let start = Instant::now();
            while self
                .output(&["squeue", "-h"])
                .is_some_and(|s| !s.trim().is_empty())
                && start.elapsed() < DEADLINE
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        for (_, child) in self.daemons.iter_mut().rev() {
            // SAFETY: plain syscall on a child of this process, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
