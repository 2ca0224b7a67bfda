//! Reading a manifest: YAML → raw structs (serde_yaml, unknown keys rejected
//! with their line and column) → [`Pipeline`] (params interpolated, references
//! resolved, kinds checked, DAG built). Nothing runs and nothing is written
//! unless this succeeds.
//!
//! `mod.rs` holds the schema and the checks; [`locate`] finds keys in the text
//! for errors serde cannot place; [`diagnostic`] renders them.

// A manifest error is built once, rendered and ends the process: its size on
// the error path does not matter, and boxing would only obscure the fields.
#![allow(clippy::result_large_err)]

pub mod diagnostic;
mod interpolate;
pub use interpolate::{env_var as param_env_var, text as param_text};
pub mod locate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::cluster::{ExecutorKind, Resources};
use crate::dag::Dag;
use crate::pipeline::{Input, InputRef, Pipeline, Stage};
use crate::stage::Registry;
pub use diagnostic::{did_you_mean, ManifestError};
use locate::{locate, locate_value, Span};

/// The only schema version so far.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    version: u32,
    name: String,
    #[serde(default)]
    params: Ordered<serde_yaml::Value>,
    stages: Ordered<RawStage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    kind: String,
    #[serde(default)]
    inputs: Ordered<String>,
    #[serde(default)]
    with: serde_yaml::Value,
    #[serde(default)]
    after: Vec<String>,
    #[serde(default = "yes")]
    cache: bool,
    #[serde(default)]
    resources: Resources,
    /// Where the stage runs (`local`, `slurm`); default: the run's.
    executor: Option<ExecutorKind>,
    /// Site options for `sbatch` (`--account=…`, `--qos=…`).
    #[serde(default)]
    slurm: Vec<String>,
    #[serde(default)]
    env: Ordered<serde_yaml::Value>,
    /// JSON files of the output that hold metrics (`pipe metrics`).
    metrics: Option<Vec<String>>,
    /// Files of the output that hold plot data (`pipe plots`).
    plots: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

/// A YAML mapping read in order, with duplicate keys rejected.
struct Ordered<T>(Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Ordered(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _)| *n == k) {
                        return Err(de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    let v = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn to_json(v: &serde_yaml::Value) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

/// Parse a `--set` value the way YAML would read it (numbers stay numbers).
pub fn parse_scalar(s: &str) -> Value {
    serde_yaml::from_str::<serde_yaml::Value>(s)
        .ok()
        .filter(|v| !v.is_mapping() && !v.is_sequence())
        .and_then(|v| to_json(&v).ok())
        .unwrap_or_else(|| Value::String(s.to_string()))
}

/// Whether loading checks that the workspace paths stages name exist: not
/// in a cluster job on a node that holds only the inputs of its one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkspacePaths {
    Check,
    Trust,
}

/// Load and validate a manifest.
pub fn load(
    file: &Path,
    sets: &[(String, String)],
    registry: &Registry,
) -> Result<Pipeline, ManifestError> {
    load_with(file, sets, registry, WorkspacePaths::Check)
}

/// [`load`], checking workspace paths or not.
pub fn load_with(
    file: &Path,
    sets: &[(String, String)],
    registry: &Registry,
    paths: WorkspacePaths,
) -> Result<Pipeline, ManifestError> {
    let bytes = std::fs::read(file)
        .map_err(|e| ManifestError::new(file, format!("cannot read manifest: {e}")))?;
    let src = String::from_utf8(bytes).map_err(|e| {
        // Point at the first byte that is not UTF-8.
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let span = Span {
            line: valid.iter().filter(|b| **b == b'\n').count() + 1,
            col: String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count()
                + 1,
            len: 1,
        };
        let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
        ManifestError::new(file, "the manifest is not valid UTF-8").at(&lossy, Some(span))
    })?;
    let root = crate::workspace::root_of_manifest(file);
    parse(file, &src, &root, sets, registry, paths)
}

/// Validate manifest text (`file` is only used in messages and to name the lock file).
pub fn parse(
    file: &Path,
    src: &str,
    root: &Path,
    sets: &[(String, String)],
    registry: &Registry,
    paths: WorkspacePaths,
) -> Result<Pipeline, ManifestError> {
    let err = |msg: String| ManifestError::new(file, msg);
    let at = |path: &[&str]| locate(src, path);

    let raw: RawManifest = serde_yaml::from_str(src).map_err(|e| {
        let text = e.to_string();
        let message = match text.rfind(" at line ") {
            Some(i) => text[..i].to_string(),
            None => text.clone(),
        };
        let hint = unknown_field(&message).and_then(|(field, known)| did_you_mean(field, known));
        let span = match e.location() {
            Some(l) => Span {
                line: l.line(),
                col: l.column(),
                len: 1,
            },
            None => second_document(src),
        };
        err(message).at(src, Some(span)).hint(hint)
    })?;

    if raw.version != SCHEMA_VERSION {
        return Err(err(format!(
            "unsupported manifest version {} (this pipe reads version {SCHEMA_VERSION})",
            raw.version
        ))
        .at(src, at(&["version"])));
    }
    if !is_name(&raw.name) {
        return Err(err(format!(
            "invalid pipeline name `{}`: use letters, digits, `-` and `_`",
            raw.name
        ))
        .at(src, at(&["name"])));
    }

    // Params, then --set overrides.
    let mut params = BTreeMap::new();
    for (k, v) in &raw.params.0 {
        let v =
            to_json(v).map_err(|m| err(format!("param `{k}`: {m}")).at(src, at(&["params", k])))?;
        params.insert(k.clone(), v);
    }
    for (k, v) in sets {
        if !params.contains_key(k) {
            return Err(err(format!("--set {k}: no such param"))
                .at(src, at(&["params"]))
                .hint(did_you_mean(k, params.keys().map(String::as_str))));
        }
        params.insert(k.clone(), parse_scalar(v));
    }

    let names: Vec<&str> = raw.stages.0.iter().map(|(n, _)| n.as_str()).collect();
    if names.is_empty() {
        return Err(err("the manifest has no stages".into()).at(src, at(&["stages"])));
    }
    let mut stages = Vec::new();
    let mut edges = Vec::new();
    for (i, (name, rs)) in raw.stages.0.iter().enumerate() {
        let here = |sub: &[&str]| {
            let mut p = vec!["stages", name.as_str()];
            p.extend_from_slice(sub);
            at(&p)
        };
        let serr = |msg: String, sub: &[&str]| err(msg).at(src, here(sub)).stage(name);
        if !is_name(name) {
            return Err(serr(
                "invalid stage name: use letters, digits, `-` and `_`".into(),
                &[],
            ));
        }
        let Some(kind) = registry.get(&rs.kind) else {
            let known: Vec<&str> = registry.names().collect();
            return Err(
                serr(format!("unknown stage kind `{}`", rs.kind), &["kind"]).hint(
                    did_you_mean(&rs.kind, known.iter().copied())
                        .or_else(|| Some(format!("known kinds: {}", known.join(", ")))),
                ),
            );
        };
        let mut used = BTreeMap::new();
        let unknown_param = |u: interpolate::Unknown, sub: &[&str]| {
            serr(
                format!("unknown param `{}` in ${{params.{}}}", u.0, u.0),
                sub,
            )
            .hint(did_you_mean(&u.0, params.keys().map(String::as_str)))
        };
        let with = to_json(&rs.with).map_err(|m| serr(m, &["with"]))?;
        let with = interpolate::interpolate_with(&with, kind.script_fields, &params, &mut used)
            .map_err(|u| unknown_param(u, &["with"]))?;
        let input_names: Vec<&str> = rs.inputs.0.iter().map(|(n, _)| n.as_str()).collect();
        let prepared = kind.prepare(&with, &input_names).map_err(|e| {
            let sub: Vec<&str> = match &e.field {
                Some(f) => vec!["with", f.as_str()],
                None => vec!["with"],
            };
            let field_names = with
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default();
            // An unknown key: the closest key the kind knows, or nothing.
            // Any other problem with a field: maybe a misspelt key beside it.
            let hint = match unknown_field(&e.message) {
                Some((field, known)) => did_you_mean(field, known),
                None => e.field.as_deref().and_then(|f| {
                    did_you_mean(
                        f,
                        field_names.iter().map(String::as_str).filter(|n| *n != f),
                    )
                }),
            };
            serr(format!("invalid `with`: {}", e.message), &sub).hint(hint)
        })?;

        let mut env = BTreeMap::new();
        for (k, v) in &rs.env.0 {
            let v = to_json(v).map_err(|m| serr(m, &["env", k]))?;
            let v = interpolate::interpolate(&v, &params, &mut used)
                .map_err(|u| unknown_param(u, &["env", k]))?;
            env.insert(k.clone(), interpolate::text(&v));
        }

        let mut inputs = Vec::new();
        for (in_name, reference) in &rs.inputs.0 {
            let sub = ["inputs", in_name.as_str()];
            if in_name.is_empty()
                || !in_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(serr(
                    format!("invalid input name `{in_name}`: use letters, digits and `_`"),
                    &sub,
                ));
            }
            let reference = interpolate::interpolate_str(reference, &params, &mut used)
                .map_err(|u| unknown_param(u, &sub))?;
            let reference = interpolate::text(&reference);
            let target = match reference.split_once(':') {
                Some((up, path)) => {
                    let Some(j) = names.iter().position(|n| *n == up) else {
                        return Err(serr(
                            format!("input `{in_name}` refers to unknown stage `{up}`"),
                            &sub,
                        )
                        .at(
                            src,
                            locate_value(src, &["stages", name, "inputs", in_name], up),
                        )
                        .hint(did_you_mean(up, names.iter().copied())));
                    };
                    if j == i {
                        return Err(serr(
                            format!("input `{in_name}` refers to the stage itself"),
                            &sub,
                        ));
                    }
                    if Path::new(path).is_absolute() || path.split('/').any(|c| c == "..") {
                        return Err(serr(format!("input `{in_name}`: `{path}` must be a relative path inside `{up}`'s output"), &sub));
                    }
                    edges.push((j, i));
                    InputRef::Stage {
                        stage: up.to_string(),
                        path: path.trim_matches('/').to_string(),
                    }
                }
                None => {
                    let rel = PathBuf::from(&reference);
                    if rel.is_absolute()
                        || rel
                            .components()
                            .any(|c| c == std::path::Component::ParentDir)
                    {
                        return Err(serr(format!("input `{in_name}`: workspace path `{reference}` must be relative and inside the workspace"), &sub));
                    }
                    if paths == WorkspacePaths::Check && !root.join(&rel).exists() {
                        return Err(serr(format!("input `{in_name}`: `{reference}` does not exist in the workspace {}", root.display()), &sub)
                            .hint(Some("workspace paths are relative to the workspace root; use STAGE:PATH for another stage's output".into())));
                    }
                    InputRef::Workspace(rel)
                }
            };
            inputs.push(Input {
                name: in_name.clone(),
                source: reference,
                target,
            });
        }
        for a in &rs.after {
            let Some(j) = names.iter().position(|n| n == a) else {
                return Err(
                    serr(format!("`after` names unknown stage `{a}`"), &["after"])
                        .at(src, locate_value(src, &["stages", name, "after"], a))
                        .hint(did_you_mean(a, names.iter().copied())),
                );
            };
            edges.push((j, i));
        }
        let declared = |field: &str, files: &Option<Vec<String>>, default: &[&str]| {
            let Some(files) = files else {
                return Ok(default.iter().map(|f| f.to_string()).collect());
            };
            for f in files {
                if f.is_empty()
                    || Path::new(f).is_absolute()
                    || f.split('/').any(|c| c == ".." || c.is_empty())
                {
                    return Err(serr(
                        format!(
                            "`{field}`: `{f}` must be a relative path inside the stage's output"
                        ),
                        &[field],
                    )
                    .at(src, locate_value(src, &["stages", name, field], f)));
                }
            }
            Ok(files.clone())
        };
        if let Some((field, why)) = rs.resources.problem() {
            return Err(serr(
                format!("invalid `resources`: `{field}` {why}"),
                &["resources", field],
            ));
        }
        if rs.executor == Some(ExecutorKind::Slurm) && kind.local_only {
            return Err(serr(
                format!(
                    "`{}` stages run on this machine: they cannot run on Slurm",
                    rs.kind
                ),
                &["executor"],
            )
            .hint(Some("remove `executor: slurm`".into())));
        }
        // Anything else would be read by sbatch as the script to run.
        if let Some(option) = rs.slurm.iter().find(|o| !o.starts_with('-')) {
            return Err(serr(
                format!("`slurm`: `{option}` is not an sbatch option"),
                &["slurm"],
            )
            .at(
                src,
                locate_value(src, &["stages", name, "slurm"], option).or(here(&["slurm"])),
            )
            .hint(Some(
                "write each option with its value: `--account=NAME`".into(),
            )));
        }
        let metrics = declared("metrics", &rs.metrics, kind.metrics)?;
        let plots = declared("plots", &rs.plots, kind.plots)?;
        stages.push(Stage {
            name: name.clone(),
            kind: rs.kind.clone(),
            with,
            prepared,
            inputs,
            after: rs.after.clone(),
            cache: rs.cache,
            gpus: rs.resources.gpu,
            executor: rs.executor,
            resources: rs.resources.clone(),
            slurm: rs.slurm.clone(),
            env,
            params_used: used,
            metrics,
            plots,
        });
    }

    let dag = Dag::build(stages.len(), &edges).map_err(|cycle| {
        let path: Vec<&str> = cycle.iter().map(|&i| stages[i].name.as_str()).collect();
        let first = path.first().copied().unwrap_or_default();
        err(format!("dependency cycle: {}", path.join(" → ")))
            .at(src, at(&["stages", first]))
            .stage(first)
    })?;

    Ok(Pipeline {
        file: file.to_path_buf(),
        name: raw.name,
        root: root.to_path_buf(),
        params,
        stages,
        dag,
    })
}

/// Where the text goes on after the first YAML document, for the one serde
/// error without a location ("more than one document"): a `---` or `...`
/// line after content, else the first line after a complete flow document,
/// else the first line.
fn second_document(src: &str) -> Span {
    let lines: Vec<&str> = src.lines().collect();
    let content = |l: &str| !l.trim().is_empty() && !l.trim_start().starts_with('#');
    let first = lines.iter().position(|l| content(l)).unwrap_or(0);
    let marker = lines
        .iter()
        .enumerate()
        .skip(first + 1)
        .find(|(_, l)| l.starts_with("---") || l.starts_with("..."));
    let line = marker.map(|(i, _)| i).or_else(|| {
        // The shortest prefix that is a whole document, then the next content line.
        let end = (first + 1..=lines.len()).find(|&k| {
            serde_yaml::from_str::<serde_yaml::Value>(&lines[..k].join("\n"))
                .is_ok_and(|v| !v.is_null())
        })?;
        (end..lines.len()).find(|&i| content(lines[i]))
    });
    let i = line.unwrap_or(0);
    let indent = lines.get(i).map_or(0, |l| l.len() - l.trim_start().len());
    Span {
        line: i + 1,
        col: indent + 1,
        len: 1,
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`": a did-you-mean.
/// The key and the keys serde expected, from "unknown field `x`, expected
/// one of `a`, `b`" (or "expected `a`", or "there are no fields").
fn unknown_field(message: &str) -> Option<(&str, Vec<&str>)> {
    let (_, rest) = message.split_once("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest.split('`').skip(1).step_by(2).collect();
    Some((field, expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{StageContext, StageError, StageKind};

    #[derive(serde::Deserialize)]
    struct Shellish {
        #[allow(dead_code)]
        cmd: String,
    }
    impl StageKind for Shellish {
        const NAME: &'static str = "shell";
        const VERSION: u32 = 1;
        fn run(&self, _: &StageContext) -> Result<(), StageError> {
            Ok(())
        }
    }

    fn parse_src(src: &str) -> Result<Pipeline, ManifestError> {
        let mut reg = Registry::new();
        reg.register::<Shellish>();
        parse(
            Path::new("m.yaml"),
            src,
            Path::new("/nonexistent"),
            &[],
            &reg,
            WorkspacePaths::Check,
        )
    }

    const GOOD: &str = "version: 1\nname: demo\nparams:\n  greeting: hello\nstages:\n  make:\n    kind: shell\n    with:\n      cmd: echo ${params.greeting} > $PIPE_OUT/g.txt\n  upper:\n    kind: shell\n    inputs:\n      src: make:g.txt\n    with:\n      cmd: tr a-z A-Z < $PIPE_IN_SRC > $PIPE_OUT/u.txt\n";

    #[test]
    fn good_manifest() {
        let p = parse_src(GOOD).unwrap();
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.stages[0].with["cmd"], "echo hello > $PIPE_OUT/g.txt");
        assert_eq!(p.stages[0].params_used.len(), 1);
        assert!(p.stages[1].params_used.is_empty());
        assert_eq!(p.dag.edges(), vec![(0, 1)]);
    }

    #[test]
    fn unknown_key_points_at_it() {
        let e = parse_src(&GOOD.replace("    inputs:", "    inptus:")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("unknown field `inptus`"), "{s}");
        assert_eq!(e.span.map(|s| s.line), Some(12), "{s}");
        assert!(s.contains("did you mean `inputs`?"), "{s}");
    }

    #[test]
    fn dangling_reference() {
        let e = parse_src(&GOOD.replace("src: make:", "src: mkae:")).unwrap_err();
        assert_eq!(e.span.map(|s| (s.line, s.col)), Some((13, 12)));
        assert!(e.to_string().contains("did you mean `make`?"), "{e}");
    }

    #[test]
    fn unknown_kind() {
        let e = parse_src(&GOOD.replacen("kind: shell", "kind: shel", 1)).unwrap_err();
        assert_eq!(e.span.map(|s| s.line), Some(7));
        assert!(e.to_string().contains("did you mean `shell`?"));
    }

    #[test]
    fn cycle_is_reported_with_path() {
        let src = GOOD.replace(
            "    kind: shell\n    with:\n      cmd: echo",
            "    kind: shell\n    after: [upper]\n    with:\n      cmd: echo",
        );
        let e = parse_src(&src).unwrap_err();
        assert!(e.message.contains("make → upper → make"), "{e}");
    }

    #[test]
    fn duplicate_stage() {
        let src = format!("{GOOD}  make:\n    kind: shell\n    with: {{cmd: x}}\n");
        let e = parse_src(&src).unwrap_err();
        assert!(e.message.contains("duplicate key `make`"), "{e}");
    }

    #[test]
    fn unknown_param() {
        let e = parse_src(&GOOD.replace("${params.greeting}", "${params.greting}")).unwrap_err();
        assert!(e.to_string().contains("did you mean `greeting`?"), "{e}");
    }
}
