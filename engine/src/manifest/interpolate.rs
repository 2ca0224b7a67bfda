//! `${params.NAME}` interpolation. A value that is exactly one reference keeps
//! the param's type (`epochs: ${params.epochs}` stays a number); references
//! inside longer strings are replaced by the param's text. Other `${…}` (shell
//! variables) are left alone.

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
}
