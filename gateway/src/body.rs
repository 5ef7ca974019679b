//! Shape checks for request bodies whose key field is named by the schema (`Stud_id` in the
//! assignment), so they cannot be plain serde structs. Every failure is a 400 naming the field.

use serde_json::{Map, Value};
use shardline::ApiError;

pub fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// The body as a JSON object.
pub fn object(v: &Value) -> Result<&Map<String, Value>, ApiError> {
    v.as_object().ok_or_else(|| {
        bad(format!(
            "request body must be a JSON object, got {}",
            kind(v)
        ))
    })
}

/// Rejects fields outside `allowed`, naming them and what is expected.
pub fn only_fields(
    obj: &Map<String, Value>,
    allowed: &[&str],
    within: &str,
) -> Result<(), ApiError> {
    let unknown: Vec<String> = obj
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| format!("`{}{k}`", prefix(within)))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let expected: Vec<String> = allowed
        .iter()
        .map(|k| format!("`{}{k}`", prefix(within)))
        .collect();
    Err(bad(format!(
        "unknown field{} {}; expected {}",
        if unknown.len() == 1 { "" } else { "s" },
        unknown.join(", "),
        expected.join(", ")
    )))
}

fn prefix(within: &str) -> String {
    if within.is_empty() {
        String::new()
    } else {
        format!("{within}.")
    }
}

/// A field that must be present; `within` names the enclosing field ("" at the top level).
pub fn required<'a>(
    obj: &'a Map<String, Value>,
    within: &str,
    field: &str,
) -> Result<&'a Value, ApiError> {
    obj.get(field)
        .ok_or_else(|| bad(format!("missing field `{}{field}`", prefix(within))))
}

/// A key value: a JSON integer in the signed 64-bit range (no strings, no floats).
pub fn int(field: &str, v: &Value) -> Result<i64, ApiError> {
    shardline::schema::parse_number(field, v).map_err(bad)
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// At most `max` items of a list for a message, then how many were left out.
pub fn some<T: std::fmt::Display>(items: &[T], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}
