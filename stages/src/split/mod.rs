//! `kind: split`: a CSV/TSV file → `train.csv` and `test.csv` (header
//! `sentence,label`, what the blog's training script reads) and `stats.json`.
//!
//! The split is scikit-learn's `train_test_split(test_size=f, random_state=seed)`
//! row for row ([`mt19937`] reproduces numpy's permutation): the test set is
//! the first `ceil(f·n)` rows of the permutation, the train set the rest, each
//! in permutation order. With `stratify: true` each label is split that way on
//! its own (its own permutation from the same generator, labels in ascending
//! order), which keeps class ratios but is not scikit-learn's
//! `StratifiedShuffleSplit`. With `shuffle: false` the last `ceil(f·n)` rows
//! are the test set.

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
struct With {
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

fn parse(v: &Value) -> Result<With, WithError> {
    let w: With = WithError::parse(v)?;
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
    Ok(w)
}

struct Row {
    text: String,
    label: i64,
}

pub struct Split;

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

    fn read(w: &With, source: &str, path: &Path) -> Result<(Vec<Row>, usize), StageError> {
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

    /// (train, test) row indices.
    fn split(w: &With, rows: &[Row]) -> (Vec<usize>, Vec<usize>) {
        let n_test = |n: usize| (w.test_fraction * n as f64).ceil() as usize;
        let mut rng = Mt19937::new(w.seed);
        let mut split_group = |idx: Vec<usize>| -> (Vec<usize>, Vec<usize>) {
            let t = n_test(idx.len());
            if !w.shuffle {
                let cut = idx.len() - t;
                return (idx[..cut].to_vec(), idx[cut..].to_vec());
            }
            let perm = rng.permutation(idx.len());
            let test = perm[..t].iter().map(|&i| idx[i]).collect();
            let train = perm[t..].iter().map(|&i| idx[i]).collect();
            (train, test)
        };
        if !w.stratify {
            return split_group((0..rows.len()).collect());
        }
        let mut by_label: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, r) in rows.iter().enumerate() {
            by_label.entry(r.label).or_default().push(i);
        }
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for (_, idx) in by_label {
            let (a, b) = split_group(idx);
            train.extend(a);
            test.extend(b);
        }
        (train, test)
    }
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
    fn name(&self) -> &'static str {
        "split"
    }

    fn version(&self) -> u32 {
        1
    }

    fn check(&self, with: &Value) -> Result<(), WithError> {
        parse(with).map(|_| ())
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let w = parse(&ctx.stage.with)?;
        let (source, path) = Self::input(ctx)?;
        let (rows, skipped) = Self::read(&w, source, path)?;
        if rows.len() < 2 {
            return Err(format!(
                "{source}: {} usable rows; need at least 2 to split",
                rows.len()
            )
            .into());
        }
        let (train, test) = Self::split(&w, &rows);
        let stats = json!({
            "source_rows": rows.len() + skipped,
            "skipped_rows": skipped,
            "train": write(&ctx.out.join("train.csv"), &rows, &train)?,
            "test": write(&ctx.out.join("test.csv"), &rows, &test)?,
        });
        std::fs::write(
            ctx.out.join("stats.json"),
            serde_json::to_string_pretty(&stats)? + "\n",
        )?;
        ctx.progress(&format!("{} train / {} test rows", train.len(), test.len()));
        Ok(())
    }
}
