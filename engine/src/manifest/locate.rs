//! Finding a key path (`stages.upper.inputs.src`) in manifest text, for errors
//! about things serde_yaml cannot point at itself (dangling references, cycles).
//!
//! This reads block-style YAML by indentation only. It is used for diagnostics,
//! never for meaning: when it cannot find a key it returns the deepest parent
//! it found, so an error still points somewhere close.

/// A 1-based line and column, and how many characters to underline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub line: usize,
    pub col: usize,
    pub len: usize,
}

fn parse_key(line: &str) -> Option<(usize, &str)> {
    let indent = line.len() - line.trim_start_matches([' ', '-']).len();
    let rest = &line[indent..];
    if rest.starts_with('#') || rest.is_empty() {
        return None;
    }
    let (key, _) = rest.split_once(':')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    (!key.is_empty() && !key.contains(' ')).then_some((indent, key))
}

/// Locate the key at `path`; falls back to the deepest ancestor found.
pub fn locate(src: &str, path: &[&str]) -> Option<Span> {
    let block = locate_block(src, path);
    if block.is_some_and(|(depth, _)| depth == path.len()) {
        return block.map(|(_, s)| s);
    }
    // Flow style (`stages: {a: {kind: shell}}`) has no indentation to follow.
    match (block, locate_flow(src, path)) {
        (Some((b, span)), Some((f, _))) if b >= f => Some(span),
        (_, Some((_, span))) => Some(span),
        (block, None) => block.map(|(_, s)| s),
    }
}

/// The keys of `path` in order anywhere in the text, each after the one
/// before: good enough for flow mappings. The depth reached and its span.
fn locate_flow(src: &str, path: &[&str]) -> Option<(usize, Span)> {
    let mut from = 0;
    let mut best = None;
    for (depth, key) in path.iter().enumerate() {
        let Some(at) = find_key(src, from, key) else {
            break;
        };
        let line_start = src[..at].rfind('\n').map_or(0, |i| i + 1);
        best = Some((
            depth + 1,
            Span {
                line: src[..at].matches('\n').count() + 1,
                col: src[line_start..at].chars().count() + 1,
                len: key.chars().count(),
            },
        ));
        from = at + key.len();
    }
    best
}

/// The byte offset of `key` used as a mapping key at or after `from`.
fn find_key(src: &str, from: usize, key: &str) -> Option<usize> {
    if key.is_empty() {
        return None;
    }
    let mut start = from;
    while let Some(i) = src.get(start..)?.find(key) {
        let at = start + i;
        let before = src[..at].chars().next_back();
        let after = src[at + key.len()..].trim_start_matches(['"', '\'', ' ']);
        if before.is_none_or(|c| " \t\n{,\"'-".contains(c)) && after.starts_with(':') {
            return Some(at);
        }
        start = at + key.len();
    }
    None
}

/// [`locate`] by indentation: the depth reached and its span.
fn locate_block(src: &str, path: &[&str]) -> Option<(usize, Span)> {
    let mut stack: Vec<(usize, &str)> = Vec::new();
    let mut best: Option<(usize, Span)> = None;
    for (i, line) in src.lines().enumerate() {
        let Some((indent, key)) = parse_key(line) else {
            continue;
        };
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        stack.push((indent, key));
        let depth = stack.len();
        if depth <= path.len() && stack.iter().zip(path).all(|((_, k), p)| k == p) {
            let span = Span {
                line: i + 1,
                col: indent + 1,
                len: key.chars().count(),
            };
            if best.is_none_or(|(d, _)| depth > d) {
                best = Some((depth, span));
            }
            if depth == path.len() {
                return Some((depth, span));
            }
        }
    }
    best
}

/// Locate `needle` in the value of the key at `path` (on its line or the
/// following more-indented lines), e.g. a stage name inside `after: [a, b]`.
pub fn locate_value(src: &str, path: &[&str], needle: &str) -> Option<Span> {
    let key = locate(src, path)?;
    let lines: Vec<&str> = src.lines().collect();
    for (offset, line) in lines.iter().enumerate().skip(key.line - 1) {
        if offset >= key.line {
            let indent = line.len() - line.trim_start().len();
            if !line.trim().is_empty() && indent < key.col && !line.trim_start().starts_with('-') {
                break;
            }
        }
        let from = if offset + 1 == key.line {
            key.col - 1 + key.len
        } else {
            0
        };
        if let Some(pos) = line.get(from..).and_then(|l| l.find(needle)) {
            let col = line[..from + pos].chars().count() + 1;
            return Some(Span {
                line: offset + 1,
                col,
                len: needle.chars().count(),
            });
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "version: 1\nstages:\n  make:\n    kind: shell\n  upper:\n    kind: shell\n    inputs:\n      src: make:greeting.txt\n    after: [make, other]\n";

    #[test]
    fn finds_nested_keys() {
        assert_eq!(
            locate(SRC, &["stages", "upper", "inputs", "src"]),
            Some(Span {
                line: 8,
                col: 7,
                len: 3
            })
        );
        assert_eq!(
            locate(SRC, &["stages", "make", "kind"]),
            Some(Span {
                line: 4,
                col: 5,
                len: 4
            })
        );
    }

    #[test]
    fn falls_back_to_parent() {
        assert_eq!(
            locate(SRC, &["stages", "upper", "with"]).map(|s| s.line),
            Some(5)
        );
    }

    #[test]
    fn finds_keys_in_flow_mappings() {
        let src =
            "{version: 1, name: f,\n  stages: {a: {kind: shell}, b: {kind: x, with: {cmd: y}}}}\n";
        assert_eq!(
            locate(src, &["stages", "b", "with", "cmd"]),
            Some(Span {
                line: 2,
                col: 50,
                len: 3
            })
        );
        assert_eq!(
            locate(src, &["stages", "b", "nope"]).map(|s| s.col),
            Some(30)
        );
    }

    #[test]
    fn finds_values() {
        assert_eq!(
            locate_value(SRC, &["stages", "upper", "after"], "other"),
            Some(Span {
                line: 9,
                col: 19,
                len: 5
            })
        );
        assert_eq!(
            locate_value(SRC, &["stages", "upper", "inputs", "src"], "make").map(|s| s.col),
            Some(12)
        );
    }
}
