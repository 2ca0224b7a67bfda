//! `pipe`: the command line. Parses arguments, loads the manifest, hands it to
//! the engine with the built-in stage kinds, and reports. Exit codes: see [`exit`].

mod commands;
mod exit;
mod history;
mod remote;
mod reporter;
mod signals;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pipe_engine::{Force, Pipeline, Registry, RunOptions, Status};

use exit::Failure;

#[derive(Parser)]
#[command(
    name = "pipe",
    version,
    about = "Declarative, content-hashed ML pipelines from YAML manifests"
)]
struct Cli {
    /// Print only failures.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Also print stage progress messages.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Look up `https://HOST/PATH` downloads as DIR/HOST/PATH first (offline mirror).
    #[arg(long, global = true, value_name = "DIR", env = "PIPE_MIRROR")]
    mirror: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The manifest a command reads when none is named.
const DEFAULT_MANIFEST: &str = "pipe.yaml";

#[derive(clap::Args)]
struct ManifestArgs {
    /// The pipeline manifest (YAML).
    #[arg(default_value = DEFAULT_MANIFEST)]
    manifest: PathBuf,
    /// Override a pipeline param: --set KEY=VALUE (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    sets: Vec<(String, String)>,
}

#[derive(clap::Args)]
struct RemoteArgs {
    /// Remote cache: s3://BUCKET/PREFIX or file:///ABS/DIR (default: `remote:` in
    /// pipe.config.yaml at the workspace root).
    #[arg(long, value_name = "URL", env = "PIPE_REMOTE")]
    remote: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the stages whose results are not cached.
    Run {
        #[command(flatten)]
        m: ManifestArgs,
        /// Run this stage even if cached (repeatable).
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Run every stage even if cached.
        #[arg(long)]
        force_all: bool,
        /// Run only this stage; what it depends on must be cached.
        #[arg(long, value_name = "STAGE", conflicts_with = "until")]
        only: Option<String>,
        /// Run this stage and what it depends on.
        #[arg(long, value_name = "STAGE")]
        until: Option<String>,
        /// Show what would run, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Stages to run at once (default: number of cores).
        #[arg(short, long)]
        jobs: Option<usize>,
        /// Print one JSON document with every stage's result on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        r: RemoteArgs,
        /// Push the results of stages that ran to the remote cache.
        #[arg(long, env = "PIPE_REMOTE_WRITE", value_parser = clap::builder::BoolishValueParser::new())]
        push: bool,
        /// Where stages without an `executor:` run: `local` or `slurm`
        /// (effects such as deploy and smoke_test always run here).
        #[arg(long, env = "PIPE_EXECUTOR", value_name = "EXECUTOR")]
        executor: Option<pipe_engine::cluster::ExecutorKind>,
    },
    /// Show, for each stage, whether it is cached or why it will run.
    Status {
        #[command(flatten)]
        m: ManifestArgs,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        r: RemoteArgs,
    },
    /// Upload to the remote cache every result pipe.lock records.
    Push {
        #[command(flatten)]
        m: ManifestArgs,
        #[command(flatten)]
        r: RemoteArgs,
    },
    /// Download from the remote cache every result pipe.lock records, running nothing.
    Pull {
        #[command(flatten)]
        m: ManifestArgs,
        #[command(flatten)]
        r: RemoteArgs,
    },
    /// Print the stage graph.
    Dag {
        #[command(flatten)]
        m: ManifestArgs,
        #[arg(long, value_enum, default_value_t = DagFormat::Text)]
        format: DagFormat,
        /// Print the graph as JSON on stdout (stages in run order, each with its deps).
        #[arg(long, conflicts_with = "format")]
        json: bool,
    },
    /// Check manifests without running anything.
    Validate {
        /// The pipeline manifests (YAML); each is checked, and each error printed.
        #[arg(default_value = DEFAULT_MANIFEST)]
        manifests: Vec<PathBuf>,
        /// Override a pipeline param: --set KEY=VALUE (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        sets: Vec<(String, String)>,
    },
    /// Show a stage's output: its directory, hash and files.
    #[command(override_usage = "pipe show [OPTIONS] [MANIFEST] <STAGE>")]
    Show {
        /// The manifest (default: pipe.yaml) and the stage.
        #[arg(value_name = "[MANIFEST] STAGE", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Override a pipeline param: --set KEY=VALUE (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
        sets: Vec<(String, String)>,
        /// Print the same facts as one JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Serve a packaged model over HTTP: SageMaker's /ping and /invocations
    /// (see `pipe serve --help`).
    #[command(disable_help_flag = true)]
    Serve {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the endpoints deploy stages started, with their health.
    Endpoints {
        /// Workspace (default: the nearest one above the current directory).
        #[arg(long)]
        workspace: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Stop endpoints and remove their records.
    Down {
        /// Endpoint names.
        #[arg(required_unless_present = "all")]
        names: Vec<String>,
        /// Stop every endpoint of the workspace.
        #[arg(long, conflicts_with = "names")]
        all: bool,
        #[arg(long)]
        workspace: Option<PathBuf>,
    },
    /// List the runs of a pipeline: params that differ and metrics.
    Runs {
        manifest: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Show or compare the metrics stages declare (`metrics: [FILE]`).
    #[command(subcommand)]
    Metrics(MetricsCommand),
    /// Restore an earlier run's outputs and lock from the store, running nothing.
    Checkout {
        /// The run id (see `pipe runs`); a unique prefix will do.
        run: String,
        #[arg(long)]
        workspace: Option<PathBuf>,
    },
    /// Draw the stages' plot files of several runs into one HTML file.
    Plots {
        manifest: PathBuf,
        /// Run ids (default: each distinct result of the history).
        runs: Vec<String>,
        #[arg(short, long, default_value = "plots.html")]
        output: PathBuf,
    },
    /// Print a stage's log from the last run, also when it was cached.
    Logs { manifest: PathBuf, stage: String },
    /// Delete store objects that no run record references. With manifests,
    /// also delete run records their lock files do not reference.
    Gc {
        manifests: Vec<PathBuf>,
        /// Workspace whose store to clean (default: the nearest one above the
        /// current directory).
        #[arg(long)]
        workspace: Option<PathBuf>,
    },
    /// Start a project here: write a manifest and add `.pipe/` to `.gitignore`.
    Init {
        #[arg(long, value_enum, default_value_t = commands::init::Template::Shell)]
        template: commands::init::Template,
    },
    /// Run one stage inside a cluster job (used by `pipe run`).
    #[command(name = "__exec-stage", hide = true)]
    ExecStage { spec: PathBuf },
    /// Print a shell completion script: `pipe completions bash > ~/.local/share/bash-completion/completions/pipe`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum MetricsCommand {
    /// Each stage's metrics for this configuration (from the store).
    Show {
        #[command(flatten)]
        m: ManifestArgs,
        #[arg(long)]
        json: bool,
    },
    /// The current lock's metrics against a git revision's lock or a run.
    Diff {
        manifest: PathBuf,
        /// A git revision (default HEAD) or a run id.
        rev: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}

fn load(m: &ManifestArgs, registry: &Registry) -> Result<Pipeline, Failure> {
    check_default(&m.manifest)?;
    Ok(pipe_engine::load(&m.manifest, &m.sets, registry)?)
}

/// A clear word when the manifest a command falls back to is not there.
fn check_default(manifest: &Path) -> Result<(), Failure> {
    if manifest == Path::new(DEFAULT_MANIFEST) && !manifest.exists() {
        return Err(Failure::usage(anyhow::anyhow!(
            "no {DEFAULT_MANIFEST} in the current folder: name a manifest, or create one with `pipe init`"
        )));
    }
    Ok(())
}

/// The workspace root, found from `dir` or the current directory by the one
/// rule every command uses ([`pipe_engine::workspace::find_root`]).
fn find_workspace(dir: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let start = match dir {
        Some(d) => d,
        None => std::env::current_dir().context("no current directory")?,
    };
    Ok(pipe_engine::workspace::find_root(&start))
}

fn no_remote() -> Failure {
    Failure::usage(anyhow::anyhow!(
        "no remote cache: pass --remote URL, set PIPE_REMOTE, or name one in {}",
        pipe_remote::config::FILE
    ))
}

/// The remote cache: `--remote`/`PIPE_REMOTE`, else the workspace setting.
fn open_remote(
    r: &RemoteArgs,
    p: &Pipeline,
    write: bool,
) -> Result<Option<pipe_remote::Remote>, Failure> {
    let url = match &r.remote {
        Some(url) => Some(url.clone()),
        None => pipe_remote::config::remote(&p.root).map_err(Failure::usage)?,
    };
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    match pipe_remote::Remote::open(&url, write) {
        Ok(remote) => Ok(Some(remote)),
        Err(e @ pipe_remote::Error::Url { .. }) => Err(Failure::usage(e)),
        Err(e) => Err(anyhow::Error::new(e).into()),
    }
}

/// What went wrong with the remote during a run, said once.
fn remote_warnings(remote: Option<&pipe_remote::Remote>) {
    let Some(report) = remote.map(|r| r.report()) else {
        return;
    };
    if report.unsigned > 0 {
        eprintln!(
            "warning: ignored {} remote result entr{} without a valid signature ({} is set)",
            report.unsigned,
            if report.unsigned == 1 { "y" } else { "ies" },
            pipe_remote::SIGNING_KEY_VAR
        );
    }
    for p in &report.problems {
        eprintln!("warning: {}", pipe_engine::cache::redact_userinfo(p));
    }
}

fn gpus() -> u32 {
    std::fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|d| d.count() as u32)
        .unwrap_or(0)
}

fn main() -> ExitCode {
    signals::install();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::BAD_INPUT as u8
            } else {
                0
            });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(dir) = &cli.mirror {
        // Stages read it from the environment; set before any thread starts.
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        std::env::set_var("PIPE_MIRROR", dir);
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(f) => {
            // A URL's user info (a remote's, an endpoint's) never reaches the terminal.
            let message = format!("{:#}", f.error);
            eprintln!("error: {}", pipe_engine::cache::redact_userinfo(&message));
            ExitCode::from(f.code as u8)
        }
    }
}

fn run(cli: Cli) -> Result<i32, Failure> {
    let registry = pipe_stages::registry();
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Run {
            m,
            force,
            force_all,
            only,
            until,
            dry_run,
            jobs,
            json,
            r,
            push,
            executor,
        } => {
            let p = load(&m, &registry)?;
            let remote = open_remote(&r, &p, push)?;
            let opts = RunOptions {
                force: if force_all {
                    Force::All
                } else if force.is_empty() {
                    Force::None
                } else {
                    Force::Stages(force.into_iter().collect::<BTreeSet<_>>())
                },
                only,
                until,
                dry_run,
                jobs: jobs.unwrap_or(RunOptions::default().jobs),
                gpus: gpus(),
                interrupt: Default::default(),
                executor: executor.unwrap_or_default(),
            };
            signals::watch(opts.interrupt.clone());
            let started = Instant::now();
            let human = reporter::Human::new(cli.quiet || json, cli.verbose);
            let remote_cache = remote.as_ref().map(|r| r as &dyn pipe_engine::RemoteCache);
            let summary = if json {
                pipe_engine::run_with_remote(&p, &registry, &opts, &reporter::Json, remote_cache)?
            } else {
                pipe_engine::run_with_remote(&p, &registry, &opts, &human, remote_cache)?
            };
            remote_warnings(remote.as_ref());
            if !dry_run {
                if let Err(e) = history::record(&p, &summary) {
                    eprintln!("warning: the run was not recorded: {e:#}");
                }
            }
            if json {
                let _ = writeln!(out, "{}", reporter::json_summary(&summary));
            } else if dry_run {
                human.finish(&summary, started.elapsed().as_secs_f64());
                print_status(&mut out, &summary);
            } else {
                human.finish(&summary, started.elapsed().as_secs_f64());
            }
            if summary.interrupted {
                if !json {
                    eprintln!("error: interrupted");
                }
                return Ok(exit::INTERRUPTED);
            }
            if summary.failed() {
                let names = |status: Status| -> Vec<&str> {
                    summary
                        .results
                        .iter()
                        .filter(|r| r.status == status)
                        .map(|r| r.name.as_str())
                        .collect()
                };
                let (failed, skipped) = (names(Status::Failed), names(Status::Skipped));
                if !json {
                    let mut parts = Vec::new();
                    if !failed.is_empty() {
                        parts.push(format!("failed: {}", failed.join(", ")));
                    }
                    if !skipped.is_empty() {
                        parts.push(format!("skipped: {}", skipped.join(", ")));
                    }
                    eprintln!("error: {}", parts.join("; "));
                }
                return Ok(exit::STAGE_FAILED);
            }
            Ok(exit::OK)
        }
        Command::Status { m, json, r } => {
            let p = load(&m, &registry)?;
            let remote = open_remote(&r, &p, false)?;
            let opts = RunOptions {
                dry_run: true,
                ..RunOptions::default()
            };
            let summary = pipe_engine::run_with_remote(
                &p,
                &registry,
                &opts,
                &pipe_engine::event::Silent,
                remote.as_ref().map(|r| r as &dyn pipe_engine::RemoteCache),
            )?;
            remote_warnings(remote.as_ref());
            if json {
                let _ = writeln!(out, "{}", reporter::json_summary(&summary));
            } else {
                print_status(&mut out, &summary);
            }
            Ok(exit::OK)
        }
        Command::Push { m, r } => {
            let p = load(&m, &registry)?;
            let remote = open_remote(&r, &p, true)?.ok_or_else(no_remote)?;
            remote::push(&p, &remote, cli.quiet)
        }
        Command::Pull { m, r } => {
            let p = load(&m, &registry)?;
            let remote = open_remote(&r, &p, false)?.ok_or_else(no_remote)?;
            remote::pull(&p, &remote, cli.quiet)
        }
        Command::Dag { m, format, json } => {
            let p = load(&m, &registry)?;
            if json {
                let _ = writeln!(out, "{}", dag_json(&p));
            } else {
                let _ = write!(out, "{}", render_dag(&p, format));
            }
            Ok(exit::OK)
        }
        Command::Validate { manifests, sets } => {
            let mut code = exit::OK;
            for m in &manifests {
                check_default(m)?;
                match pipe_engine::load(m, &sets, &registry) {
                    Ok(p) if !cli.quiet => {
                        eprintln!("{}: ok ({} stages)", m.display(), p.stages.len())
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("error: {e}");
                        code = exit::BAD_INPUT;
                    }
                }
            }
            Ok(code)
        }
        Command::Serve { args } => {
            let worker =
                pipe_stages::worker::path().map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?;
            signals::unblock();
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new(&worker).arg("serve").args(&args),
            );
            Err(anyhow::anyhow!("cannot start {}: {err}", worker.display()).into())
        }
        Command::Endpoints { workspace, json } => {
            let root = find_workspace(workspace)?;
            let mut rows = Vec::new();
            for r in pipe_stages::endpoint::list(&root) {
                let health = match r.health() {
                    pipe_stages::endpoint::Health::Healthy => "healthy".to_string(),
                    pipe_stages::endpoint::Health::Down(why) => format!("down: {why}"),
                };
                rows.push((r, health));
            }
            if json {
                let doc: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(r, h)| serde_json::json!({"name": r.name, "url": r.url, "pid": r.pid, "model_sha256": r.model_sha256, "log": r.log, "health": h}))
                    .collect();
                let _ = writeln!(out, "{}", serde_json::Value::Array(doc));
            } else if rows.is_empty() {
                eprintln!("no endpoints in {}", root.display());
            } else {
                let w = rows.iter().map(|(r, _)| r.name.len()).max().unwrap_or(4);
                for (r, h) in &rows {
                    let _ = writeln!(
                        out,
                        "{:<w$}  {:<24}  pid {:<8} model {}  {h}",
                        r.name,
                        r.url,
                        r.pid,
                        &r.model_sha256[..12.min(r.model_sha256.len())]
                    );
                }
            }
            Ok(exit::OK)
        }
        Command::Down {
            names,
            all,
            workspace,
        } => {
            let root = find_workspace(workspace)?;
            let known = pipe_stages::endpoint::list(&root);
            let chosen: Vec<_> = if all {
                known
            } else {
                let mut v = Vec::new();
                for n in &names {
                    match known.iter().find(|r| &r.name == n) {
                        Some(r) => v.push(r.clone()),
                        None => {
                            return Err(Failure::usage(anyhow::anyhow!(
                                "no endpoint named `{n}` (known: {})",
                                known
                                    .iter()
                                    .map(|r| r.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )))
                        }
                    }
                }
                v
            };
            for r in chosen {
                let stopped = r
                    .stop(&root, std::time::Duration::from_secs(10))
                    .map_err(|e| anyhow::anyhow!("cannot stop {}: {e}", r.name))?;
                match stopped {
                    pipe_stages::endpoint::Stopped::Server => {
                        eprintln!("{:>12} {} ({})", "Stopped", r.name, r.url)
                    }
                    pipe_stages::endpoint::Stopped::Stale(why) => eprintln!(
                        "{:>12} {}: stale record removed, nothing killed: {why}",
                        "Forgot", r.name
                    ),
                }
            }
            Ok(exit::OK)
        }
        Command::Runs { manifest, json } => {
            let p = pipe_engine::load(&manifest, &[], &registry)?;
            commands::runs::runs(&mut out, &p, json).map_err(commands::failure)?;
            Ok(exit::OK)
        }
        Command::Metrics(MetricsCommand::Show { m, json }) => {
            let p = load(&m, &registry)?;
            commands::metrics::show(&mut out, &p, &registry, json).map_err(commands::failure)?;
            Ok(exit::OK)
        }
        Command::Metrics(MetricsCommand::Diff {
            manifest,
            rev,
            json,
        }) => {
            let p = pipe_engine::load(&manifest, &[], &registry)?;
            commands::metrics::diff(&mut out, &p, rev.as_deref(), json)
                .map_err(commands::failure)?;
            Ok(exit::OK)
        }
        Command::Checkout { run, workspace } => {
            commands::checkout::checkout(&find_workspace(workspace)?, &run)
                .map_err(commands::failure)?;
            Ok(exit::OK)
        }
        Command::Plots {
            manifest,
            runs,
            output,
        } => {
            let p = pipe_engine::load(&manifest, &[], &registry)?;
            commands::plots::plots(&p, &runs, &output).map_err(commands::failure)?;
            Ok(exit::OK)
        }
        Command::Logs { manifest, stage } => {
            let p = pipe_engine::load(&manifest, &[], &registry)?;
            commands::logs::logs(&mut out, &p, &stage).map_err(commands::failure)?;
            Ok(exit::OK)
        }
        Command::Show { args, sets, json } => {
            let (manifest, stage) = match <[String; 2]>::try_from(args) {
                Ok([manifest, stage]) => (PathBuf::from(manifest), stage),
                Err(args) => (
                    PathBuf::from(DEFAULT_MANIFEST),
                    args.into_iter().next().unwrap_or_default(),
                ),
            };
            let m = ManifestArgs { manifest, sets };
            let p = load(&m, &registry)?;
            show(&mut out, &p, &stage, json)?;
            Ok(exit::OK)
        }
        Command::Init { template } => {
            let cwd = std::env::current_dir().context("no current directory")?;
            commands::init::run(&cwd, template)
        }
        Command::ExecStage { spec } => Ok(commands::exec_stage::run(&spec, &registry)),
        Command::Completions { shell } => Ok(commands::completions::run::<Cli>(shell)),
        Command::Gc {
            manifests,
            workspace,
        } => {
            let mut keep = None;
            let mut root = None;
            for m in &manifests {
                let p = pipe_engine::load(m, &[], &registry)?;
                if root.as_ref().is_some_and(|r| *r != p.root) {
                    return Err(Failure::usage(anyhow::anyhow!(
                        "{} belongs to another workspace ({}) than the manifests before it",
                        m.display(),
                        p.root.display()
                    )));
                }
                root = Some(p.root.clone());
                // A lock that cannot be read would keep nothing: refuse.
                let lock = pipe_engine::lockfile::LockFile::load(&p)
                    .map_err(pipe_engine::EngineError::from)?;
                keep.get_or_insert_with(std::collections::HashSet::new)
                    .extend(lock.stages.values().map(|e| e.key));
            }
            let root = match root {
                Some(r) => r,
                None => find_workspace(workspace)?,
            };
            let pipe_dir = root.join(".pipe");
            if !pipe_dir.is_dir() {
                return Err(Failure::usage(anyhow::anyhow!(
                    "no pipe store in {}",
                    root.display()
                )));
            }
            let _lock = pipe_engine::cache::WorkspaceLock::acquire(&pipe_dir.join("lock"), |pid| {
                eprintln!("{}", reporter::waiting_for_lock(pid))
            })
            .context("cannot lock the workspace")?;
            let store =
                pipe_engine::cache::Store::open(&pipe_dir).context("cannot open the store")?;
            let stats = store.gc(keep.as_ref()).context("gc failed")?;
            store.save().context("cannot save the stat cache")?;
            eprintln!(
                "{:>12} {} objects ({:.1} MB) and {} run records; kept {} objects",
                "Removed",
                stats.objects_removed,
                stats.bytes_freed as f64 / 1e6,
                stats.records_removed,
                stats.objects_kept
            );
            Ok(exit::OK)
        }
    }
}

fn print_status(out: &mut impl Write, summary: &pipe_engine::RunSummary) {
    let width = summary
        .results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0);
    for r in &summary.results {
        let state = match r.status {
            Status::Cached => format!(
                "cached ({}){}",
                r.output_hash.map(|h| h.short()).unwrap_or_default(),
                if r.cache == Some(pipe_engine::CacheSource::Remote) {
                    " in the remote cache"
                } else {
                    ""
                }
            ),
            Status::Pending => format!(
                "will run: {}",
                r.reason.as_ref().map(|r| r.to_string()).unwrap_or_default()
            ),
            Status::Failed | Status::Skipped => {
                format!("error: {}", r.error.as_deref().unwrap_or(""))
            }
            Status::Ran => "ran".into(),
        };
        let _ = writeln!(out, "{:<width$}  {state}", r.name);
    }
}

fn render_dag(p: &Pipeline, format: DagFormat) -> String {
    let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    let mut s = String::new();
    match format {
        DagFormat::Text => {
            for i in p.dag.topo() {
                let deps: Vec<&str> = p.dag.deps(i).into_iter().map(|d| names[d]).collect();
                let kind = &p.stages[i].kind;
                if deps.is_empty() {
                    s += &format!("{} ({kind})\n", names[i]);
                } else {
                    s += &format!("{} ({kind}) <- {}\n", names[i], deps.join(", "));
                }
            }
        }
        DagFormat::Dot => {
            s += &format!("digraph \"{}\" {{\n", p.name);
            for (i, n) in names.iter().enumerate() {
                s += &format!("  \"{n}\" [label=\"{n}\\n{}\"];\n", p.stages[i].kind);
            }
            for (a, b) in p.dag.edges() {
                s += &format!("  \"{}\" -> \"{}\";\n", names[a], names[b]);
            }
            s += "}\n";
        }
        DagFormat::Mermaid => {
            // Ids are `s0`, `s1`…: a stage named `end` or `a--b` would break
            // Mermaid's syntax; names only appear as quoted labels.
            s += "graph TD\n";
            for (i, n) in names.iter().enumerate() {
                let label = format!("{n} ({})", p.stages[i].kind).replace('"', "#quot;");
                s += &format!("  s{i}[\"{label}\"]\n");
            }
            for (a, b) in p.dag.edges() {
                s += &format!("  s{a} --> s{b}\n");
            }
        }
    }
    s
}

/// `pipe dag --json`: `{"pipeline", "stages": [{"name", "kind", "deps"}]}`,
/// stages in the order a run starts them.
fn dag_json(p: &Pipeline) -> serde_json::Value {
    let stages: Vec<serde_json::Value> = p
        .dag
        .topo()
        .into_iter()
        .map(|i| {
            let deps: Vec<&str> = p
                .dag
                .deps(i)
                .into_iter()
                .map(|d| p.stages[d].name.as_str())
                .collect();
            serde_json::json!({"name": p.stages[i].name, "kind": p.stages[i].kind, "deps": deps})
        })
        .collect();
    serde_json::json!({"pipeline": p.name, "stages": stages})
}

fn show(out: &mut impl Write, p: &Pipeline, stage: &str, json: bool) -> Result<(), Failure> {
    if p.stage(stage).is_none() {
        return Err(Failure::usage(anyhow::anyhow!(
            "no stage named `{stage}` in {}",
            p.file.display()
        )));
    }
    let lock = pipe_engine::lockfile::LockFile::load(p).map_err(pipe_engine::EngineError::from)?;
    let entry = lock
        .stages
        .get(stage)
        .ok_or_else(|| Failure::usage(anyhow::anyhow!("stage `{stage}` has not run yet")))?;
    let dir = p.output_dir(stage);
    let store = pipe_engine::cache::Store::open(&p.pipe_dir()).context("cannot open the store")?;
    let run = store
        .get(&entry.key)
        .context("cannot read the run record")?;
    if json {
        let files: Vec<serde_json::Value> = run
            .iter()
            .flat_map(|r| r.output.files())
            .map(|(path, digest, exec, size)| {
                serde_json::json!({"path": path, "size": size, "sha256": digest.to_string(), "executable": exec})
            })
            .collect();
        let stats = run.as_ref().map(|r| r.stats.clone()).unwrap_or_default();
        let doc = serde_json::json!({
            "stage": stage,
            "kind": entry.kind,
            "key": entry.key.to_string(),
            "output": entry.output.to_string(),
            "path": dir,
            "files": files,
            "stats": stats,
        });
        let _ = writeln!(out, "{doc}");
        return Ok(());
    }
    let _ = writeln!(
        out,
        "stage:  {stage}\nkind:   {}\nkey:    {}\noutput: {}\npath:   {}",
        entry.kind,
        entry.key,
        entry.output,
        display(&dir)
    );
    if let Some(run) = run {
        let _ = writeln!(out, "files:");
        for (path, digest, exec, size) in run.output.files() {
            let _ = writeln!(
                out,
                "  {path}  {size} bytes  {}{}",
                digest.short(),
                if exec { "  (executable)" } else { "" }
            );
        }
        if !run.stats.is_empty() {
            let _ = writeln!(out, "stats (not part of the output):");
            for (name, value) in &run.stats {
                let _ = writeln!(out, "  {name}: {value}");
            }
        }
    }
    Ok(())
}

fn display(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}
