//! [`Json`]: the request body extractor of the data endpoints. It answers exactly as
//! [`shardline::body::ApiJson`] (same 400s and 413, same messages), but parses a valid body
//! with plain `serde_json` and leaves the path tracking that names the offending field
//! (`serde_path_to_error`) to the bodies that fail: it made every parse slower, and only a
//! failure needs it.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use shardline::ApiError;

pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
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
        decode(&bytes).map(Json)
    }
}

/// [`shardline::body::decode`], with its error, and without its cost for a valid body.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => shardline::body::decode(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn failures_are_the_shared_extractors() {
        for body in ["", "  ", "{", "[1,", "{\"a\":}", "nul", "\u{0}"] {
            let ours = decode::<Value>(body.as_bytes()).unwrap_err();
            let shared = shardline::body::decode::<Value>(body.as_bytes()).unwrap_err();
            assert_eq!(ours.message(), shared.message(), "{body:?}");
            assert_eq!(ours.code(), shared.code());
        }
        // Text after the JSON value is refused by both (it was accepted before).
        let trailing = br#"{"a":1}x"#;
        let ours = decode::<Value>(trailing).unwrap_err();
        assert_eq!(ours.code(), ApiError::BadRequest(String::new()).code());
        assert!(
            ours.message().contains("not valid JSON"),
            "{}",
            ours.message()
        );
        assert!(shardline::body::decode::<Value>(br#"{"a":1} "#).is_ok());
        let v: Value = decode(br#"{"data": [{"a": 1}]}"#).unwrap();
        assert_eq!(v["data"][0]["a"], 1);
    }
}
