//! `kind: trace`: the fine-tuned model as TorchScript (`model.pt`): parameters
//! frozen into the graph, `forward(input_ids, attention_mask) -> logits` at any
//! batch size and length up to `max_len`. The stage compares the traced module
//! with the eager model on real sentences at several shapes and fails beyond
//! `tolerance`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use pipe_protocol::serve::DEFAULT_MAX_LEN;
use pipe_protocol::TraceWith;
use serde_json::json;
use tch::{CModule, Device, Kind, Tensor};

use crate::checkpoint::{copy_tokenizer, read_config, Checkpoint};
use crate::tokenize::{pad, Encoder};
use crate::Report;

/// Sentences the parity check runs on (CoLA-like, of varied lengths).
const PROBES: [&str; 6] = [
    "Somebody just left - guess who.",
    "They caused him to become angry by making him.",
    "The sailors rode the breeze clear of the rocks.",
    "Bill coughed.",
    "The more we study verbs, the crazier they get, and the longer the sentences we write about them become.",
    "Which book did you say that John thought Mary had read before the exam?",
];

/// `max_len` and the number of labels of a fine-tuned model dir.
pub fn model_facts(dir: &Path) -> Result<(usize, i64)> {
    let (_, raw) = read_config(dir)?;
    let max_len = raw
        .get("max_len")
        .and_then(|v| v.as_u64())
        .map_or(DEFAULT_MAX_LEN, |n| n as usize);
    let labels = raw
        .get("id2label")
        .and_then(|v| v.as_object())
        .map(|m| m.len() as i64)
        .or_else(|| raw.get("num_labels").and_then(|v| v.as_i64()))
        .unwrap_or(2);
    Ok((max_len, labels))
}

pub fn run(w: &TraceWith, model_dir: &Path, out: &Path, report: &Report) -> Result<()> {
    let (max_len, num_labels) = model_facts(model_dir)?;
    let mut ck = Checkpoint::load(model_dir, num_labels, Device::Cpu)
        .with_context(|| format!("cannot load the model in {}", model_dir.display()))?;
    ck.vs.freeze();
    let model = &ck.model;
    // Any small ids will do: the graph does not depend on them.
    let example = [
        Tensor::from_slice(&[2i64, 1, 1, 3, 0, 2, 1, 1, 1, 3]).reshape([2, 5]),
        Tensor::from_slice(&[1i64, 1, 1, 1, 0, 1, 1, 1, 1, 1]).reshape([2, 5]),
    ];
    let traced = tch::no_grad(|| {
        CModule::create_by_tracing(
            "BertForSequenceClassification",
            "forward",
            &example,
            &mut |x| vec![model.forward(&x[0], &x[1], false)],
        )
    })?;

    // Parity at several shapes: each probe alone, all probes padded together,
    // and a full-length batch.
    let encoder = Encoder::load(model_dir, max_len)?;
    let probes: Vec<String> = PROBES.iter().map(|s| s.to_string()).collect();
    let ids = encoder.encode(&probes)?;
    let mut cases: Vec<(Tensor, Tensor)> = ids.iter().map(|s| pad(&[s.as_slice()], None)).collect();
    let all: Vec<&[i64]> = ids.iter().map(Vec::as_slice).collect();
    cases.push(pad(&all, None));
    cases.push(pad(&all[..3], Some(max_len)));
    let mut worst = 0f64;
    let mut shapes = Vec::new();
    for (x, m) in &cases {
        let eager = tch::no_grad(|| model.forward(x, m, false));
        let t = traced
            .forward_ts(&[x, m])
            .with_context(|| format!("the traced model fails at shape {:?}", x.size()))?;
        if t.size() != eager.size() {
            bail!(
                "the traced model returns shape {:?}, eager {:?}",
                t.size(),
                eager.size()
            );
        }
        let d = (t - eager)
            .abs()
            .max()
            .to_kind(Kind::Double)
            .double_value(&[]);
        worst = worst.max(d);
        shapes.push(x.size());
    }
    report.log(&format!(
        "traced; max |traced - eager| logit = {worst:.3e} over shapes {shapes:?}"
    ));
    if worst.is_nan() || worst > w.tolerance {
        bail!(
            "the traced model differs from the eager one by {worst:.3e} (tolerance {:.1e})",
            w.tolerance
        );
    }
    traced.save(out.join("model.pt"))?;
    std::fs::copy(model_dir.join("config.json"), out.join("config.json"))?;
    copy_tokenizer(model_dir, out)?;
    let parity = json!({"max_abs_logit_diff": worst, "tolerance": w.tolerance, "shapes": shapes});
    std::fs::write(
        out.join("trace.json"),
        serde_json::to_string_pretty(&parity)? + "\n",
    )?;
    Ok(())
}
