//! Mutated manifests through the real `pipe validate`: valid manifests with
//! bytes flipped, lines (keys) dropped, duplicated or moved, values replaced by
//! other types, and text cut short. None may panic; every rejected one exits
//! with code 2 and points at the YAML (`--> FILE:LINE:COL`).
//!
//! Deterministic: a fixed xorshift seed (`PIPE_FUZZ_SEED=N` tries others). `pipe validate` takes many manifests
//! at once, so 10,000 cost a few dozen processes; a sample also goes one
//! manifest per process to check each one's exit code.

#![allow(
    clippy::print_stderr,
    reason = "reports how many mutated manifests it covered"
)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{stderr, TestWorkspace};

const COUNT: usize = 10_000;
const BATCH: usize = 500;
/// Of those, checked one per process as well.
const ALONE: usize = 100;

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that mean something to YAML, or break UTF-8 or columns.
const BYTES: &[&[u8]] = &[
    b":",
    b"-",
    b" ",
    b"\n",
    b"\t",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"'",
    b"\"",
    b"#",
    b"&",
    b"*",
    b"!",
    b"|",
    b">",
    b"%",
    b"@",
    b"`",
    b"?",
    b"$",
    b"\\",
    b"\0",
    b"0",
    b"9",
    b"x",
    b"\xff",
    b"\xc3",
    "é".as_bytes(),
    "→".as_bytes(),
    "😀".as_bytes(),
    b"\r",
];

/// Values of every YAML type, and a few that are hard to read.
const VALUES: &[&str] = &[
    "[]",
    "{}",
    "[1, [2]]",
    "{a: {b: 1}}",
    "~",
    "-1",
    "0",
    "4294967296",
    "18446744073709551616",
    "1e300",
    "-.inf",
    ".nan",
    "true",
    "'x'",
    "\"\\u00e9\"",
    "!!binary aGk=",
    "*nope",
    "&a x",
    "|\n  text",
    "${params.nope}",
    "${params.",
    "''",
    "\"a\\tb\"",
    "é→😀",
    "!custom 3",
    "[a, b",
    "{a: 1",
    "- 1",
    ": x",
    "? x",
    "1.5",
    "0x1F",
    "\"${params.epochs}\"",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        let lines = line_starts(&m);
        match rng.below(8) {
            // Flip a byte.
            0 | 1 => {
                let at = rng.below(m.len());
                let with = *rng.pick(BYTES);
                m.splice(at..(at + 1).min(m.len()), with.iter().copied());
            }
            // Drop a line (a key, or a whole block's head).
            2 => {
                let (a, b) = rng_line(rng, &lines, m.len());
                m.drain(a..b);
            }
            // Duplicate a line.
            3 => {
                let (a, b) = rng_line(rng, &lines, m.len());
                let line = m[a..b].to_vec();
                m.splice(a..a, line);
            }
            // Replace a value with one of another type.
            4 | 5 => {
                let (a, b) = rng_line(rng, &lines, m.len());
                let line = &m[a..b];
                if let Some(colon) = line.windows(2).position(|w| w == b": ") {
                    let end = if line.ends_with(b"\n") { b - 1 } else { b };
                    let value = rng.pick(VALUES).as_bytes().to_vec();
                    m.splice(a + colon + 2..end, value);
                }
            }
            // Re-indent a line.
            6 => {
                let (a, b) = rng_line(rng, &lines, m.len());
                if rng.below(2) == 0 {
                    m.splice(a..a, *b"  ");
                } else if m[a..b].starts_with(b"  ") {
                    m.drain(a..a + 2);
                }
            }
            // Cut the text short.
            _ => m.truncate(rng.below(m.len())),
        }
        if m.is_empty() {
            break;
        }
    }
    m
}

fn line_starts(text: &[u8]) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            text.iter()
                .enumerate()
                .filter(|(i, b)| **b == b'\n' && i + 1 < text.len())
                .map(|(i, _)| i + 1),
        )
        .collect()
}

/// A random line's byte range, newline included.
fn rng_line(rng: &mut Rng, starts: &[usize], len: usize) -> (usize, usize) {
    let i = rng.below(starts.len());
    let end = starts.get(i + 1).copied().unwrap_or(len);
    (starts[i].min(len), end)
}

/// The valid manifests the mutations start from.
fn seeds(ws: &TestWorkspace) -> Vec<Vec<u8>> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds: Vec<Vec<u8>> = ["cola.yaml", "sst2.yaml", "demo.yaml"]
        .iter()
        .map(|m| std::fs::read(repo.join("pipelines").join(m)).unwrap())
        .collect();
    seeds.push(b"version: 1\nname: ws\nparams:\n  n: 3\n  word: hi\nstages:\n  a:\n    kind: shell\n    inputs:\n      src: data.txt\n    env:\n      N: ${params.n}\n    with:\n      cmd: cat $PIPE_IN_SRC > $PIPE_OUT/a.txt\n  b:\n    kind: shell\n    after: [a]\n    cache: false\n    resources: {gpu: 1}\n    inputs: {x: 'a:a.txt'}\n    with: {cmd: 'echo ${params.word} > $PIPE_OUT/b.txt'}\n".to_vec());
    // Flow style, where errors cannot be placed by indentation.
    seeds.push(b"{version: 1, name: flow, params: {n: 2},\n  stages: {a: {kind: shell, with: {cmd: 'echo ${params.n} > $PIPE_OUT/x'}},\n    b: {kind: shell, inputs: {x: 'a:x'}, after: [a], with: {cmd: 'true'}}}}\n".to_vec());
    ws.file("data.txt", "data\n");
    // Each seed is valid.
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(ws.path(&format!("seed{i}.yaml")), s).unwrap();
        let name = format!("seed{i}.yaml");
        let out = ws.pipe(&["validate", &name]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    seeds
}

/// Has `err` (one manifest's error) a `--> FILE:LINE:COL` location?
fn located(err: &str, file: &str) -> bool {
    let Some((_, rest)) = err.split_once(&format!("--> {file}:")) else {
        return false;
    };
    let mut parts = rest.splitn(3, |c: char| !c.is_ascii_digit());
    let line = parts.next().unwrap_or("");
    let col = parts.next().unwrap_or("");
    !line.is_empty() && !col.is_empty() && line != "0" && col != "0"
}

#[test]
fn ten_thousand_mutated_manifests_never_panic_and_errors_are_located() {
    let ws = TestWorkspace::new();
    let seeds = seeds(&ws);
    // `PIPE_FUZZ_SEED=N` explores other mutations; the default is what CI runs.
    let seed = std::env::var("PIPE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let mut rng = Rng(seed);
    let names: Vec<String> = (0..COUNT).map(|i| format!("m{i}.yaml")).collect();
    let mut texts = Vec::new();
    for name in &names {
        let seed = rng.pick(&seeds).clone();
        let text = mutate(&mut rng, &seed);
        std::fs::write(ws.path(name), &text).unwrap();
        texts.push(text);
    }

    let (mut ok, mut rejected) = (0, 0);
    let mut problems = Vec::new();
    for batch in names.chunks(BATCH) {
        let mut args = vec!["validate"];
        args.extend(batch.iter().map(String::as_str));
        let out = ws.pipe(&args);
        let err = stderr(&out);
        if !matches!(out.status.code(), Some(0 | 2)) {
            // A panic or a crash: find the manifests that cause it.
            for name in batch {
                let one = ws.pipe(&["validate", name]);
                if !matches!(one.status.code(), Some(0 | 2)) {
                    problems.push(format!(
                        "{name} crashed ({:?}): {}\n--- manifest:\n{}",
                        one.status.code(),
                        stderr(&one),
                        String::from_utf8_lossy(&texts[index(name)])
                    ));
                }
            }
            continue;
        }
        // Each manifest's verdict: `NAME: ok (…)`, or an error whose
        // `--> NAME…` line names it.
        let mut verdicts = HashMap::new();
        for line in err.lines() {
            if let Some((name, _)) = line.split_once(": ok (") {
                verdicts.insert(name, None);
            }
        }
        let errors: Vec<&str> = err
            .split("error: ")
            .skip(1)
            .filter(|e| !e.trim().is_empty())
            .collect();
        for e in &errors {
            let named = e
                .split_once("--> ")
                .and_then(|(_, r)| r.split(|c: char| c == ':' || c.is_whitespace()).next());
            match named {
                Some(name) => {
                    verdicts.insert(name, Some(*e));
                }
                None => problems.push(format!("an error names no manifest: {e}")),
            }
        }
        for name in batch {
            let mine = match verdicts.get(name.as_str()) {
                Some(None) => {
                    ok += 1;
                    continue;
                }
                Some(Some(e)) => Some(e),
                None => None,
            };
            match mine {
                Some(e) if located(e, name) => rejected += 1,
                Some(e) => problems.push(format!(
                    "{name}: error without a location: {e}\n--- manifest:\n{}",
                    String::from_utf8_lossy(&texts[index(name)])
                )),
                None => problems.push(format!("{name}: neither ok nor an error in:\n{err}")),
            }
        }
        assert_eq!(
            out.status.code(),
            Some(if errors.is_empty() { 0 } else { 2 }),
            "{err}"
        );
    }

    // A sample one manifest per process: each rejection exits 2 on its own.
    for name in names.iter().step_by(COUNT / ALONE) {
        let out = ws.pipe(&["validate", name]);
        let err = stderr(&out);
        match out.status.code() {
            Some(0) => {}
            Some(2) if located(&err, name) => {}
            code => problems.push(format!("{name} alone: exit {code:?}: {err}")),
        }
    }

    let mut kinds: Vec<(usize, String)> = Vec::new();
    for p in &problems {
        let what: String = p
            .split_once(": ")
            .map_or(p.as_str(), |(_, r)| r)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(100)
            .collect();
        match kinds.iter_mut().find(|(_, k)| *k == what) {
            Some((n, _)) => *n += 1,
            None => kinds.push((1, what)),
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {COUNT} mutated manifests went wrong: {kinds:#?}; the first:\n{}",
        problems.len(),
        problems[..problems.len().min(8)].join("\n\n")
    );
    assert_eq!(ok + rejected, COUNT);
    eprintln!("{COUNT} mutated manifests: {ok} valid, {rejected} rejected with a location");
    assert!(
        rejected > COUNT / 2,
        "only {rejected} rejected: weak mutations"
    );
    assert!(!ws.path(".pipe").exists(), "validate wrote .pipe");
}

fn index(name: &str) -> usize {
    name.trim_start_matches('m')
        .trim_end_matches(".yaml")
        .parse()
        .unwrap()
}
