//! Request bodies, for every binary's HTTP API:
//!
//! - [`ApiJson<T>`]: a JSON body extractor whose every rejection is a 400 (or 413) in the API's
//!   failure shape, with a message that names the offending field (via `serde_path_to_error`).
//! - Shape checks for bodies that cannot be plain serde structs because a field is named by
//!   the schema (`Stud_id` in the assignment): [`object`], [`only_fields`], [`required`],
//!   [`int`], each failing with a 400 that names the field; [`kind`] and [`some`] word
//!   messages.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::ApiError;

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is larger than the configured limit".into())
            } else {
                ApiError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?;
        decode(&bytes).map(ApiJson)
    }
}

/// Decodes a JSON document, naming the path of the first offending field on error.
///
/// A valid body is parsed with plain `serde_json`; the path tracking that names the offending
/// field (`serde_path_to_error`) runs only for a body that fails, since it made every parse
/// slower and only a failure needs it (the gateway's CPU per request, README "Performance").
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "request body is empty; a JSON object is required".into(),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest(format!("request body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::BadRequest(format!("invalid request body: {inner}"))
        } else {
            ApiError::BadRequest(format!("invalid field `{path}`: {inner}"))
        }
    })?;
    // One JSON value and nothing after it: `{"a":1}x` is not a JSON body.
    de.end()
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    Ok(value)
}

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
    crate::schema::parse_number(field, v).map_err(bad)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        shard: String,
        n: u32,
    }

    #[test]
    fn text_after_the_value_is_refused() {
        // It was accepted as the value before it.
        let e = decode::<Value>(br#"{"a":1}x"#).unwrap_err();
        assert!(e.message().contains("not valid JSON"), "{}", e.message());
        assert!(decode::<Value>(br#"{"a":1} "#).is_ok());
        let v: Value = decode(br#"{"data": [{"a": 1}]}"#).unwrap();
        assert_eq!(v["data"][0]["a"], 1);
    }

    #[test]
    fn errors_name_the_field() {
        let e = decode::<Probe>(br#"{"shard":"a","n":"5"}"#).unwrap_err();
        assert!(e.message().contains("`n`"), "{}", e.message());
        let e = decode::<Probe>(br#"{"shard":"a"}"#).unwrap_err();
        assert!(e.message().contains("missing field `n`"), "{}", e.message());
        let e = decode::<Probe>(br#"{"shard":"a","n":1,"x":2}"#).unwrap_err();
        assert!(e.message().contains("unknown field `x`"), "{}", e.message());
        let e = decode::<Probe>(b"{not json").unwrap_err();
        assert!(e.message().contains("not valid JSON"), "{}", e.message());
        let e = decode::<Probe>(b"").unwrap_err();
        assert!(e.message().contains("empty"), "{}", e.message());
    }

    #[test]
    fn shape_checks_name_the_field() {
        let v = serde_json::json!({"Stud_id": {"low": 1}, "x": 1, "y": 2});
        let obj = object(&v).unwrap();
        let e = only_fields(obj, &["Stud_id"], "").unwrap_err();
        assert_eq!(e.message(), "unknown fields `x`, `y`; expected `Stud_id`");
        let range = object(&obj["Stud_id"]).unwrap();
        let e = required(range, "Stud_id", "high").unwrap_err();
        assert_eq!(e.message(), "missing field `Stud_id.high`");
        let e = object(&serde_json::json!([1])).unwrap_err();
        assert_eq!(
            e.message(),
            "request body must be a JSON object, got an array"
        );
        assert!(int("k", &serde_json::json!(1.5)).is_err());
        assert_eq!(some(&[1, 2, 3], 2), "1, 2 and 1 more");
    }
}
