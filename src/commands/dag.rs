//! `pipe dag`: the stage graph as text, Graphviz dot, Mermaid or JSON, on stdout.

use std::io::Write;

use pipe_engine::{Pipeline, Registry};

use super::load;
use crate::cli::{DagFormat, ManifestArgs};
use crate::exit::{self, Failure};
use crate::reporter;

pub fn dag(
    m: &ManifestArgs,
    format: DagFormat,
    json: bool,
    registry: &Registry,
) -> Result<i32, Failure> {
    let p = load(m, registry)?;
    let mut out = reporter::stdout();
    if json {
        let _ = writeln!(out, "{}", dag_json(&p));
    } else {
        let _ = write!(out, "{}", render_dag(&p, format));
    }
    Ok(exit::OK)
}

fn render_dag(p: &Pipeline, format: DagFormat) -> String {
    let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    let mut s = String::new();
    match format {
        DagFormat::Text => {
            for i in p.dag.topo() {
                let deps: Vec<&str> = p.dag.deps(i).into_iter().map(|d| names[d]).collect();
                let kind = &p.stages[i].kind;
                if deps.is_empty() {
                    s += &format!("{} ({kind})\n", names[i]);
                } else {
                    s += &format!("{} ({kind}) <- {}\n", names[i], deps.join(", "));
                }
            }
        }
        DagFormat::Dot => {
            s += &format!("digraph \"{}\" {{\n", p.name);
            for (i, n) in names.iter().enumerate() {
                s += &format!("  \"{n}\" [label=\"{n}\\n{}\"];\n", p.stages[i].kind);
            }
            for (a, b) in p.dag.edges() {
                s += &format!("  \"{}\" -> \"{}\";\n", names[a], names[b]);
            }
            s += "}\n";
        }
        DagFormat::Mermaid => {
            // Ids are `s0`, `s1`…: a stage named `end` or `a--b` would break
            // Mermaid's syntax; names only appear as quoted labels.
            s += "graph TD\n";
            for (i, n) in names.iter().enumerate() {
                let label = format!("{n} ({})", p.stages[i].kind).replace('"', "#quot;");
                s += &format!("  s{i}[\"{label}\"]\n");
            }
            for (a, b) in p.dag.edges() {
                s += &format!("  s{a} --> s{b}\n");
            }
        }
    }
    s
}

/// `pipe dag --json`: `{"pipeline", "stages": [{"name", "kind", "deps"}]}`,
/// stages in the order a run starts them.
fn dag_json(p: &Pipeline) -> serde_json::Value {
    let stages: Vec<serde_json::Value> = p
        .dag
        .topo()
        .into_iter()
        .map(|i| {
            let deps: Vec<&str> = p
                .dag
                .deps(i)
                .into_iter()
                .map(|d| p.stages[d].name.as_str())
                .collect();
            serde_json::json!({"name": p.stages[i].name, "kind": p.stages[i].kind, "deps": deps})
        })
        .collect();
    serde_json::json!({"pipeline": p.name, "stages": stages})
}
