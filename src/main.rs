//! `pipe`: the command line. `cli.rs` says what clap parses; each subcommand
//! is one file under `commands/` that calls into the engine and the stage
//! kinds; `reporter.rs` owns the terminal. Exit codes: see [`exit`].

mod cli;
mod commands;
mod exit;
mod history;
mod reporter;
mod signals;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command, ExpCommand, MetricsCommand};
use commands::{failure, with_pipeline};
use exit::Failure;

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
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(f) => {
            // A URL's user info (a remote's, an endpoint's) never reaches the terminal.
            let message = format!("{:#}", f.error);
            reporter::error(&pipe_engine::cache::redact_userinfo(&message));
            ExitCode::from(f.code as u8)
        }
    }
}

fn dispatch(cli: Cli) -> Result<i32, Failure> {
    let settings = pipe_stages::Settings {
        mirror: cli
            .mirror
            .map(|dir| std::path::absolute(&dir).unwrap_or(dir))
            .filter(|dir| !dir.as_os_str().is_empty()),
    };
    let registry = &pipe_stages::registry(&settings);
    let quiet = cli.quiet;
    match cli.command {
        Command::Run(args) => commands::run::run(args, registry, quiet, cli.verbose),
        Command::Status { m, json, r } => commands::status::status(&m, &r, json, registry),
        Command::Push { m, r } => {
            let (p, remote) = commands::remote::required(&m, &r, registry, true)?;
            commands::push::push(&p, &remote, quiet)
        }
        Command::Pull { m, r } => {
            let (p, remote) = commands::remote::required(&m, &r, registry, false)?;
            commands::pull::pull(&p, &remote, quiet)
        }
        Command::Dag { m, format, json } => commands::dag::dag(&m, format, json, registry),
        Command::Validate { manifests, sets } => {
            commands::validate::validate(&manifests, &sets, quiet, registry)
        }
        Command::Show { args, sets, json } => commands::show::show(args, sets, json, registry),
        Command::Serve { args } => commands::serve::serve(&args),
        Command::Endpoints { workspace, json } => commands::endpoints::endpoints(workspace, json),
        Command::Down {
            names,
            all,
            workspace,
        } => commands::down::down(&names, all, workspace),
        Command::Runs { manifest, json } | Command::Exp(ExpCommand::Show { manifest, json }) => {
            with_pipeline(&manifest, registry, |p| {
                commands::runs::runs(&mut reporter::stdout(), p, json)
            })
        }
        Command::Metrics(MetricsCommand::Show { m, json }) => {
            let p = commands::load(&m, registry)?;
            commands::metrics::show(&mut reporter::stdout(), &p, registry, json)
                .map_err(failure)?;
            Ok(exit::OK)
        }
        Command::Metrics(MetricsCommand::Diff { args, json }) => {
            let (manifest, rest) = commands::manifest_first(args, 2);
            let rev = rest.first().map(String::as_str);
            with_pipeline(&manifest, registry, |p| {
                commands::metrics::diff(&mut reporter::stdout(), p, rev, json)
            })
        }
        Command::Checkout { run, workspace } => {
            let root = commands::find_workspace(workspace)?;
            commands::checkout::checkout(&root, &run).map_err(failure)?;
            Ok(exit::OK)
        }
        Command::Plots { args, output } => {
            let (manifest, runs) = commands::manifest_first(args, usize::MAX);
            with_pipeline(&manifest, registry, |p| {
                commands::plots::plots(p, &runs, &output)
            })
        }
        Command::Logs { mut args } => {
            // `[MANIFEST] STAGE`: clap allows one or two.
            let stage = args.pop().unwrap_or_default();
            let manifest = args.pop().unwrap_or_else(|| cli::DEFAULT_MANIFEST.into());
            with_pipeline(manifest.as_ref(), registry, |p| {
                commands::logs::logs(&mut reporter::stdout(), p, &stage)
            })
        }
        Command::Gc {
            manifests,
            workspace,
        } => commands::gc::gc(&manifests, workspace, quiet, registry),
        Command::Init { template } => {
            let cwd = std::env::current_dir().context("no current directory")?;
            commands::init::run(&cwd, template)
        }
        Command::ExecStage { spec, remote } => Ok(commands::exec_stage::run(
            &spec,
            remote.as_deref(),
            registry,
        )),
        Command::Completions { shell } => Ok(commands::completions::run::<Cli>(shell)),
    }
}
