//! `kind: deploy`: bring up a local endpoint for a packaged model, like the
//! blog's `estimator.deploy(...)`.
//!
//! ```yaml
//! deploy:
//!   kind: deploy
//!   inputs: {package: "package:"}
//!   with: {port: 0, host: 127.0.0.1}     # port 0: pick a free one
//! ```
//!
//! Starts `pipe serve` in the background, waits for `/ping`, and writes
//! `endpoint.json` (`name`, `url`, `pid`, `model_sha256`, `log`), also kept in
//! `.pipe/endpoints/`. A deploy is an effect: on a cache hit the endpoint is
//! checked (its process alive and our server, `/ping` answering, the same
//! model), and a dead one is brought up again. A live endpoint of the same name
//! serving another model is replaced. `pipe endpoints` lists them, `pipe down`
//! stops them.

use std::time::Duration;

use pipe_engine::cache::Digest;
use pipe_engine::{Stage, StageContext, StageError, StageKind, WithError};
use serde::Deserialize;

use crate::endpoint::{self, Health, Launch, Record};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Endpoint name (default: PIPELINE-STAGE).
    name: Option<String>,
    #[serde(default = "localhost")]
    host: String,
    #[serde(default)]
    port: u16,
    /// Seconds to wait for the server to load and answer `/ping`.
    #[serde(default = "default_timeout")]
    timeout: f64,
    /// `timeout` once checked.
    #[serde(skip)]
    timeout_after: Duration,
    max_batch: Option<usize>,
    max_delay_ms: Option<u64>,
    workers: Option<usize>,
    threads: Option<usize>,
    /// The linear layers in int8 (`pipe serve --int8`).
    #[serde(default)]
    int8: bool,
}

fn localhost() -> String {
    "127.0.0.1".into()
}
fn default_timeout() -> f64 {
    120.0
}

fn check(w: &mut Deploy) -> Result<(), WithError> {
    if let Some(n) = &w.name {
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || n.starts_with('.')
        {
            return Err(WithError::field(
                "name",
                format!("`{n}`: use letters, digits, `-`, `_` and `.`"),
            ));
        }
    }
    w.timeout_after = WithError::seconds("timeout", w.timeout)?;
    Ok(())
}

fn name(w: &Deploy, stage: &Stage, ctx: &StageContext) -> String {
    w.name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", ctx.pipeline.name, stage.name))
}

impl Deploy {
    fn package(ctx: &StageContext) -> Result<std::path::PathBuf, StageError> {
        let from = "a package stage's output";
        let p = crate::input_file(ctx, Deploy::NAME, "package", "model.tar.gz", from)?;
        if !p.is_file() {
            return Err(format!(
                "{} is missing: is `package` a package stage's output?",
                p.display()
            )
            .into());
        }
        Ok(p)
    }
}

impl StageKind for Deploy {
    const NAME: &'static str = "deploy";
    const VERSION: u32 = 1;
    const LOCAL_ONLY: bool = true;

    fn validate(&mut self, _inputs: &[&str]) -> Result<(), WithError> {
        check(self)
    }

    fn is_effect(&self) -> bool {
        true
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let w = self;
        let name = name(w, ctx.stage, ctx);
        let package = Self::package(ctx)?;
        let sha = Digest::of_file(&package)?.to_hex();
        if let Some(old) = endpoint::get(ctx.workspace, &name) {
            let same = old.model_sha256 == sha;
            match old.health() {
                Health::Healthy
                    if same && (w.port == 0 || old.url.ends_with(&format!(":{}", w.port))) =>
                {
                    ctx.progress(&format!("reusing {} ({})", old.name, old.url));
                    return crate::write_json(ctx, "endpoint.json", &old);
                }
                Health::Healthy => ctx.progress(&format!("replacing {} (another model)", old.name)),
                Health::Down(why) => ctx.progress(&format!("{} was down: {why}", old.name)),
            }
            if let endpoint::Stopped::Stale(why) =
                old.stop(ctx.workspace, Duration::from_secs(10))?
            {
                ctx.progress(&format!("forgot the stale record of {}: {why}", old.name));
            }
        }
        let mut extra = Vec::new();
        for (flag, v) in [
            ("--max-batch", w.max_batch.map(|v| v.to_string())),
            ("--max-delay-ms", w.max_delay_ms.map(|v| v.to_string())),
            ("--workers", w.workers.map(|v| v.to_string())),
            ("--threads", w.threads.map(|v| v.to_string())),
        ] {
            if let Some(v) = v {
                extra.extend([flag.to_string(), v]);
            }
        }
        if w.int8 {
            extra.push("--int8".to_string());
        }
        ctx.progress(&format!("starting {name}"));
        let record = endpoint::start(
            ctx.workspace,
            &Launch {
                name: &name,
                package: &std::path::absolute(&package)?,
                model_sha256: &sha,
                host: &w.host,
                port: w.port,
                extra_args: extra,
                timeout: w.timeout_after,
            },
        )?;
        ctx.progress(&format!("{name} is up at {}", record.url));
        crate::write_json(ctx, "endpoint.json", &record)
    }

    fn verify(&self, ctx: &StageContext) -> Result<Option<String>, StageError> {
        let receipt: Record =
            serde_json::from_slice(&std::fs::read(ctx.out.join("endpoint.json"))?)?;
        let Some(live) = endpoint::get(ctx.workspace, &receipt.name) else {
            return Ok(Some(format!("endpoint {} was taken down", receipt.name)));
        };
        if live != receipt {
            return Ok(Some(format!("endpoint {} was replaced", receipt.name)));
        }
        Ok(match live.health() {
            Health::Healthy => None,
            Health::Down(why) => Some(format!("endpoint {} is down: {why}", receipt.name)),
        })
    }
}
