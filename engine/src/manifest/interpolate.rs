//! `${params.NAME}` interpolation. A value that is exactly one reference keeps
//! the param's type (`epochs: ${params.epochs}` stays a number); references
//! inside longer strings are replaced by the param's text. Other `${…}` (shell
//! variables) are left alone.
//!
//! In a shell script (a kind's [`SCRIPT_FIELDS`](crate::StageKind::SCRIPT_FIELDS))
//! params are data, never code. A value made only of plain characters (letters,
//! digits, `@%+=:,./_-`) is spliced as it is: it means the same in any shell
//! context. Any other value is never put in the script text at all: the
//! reference becomes a quoted expansion of the param's environment variable
//! (`"${PIPE_PARAM_X}"` bare, `${PIPE_PARAM_X}` inside `"…"`,
//! `'"${PIPE_PARAM_X}"'` inside `'…'`), and the shell kind exports that
//! variable. The result of an expansion is never parsed again, so even where
//! the quote tracking below misreads a script (a `'` in a comment or a heredoc)
//! `--set 'x=$(rm -rf ~)'` stays the text `$(rm -rf ~)`. A script that names
//! `$PIPE_PARAM_<NAME>` reads that param too (it goes into the key).

use std::collections::BTreeMap;

use serde_json::Value;

const OPEN: &str = "${params.";

/// An unknown param name found while interpolating.
pub struct Unknown(pub String);

pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Interpolate one string; records the params it read in `used`.
pub fn interpolate_str(
    s: &str,
    params: &BTreeMap<String, Value>,
    used: &mut BTreeMap<String, Value>,
) -> Result<Value, Unknown> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find(OPEN) {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        let name = &rest[start + OPEN.len()..start + end];
        let value = params.get(name).ok_or_else(|| Unknown(name.to_string()))?;
        used.insert(name.to_string(), value.clone());
        if start == 0 && end + 1 == rest.len() && out.is_empty() {
            return Ok(value.clone());
        }
        out.push_str(&rest[..start]);
        out.push_str(&text(value));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// Where a `${params.…}` stands in a shell script.
#[derive(Clone, Copy, PartialEq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Param `name`'s `value` as shell data for the quoting context it is spliced
/// into (see the module doc): plain text as it is, anything else as an
/// expansion of its environment variable.
fn shell_quote(name: &str, value: &str, context: Quote) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        return value.to_string();
    }
    let var = env_var(name);
    match context {
        Quote::None => format!("\"${{{var}}}\""),
        Quote::Single => format!("'\"${{{var}}}\"'"),
        Quote::Double => format!("${{{var}}}"),
    }
}

/// The environment variable a shell script reads a param from: `max-len` → `PIPE_PARAM_MAX_LEN`.
pub fn env_var(param: &str) -> String {
    let name: String = param
        .chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() => c.to_ascii_uppercase(),
            _ => '_',
        })
        .collect();
    format!("PIPE_PARAM_{name}")
}

/// Interpolate a shell script: values are shell-quoted (see the module doc),
/// and params named as `PIPE_PARAM_<NAME>` count as read.
pub fn interpolate_script(
    s: &str,
    params: &BTreeMap<String, Value>,
    used: &mut BTreeMap<String, Value>,
) -> Result<String, Unknown> {
    let mut out = String::new();
    let mut quote = Quote::None;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if s[i..].starts_with(OPEN) {
            if let Some(end) = s[i..].find('}') {
                let name = &s[i + OPEN.len()..i + end];
                let value = params.get(name).ok_or_else(|| Unknown(name.to_string()))?;
                used.insert(name.to_string(), value.clone());
                out.push_str(&shell_quote(name, &text(value), quote));
                while chars.peek().is_some_and(|(j, _)| *j <= i + end) {
                    chars.next();
                }
                continue;
            }
        }
        // A comment (`#` starting a word, outside quotes) runs to the end of
        // the line: its quotes are not quotes.
        let word_start = out
            .chars()
            .last()
            .is_none_or(|p| p.is_whitespace() || matches!(p, ';' | '&' | '|' | '(' | ')'));
        if quote == Quote::None && c == '#' && word_start {
            out.push(c);
            while let Some((_, n)) = chars.next_if(|(_, n)| *n != '\n') {
                out.push(n);
            }
            continue;
        }
        out.push(c);
        match (quote, c) {
            (Quote::None, '\'') => quote = Quote::Single,
            (Quote::Single, '\'') => quote = Quote::None,
            (Quote::None, '"') => quote = Quote::Double,
            (Quote::Double, '"') => quote = Quote::None,
            (Quote::None | Quote::Double, '\\') => {
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
            }
            _ => {}
        }
    }
    for (name, value) in params {
        let var = env_var(name);
        let named = s.match_indices(&var).any(|(at, _)| {
            !s[at + var.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        });
        if named {
            used.insert(name.clone(), value.clone());
        }
    }
    Ok(out)
}

/// Interpolate a stage's `with:`; its top-level `scripts` fields as shell scripts.
pub fn interpolate_with(
    v: &Value,
    scripts: &[&str],
    params: &BTreeMap<String, Value>,
    used: &mut BTreeMap<String, Value>,
) -> Result<Value, Unknown> {
    let Value::Object(map) = v else {
        return interpolate(v, params, used);
    };
    Ok(Value::Object(
        map.iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) if scripts.contains(&k.as_str()) => {
                        Value::String(interpolate_script(s, params, used)?)
                    }
                    v => interpolate(v, params, used)?,
                };
                Ok((k.clone(), v))
            })
            .collect::<Result<_, _>>()?,
    ))
}

/// Interpolate every string inside `v`.
pub fn interpolate(
    v: &Value,
    params: &BTreeMap<String, Value>,
    used: &mut BTreeMap<String, Value>,
) -> Result<Value, Unknown> {
    Ok(match v {
        Value::String(s) => interpolate_str(s, params, used)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| interpolate(i, params, used))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), interpolate(v, params, used)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_value_keeps_type() {
        let params = [("n".to_string(), json!(3))].into();
        let mut used = BTreeMap::new();
        assert_eq!(
            interpolate(&json!("${params.n}"), &params, &mut used).ok(),
            Some(json!(3))
        );
        assert_eq!(
            interpolate(&json!("x ${params.n} ${HOME}"), &params, &mut used).ok(),
            Some(json!("x 3 ${HOME}"))
        );
        assert_eq!(used.len(), 1);
        assert!(interpolate(&json!("${params.m}"), &params, &mut used).is_err());
    }

    #[test]
    fn scripts_get_quoted_values() {
        let params = [
            ("g".to_string(), json!("a b'\"$x")),
            ("n".to_string(), json!(3)),
            ("max-len".to_string(), json!(128)),
            ("lr".to_string(), json!(0.1)),
        ]
        .into();
        let mut used = BTreeMap::new();
        let script = |s: &str, used: &mut BTreeMap<String, Value>| {
            interpolate_script(s, &params, used)
                .ok()
                .unwrap_or_default()
        };
        assert_eq!(
            script("echo ${params.n} ${params.g}", &mut used),
            r#"echo 3 "${PIPE_PARAM_G}""#
        );
        assert_eq!(
            script(r#"echo "<${params.g}>""#, &mut used),
            r#"echo "<${PIPE_PARAM_G}>""#
        );
        assert_eq!(
            script("echo '<${params.g}>'", &mut used),
            r#"echo '<'"${PIPE_PARAM_G}"'>'"#
        );
        assert_eq!(
            script(r#"echo \"${params.g}"#, &mut used),
            r#"echo \""${PIPE_PARAM_G}""#
        );
        // A quote in a comment is not a quote.
        assert_eq!(
            script("# don't\necho ${params.g}", &mut used),
            "# don't\necho \"${PIPE_PARAM_G}\""
        );
        // A quote the tracker misreads (in a heredoc) never lets a value run:
        // the value is not in the script text at all, only its expansion.
        assert_eq!(
            script("cat <<E\nit's ${params.g}\nE", &mut used),
            "cat <<E\nit's '\"${PIPE_PARAM_G}\"'\nE"
        );
        assert_eq!(script("echo ${params.n}", &mut used), "echo 3");
        assert_eq!(used.len(), 2);
        script("echo $PIPE_PARAM_MAX_LEN $PIPE_PARAM_LRX", &mut used);
        assert!(used.contains_key("max-len") && !used.contains_key("lr"));
        assert_eq!(env_var("max-len"), "PIPE_PARAM_MAX_LEN");
    }
}
