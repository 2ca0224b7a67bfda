//! The libtorch side of the server: the model (`model.pt` frozen, on packed
//! weights: [`FastModule`]) and its tokenizer, one copy that every inference
//! thread runs.
//! A batch runs in groups of similar length, each padded to its longest
//! sentence ([`length_groups`]).

use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::Kind;

use crate::fast::{FastModule, Linears};
use crate::tokenize::{pad, Encoder};

pub struct Model {
    module: FastModule,
    encoder: Encoder,
}

impl Model {
    /// Loads the module and tokenizer of the package unpacked in `dir`; the
    /// linear layers in `linears`. Each inference thread warms it up
    /// ([`Model::warm_up`]) at the thread counts it uses.
    pub fn load(dir: &Path, max_len: usize, linears: Linears) -> Result<Model> {
        let path = dir.join("model.pt");
        let module = FastModule::load(&path, linears)
            .with_context(|| format!("cannot load {}", path.display()))?;
        tracing::debug!("{} linear layers on packed weights", module.packed);
        if linears == Linears::Int8 && module.packed == 0 {
            bail!(
                "{}: no linear layer could be quantized to int8 (this libtorch has no quantized::linear_dynamic, or the weights are not constant)",
                path.display()
            );
        }
        Ok(Model {
            module,
            encoder: Encoder::load(dir, max_len)?,
        })
    }

    /// The first calls of a TorchScript module optimise its graph, and the
    /// first at a thread count set up its oneDNN kernels: done before
    /// serving.
    pub fn warm_up(&self) -> Result<()> {
        for n in [1usize, 2] {
            let warm: Vec<String> = vec!["warm up".to_string(); n];
            self.infer(&warm)
                .context("the model fails on a test sentence")?;
        }
        Ok(())
    }
}

impl Model {
    /// Runs `sentences` through the model, in groups of similar length (see
    /// [`length_groups`]); logits in the order given. The calling thread's
    /// libtorch thread count applies.
    pub fn infer(&self, sentences: &[String]) -> Result<Vec<Vec<f32>>> {
        let _guard = tch::no_grad_guard();
        let ids = self.encoder.encode(sentences)?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let lens: Vec<usize> = order.iter().map(|&i| ids[i].len()).collect();
        let mut rows = vec![Vec::new(); ids.len()];
        for group in length_groups(&lens) {
            let members = &order[group];
            let seqs: Vec<&[i64]> = members.iter().map(|&i| ids[i].as_slice()).collect();
            let (x, m) = pad(&seqs, None);
            let logits = self.module.forward(&[x, m])?.to_kind(Kind::Float);
            let n = logits.size();
            if n.len() != 2 || n[0] != members.len() as i64 {
                bail!(
                    "the model returned shape {n:?} for {} sentences",
                    members.len()
                );
            }
            let flat = Vec::<f32>::try_from(logits.flatten(0, -1))?;
            for (row, &i) in flat.chunks(n[1].max(1) as usize).zip(members) {
                rows[i] = row.to_vec();
            }
        }
        Ok(rows)
    }
}

/// What one more model call costs, in padded token rows: each call streams
/// every weight once (measured on all-MiniLM-L6-v2: a one-row call takes
/// about as long as 20 to 25 rows of a large batch).
const CALL_ROWS: usize = 24;

/// Splits sorted sequence lengths into consecutive groups, each padded to its
/// longest, so that the padded rows plus [`CALL_ROWS`] per group are fewest:
/// a batch of short sentences and one long one is two calls, not one padded
/// to the long one. A group never splits a run of equal lengths (that adds a
/// call and saves no padding), so the search runs over the distinct lengths:
/// O(n) after the sort, plus the square of the distinct lengths (at most
/// `max_len`).
fn length_groups(sorted: &[usize]) -> Vec<Range<usize>> {
    // ends[k]: one past the last sequence of the k-th distinct length.
    let mut ends: Vec<usize> = Vec::new();
    for (i, w) in sorted.windows(2).enumerate() {
        if w[0] != w[1] {
            ends.push(i + 1);
        }
    }
    if !sorted.is_empty() {
        ends.push(sorted.len());
    }
    let k = ends.len();
    // cost[j]: the least cost of the first j distinct lengths; start[j]:
    // where the last group of that best split starts (in distinct lengths).
    let mut cost = vec![0usize; k + 1];
    let mut start = vec![0usize; k + 1];
    let end_of = |j: usize| if j == 0 { 0 } else { ends[j - 1] };
    for j in 1..=k {
        cost[j] = usize::MAX;
        let longest = sorted[ends[j - 1] - 1];
        for i in 0..j {
            let rows = (end_of(j) - end_of(i)).saturating_mul(longest);
            let c = cost[i].saturating_add(CALL_ROWS).saturating_add(rows);
            if c < cost[j] {
                cost[j] = c;
                start[j] = i;
            }
        }
    }
    let mut groups = Vec::new();
    let mut j = k;
    while j > 0 {
        groups.push(end_of(start[j])..end_of(j));
        j = start[j];
    }
    groups.reverse();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_groups_cover_every_sentence_in_order() {
        assert!(length_groups(&[]).is_empty());
        assert_eq!(length_groups(&[7]), vec![0..1]);
        // Similar lengths: one call.
        assert_eq!(length_groups(&[9, 10, 11, 12]), vec![0..4]);
        // Short ones and a long one: padding all to 64 costs more than a call.
        assert_eq!(length_groups(&[5, 5, 6, 6, 64]), vec![0..4, 4..5]);
        let lens: Vec<usize> = (0..32).map(|i| 3 + i * i / 8).collect();
        let groups = length_groups(&lens);
        assert_eq!(groups.first().map(|g| g.start), Some(0));
        assert_eq!(groups.last().map(|g| g.end), Some(32));
        assert!(groups.windows(2).all(|w| w[0].end == w[1].start));
        let padded: usize = groups
            .iter()
            .map(|g| g.len() * lens[g.end - 1] + CALL_ROWS)
            .sum();
        assert!(padded < 32 * lens[31] + CALL_ROWS);
    }

    #[test]
    fn length_groups_of_a_huge_batch_never_split_equal_lengths() {
        // 200,000 sentences: quadratic in the sentences this would not end;
        // over the 128 distinct lengths it is instant.
        let lens: Vec<usize> = (0..200_000).map(|i| 3 + i * 128 / 200_000).collect();
        let groups = length_groups(&lens);
        assert_eq!(groups.first().map(|g| g.start), Some(0));
        assert_eq!(groups.last().map(|g| g.end), Some(lens.len()));
        assert!(groups.windows(2).all(|w| w[0].end == w[1].start));
        assert!(groups
            .windows(2)
            .all(|w| lens[w[0].end - 1] != lens[w[1].start]));
    }
}
