//! `pipe plots MANIFEST [RUN…] -o plots.html`: one self-contained HTML file
//! (inline SVG, no script, no network) drawing the stages' declared plot
//! files for several runs, overlaid with a legend.
//!
//! A CSV plot file gives one chart per column after the first (the x axis:
//! `steps.csv` → loss and learning rate per step). A JSON plot file gives one
//! chart per numeric field of its `epochs` list (per-epoch evaluation) and a
//! confusion matrix per run from its `confusion` (with `labels`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use pipe_engine::cache::Store;
use pipe_engine::Pipeline;
use serde_json::Value;

use crate::history::{self, Run};

const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

struct Chart {
    title: String,
    x: String,
    y: String,
    /// (run id, points) per run.
    series: Vec<(String, Vec<(f64, f64)>)>,
}

struct Confusion {
    title: String,
    labels: Vec<String>,
    cells: Vec<Vec<f64>>,
}

pub fn plots(p: &Pipeline, ids: &[String], output: &Path) -> anyhow::Result<()> {
    let all = history::list(&p.root, &p.name)?;
    let runs: Vec<Run> = if ids.is_empty() {
        // Each distinct result once (the latest run that produced it).
        let mut seen = BTreeSet::new();
        let mut v: Vec<Run> = all
            .into_iter()
            .rev()
            .filter(|r| {
                let keys: Vec<String> = r
                    .stages
                    .iter()
                    .filter(|s| p.stage(&s.name).is_some_and(|st| !st.plots.is_empty()))
                    .filter_map(|s| s.output.map(|o| o.to_hex()))
                    .collect();
                !keys.is_empty() && seen.insert(keys)
            })
            .collect();
        v.reverse();
        v
    } else {
        let mut v = Vec::new();
        for id in ids {
            match history::find(&p.root, id)?.filter(|r| r.pipeline == p.name) {
                Some(run) => v.push(run),
                None => super::usage!("no run `{id}` of pipeline `{}` (see `pipe runs`)", p.name),
            }
        }
        v
    };
    if runs.is_empty() {
        super::usage!(
            "no run of pipeline `{}` has plot data yet (stages declare it with `plots: [FILE]`)",
            p.name
        );
    }
    let store = Store::open(&p.pipe_dir()).context("cannot open the store")?;
    let mut charts: Vec<Chart> = Vec::new();
    let mut matrices = Vec::new();
    for run in &runs {
        for s in &run.stages {
            let (Some(stage), Some(key)) = (p.stage(&s.name), s.key) else {
                continue;
            };
            if stage.plots.is_empty() || s.output.is_none() {
                continue;
            }
            let Some(rec) = store.get(&key)? else {
                super::usage!(
                    "run {}: the store no longer holds the output of `{}`",
                    run.id,
                    s.name
                );
            };
            for file in &stage.plots {
                let Some(bytes) = store.read_file(&rec, file)? else {
                    continue;
                };
                let text = String::from_utf8_lossy(&bytes);
                let at = |title: &str, x: &str, y: &str| Chart {
                    title: title.to_string(),
                    x: x.to_string(),
                    y: y.to_string(),
                    series: Vec::new(),
                };
                let mut add = |c: Chart, points: Vec<(f64, f64)>| {
                    let i = match charts.iter().position(|o| o.title == c.title) {
                        Some(i) => i,
                        None => {
                            charts.push(c);
                            charts.len() - 1
                        }
                    };
                    charts[i].series.push((run.id.clone(), points));
                };
                if file.ends_with(".json") {
                    let doc: Value = serde_json::from_str(&text).with_context(|| {
                        format!(
                            "run {}: `{}`'s plot file `{file}` is not JSON",
                            run.id, s.name
                        )
                    })?;
                    for (field, points) in per_epoch(&doc) {
                        let title = format!("{}: {field} per epoch", s.name);
                        add(at(&title, "epoch", &field), points);
                    }
                    if let Some(cells) = matrix(&doc["confusion"]) {
                        let labels = doc["labels"]
                            .as_array()
                            .map(|l| {
                                l.iter()
                                    .map(|x| {
                                        x.as_str().map_or_else(|| x.to_string(), str::to_string)
                                    })
                                    .collect()
                            })
                            .unwrap_or_else(|| (0..cells.len()).map(|i| i.to_string()).collect());
                        matrices.push(Confusion {
                            title: format!("{}: confusion matrix, run {}", s.name, run.id),
                            labels,
                            cells,
                        });
                    }
                } else {
                    let mut lines = text.lines();
                    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
                    let rows: Vec<Vec<f64>> = lines
                        .map(|l| {
                            l.split(',')
                                .map(|c| c.trim().parse().unwrap_or(f64::NAN))
                                .collect()
                        })
                        .collect();
                    for (c, name) in header.iter().enumerate().skip(1) {
                        let points = rows
                            .iter()
                            .filter_map(|r| Some((*r.first()?, *r.get(c)?)))
                            .filter(|(x, y)| x.is_finite() && y.is_finite())
                            .collect();
                        let title = format!("{}: {name} per {}", s.name, header[0]);
                        add(at(&title, header[0], name), points);
                    }
                }
            }
        }
    }
    let html = render(&p.name, &runs, &charts, &matrices);
    pipe_engine::cache::write_atomic(output, html.as_bytes())
        .with_context(|| format!("cannot write {}", output.display()))?;
    crate::reporter::status(
        "Wrote",
        &format!(
            "{} ({} charts, {} runs)",
            output.display(),
            charts.len() + matrices.len(),
            runs.len()
        ),
    );
    Ok(())
}

/// Numeric fields of a JSON document's `epochs` list, as (epoch, value) series.
fn per_epoch(doc: &Value) -> Vec<(String, Vec<(f64, f64)>)> {
    let Some(epochs) = doc["epochs"].as_array() else {
        return Vec::new();
    };
    let mut fields: Vec<String> = Vec::new();
    for e in epochs {
        for (k, v) in e.as_object().into_iter().flatten() {
            if k != "epoch" && v.is_number() && !fields.contains(k) {
                fields.push(k.clone());
            }
        }
    }
    fields
        .into_iter()
        .map(|f| {
            let points = epochs
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let x = e["epoch"].as_f64().unwrap_or(i as f64 + 1.0);
                    Some((x, e[&f].as_f64()?))
                })
                .collect();
            (f, points)
        })
        .collect()
}

fn matrix(v: &Value) -> Option<Vec<Vec<f64>>> {
    let rows: Option<Vec<Vec<f64>>> = v
        .as_array()?
        .iter()
        .map(|r| r.as_array()?.iter().map(Value::as_f64).collect())
        .collect();
    rows.filter(|r| !r.is_empty())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn tick(x: f64) -> String {
    if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e5) {
        format!("{x:.1e}")
    } else {
        history::fmt(x)
    }
}

fn render(pipeline: &str, runs: &[Run], charts: &[Chart], matrices: &[Confusion]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>pipe plots: {p}</title>\n<style>body{{font-family:sans-serif;margin:20px;color:#222}} figure{{display:inline-block;margin:8px;vertical-align:top}} figcaption{{font-weight:bold;text-align:center}} table.legend td{{padding:2px 8px}}</style></head><body>\n<h1>pipe plots: {p}</h1>\n<table class=\"legend\">",
        p = esc(pipeline)
    );
    for (i, r) in runs.iter().enumerate() {
        let params: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(
            h,
            "<tr><td><svg width=\"24\" height=\"4\"><rect width=\"24\" height=\"4\" fill=\"{}\"/></svg></td><td class=\"run\">{}</td><td>{}</td></tr>",
            COLOURS[i % COLOURS.len()],
            esc(&r.id),
            esc(&params.join(" "))
        );
    }
    h += "</table>\n";
    for c in charts {
        h += &line_chart(c, runs);
    }
    for m in matrices {
        h += &confusion(m);
    }
    h += "</body></html>\n";
    h
}

fn line_chart(c: &Chart, runs: &[Run]) -> String {
    let (w, ht, l, r, t, b) = (520.0, 300.0, 64.0, 16.0, 12.0, 40.0);
    let pts = c.series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(*x), x1.max(*x), y0.min(*y), y1.max(*y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 == 0.0 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 == 0.0 {
        (y0, y1) = (y0 - 0.5, y1 + 0.5);
    }
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| ht - b - (y - y0) / (y1 - y0) * (ht - t - b);
    let mut s = format!(
        "<figure class=\"chart\"><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\" font-size=\"11\">\n<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n",
        esc(&c.title),
        w - l - r,
        ht - t - b
    );
    // Whole x values (steps, epochs) get whole ticks.
    let whole = c
        .series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .all(|(x, _)| x.fract() == 0.0);
    let xticks = if whole && x1 - x0 < 4.0 {
        ((x1 - x0) as u32).max(1)
    } else {
        4
    };
    for i in 0..=xticks {
        let mut xv = x0 + f64::from(i) / f64::from(xticks) * (x1 - x0);
        if whole {
            xv = xv.round();
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            sx(xv),
            ht - b + 14.0,
            tick(xv)
        );
    }
    for i in 0..=4 {
        let yv = y0 + f64::from(i) / 4.0 * (y1 - y0);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><line x1=\"{l}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            l - 4.0, sy(yv) + 4.0, tick(yv), w - r, sy(yv), sy(yv)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text x=\"12\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {:.1})\">{}</text>",
        (l + w - r) / 2.0,
        ht - 6.0,
        esc(&c.x),
        (t + ht - b) / 2.0,
        (t + ht - b) / 2.0,
        esc(&c.y)
    );
    for (id, points) in &c.series {
        let i = runs.iter().position(|r| &r.id == id).unwrap_or(0);
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline class=\"series\" data-run=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            esc(id),
            path.join(" ")
        );
        if points.len() < 20 {
            for (x, y) in points {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                    sx(*x),
                    sy(*y)
                );
            }
        }
    }
    s += "</svg></figure>\n";
    s
}

fn confusion(m: &Confusion) -> String {
    let n = m.cells.len();
    let cell = 64.0;
    let (l, t) = (80.0, 40.0);
    let size = l + cell * n as f64 + 10.0;
    let max = m.cells.iter().flatten().fold(1.0f64, |a, b| a.max(*b));
    let mut s = format!(
        "<figure class=\"confusion\"><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size}\" height=\"{}\" font-size=\"12\">\n<text x=\"{:.1}\" y=\"12\" text-anchor=\"middle\">predicted</text><text x=\"10\" y=\"{:.1}\" transform=\"rotate(-90 10 {:.1})\" text-anchor=\"middle\">true</text>\n",
        esc(&m.title),
        t + cell * n as f64 + 10.0,
        l + cell * n as f64 / 2.0,
        t + cell * n as f64 / 2.0,
        t + cell * n as f64 / 2.0,
    );
    for (i, label) in m.labels.iter().enumerate().take(n) {
        let c = i as f64 * cell + cell / 2.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            l + c, t - 6.0, esc(label), l - 6.0, t + c + 4.0, esc(label)
        );
    }
    for (i, row) in m.cells.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let (x, y) = (l + j as f64 * cell, t + i as f64 * cell);
            let a = 0.1 + 0.8 * v / max;
            let _ = writeln!(
                s,
                "<rect x=\"{x}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"#1f77b4\" fill-opacity=\"{a:.2}\" stroke=\"#fff\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + cell / 2.0, y + cell / 2.0 + 4.0, history::fmt(*v)
            );
        }
    }
    s += "</svg></figure>\n";
    s
}
