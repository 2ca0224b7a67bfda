//! `kind: split`: a CSV/TSV file → `train.csv` and `test.csv` (header
//! `sentence,label`, what the blog's training script reads) and `stats.json`.
//!
//! The split is scikit-learn's `train_test_split(test_size=f, random_state=seed)`
//! row for row ([`mt19937`] reproduces numpy's permutation): the test set is
//! the first `ceil(f·n)` rows of the permutation, the train set the rest, each
//! in permutation order. With `stratify: true` it is
//! `train_test_split(..., stratify=labels)` row for row, that is
//! `StratifiedShuffleSplit`: `ceil(f·n)` test rows shared out between labels
//! by [`approximate_mode`], each label's rows permuted, then each set permuted
//! (see `tests/fixtures/stratified_split.py`). With `shuffle: false` the last
//! `ceil(f·n)` rows (of each label, with `stratify`) are the test set.

mod mt19937;

use std::collections::BTreeMap;
use std::path::Path;

use pipe_engine::{StageContext, StageError, StageKind, WithError};
use serde::Deserialize;
use serde_json::{json, Value};

use mt19937::Mt19937;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FileFormat {
    Csv,
    Tsv,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum Column {
    Index(usize),
    Name(String),
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
enum OnBadRow {
    #[default]
    Error,
    Skip,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    format: Option<FileFormat>,
    #[serde(default = "yes")]
    header: bool,
    text_column: Column,
    label_column: Column,
    #[serde(default)]
    labels: Option<BTreeMap<String, i64>>,
    #[serde(default = "default_fraction")]
    test_fraction: f64,
    #[serde(default = "default_seed")]
    seed: u32,
    #[serde(default)]
    stratify: bool,
    #[serde(default = "yes")]
    shuffle: bool,
    max_rows: Option<usize>,
    #[serde(default)]
    on_bad_row: OnBadRow,
}

fn yes() -> bool {
    true
}
fn default_fraction() -> f64 {
    0.25
}
fn default_seed() -> u32 {
    42
}

fn check(w: &Split) -> Result<(), WithError> {
    if !(w.test_fraction > 0.0 && w.test_fraction < 1.0) {
        return Err(WithError::field(
            "test_fraction",
            format!(
                "test_fraction must be between 0 and 1, got {}",
                w.test_fraction
            ),
        ));
    }
    for (field, col) in [
        ("text_column", &w.text_column),
        ("label_column", &w.label_column),
    ] {
        if matches!(col, Column::Name(_)) && !w.header {
            return Err(WithError::field(
                field,
                format!("{field} names a column, but `header: false`; use its index"),
            ));
        }
    }
    Ok(())
}

struct Row {
    text: String,
    label: i64,
}

impl Split {
    /// The single input: the table to split.
    fn input<'a>(ctx: &'a StageContext) -> Result<(&'a str, &'a Path), StageError> {
        let mut it = ctx.inputs.iter();
        match (it.next(), it.next()) {
            (Some((name, path)), None) => {
                let source = ctx
                    .stage
                    .inputs
                    .iter()
                    .find(|i| &i.name == name)
                    .map(|i| i.source.as_str())
                    .unwrap_or(name);
                Ok((source, path.as_path()))
            }
            _ => Err("split takes exactly one input: the CSV/TSV file to split".into()),
        }
    }

    fn read(w: &Split, source: &str, path: &Path) -> Result<(Vec<Row>, usize), StageError> {
        let format = w.format.unwrap_or_else(|| {
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("tsv"))
            {
                FileFormat::Tsv
            } else {
                FileFormat::Csv
            }
        });
        let mut builder = csv::ReaderBuilder::new();
        builder.has_headers(w.header).flexible(true);
        if format == FileFormat::Tsv {
            // TSV has no quoting: a `"` inside a sentence is just a character.
            builder.delimiter(b'\t').quoting(false);
        }
        let mut reader = builder
            .from_path(path)
            .map_err(|e| format!("cannot read {source}: {e}"))?;
        let headers = if w.header {
            Some(
                reader
                    .byte_headers()
                    .map_err(|e| format!("{source}: {e}"))?
                    .clone(),
            )
        } else {
            None
        };
        let index = |c: &Column, what: &str| -> Result<usize, StageError> {
            match c {
                Column::Index(i) => Ok(*i),
                Column::Name(n) => headers
                    .as_ref()
                    .and_then(|h| h.iter().position(|x| x == n.as_bytes()))
                    .ok_or_else(|| {
                        format!(
                            "{source}: no column named `{n}` for {what} (header: {})",
                            headers
                                .as_ref()
                                .map(|h| String::from_utf8_lossy(h.as_slice()).replace('\0', ","))
                                .unwrap_or_default()
                        )
                        .into()
                    }),
            }
        };
        let text_at = index(&w.text_column, "text_column")?;
        let label_at = index(&w.label_column, "label_column")?;
        let mut width = headers.as_ref().map(|h| h.len());
        let mut rows = Vec::new();
        let mut skipped = 0;
        let mut record = csv::ByteRecord::new();
        loop {
            if w.max_rows.is_some_and(|m| rows.len() >= m) {
                break;
            }
            match reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => return Err(format!("{source}: {e}").into()),
            }
            let line = record.position().map(|p| p.line()).unwrap_or(0);
            let row = (|| -> Result<Row, String> {
                let expected = *width.get_or_insert(record.len());
                if record.len() != expected {
                    return Err(format!(
                        "expected {expected} columns, found {}",
                        record.len()
                    ));
                }
                let field = |i: usize| -> Result<&str, String> {
                    let bytes = record.get(i).ok_or_else(|| format!("no column {i}"))?;
                    std::str::from_utf8(bytes).map_err(|_| format!("column {i} is not valid UTF-8"))
                };
                let text = field(text_at)?.to_string();
                let raw = field(label_at)?.trim();
                let label = match &w.labels {
                    Some(map) => *map.get(raw).ok_or_else(|| {
                        format!(
                            "label `{raw}` is not in `labels` ({})",
                            map.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    })?,
                    None => raw.parse::<i64>().map_err(|_| {
                        format!(
                            "label `{raw}` is not an integer (map string labels with `labels:`)"
                        )
                    })?,
                };
                Ok(Row { text, label })
            })();
            match row {
                Ok(r) => rows.push(r),
                Err(e) if w.on_bad_row == OnBadRow::Skip => {
                    tracing::debug!("{source}:{line}: skipped: {e}");
                    skipped += 1;
                }
                Err(e) => {
                    return Err(format!(
                        "{source}:{line}: {e} (set `on_bad_row: skip` to skip such rows)"
                    )
                    .into())
                }
            }
        }
        Ok((rows, skipped))
    }

    /// (train, test) row indices, or why the rows cannot be split.
    fn split(w: &Split, rows: &[Row]) -> Result<(Vec<usize>, Vec<usize>), String> {
        let n_test = |n: usize| ((w.test_fraction * n as f64).ceil() as usize).min(n);
        let mut by_label: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            by_label.entry(r.label).or_default().push(i);
        }
        if !w.shuffle {
            let groups = if w.stratify {
                by_label.into_values().collect()
            } else {
                vec![(0..rows.len()).collect::<Vec<_>>()]
            };
            let (mut train, mut test) = (Vec::new(), Vec::new());
            for idx in groups {
                let (a, b) = idx.split_at(idx.len() - n_test(idx.len()));
                train.extend_from_slice(a);
                test.extend_from_slice(b);
            }
            return Ok((train, test));
        }
        let mut rng = Mt19937::new(w.seed);
        let n = rows.len();
        let t = n_test(n);
        if !w.stratify {
            let perm = rng.permutation(n);
            return Ok((perm[t..].to_vec(), perm[..t].to_vec()));
        }
        // scikit-learn's `StratifiedShuffleSplit._iter_indices`, its checks included.
        if let Some((label, idx)) = by_label.iter().find(|(_, idx)| idx.len() < 2) {
            return Err(format!(
                "label {label} has {} row; `stratify` needs at least 2 rows of each label",
                idx.len()
            ));
        }
        let labels = by_label.len();
        if t < labels || n - t < labels {
            return Err(format!(
                "{t} test and {} train rows cannot hold all {labels} labels; \
                 change `test_fraction` or drop `stratify`",
                n - t
            ));
        }
        let counts: Vec<usize> = by_label.values().map(Vec::len).collect();
        let n_train = approximate_mode(&counts, n - t, &mut rng);
        let left: Vec<usize> = counts
            .iter()
            .zip(&n_train)
            .map(|(c, k)| c.saturating_sub(*k))
            .collect();
        let n_test = approximate_mode(&left, t, &mut rng);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for ((idx, &a), &b) in by_label.values().zip(&n_train).zip(&n_test) {
            let perm: Vec<usize> = rng
                .permutation(idx.len())
                .into_iter()
                .map(|i| idx[i])
                .collect();
            // numpy slices clamp at the end.
            let a = a.min(perm.len());
            train.extend_from_slice(&perm[..a]);
            test.extend_from_slice(&perm[a..(a + b).min(perm.len())]);
        }
        let mut shuffled = |v: Vec<usize>| -> Vec<usize> {
            rng.permutation(v.len()).into_iter().map(|i| v[i]).collect()
        };
        let train = shuffled(train);
        let test = shuffled(test);
        Ok((train, test))
    }
}

/// scikit-learn's `_approximate_mode(class_counts, n_draws, rng)`: how many of
/// `draws` rows each class gets, in proportion to `counts` (floored), the
/// rest going to the largest remainders, ties broken by the generator
/// (`rng.choice(..., replace=False)`, i.e. a permutation).
fn approximate_mode(counts: &[usize], draws: usize, rng: &mut Mt19937) -> Vec<usize> {
    let total = counts.iter().sum::<usize>() as f64;
    let continuous: Vec<f64> = counts
        .iter()
        .map(|&c| c as f64 / total * draws as f64)
        .collect();
    let mut floored: Vec<usize> = continuous.iter().map(|c| c.floor() as usize).collect();
    let mut need = draws.saturating_sub(floored.iter().sum());
    if need > 0 {
        let remainder: Vec<f64> = continuous.iter().map(|c| c - c.floor()).collect();
        let mut values = remainder.clone();
        values.sort_by(|a, b| b.total_cmp(a));
        values.dedup();
        for value in values {
            let inds: Vec<usize> = (0..remainder.len())
                .filter(|&i| remainder[i] == value)
                .collect();
            let add = inds.len().min(need);
            for j in &rng.permutation(inds.len())[..add] {
                floored[inds[*j]] += 1;
            }
            need -= add;
            if need == 0 {
                break;
            }
        }
    }
    floored
}

fn write(path: &Path, rows: &[Row], idx: &[usize]) -> Result<Value, StageError> {
    let mut out = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_path(path)?;
    out.write_record(["sentence", "label"])?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for &i in idx {
        out.write_record([rows[i].text.as_str(), &rows[i].label.to_string()])?;
        *counts.entry(rows[i].label.to_string()).or_default() += 1;
    }
    out.flush()?;
    Ok(json!({ "rows": idx.len(), "labels": counts }))
}

impl StageKind for Split {
    const NAME: &'static str = "split";
    // 2: `stratify` is scikit-learn's stratified split.
    const VERSION: u32 = 2;

    fn validate(&mut self, _inputs: &[&str]) -> Result<(), WithError> {
        check(self)
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let (source, path) = Self::input(ctx)?;
        let (rows, skipped) = Self::read(self, source, path)?;
        if rows.len() < 2 {
            return Err(format!(
                "{source}: {} usable rows; need at least 2 to split",
                rows.len()
            )
            .into());
        }
        let (train, test) = Self::split(self, &rows).map_err(|e| format!("{source}: {e}"))?;
        let stats = json!({
            "source_rows": rows.len() + skipped,
            "skipped_rows": skipped,
            "train": write(&ctx.out.join("train.csv"), &rows, &train)?,
            "test": write(&ctx.out.join("test.csv"), &rows, &test)?,
        });
        crate::write_json(ctx, "stats.json", &stats)?;
        ctx.progress(&format!("{} train / {} test rows", train.len(), test.len()));
        Ok(())
    }
}
