//! `kind: finetune`: fine-tune BERT for sequence classification on
//! `train.csv`, evaluate on `test.csv`, and write the model in Hugging Face
//! layout with `metrics.json`, `steps.csv` (step, epoch, loss, lr) and `loss.svg`.
//!
//! With a process group ([`crate::dist::Dist`]) every rank draws the same
//! global batches and trains on its slice of each; one flattened all-reduce
//! per step sums the gradients (each slice's loss weighted by its share of
//! the batch, so the sum is the whole batch's mean gradient) and the loss,
//! and every rank takes the same optimizer step. Evaluation is sharded and
//! its confusion matrix summed; only rank 0 logs and writes.
//!
//! CPU speed comes from padding each batch only to its longest sentence,
//! grouping sentences of similar length into batches, and keeping host work out
//! of the step (the loss is read back only when logged).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pipe_protocol::{Bf16, FinetuneWith, ResolvedDevice, Schedule};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint::{copy_tokenizer, Checkpoint};
use crate::dist::Dist;
use crate::optim::{AdamW, AdamWConfig};
use crate::scores::{confusion, from_confusion, loss_svg, Scores};
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

/// The length a batch is padded to: its longest sequence, rounded up to a
/// multiple of 8 on CUDA (at most `max_len`), so that a GPU sees a few shapes
/// (each new one costs kernel selection and plans) aligned for tensor cores.
fn padded_len(seqs: &[&[i64]], max_len: usize, device: Device) -> usize {
    let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(1);
    if device.is_cuda() {
        longest
            .div_ceil(8)
            .saturating_mul(8)
            .min(max_len)
            .max(longest)
    } else {
        longest
    }
}

/// Predicted class of each example, in batches of similar length.
pub fn predict(
    model: &crate::bert::Bert,
    ids: &[Vec<i64>],
    max_len: usize,
    device: Device,
) -> Result<Vec<i64>> {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&i| ids[i].len());
    let mut pred = vec![0i64; ids.len()];
    tch::no_grad(|| -> Result<()> {
        for chunk in order.chunks(256) {
            let seqs: Vec<&[i64]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            let (x, m) = pad(&seqs, Some(padded_len(&seqs, max_len, device)));
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

/// The `[start, end)` of rank `rank`'s slice of a batch of `len` among `world`.
pub fn slice(len: usize, rank: usize, world: usize) -> (usize, usize) {
    (len * rank / world, len * (rank + 1) / world)
}

/// Sums every gradient and `loss` across the group with one flattened
/// all-reduce, and writes the sums back.
fn all_reduce_grads(dist: &Dist, vars: &[Tensor], loss: &mut Tensor) -> Result<()> {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = vars.iter().map(Tensor::grad).collect();
        let mut parts: Vec<Tensor> = grads.iter().map(|g| g.reshape(-1)).collect();
        parts.push(loss.reshape(-1));
        let flat = Tensor::cat(&parts, 0);
        dist.all_reduce_sum(&flat, "the gradient all-reduce failed")?;
        let mut offset = 0;
        for mut g in grads {
            let n = g.numel() as i64;
            g.copy_(&flat.narrow(0, offset, n).view_as(&g));
            offset += n;
        }
        // A copy: a view would keep the whole flattened gradient (a model's
        // size, every step) alive in the epoch's list of losses.
        *loss = flat.narrow(0, offset, 1).reshape(Vec::<i64>::new()).copy();
        Ok(())
    })
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
    run_in(w, model_dir, data_dir, out, device, report, None)
}

/// [`run`] as one rank of `dist`'s group (alone without one).
pub fn run_in(
    w: &FinetuneWith,
    model_dir: &Path,
    data_dir: &Path,
    out: &Path,
    device: Device,
    report: &Report,
    dist: Option<&Dist>,
) -> Result<BTreeMap<String, f64>> {
    let (rank, world) = dist.map_or((0, 1), |d| (d.group.rank, d.group.world));
    let lead = rank == 0;
    let log = |line: &str| {
        if lead {
            report.log(line)
        }
    };
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
    let mut ck = Checkpoint::load(model_dir, w.num_labels, device)
        .with_context(|| format!("cannot load the model in {}", model_dir.display()))?;
    if w.max_len as i64 > ck.config.max_position_embeddings {
        bail!(
            "max_len {} exceeds the model's max_position_embeddings {}",
            w.max_len,
            ck.config.max_position_embeddings
        );
    }
    // Every rank the same masks, as every rank has the same torch seed.
    ck.model.seed_dropout(w.seed);
    let on = if device.is_cuda() {
        ResolvedDevice::Cuda
    } else {
        ResolvedDevice::Cpu
    };
    // `pipe` sends the precision it keyed the stage for; `auto` is resolved
    // here only for a request that did not.
    let autocast = w.bf16.resolve(on, crate::amp::cpu_has_bf16());
    let precision = if autocast { "bf16 autocast" } else { "fp32" };
    log(&format!(
        "model: {} layers, hidden {}, {} parameters; device {device:?}, {} threads, {precision}",
        ck.config.num_hidden_layers,
        ck.config.hidden_size,
        ck.vs
            .trainable_variables()
            .iter()
            .map(Tensor::numel)
            .sum::<usize>(),
        tch::get_num_threads()
    ));
    if dist.is_some() {
        log(&format!(
            "data parallel: {world} ranks, {} backend",
            w.backend.resolve(on).name()
        ));
    }
    log(&format!(
        "train rows {}, test rows {}",
        train_ids.len(),
        test_ids.len()
    ));

    let vars = ck.vs.trainable_variables();
    let mut opt = AdamW::new(
        &vars,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: w.eps,
            weight_decay: w.weight_decay,
        },
    )?;
    let lengths: Vec<usize> = train_ids.iter().map(Vec::len).collect();
    let per_epoch = train_ids.len().div_ceil(w.batch_size);
    let total = per_epoch * w.epochs;
    let warmup = (w.warmup_ratio * total as f64) as usize;

    if device.is_cuda() {
        // cuDNN's attention builds a plan for every new batch shape: on an
        // H200, MiniLM's first bf16 epoch ran at 859 samples/s with it and
        // 1665 without, 3 epochs at 1341 and 1910 (bench/results/gpu/run3).
        crate::amp::sdp_use_cudnn(false);
    }
    let n = train_ids.len();
    // Every epoch's batches, drawn before training touches the generator
    // (dropout does), so that every rank draws the same ones.
    let orders: Vec<Vec<Vec<usize>>> = (0..w.epochs)
        .map(|_| batches(&lengths, w.batch_size, w.group_by_length))
        .collect::<Result<_>>()?;
    if dist.is_some() {
        // Every gradient defined on every rank (a rank's slice may be
        // empty), so the flattened all-reduce has the same shape everywhere.
        let zero = vars
            .iter()
            .map(|v| v.sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, device)), |a, b| a + b)
            * 0.0;
        zero.backward();
        opt.zero_grad()?;
    }
    let mut allreduce_seconds = 0.0;

    let mut step = 0;
    let mut losses: Vec<f64> = Vec::new();
    // The per-step table `pipe plots` draws: step, epoch, loss, learning rate.
    let mut steps = String::from("step,epoch,loss,lr\n");
    let mut epochs = Vec::new();
    let mut stats = BTreeMap::new();
    let mut train_seconds = 0.0;
    // Matrix-product FLOPs of the training steps, for the GFLOP/s figure.
    let mut flops = 0.0;
    let mut last: Option<(f64, Scores)> = None;
    for (epoch, order) in (1..=w.epochs).zip(orders) {
        let started = Instant::now();
        let mut epoch_losses: Vec<Tensor> = Vec::with_capacity(per_epoch);
        let mut seen = 0;
        for (b, idx) in order.iter().enumerate() {
            let (lo, hi) = slice(idx.len(), rank, world);
            let part = &idx[lo..hi];
            if dist.is_some() {
                // Defined on every rank for the all-reduce, even after an
                // empty slice.
                opt.zero_grad()?;
            } else {
                opt.drop_grad()?;
            }
            let mut loss = if part.is_empty() {
                Tensor::zeros([], (Kind::Float, device))
            } else {
                let seqs: Vec<&[i64]> = part.iter().map(|&i| train_ids[i].as_slice()).collect();
                let (x, m) = pad(&seqs, Some(padded_len(&seqs, w.max_len, device)));
                let y: Vec<i64> = part.iter().map(|&i| train.labels[i]).collect();
                let y = Tensor::from_slice(&y).to_device(device);
                let (x, m) = (x.to_device(device), m.to_device(device));
                let logits = crate::amp::bf16(device, autocast, || ck.model.forward(&x, &m, true));
                let loss = logits.to_kind(Kind::Float).cross_entropy_for_logits(&y);
                if dist.is_some() {
                    // This slice's share of the whole batch's mean loss.
                    let loss = loss * (part.len() as f64 / idx.len() as f64);
                    loss.backward();
                    loss.detach()
                } else {
                    loss.backward();
                    loss
                }
            };
            if let Some(d) = dist {
                let t = Instant::now();
                all_reduce_grads(d, &vars, &mut loss)?;
                allreduce_seconds += t.elapsed().as_secs_f64();
            }
            opt.clip_grad_norm(w.max_grad_norm)?;
            opt.step(w.lr * lr_factor(w.schedule, step, total, warmup))?;
            epoch_losses.push(loss.detach());
            step += 1;
            if lead && b % w.log_interval == 0 {
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
            let batch: Vec<&[i64]> = idx.iter().map(|&i| train_ids[i].as_slice()).collect();
            flops += train_flops(&ck.config, idx.len(), padded_len(&batch, w.max_len, device));
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
        log(&format!("Average training loss: {avg:.6}"));
        if lead {
            report.progress(&format!("epoch {epoch}/{}: evaluating", w.epochs));
        }
        let s = evaluate(
            &ck.model,
            &test_ids,
            &test.labels,
            w.num_labels as usize,
            w.max_len,
            device,
            dist,
        )?;
        log(&format!(
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
    if let Some(d) = dist {
        if !d.agree(weights_digest(&ck.vs)?)? {
            bail!("rank {rank}: the ranks' weights differ after training");
        }
        log(&format!("weights identical on the {world} ranks"));
        stats.insert("allreduce_seconds".into(), allreduce_seconds);
        stats.insert("world_size".into(), world as f64);
    }
    if !lead {
        return Ok(stats);
    }
    ck.save(out, &labels, &[("max_len", json!(w.max_len))])?;
    copy_tokenizer(model_dir, out)?;
    let metrics = json!({
        "accuracy": s.accuracy, "mcc": s.mcc, "f1": s.f1, "confusion": s.confusion,
        "train_loss": train_loss, "train_rows": n, "test_rows": test_ids.len(), "steps": step,
        "device": format!("{device:?}").to_lowercase(), "threads": tch::get_num_threads(),
        "precision": Bf16::precision(autocast),
        "world_size": world,
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
    stats.insert("train_gflop".into(), flops / 1e9);
    stats.insert(
        "gflop_per_second".into(),
        flops / 1e9 / train_seconds.max(1e-9),
    );
    stats.insert(
        "samples_per_second".into(),
        (n * w.epochs) as f64 / train_seconds,
    );
    Ok(stats)
}

/// The matrix-product FLOPs of one training step (forward and backward,
/// about three forwards) over `batch` sequences padded to `len`: per token
/// and layer, the Q/K/V/output and feed-forward projections and attention's
/// two products with every other position; the last layer does that for
/// the first position only, and projects every token to keys and values.
pub fn train_flops(c: &crate::bert::BertConfig, batch: usize, len: usize) -> f64 {
    let (h, i, l) = (c.hidden_size as f64, c.intermediate_size as f64, len as f64);
    let per_token_layer = 2.0 * (4.0 * h * h + 2.0 * h * i) + 4.0 * l * h;
    let layers = c.num_hidden_layers as f64;
    let last = if layers > 0.0 {
        per_token_layer + 2.0 * 2.0 * h * h * (l - 1.0)
    } else {
        0.0
    };
    3.0 * batch as f64 * ((layers - 1.0).max(0.0) * l * per_token_layer + last)
}

/// A hash of every variable's name and bytes.
fn weights_digest(vs: &nn::VarStore) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, t) in vars {
        name.hash(&mut h);
        let t = t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1);
        for v in Vec::<f32>::try_from(&t)? {
            v.to_bits().hash(&mut h);
        }
    }
    Ok(h.finish())
}

/// Scores on the test set; with a group, each rank predicts every
/// `world`-th example and the confusion matrices are summed.
fn evaluate(
    model: &crate::bert::Bert,
    ids: &[Vec<i64>],
    labels: &[i64],
    classes: usize,
    max_len: usize,
    device: Device,
    dist: Option<&Dist>,
) -> Result<Scores> {
    let Some(d) = dist else {
        let pred = predict(model, ids, max_len, device)?;
        return Ok(from_confusion(confusion(labels, &pred, classes)));
    };
    let (rank, world) = (d.group.rank, d.group.world);
    let mine: Vec<usize> = (rank..ids.len()).step_by(world).collect();
    let shard: Vec<Vec<i64>> = mine.iter().map(|&i| ids[i].clone()).collect();
    let truth: Vec<i64> = mine.iter().map(|&i| labels[i]).collect();
    let pred = predict(model, &shard, max_len, device)?;
    let local: Vec<f64> = confusion(&truth, &pred, classes)
        .into_iter()
        .flatten()
        .map(|c| c as f64)
        .collect();
    let t = Tensor::from_slice(&local);
    d.all_reduce_sum(&t, "the confusion-matrix all-reduce failed")?;
    let sums = Vec::<f64>::try_from(&t)?;
    let c = sums
        .chunks(classes.max(1))
        .map(|row| row.iter().map(|&v| v as u64).collect())
        .collect();
    Ok(from_confusion(c))
}

#[cfg(test)]
mod tests {
    use super::padded_len;
    use tch::Device;

    #[test]
    fn batches_pad_to_multiples_of_8_on_cuda_only() {
        let (a, b) = ([1i64; 9], [1i64; 3]);
        let seqs: [&[i64]; 2] = [&a, &b];
        assert_eq!(padded_len(&seqs, 64, Device::Cpu), 9);
        assert_eq!(padded_len(&seqs, 64, Device::Cuda(0)), 16);
        // Never past max_len, never below the longest sequence.
        assert_eq!(padded_len(&seqs, 12, Device::Cuda(0)), 12);
        assert_eq!(padded_len(&seqs, 9, Device::Cuda(0)), 9);
    }
}
