//! Which group this process belongs to, from the variables a launcher sets.
//!
//! | launcher | rank | world size | local rank | rendezvous host | port |
//! |---|---|---|---|---|---|
//! | torchrun (and `pipe` itself for `nproc_per_node`) | `RANK` | `WORLD_SIZE` | `LOCAL_RANK` | `MASTER_ADDR` | `MASTER_PORT` |
//! | Slurm (`srun`) | `SLURM_PROCID` | `SLURM_NTASKS` | `SLURM_LOCALID` | `MASTER_ADDR`, else the first host of `SLURM_JOB_NODELIST` | `MASTER_PORT`, else 29500 |
//! | Kubernetes Indexed Job | `JOB_COMPLETION_INDEX` | `WORLD_SIZE` (set it to the Job's `completions`) | 0 | `MASTER_ADDR` (the host name of index 0 behind the Job's headless Service, e.g. `JOB-0.SERVICE`) | `MASTER_PORT`, else 29500 |
//!
//! torchrun's variables win over Slurm's, which win over Kubernetes'. A world
//! of one (or no launcher) means no group: the stage runs alone, or starts
//! its own `nproc_per_node` ranks.

use std::process::Command;

/// The port of the rendezvous when the launcher names none (torchrun's).
pub const DEFAULT_PORT: u16 = 29500;

/// The place of this process in a group and where rank 0 hosts the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub rank: usize,
    pub world: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

/// A launcher variable that is set but unusable.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{name}={value:?} is not {what}")]
    Bad {
        name: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("{0} is set but {1} is not")]
    Missing(&'static str, &'static str),
    #[error("rank {rank} is not below the world size {world}")]
    RankOutOfRange { rank: usize, world: usize },
}

/// Reads the group from the process environment (see the module docs).
pub fn from_env() -> Result<Option<Membership>, EnvError> {
    membership(&|name| std::env::var(name).ok(), &scontrol_first_host)
}

/// The group described by the variables `var` returns; `first_host` expands a
/// Slurm node list to its first host (`scontrol`, if there is one).
pub fn membership(
    var: &dyn Fn(&str) -> Option<String>,
    first_host: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Membership>, EnvError> {
    let number = |name: &'static str| -> Result<Option<usize>, EnvError> {
        var(name)
            .map(|v| {
                v.trim().parse::<usize>().map_err(|_| EnvError::Bad {
                    name,
                    value: v,
                    what: "a non-negative integer",
                })
            })
            .transpose()
    };
    let port = || -> Result<u16, EnvError> {
        match var("MASTER_PORT") {
            None => Ok(DEFAULT_PORT),
            Some(v) => v.trim().parse::<u16>().map_err(|_| EnvError::Bad {
                name: "MASTER_PORT",
                value: v,
                what: "a port number",
            }),
        }
    };
    let (rank, world, local_rank, addr) =
        if let Some(world) = number("WORLD_SIZE")?.filter(|_| var("RANK").is_some()) {
            let rank = number("RANK")?.unwrap_or(0);
            let local = number("LOCAL_RANK")?.unwrap_or(rank);
            (rank, world, local, var("MASTER_ADDR"))
        } else if let Some(rank) = number("SLURM_PROCID")? {
            // A batch script without `--ntasks` has a rank but no task count:
            // a world of one.
            let world = number("SLURM_NTASKS")?.unwrap_or(1);
            let local = number("SLURM_LOCALID")?.unwrap_or(0);
            let addr = var("MASTER_ADDR").or_else(|| {
                var("SLURM_JOB_NODELIST")
                    .or_else(|| var("SLURM_NODELIST"))
                    .and_then(|list| first_host(&list).or_else(|| first_of_nodelist(&list)))
            });
            (rank, world, local, addr)
        } else if let Some(rank) = number("JOB_COMPLETION_INDEX")? {
            let world = number("WORLD_SIZE")?
                .ok_or(EnvError::Missing("JOB_COMPLETION_INDEX", "WORLD_SIZE"))?;
            (rank, world, 0, var("MASTER_ADDR"))
        } else {
            return Ok(None);
        };
    if world <= 1 {
        return Ok(None);
    }
    if rank >= world {
        return Err(EnvError::RankOutOfRange { rank, world });
    }
    let master_addr = addr.ok_or(EnvError::Missing("a launcher's rank", "MASTER_ADDR"))?;
    Ok(Some(Membership {
        rank,
        world,
        local_rank,
        master_addr,
        master_port: port()?,
    }))
}

/// The first host of a Slurm node list by `scontrol show hostnames`, when
/// Slurm's commands are installed.
fn scontrol_first_host(list: &str) -> Option<String> {
    let out = Command::new("scontrol")
        .args(["show", "hostnames", list])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}

/// The first host of a Slurm node list in its simple forms: `a,b`,
/// `node[01-04,7]`, `gpu-[3,5]-ib,cpu1`.
pub fn first_of_nodelist(list: &str) -> Option<String> {
    let list = list.trim();
    // The first entry: up to a comma outside brackets.
    let mut depth = 0usize;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => return true,
                _ => {}
            }
            false
        })
        .map_or(list.len(), |(i, _)| i);
    let entry = &list[..end];
    let host = match entry.split_once('[') {
        None => entry.to_string(),
        Some((prefix, rest)) => {
            let (ranges, suffix) = rest.split_once(']')?;
            let first = ranges.split(',').next()?;
            let start = first.split('-').next()?.trim();
            if start.is_empty() || !start.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            format!("{prefix}{start}{suffix}")
        }
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn no_scontrol(_: &str) -> Option<String> {
        None
    }

    fn m(rank: usize, world: usize, local: usize, addr: &str, port: u16) -> Option<Membership> {
        Some(Membership {
            rank,
            world,
            local_rank: local,
            master_addr: addr.into(),
            master_port: port,
        })
    }

    #[test]
    fn torchrun_variables() {
        let v = vars(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29400"),
        ]);
        assert_eq!(
            membership(&v, &no_scontrol).unwrap(),
            m(3, 4, 1, "10.0.0.1", 29400)
        );
    }

    #[test]
    fn no_launcher_or_a_world_of_one_is_no_group() {
        assert_eq!(membership(&vars(&[]), &no_scontrol).unwrap(), None);
        let v = vars(&[("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "h")]);
        assert_eq!(membership(&v, &no_scontrol).unwrap(), None);
        let v = vars(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]);
        assert_eq!(membership(&v, &no_scontrol).unwrap(), None);
        // sbatch without --ntasks sets no SLURM_NTASKS.
        let v = vars(&[("SLURM_PROCID", "0"), ("SLURM_JOB_NODELIST", "n1")]);
        assert_eq!(membership(&v, &no_scontrol).unwrap(), None);
    }

    #[test]
    fn slurm_variables_and_the_first_host_of_the_node_list() {
        let v = vars(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-09,12],login1"),
        ]);
        assert_eq!(
            membership(&v, &no_scontrol).unwrap(),
            m(5, 8, 1, "gpu07", DEFAULT_PORT)
        );
        // scontrol's answer wins when it has one; MASTER_ADDR wins over both.
        let scontrol = |_: &str| Some("node-a".to_string());
        assert_eq!(
            membership(&v, &scontrol).unwrap(),
            m(5, 8, 1, "node-a", DEFAULT_PORT)
        );
        let v = vars(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_JOB_NODELIST", "n[1-2]"),
            ("MASTER_ADDR", "head"),
            ("MASTER_PORT", "4000"),
        ]);
        assert_eq!(membership(&v, &scontrol).unwrap(), m(0, 2, 0, "head", 4000));
    }

    #[test]
    fn kubernetes_indexed_job() {
        let v = vars(&[
            ("JOB_COMPLETION_INDEX", "2"),
            ("WORLD_SIZE", "3"),
            ("MASTER_ADDR", "train-0.train"),
        ]);
        assert_eq!(
            membership(&v, &no_scontrol).unwrap(),
            m(2, 3, 0, "train-0.train", DEFAULT_PORT)
        );
        let v = vars(&[("JOB_COMPLETION_INDEX", "2"), ("MASTER_ADDR", "h")]);
        let e = membership(&v, &no_scontrol).unwrap_err().to_string();
        assert_eq!(e, "JOB_COMPLETION_INDEX is set but WORLD_SIZE is not");
    }

    #[test]
    fn bad_values_are_named() {
        let v = vars(&[("RANK", "x"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
        let e = membership(&v, &no_scontrol).unwrap_err().to_string();
        assert_eq!(e, "RANK=\"x\" is not a non-negative integer");
        let v = vars(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]);
        let e = membership(&v, &no_scontrol).unwrap_err().to_string();
        assert_eq!(e, "rank 2 is not below the world size 2");
        let v = vars(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ]);
        let e = membership(&v, &no_scontrol).unwrap_err().to_string();
        assert_eq!(e, "MASTER_PORT=\"70000\" is not a port number");
    }

    #[test]
    fn node_list_forms() {
        assert_eq!(first_of_nodelist("a,b").as_deref(), Some("a"));
        assert_eq!(
            first_of_nodelist("node[01-04,7]").as_deref(),
            Some("node01")
        );
        assert_eq!(
            first_of_nodelist("gpu-[3,5]-ib,cpu1").as_deref(),
            Some("gpu-3-ib")
        );
        assert_eq!(first_of_nodelist("solo").as_deref(), Some("solo"));
        assert_eq!(first_of_nodelist("bad[").as_deref(), None);
        assert_eq!(first_of_nodelist("").as_deref(), None);
    }
}
