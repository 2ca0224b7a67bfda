//! `resources:` and `executor:` of a stage: what it needs, and where it runs.

use serde::Deserialize;

/// Where a stage's work runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// In a child process of `pipe` (the default).
    #[default]
    Local,
    /// As a Slurm batch job (see [`super::slurm`]).
    Slurm,
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(ExecutorKind::Local),
            "slurm" => Ok(ExecutorKind::Slurm),
            _ => Err(format!("unknown executor `{s}` (known: local, slurm)")),
        }
    }
}

/// How a cluster job reaches the stage's inputs and hands back its output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterIo {
    /// Through the workspace, on a filesystem the nodes share (the default).
    #[default]
    Shared,
    /// Through the remote cache: for nodes that do not see the workspace.
    Remote,
}

impl std::str::FromStr for ClusterIo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(ClusterIo::Shared),
            "remote" => Ok(ClusterIo::Remote),
            _ => Err(format!("unknown cluster io `{s}` (known: shared, remote)")),
        }
    }
}

/// A stage's `resources:`. `gpu` also counts against this machine's GPUs when
/// the stage runs locally; the rest only means something to a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub gpu: u32,
    pub nodes: Option<u32>,
    pub tasks_per_node: Option<u32>,
    /// CPUs per task.
    pub cpus: Option<u32>,
    /// Memory per node, as Slurm writes it: `16G`, `512M`, `4000` (MB).
    pub mem: Option<String>,
    /// Wall-clock limit, as Slurm writes it: `MM`, `MM:SS`, `HH:MM:SS`,
    /// `D-HH`, `D-HH:MM`, `D-HH:MM:SS`.
    pub time: Option<String>,
    pub partition: Option<String>,
}

impl Resources {
    /// The first field Slurm would reject, and why.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        for (field, n) in [
            ("nodes", self.nodes),
            ("tasks_per_node", self.tasks_per_node),
            ("cpus", self.cpus),
        ] {
            if n == Some(0) {
                return Some((field, "must be at least 1".into()));
            }
        }
        if let Some(mem) = self.mem.as_deref().filter(|m| !valid_mem(m)) {
            return Some((
                "mem",
                format!("`{mem}` is not a memory size: a number of megabytes, or a number with K, M, G or T (`16G`)"),
            ));
        }
        if let Some(time) = self.time.as_deref().filter(|t| !valid_time(t)) {
            return Some((
                "time",
                format!("`{time}` is not a Slurm time limit: use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"),
            ));
        }
        if let Some(p) = self.partition.as_deref().filter(|p| !valid_name(p)) {
            return Some(("partition", format!("`{p}` is not a partition name")));
        }
        None
    }

    /// Tasks in all: `nodes × tasks_per_node`.
    pub fn tasks(&self) -> u32 {
        self.nodes
            .unwrap_or(1)
            .saturating_mul(self.tasks_per_node.unwrap_or(1))
    }

    /// The `sbatch` options these resources ask for.
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(n) = self.nodes {
            args.push(format!("--nodes={n}"));
        }
        if let Some(n) = self.tasks_per_node {
            args.push(format!("--ntasks-per-node={n}"));
        }
        if let Some(n) = self.cpus {
            args.push(format!("--cpus-per-task={n}"));
        }
        if let Some(m) = &self.mem {
            args.push(format!("--mem={m}"));
        }
        if let Some(t) = &self.time {
            args.push(format!("--time={t}"));
        }
        if let Some(p) = &self.partition {
            args.push(format!("--partition={p}"));
        }
        if self.gpu > 0 {
            args.push(format!("--gres=gpu:{}", self.gpu));
        }
        args
    }
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Slurm's time formats (`sbatch --time`), `infinite` and `unlimited` too.
fn valid_time(t: &str) -> bool {
    if matches!(t, "infinite" | "unlimited" | "UNLIMITED") {
        return true;
    }
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    if days.is_some_and(|d| !digits(d)) || !parts.iter().all(|p| digits(p)) {
        return false;
    }
    // Without days: MM, MM:SS, HH:MM:SS; with: D-HH, D-HH:MM, D-HH:MM:SS.
    let fits = |p: &str| p.len() <= 2 && p.parse::<u32>().is_ok_and(|n| n < 60);
    match (days.is_some(), parts.as_slice()) {
        (false, [_]) => true,
        (false, [_, s]) => fits(s),
        (false, [_, m, s]) | (true, [_, m, s]) => fits(m) && fits(s),
        (true, [_]) => true,
        (true, [_, m]) => fits(m),
        _ => false,
    }
}

fn valid_mem(m: &str) -> bool {
    let num = m
        .strip_suffix(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't'])
        .unwrap_or(m);
    digits(num) && num.bytes().any(|b| b != b'0')
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_time_formats() {
        for t in [
            "5",
            "90",
            "5:30",
            "1:00:00",
            "2-0",
            "2-12:30",
            "2-12:30:00",
            "infinite",
        ] {
            assert!(valid_time(t), "{t}");
        }
        for t in [
            "", "1h", "5:60", "1:2:3:4", "-5", "2-", "1:00:0x", "a-1", "5.5",
        ] {
            assert!(!valid_time(t), "{t}");
        }
    }

    #[test]
    fn slurm_memory_sizes() {
        for m in ["4000", "16G", "16g", "512M", "1T", "64K"] {
            assert!(valid_mem(m), "{m}");
        }
        for m in ["", "0", "16GB", "1.5G", "G", "-1G", "16 G"] {
            assert!(!valid_mem(m), "{m}");
        }
    }

    #[test]
    fn resources_become_sbatch_options() {
        let r = Resources {
            gpu: 2,
            nodes: Some(2),
            tasks_per_node: Some(1),
            cpus: Some(4),
            mem: Some("16G".into()),
            time: Some("1:00:00".into()),
            partition: Some("gpu".into()),
        };
        assert_eq!(
            r.sbatch_args(),
            [
                "--nodes=2",
                "--ntasks-per-node=1",
                "--cpus-per-task=4",
                "--mem=16G",
                "--time=1:00:00",
                "--partition=gpu",
                "--gres=gpu:2"
            ]
        );
        assert_eq!(r.tasks(), 2);
        assert!(Resources::default().sbatch_args().is_empty());
    }
}
