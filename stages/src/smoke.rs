//! `kind: smoke_test`: send sentences to a deployed endpoint and check the
//! predicted classes, like the blog's `predictor.predict(...)`.
//!
//! ```yaml
//! smoke:
//!   kind: smoke_test
//!   inputs: {endpoint: "deploy:", data: "split:test.csv"}   # data: optional
//!   with:
//!     cases: [{text: "Somebody just left - guess who.", expect: 1}]
//!     min_accuracy: 0.7                                     # over `data`
//! ```
//!
//! A smoke test that would check nothing (no `cases`, and no `data` with
//! `min_accuracy`) or a `min_accuracy` without `data` is a manifest error.
//!
//! Writes `report.json` (each case's prediction, probability and latency;
//! accuracy over the data). A smoke test is an effect: on a cache hit it runs
//! its checks again against the live endpoint, so a broken or replaced
//! endpoint never passes from cache.

use std::time::Instant;

use pipe_engine::{StageContext, StageError, StageKind, WithError};
use pipe_protocol::serve::{Prediction, ACCEPT_VERBOSE, INVOCATIONS};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::endpoint::Record;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeTest {
    #[serde(default)]
    cases: Vec<Case>,
    min_accuracy: Option<f64>,
    /// A workspace CSV (`sentence,label`), instead of a `data` input.
    data: Option<String>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct Case {
    text: String,
    expect: Value,
}

fn check_with(w: &SmokeTest, inputs: &[&str]) -> Result<(), WithError> {
    if let Some(a) = w.min_accuracy {
        if !(0.0..=1.0).contains(&a) {
            return Err(WithError::field("min_accuracy", "must be between 0 and 1"));
        }
    }
    // A smoke test must check something: a test that passes with zero checks
    // would report a broken endpoint as healthy.
    let data = w.data.is_some() || inputs.contains(&"data");
    if w.cases.is_empty() && !(data && w.min_accuracy.is_some()) {
        return Err(WithError {
            field: None,
            message: "nothing to check: give `cases`, or `data` (a `with` field or an \
                      input) with `min_accuracy`"
                .into(),
        });
    }
    if w.min_accuracy.is_some() && !data {
        return Err(WithError::field(
            "min_accuracy",
            "`min_accuracy` needs `data` (a `with` field or an input) to measure it on",
        ));
    }
    Ok(())
}

fn predict(
    client: &reqwest::blocking::Client,
    url: &str,
    texts: &[&str],
) -> Result<Vec<Prediction>, StageError> {
    let r = client
        .post(format!("{url}{INVOCATIONS}"))
        .header("content-type", "application/json")
        .header("accept", ACCEPT_VERBOSE)
        .body(serde_json::to_vec(&texts)?)
        .send()
        .map_err(|e| format!("{url}{INVOCATIONS}: {e}"))?;
    let status = r.status();
    let body = r.text()?;
    if !status.is_success() {
        return Err(format!("{url}{INVOCATIONS} answered {status}: {body}").into());
    }
    let out: Vec<Prediction> = serde_json::from_str(&body)
        .map_err(|e| format!("{url}{INVOCATIONS}: unexpected answer ({e}): {body}"))?;
    if out.len() != texts.len() {
        return Err(format!(
            "{url}{INVOCATIONS} answered {} predictions for {} sentences",
            out.len(),
            texts.len()
        )
        .into());
    }
    Ok(out)
}

fn matches(expect: &Value, p: &Prediction) -> bool {
    match expect {
        Value::Number(n) => n.as_u64() == Some(p.class as u64),
        Value::String(s) => *s == p.label,
        _ => false,
    }
}

/// Runs every check; `Err` with a readable table when one fails.
fn check(ctx: &StageContext, w: &SmokeTest) -> Result<Value, StageError> {
    let from = "a deploy stage's output";
    let ep = crate::input_file(ctx, SmokeTest::NAME, "endpoint", "endpoint.json", from)?;
    let record: Record = serde_json::from_slice(&std::fs::read(&ep)?)
        .map_err(|e| format!("{}: not an endpoint record: {e}", ep.display()))?;
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?;
    let mut cases = Vec::new();
    let mut failed = Vec::new();
    for c in &w.cases {
        let t0 = Instant::now();
        let p = predict(&client, &record.url, &[&c.text])?.remove(0);
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let ok = matches(&c.expect, &p);
        if !ok {
            failed.push(format!(
                "  {:<50}  expected {:<6}  got {} (p={:.3})",
                c.text,
                c.expect.to_string(),
                p.class,
                p.probabilities[p.class]
            ));
        }
        cases.push(
            json!({"text": c.text, "expect": c.expect, "predicted": p.class, "label": p.label,
            "probability": p.probabilities[p.class], "latency_ms": ms, "ok": ok}),
        );
    }
    let data = ctx
        .inputs
        .get("data")
        .cloned()
        .or_else(|| w.data.as_ref().map(|d| ctx.workspace.join(d)));
    let mut accuracy = None;
    if let Some(path) = data {
        let mut r =
            csv::Reader::from_path(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let headers = r.headers()?.clone();
        let col = |n: &str| {
            headers
                .iter()
                .position(|h| h == n)
                .ok_or_else(|| format!("{}: no `{n}` column", path.display()))
        };
        let (s, l) = (col("sentence")?, col("label")?);
        let mut rows = Vec::new();
        for rec in r.records() {
            let rec = rec?;
            rows.push((
                rec.get(s).unwrap_or_default().to_string(),
                rec.get(l).unwrap_or_default().to_string(),
            ));
        }
        let mut correct = 0;
        for chunk in rows.chunks(64) {
            let texts: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
            for (p, (_, label)) in predict(&client, &record.url, &texts)?.iter().zip(chunk) {
                if p.class.to_string() == *label || p.label == *label {
                    correct += 1;
                }
            }
        }
        let a = correct as f64 / rows.len().max(1) as f64;
        ctx.progress(&format!(
            "accuracy {a:.3} over {} rows of {}",
            rows.len(),
            path.display()
        ));
        accuracy = Some(a);
    }
    if let (Some(min), Some(a)) = (w.min_accuracy, accuracy) {
        if a < min {
            failed.push(format!("  accuracy {a:.3} is below min_accuracy {min}"));
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "{} check(s) failed against {} ({}):\n{}",
            failed.len(),
            record.name,
            record.url,
            failed.join("\n")
        )
        .into());
    }
    Ok(
        json!({"endpoint": record.url, "name": record.name, "cases": cases, "accuracy": accuracy, "passed": true}),
    )
}

impl StageKind for SmokeTest {
    const NAME: &'static str = "smoke_test";
    const VERSION: u32 = 1;
    const LOCAL_ONLY: bool = true;

    fn validate(&mut self, inputs: &[&str]) -> Result<(), WithError> {
        check_with(self, inputs)
    }

    fn is_effect(&self) -> bool {
        true
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let report = check(ctx, self)?;
        for c in report["cases"].as_array().into_iter().flatten() {
            ctx.progress(&format!(
                "{:?} → {} (p={:.3})",
                c["text"].as_str().unwrap_or_default(),
                c["predicted"],
                c["probability"].as_f64().unwrap_or_default()
            ));
        }
        crate::write_json(ctx, "report.json", &report)?;
        Ok(())
    }

    fn verify(&self, ctx: &StageContext) -> Result<Option<String>, StageError> {
        Ok(match check(ctx, self) {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        })
    }
}
