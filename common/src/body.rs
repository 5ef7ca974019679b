//! `ApiJson<T>`: a JSON body extractor whose every rejection is a 400 (or 413) in the API's
//! failure shape, with a message that names the offending field (via `serde_path_to_error`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

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
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "request body is empty; a JSON object is required".into(),
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
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
    Ok(value)
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
}
