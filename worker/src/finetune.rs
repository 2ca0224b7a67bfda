//! `kind: finetune`: fine-tune BERT for sequence classification on
//! `train.csv`, evaluate on `test.csv`, and write the model in Hugging Face
//! layout with `metrics.json`, `steps.csv` (step, epoch, loss, lr) and `loss.svg`.
//!
//! CPU speed comes from padding each batch only to its longest sentence,
//! grouping sentences of similar length into batches, and keeping host work out
//! of the step (the loss is read back only when logged).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pipe_protocol::{FinetuneWith, Schedule};
use serde_json::json;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

use crate::checkpoint::{copy_tokenizer, Checkpoint};
use crate::scores::{loss_svg, score, Scores};
use crate::tokenize::{pad, Encoder};
use crate::{data, Report};

/// The learning-rate multiplier at 0-based `step` of `total`.
pub fn lr_factor(schedule: Schedule, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (total - step) as f64 / (total - warmup).max(1) as f64,
    }
}

/// Batches of example indices for one epoch, drawn from torch's seeded
/// generator. With `group`, indices are sorted by length inside pools of 50
/// batches and the batches are shuffled, so little padding is needed.
pub fn batches(lengths: &[usize], batch: usize, group: bool) -> Result<Vec<Vec<usize>>> {
    let perm = Vec::<i64>::try_from(Tensor::randperm(
        lengths.len() as i64,
        (Kind::Int64, Device::Cpu),
    ))?;
    let mut order: Vec<usize> = perm.into_iter().map(|i| i as usize).collect();
    if !group {
        return Ok(order.chunks(batch).map(<[usize]>::to_vec).collect());
    }
    for pool in order.chunks_mut(batch * 50) {
        pool.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    }
    let chunks: Vec<Vec<usize>> = order.chunks(batch).map(<[usize]>::to_vec).collect();
    let shuffle = Vec::<i64>::try_from(Tensor::randperm(
        chunks.len() as i64,
        (Kind::Int64, Device::Cpu),
    ))?;
    Ok(shuffle
        .into_iter()
        .map(|i| chunks[i as usize].clone())
        .collect())
}

/// Clips the global L2 norm of the gradients to `max` without reading it back.
fn clip_grad_norm(vars: &[Tensor], max: f64) {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vars
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return;
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let total = Tensor::stack(&norms, 0).norm();
        let coef = (total + 1e-6)
            .reciprocal()
            .multiply_scalar(max)
            .clamp_max(1.0);
        for mut g in grads {
            let _ = g.g_mul_(&coef);
        }
    })
}

/// Predicted class of each example, in batches of similar length.
pub fn predict(model: &crate::bert::Bert, ids: &[Vec<i64>], device: Device) -> Result<Vec<i64>> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut pred = vec![0i64; ids.len()];
    tch::no_grad(|| -> Result<()> {
        for chunk in order.chunks(256) {
            let seqs: Vec<&[i64]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let (x, m) = pad(&seqs, None);
            let p = model
                .forward(&x.to_device(device), &m.to_device(device), false)
                .argmax(-1, false)
                .to_device(Device::Cpu);
            let p = Vec::<i64>::try_from(p)?;
            for (&i, c) in chunk.iter().zip(p) {
                pred[i] = c;
            }
        }
        Ok(())
    })?;
    Ok(pred)
}

/// Fine-tune and write the model, `metrics.json`, `steps.csv` and `loss.svg` into `out`.
///
/// The output is a function of the inputs alone (same device and thread
/// count: byte-identical), so it can be cached and cut off early; wall-clock
/// figures are returned instead, for the stage's run record.
pub fn run(
    w: &FinetuneWith,
    model_dir: &Path,
    data_dir: &Path,
    out: &Path,
    device: Device,
    report: &Report,
) -> Result<BTreeMap<String, f64>> {
    tch::manual_seed(w.seed as i64);
    let labels: Vec<String> = w
        .labels
        .clone()
        .unwrap_or_else(|| (0..w.num_labels).map(|i| i.to_string()).collect());
    let train = data::read(&data_dir.join("train.csv"), &labels)?;
    let test = data::read(&data_dir.join("test.csv"), &labels)?;
    let encoder = Encoder::load(model_dir, w.max_len)?;
    let train_ids = encoder.encode(&train.sentences)?;
    let test_ids = encoder.encode(&test.sentences)?;
    let ck = Checkpoint::load(model_dir, w.num_labels, device)
        .with_context(|| format!("cannot load the model in {}", model_dir.display()))?;
    if w.max_len as i64 > ck.config.max_position_embeddings {
        bail!(
            "max_len {} exceeds the model's max_position_embeddings {}",
            w.max_len,
            ck.config.max_position_embeddings
        );
    }
    report.log(&format!(
        "model: {} layers, hidden {}, {} parameters; device {device:?}, {} threads",
        ck.config.num_hidden_layers,
        ck.config.hidden_size,
        ck.vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .sum::<usize>(),
        tch::get_num_threads()
    ));
    report.log(&format!(
        "train rows {}, test rows {}",
        train_ids.len(),
        test_ids.len()
    ));

    let mut opt = nn::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        wd: w.weight_decay,
        eps: w.eps,
        amsgrad: false,
    }
    .build(&ck.vs, w.lr)?;
    let vars = ck.vs.trainable_variables();
    let lengths: Vec<usize> = train_ids.iter().map(Vec::len).collect();
    let per_epoch = train_ids.len().div_ceil(w.batch_size);
    let total = per_epoch * w.epochs;
    let warmup = (w.warmup_ratio * total as f64) as usize;
    let autocast = w.bf16 && device.is_cuda();
    let n = train_ids.len();

    let mut step = 0;
    let mut losses: Vec<f64> = Vec::new();
    // The per-step table `pipe plots` draws: step, epoch, loss, learning rate.
    let mut steps = String::from("step,epoch,loss,lr\n");
    let mut epochs = Vec::new();
    let mut stats = BTreeMap::new();
    let mut train_seconds = 0.0;
    let mut last: Option<(f64, Scores)> = None;
    for epoch in 1..=w.epochs {
        let started = Instant::now();
        let mut epoch_losses: Vec<Tensor> = Vec::with_capacity(per_epoch);
        let mut seen = 0;
        for (b, idx) in batches(&lengths, w.batch_size, w.group_by_length)?
            .iter()
            .enumerate()
        {
            let seqs: Vec<&[i64]> = idx.iter().map(|&i| train_ids[i].as_slice()).collect();
            let (x, m) = pad(&seqs, None);
            let y: Vec<i64> = idx.iter().map(|&i| train.labels[i]).collect();
            let y = Tensor::from_slice(&y).to_device(device);
            let (x, m) = (x.to_device(device), m.to_device(device));
            opt.zero_grad();
            let logits = tch::autocast(autocast, || ck.model.forward(&x, &m, true));
            let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(&y);
            loss.backward();
            clip_grad_norm(&vars, w.max_grad_norm);
            opt.set_lr(w.lr * lr_factor(w.schedule, step, total, warmup));
            opt.step();
            epoch_losses.push(loss.detach());
            step += 1;
            if b % w.log_interval == 0 {
                let l = loss.double_value(&[]);
                report.log(&format!(
                    "Train Epoch: {epoch} [{seen}/{n} ({:.0}%)] Loss: {l:.6}",
                    100.0 * b as f64 / per_epoch as f64
                ));
                let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                // Training time so far: earlier epochs (without their
                // evaluation) and this one.
                let trained = Duration::try_from_secs_f64(train_seconds).unwrap_or_default()
                    + started.elapsed();
                let eta = pipe_protocol::eta(step as f64, total as f64, trained)
                    .map(|e| format!(" · {e}"))
                    .unwrap_or_default();
                report.progress(&format!(
                    "epoch {epoch}/{} · step {}/{per_epoch} · loss {l:.4} · {rate:.0} samples/s{eta}",
                    w.epochs,
                    b + 1
                ));
            }
            seen += idx.len();
        }
        let epoch_loss =
            Vec::<f64>::try_from(Tensor::stack(&epoch_losses, 0).to_device(Device::Cpu))?;
        let seconds = started.elapsed().as_secs_f64();
        train_seconds += seconds;
        let avg = epoch_loss.iter().sum::<f64>() / epoch_loss.len().max(1) as f64;
        for (i, l) in epoch_loss.iter().enumerate() {
            let s = losses.len() + i;
            let lr = w.lr * lr_factor(w.schedule, s, total, warmup);
            steps += &format!("{},{epoch},{l},{lr}\n", s + 1);
        }
        losses.extend(epoch_loss);
        report.log(&format!("Average training loss: {avg:.6}"));
        report.progress(&format!("epoch {epoch}/{}: evaluating", w.epochs));
        let pred = predict(&ck.model, &test_ids, device)?;
        let s = score(&test.labels, &pred, w.num_labels as usize);
        report.log(&format!(
            "Test set: Accuracy: {:.4}, MCC: {:.4}, F1: {:.4}",
            s.accuracy, s.mcc, s.f1
        ));
        stats.insert(format!("epoch_{epoch}_train_seconds"), seconds);
        stats.insert(
            format!("epoch_{epoch}_samples_per_second"),
            n as f64 / seconds,
        );
        epochs.push(json!({
            "epoch": epoch, "train_loss": avg, "accuracy": s.accuracy, "mcc": s.mcc,
            "f1": s.f1, "confusion": s.confusion,
        }));
        last = Some((avg, s));
    }
    let Some((train_loss, s)) = last else {
        bail!("no epoch ran");
    };
    ck.save(out, &labels, &[("max_len", json!(w.max_len))])?;
    copy_tokenizer(model_dir, out)?;
    let metrics = json!({
        "accuracy": s.accuracy, "mcc": s.mcc, "f1": s.f1, "confusion": s.confusion,
        "train_loss": train_loss, "train_rows": n, "test_rows": test_ids.len(), "steps": step,
        "device": format!("{device:?}").to_lowercase(), "threads": tch::get_num_threads(),
        "labels": labels, "epochs": epochs,
    });
    std::fs::write(
        out.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)? + "\n",
    )?;
    std::fs::write(out.join("steps.csv"), steps)?;
    std::fs::write(
        out.join("loss.svg"),
        loss_svg(&losses, "training loss per step"),
    )?;
    stats.insert("train_seconds".into(), train_seconds);
    stats.insert(
        "samples_per_second".into(),
        (n * w.epochs) as f64 / train_seconds,
    );
    Ok(stats)
}
