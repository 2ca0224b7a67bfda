//! Data-parallel fine-tuning's process group: libtorch's c10d (a `TCPStore`
//! rendezvous, and `ProcessGroupGloo` or `ProcessGroupNCCL`) through the C++
//! shims `c10d.cpp` and `nccl.cpp`. On CUDA every rank takes the GPU of its
//! local rank.
//!
//! A worker joins a group in one of two ways:
//! - under a launcher (torchrun, Slurm, a Kubernetes Indexed Job), it joins
//!   the group the launcher's variables describe ([`env`]);
//! - with `nproc_per_node: N > 1` and no launcher, it becomes rank 0: it hosts
//!   the rendezvous on 127.0.0.1 (a free port, or `MASTER_PORT`) and starts
//!   ranks 1..N itself ([`LocalRanks`]), which find it through the same
//!   torchrun variables.
//!
//! Collectives fail after `PIPE_DIST_TIMEOUT` seconds (default 120): a rank
//! that died or hangs fails the others, and rank 0 names it.

pub mod env;
mod group;

use std::io::Write;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pipe_protocol::{DistBackend, Request};

pub use env::Membership;
pub use group::{available, C10dError, ProcessGroup, Store};

/// How long a collective or the rendezvous may wait for the other ranks.
pub fn timeout() -> Result<Duration> {
    match std::env::var("PIPE_DIST_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(120)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("PIPE_DIST_TIMEOUT={v:?} is not a positive number of seconds")),
    }
}

/// This worker's group, and the ranks it started (rank 0 of `nproc_per_node`).
pub struct Dist {
    pub group: ProcessGroup,
    /// This rank's index among the ranks of its machine: its CUDA device.
    pub local_rank: usize,
    /// Where the group's collectives take their tensors: the CPU for gloo,
    /// this rank's GPU for NCCL.
    pub device: tch::Device,
    locals: LocalRanks,
}

impl Dist {
    /// The group of a stage: `req`'s `threads` are split between the ranks
    /// started here, which get the request on their stdin.
    /// Under a launcher its group must be the stage's `nproc_per_node` ranks:
    /// the key records that world size.
    pub fn for_stage(req: &Request, nproc: usize, backend: DistBackend) -> Result<Option<Dist>> {
        if let Some(m) = env::from_env().context("cannot tell which group to join")? {
            if m.world != nproc {
                bail!(
                    "the launcher's group has {} ranks but the stage has nproc_per_node: {nproc}; \
                     set nproc_per_node to the launcher's world size (it is part of the key)",
                    m.world
                );
            }
        }
        let mut child = req.clone();
        child.threads = (req.threads / nproc.max(1)).max(1);
        let body = serde_json::to_vec(&child)?;
        // A backend named with one rank: a group of one, to run (and check)
        // the data-parallel path on one device.
        let alone = backend != DistBackend::Auto;
        Dist::start(nproc, backend.resolve(req.device), alone, &["stage"], &body)
    }

    /// Joins the group of a launcher, or starts `nproc` local ranks as
    /// `pipe-worker ARGS` with `stdin`; `None` when this worker runs alone,
    /// unless `group_of_one` asks for a group even then.
    pub fn start(
        nproc: usize,
        backend: DistBackend,
        group_of_one: bool,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<Option<Dist>> {
        let timeout = timeout()?;
        let membership = env::from_env().context("cannot tell which group to join")?;
        if membership.is_none() && nproc <= 1 && !group_of_one {
            return Ok(None);
        }
        available(backend)?;
        if backend == DistBackend::Nccl {
            // One GPU per rank of this machine, checked before any rank
            // joins: NCCL's own set-up would wait for a rank that is gone.
            let gpus = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            match &membership {
                Some(m) if m.local_rank >= gpus => bail!(
                    "rank {}: backend nccl: local rank {} has no GPU (libtorch sees {gpus})",
                    m.rank,
                    m.local_rank
                ),
                None if nproc > gpus => bail!(
                    "backend nccl: {nproc} ranks on this machine need {nproc} GPUs, \
                     and libtorch sees {gpus}"
                ),
                _ => {}
            }
        }
        if let Some(m) = membership {
            let store = if m.rank == 0 {
                Store::host(&m.master_addr, m.master_port, m.world, timeout)
            } else {
                Store::connect(&m.master_addr, m.master_port, m.world, timeout)
            }
            .with_context(|| {
                format!(
                    "rank {}: no rendezvous at {}:{}",
                    m.rank, m.master_addr, m.master_port
                )
            })?;
            let group = ProcessGroup::join(store, backend, m.rank, m.world, m.local_rank, timeout)
                .with_context(|| {
                    format!(
                        "rank {}: the {} group of {} did not form",
                        m.rank,
                        backend.name(),
                        m.world
                    )
                })?;
            return Ok(Some(Dist {
                group,
                local_rank: m.local_rank,
                device: collective_device(backend, m.local_rank),
                locals: LocalRanks::default(),
            }));
        }
        let nproc = nproc.max(1);
        let port = match std::env::var("MASTER_PORT") {
            Ok(p) => p
                .trim()
                .parse()
                .map_err(|_| anyhow!("MASTER_PORT={p:?} is not a port number"))?,
            Err(_) => 0,
        };
        let store = Store::host("127.0.0.1", port, nproc, timeout)
            .context("cannot host the rendezvous on 127.0.0.1")?;
        let locals = LocalRanks::spawn(args, stdin, nproc, store.port())?;
        let group = match ProcessGroup::join(store, backend, 0, nproc, 0, timeout) {
            Ok(g) => g,
            Err(e) => return Err(locals.explain(e, "the group did not form")),
        };
        Ok(Some(Dist {
            group,
            local_rank: 0,
            device: collective_device(backend, 0),
            locals,
        }))
    }

    /// How many ranks this worker started (itself included; 1 under a launcher).
    pub fn local_ranks(&self) -> usize {
        self.locals.children.len() + 1
    }

    /// The error of a failed collective, with what became of the other ranks.
    pub fn fail(&self, e: C10dError, what: &str) -> anyhow::Error {
        if self.locals.children.is_empty() {
            anyhow!(e).context(format!("rank {}: {what}", self.group.rank))
        } else {
            self.locals.explain(e, what)
        }
    }

    /// Sums `t` across ranks in place; the error names the rank that failed.
    /// A tensor elsewhere than the group's device is summed there, through
    /// a copy.
    pub fn all_reduce_sum(&self, t: &tch::Tensor, what: &str) -> Result<()> {
        if t.device() == self.device {
            return self.group.all_reduce_sum(t).map_err(|e| self.fail(e, what));
        }
        let there = t.to_device(self.device);
        self.group
            .all_reduce_sum(&there)
            .map_err(|e| self.fail(e, what))?;
        t.shallow_clone().copy_(&there);
        Ok(())
    }

    /// Whether every rank has the same `digest` (one all-reduce: for each
    /// 21-bit piece c, N·Σc² = (Σc)² only when all the c are equal).
    pub fn agree(&self, digest: u64) -> Result<bool> {
        let pieces: Vec<f64> = (0..3)
            .flat_map(|k| {
                let c = ((digest >> (21 * k)) & 0x1f_ffff) as f64;
                [c, c * c]
            })
            .collect();
        let t = tch::Tensor::from_slice(&pieces);
        self.all_reduce_sum(&t, "the weight check failed")?;
        let sums = Vec::<f64>::try_from(&t)?;
        let n = self.group.world as f64;
        Ok(sums.chunks(2).all(|s| n * s[1] == s[0] * s[0]))
    }

    /// After the last collective: waits for the ranks started here to exit.
    pub fn finish(mut self) -> Result<()> {
        drop(self.group);
        for (i, child) in self.locals.children.iter_mut() {
            let status = child
                .wait()
                .with_context(|| format!("cannot wait for rank {i}"))?;
            if !status.success() {
                bail!("rank {i} failed ({status}); see its error above");
            }
        }
        self.locals.children.clear();
        Ok(())
    }
}

fn collective_device(backend: DistBackend, local_rank: usize) -> tch::Device {
    match backend {
        DistBackend::Nccl => tch::Device::Cuda(local_rank),
        _ => tch::Device::Cpu,
    }
}

/// Ranks 1..N started by rank 0; killed and reaped when dropped, and killed
/// by the kernel if rank 0 dies first.
#[derive(Default)]
struct LocalRanks {
    children: Vec<(usize, Child)>,
}

impl LocalRanks {
    fn spawn(args: &[&str], body: &[u8], world: usize, port: u16) -> Result<LocalRanks> {
        let exe = std::env::current_exe().context("cannot find pipe-worker's own path")?;
        let mut ranks = LocalRanks::default();
        for rank in 1..world {
            let mut cmd = Command::new(&exe);
            cmd.args(args)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            // SAFETY: prctl is async-signal-safe; it only sets this child's
            // parent-death signal.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = cmd
                .spawn()
                .with_context(|| format!("cannot start rank {rank} ({})", exe.display()))?;
            let stdin = child.stdin.take();
            ranks.children.push((rank, child));
            stdin
                .context("no stdin")?
                .write_all(body)
                .with_context(|| format!("cannot send rank {rank} its request"))?;
        }
        Ok(ranks)
    }

    /// `e` with what became of each rank: those that exited are named.
    fn explain(&self, e: C10dError, what: &str) -> anyhow::Error {
        // A rank that died has usually been reaped by the time its peers see
        // the broken connection; give the kernel a moment when it has not.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut exited: Vec<(usize, ExitStatus)> = Vec::new();
        let mut running: Vec<usize> = Vec::new();
        loop {
            exited.clear();
            running.clear();
            for (i, child) in &self.children {
                // try_wait needs &mut; poll the status through waitid's
                // non-reaping form instead, so Drop can still reap.
                match peek_exit(child.id()) {
                    Some(status) => exited.push((*i, status)),
                    None => running.push(*i),
                }
            }
            if !exited.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let who = if !exited.is_empty() {
            exited
                .iter()
                .map(|(i, s)| format!("rank {i} exited ({s})"))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            let ranks = running
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            format!("no rank exited: rank {ranks} did not answer (hung?)")
        };
        anyhow!(e).context(format!("rank 0: {what}: {who}"))
    }
}

/// The exit status of child `pid` if it has exited, without reaping it.
fn peek_exit(pid: u32) -> Option<ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    // SAFETY: waitid with WNOWAIT on our own child only reads its state.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid/si_status are valid for a SIGCHLD siginfo.
    let (spid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if r != 0 || spid == 0 {
        return None;
    }
    Some(match code {
        libc::CLD_EXITED => ExitStatus::from_raw((status & 0xff) << 8),
        _ => ExitStatus::from_raw(status & 0x7f),
    })
}

impl Drop for LocalRanks {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
