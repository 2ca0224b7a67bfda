//! The command line as clap parses it: global flags and one variant per
//! subcommand. Each subcommand's work lives in `commands/<name>.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands;

#[derive(Parser)]
#[command(
    name = "pipe",
    version,
    about = "Declarative, content-hashed ML pipelines from YAML manifests"
)]
pub struct Cli {
    /// Print only failures.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Also print stage progress messages.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Look up `https://HOST/PATH` downloads as DIR/HOST/PATH first (offline mirror).
    #[arg(long, global = true, value_name = "DIR", env = "PIPE_MIRROR")]
    pub mirror: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The manifest a command reads when none is named.
pub const DEFAULT_MANIFEST: &str = "pipe.yaml";

#[derive(clap::Args)]
pub struct ManifestArgs {
    /// The pipeline manifest (YAML).
    #[arg(default_value = DEFAULT_MANIFEST)]
    pub manifest: PathBuf,
    /// Override a pipeline param: --set KEY=VALUE (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_set)]
    pub sets: Vec<(String, String)>,
}

#[derive(clap::Args)]
pub struct RemoteArgs {
    /// Remote cache: s3://BUCKET/PREFIX or file:///ABS/DIR (default: `remote:` in
    /// pipe.config.yaml at the workspace root).
    #[arg(long, value_name = "URL", env = "PIPE_REMOTE")]
    pub remote: Option<String>,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub m: ManifestArgs,
    /// Run this stage even if cached (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
    /// Run every stage even if cached.
    #[arg(long)]
    pub force_all: bool,
    /// Run only this stage; what it depends on must be cached.
    #[arg(long, value_name = "STAGE", conflicts_with = "until")]
    pub only: Option<String>,
    /// Run this stage and what it depends on.
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,
    /// Show what would run, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stages to run at once (default: number of cores).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// Print one JSON document with every stage's result on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub r: RemoteArgs,
    /// Push the results of stages that ran to the remote cache.
    #[arg(long, env = "PIPE_REMOTE_WRITE", value_parser = clap::builder::BoolishValueParser::new())]
    pub push: bool,
    /// Where stages without an `executor:` run: `local` or `slurm`
    /// (effects such as deploy and smoke_test always run here).
    #[arg(long, env = "PIPE_EXECUTOR", value_name = "EXECUTOR")]
    pub executor: Option<pipe_engine::cluster::ExecutorKind>,
    /// How cluster jobs reach their data: `shared` (the workspace, on a
    /// filesystem the nodes share) or `remote` (through the remote cache,
    /// for nodes that do not see the workspace)
    #[arg(long, env = "PIPE_CLUSTER_IO", value_name = "IO")]
    pub cluster_io: Option<pipe_engine::cluster::ClusterIo>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the stages whose results are not cached.
    Run(RunArgs),
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
        #[arg(default_value = DEFAULT_MANIFEST)]
        manifest: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// `pipe exp show`: the runs of a pipeline, as `pipe runs` (DVC's name).
    #[command(subcommand)]
    Exp(ExpCommand),
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
    #[command(override_usage = "pipe plots [OPTIONS] [MANIFEST] [RUN]...")]
    Plots {
        /// The manifest (default: pipe.yaml), then run ids (default: each
        /// distinct result of the history).
        #[arg(value_name = "[MANIFEST] [RUN]")]
        args: Vec<String>,
        #[arg(short, long, default_value = "plots.html")]
        output: PathBuf,
    },
    /// Print a stage's log from the last run, also when it was cached.
    #[command(override_usage = "pipe logs [MANIFEST] <STAGE>")]
    Logs {
        /// The manifest (default: pipe.yaml) and the stage.
        #[arg(value_name = "[MANIFEST] STAGE", num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
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
    ExecStage {
        /// The spec file, or with `--remote` the job's id there.
        spec: PathBuf,
        #[arg(long)]
        remote: Option<String>,
    },
    /// Print a shell completion script: `pipe completions bash > ~/.local/share/bash-completion/completions/pipe`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
pub enum MetricsCommand {
    /// Each stage's metrics for this configuration (from the store).
    Show {
        #[command(flatten)]
        m: ManifestArgs,
        #[arg(long)]
        json: bool,
    },
    /// The current lock's metrics against a git revision's lock or a run.
    #[command(override_usage = "pipe metrics diff [OPTIONS] [MANIFEST] [REV]")]
    Diff {
        /// The manifest (default: pipe.yaml), then a git revision (default
        /// HEAD) or a run id.
        #[arg(value_name = "[MANIFEST] [REV]", num_args = 0..=2)]
        args: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ExpCommand {
    /// One row per run: the params that differ and the metrics (`pipe runs`).
    Show {
        #[arg(default_value = DEFAULT_MANIFEST)]
        manifest: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

pub fn parse_set(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}
