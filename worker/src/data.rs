//! Labelled sentences from `train.csv` / `test.csv` (header `sentence,label`).

use std::path::Path;

use anyhow::{bail, Context, Result};

pub struct Examples {
    pub sentences: Vec<String>,
    pub labels: Vec<i64>,
}

/// Reads `path`; labels are class ids `0..labels.len()` or, when the CSV holds
/// names, one of `labels`.
pub fn read(path: &Path, labels: &[String]) -> Result<Examples> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let headers = r
        .headers()
        .with_context(|| format!("{}: bad header", path.display()))?
        .clone();
    let col = |name: &str| {
        headers.iter().position(|h| h == name).with_context(|| {
            format!(
                "{}: no `{name}` column (header: {})",
                path.display(),
                headers.iter().collect::<Vec<_>>().join(",")
            )
        })
    };
    let (s, l) = (col("sentence")?, col("label")?);
    let mut out = Examples {
        sentences: Vec::new(),
        labels: Vec::new(),
    };
    for row in r.records() {
        let row = row.with_context(|| format!("{}: bad row", path.display()))?;
        let line = row.position().map_or(0, |p| p.line());
        let (Some(sentence), Some(label)) = (row.get(s), row.get(l)) else {
            bail!("{}:{line}: missing sentence or label", path.display());
        };
        let id = match label.trim().parse::<i64>() {
            Ok(i) if (0..labels.len() as i64).contains(&i) => i,
            Ok(i) => bail!(
                "{}:{line}: label {i} is out of range for {} labels",
                path.display(),
                labels.len()
            ),
            Err(_) => match labels.iter().position(|n| n == label.trim()) {
                Some(i) => i as i64,
                None => bail!(
                    "{}:{line}: label `{label}` is neither a class id nor one of {labels:?}",
                    path.display()
                ),
            },
        };
        out.sentences.push(sentence.to_string());
        out.labels.push(id);
    }
    if out.sentences.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(out)
}
