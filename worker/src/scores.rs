//! Classification metrics, as scikit-learn computes them.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub accuracy: f64,
    /// Matthews correlation (multi-class: Gorodkin's R_K, as sklearn).
    pub mcc: f64,
    /// Binary: F1 of class 1; more classes: macro F1.
    pub f1: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

pub fn score(truth: &[i64], pred: &[i64], classes: usize) -> Scores {
    from_confusion(confusion(truth, pred, classes))
}

/// `confusion[true][predicted]` counts.
pub fn confusion(truth: &[i64], pred: &[i64], classes: usize) -> Vec<Vec<u64>> {
    let mut c = vec![vec![0u64; classes]; classes];
    for (&t, &p) in truth.iter().zip(pred) {
        c[t as usize][p as usize] += 1;
    }
    c
}

/// The scores of a confusion matrix.
pub fn from_confusion(c: Vec<Vec<u64>>) -> Scores {
    let classes = c.len();
    let n = c.iter().flatten().sum::<u64>() as f64;
    let correct: u64 = (0..classes).map(|k| c[k][k]).sum();
    let t_k: Vec<f64> = (0..classes)
        .map(|k| c[k].iter().sum::<u64>() as f64)
        .collect();
    let p_k: Vec<f64> = (0..classes)
        .map(|k| c.iter().map(|r| r[k]).sum::<u64>() as f64)
        .collect();
    let cov_ytyp = correct as f64 * n - t_k.iter().zip(&p_k).map(|(t, p)| t * p).sum::<f64>();
    let cov_ypyp = n * n - p_k.iter().map(|p| p * p).sum::<f64>();
    let cov_ytyt = n * n - t_k.iter().map(|t| t * t).sum::<f64>();
    let mcc = if cov_ypyp * cov_ytyt == 0.0 {
        0.0
    } else {
        cov_ytyp / (cov_ytyt * cov_ypyp).sqrt()
    };
    let f1_of = |k: usize| {
        let tp = c[k][k] as f64;
        let denom = t_k[k] + p_k[k];
        if denom == 0.0 {
            0.0
        } else {
            2.0 * tp / denom
        }
    };
    let f1 = if classes == 2 {
        f1_of(1)
    } else {
        (0..classes).map(f1_of).sum::<f64>() / classes as f64
    };
    Scores {
        accuracy: if n == 0.0 { 0.0 } else { correct as f64 / n },
        mcc,
        f1,
        confusion: c,
    }
}

/// A loss curve as a small self-contained SVG.
pub fn loss_svg(losses: &[f64], title: &str) -> String {
    let (w, h, m) = (640.0, 360.0, 48.0);
    let max = losses.iter().cloned().fold(f64::MIN, f64::max).max(1e-9);
    let n = losses.len().max(2) as f64 - 1.0;
    let points: Vec<String> = losses
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "{:.1},{:.1}",
                m + (w - 2.0 * m) * i as f64 / n,
                h - m - (h - 2.0 * m) * l / max
            )
        })
        .collect();
    format!(
        concat!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n",
            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
            "<text x=\"{m}\" y=\"24\" font-size=\"14\">{title}</text>\n",
            "<line x1=\"{m}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n",
            "<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{b}\" stroke=\"black\"/>\n",
            "<text x=\"4\" y=\"{m}\">{max:.2}</text><text x=\"4\" y=\"{b}\">0</text>\n",
            "<text x=\"{r}\" y=\"{lb}\" text-anchor=\"end\">step {steps}</text>\n",
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{pts}\"/>\n</svg>\n"
        ),
        w = w, h = h, m = m, b = h - m, r = w - m, lb = h - m + 16.0, title = title, max = max,
        steps = losses.len(), pts = points.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_sklearn() {
        // sklearn: matthews_corrcoef([1,1,1,0,0,1],[1,0,1,0,1,1]) = 0.25, f1 = 0.75
        let s = score(&[1, 1, 1, 0, 0, 1], &[1, 0, 1, 0, 1, 1], 2);
        assert!((s.mcc - 0.25).abs() < 1e-12, "{}", s.mcc);
        assert!((s.f1 - 0.75).abs() < 1e-12);
        assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(s.confusion, vec![vec![1, 1], vec![1, 3]]);
        // Majority-class predictions: MCC 0, as sklearn.
        assert_eq!(score(&[0, 1, 1], &[1, 1, 1], 2).mcc, 0.0);
    }
}
