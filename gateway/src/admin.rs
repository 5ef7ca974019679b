//! `POST /init`, `POST /add`, `DELETE /rm`: checked for a JSON body (and the admin token, when
//! one is configured) here, then forwarded to the manager, whose status and body are passed
//! through unchanged. The manager owns all validation and the metadata.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use reqwest::Method;
use serde_json::{json, Value};
use shardline::body::ApiJson;
use shardline::ApiError;

use crate::router::AppState;
use crate::upstream;

type Body = Result<ApiJson<Value>, ApiError>;

pub async fn init(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    forward(&state, &headers, Method::POST, "/init", body).await
}

pub async fn add(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    forward(&state, &headers, Method::POST, "/add", body).await
}

pub async fn rm(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    forward(&state, &headers, Method::DELETE, "/rm", body).await
}

async fn forward(
    state: &AppState,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Body,
) -> Response {
    // The token is checked before the body so an anonymous caller learns nothing from a 400.
    if let Err(e) = authorize(state.config.admin_token.as_deref(), headers) {
        return e.into_response();
    }
    let ApiJson(body) = match body {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let url = format!("{}{path}", state.config.manager_url.trim_end_matches('/'));
    let mut req = state
        .http
        .request(method, &url)
        .timeout(Duration::from_millis(state.config.admin_timeout_ms))
        .json(&body);
    if let Some(auth) = headers.get(AUTHORIZATION) {
        req = req.header(AUTHORIZATION, auth);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                "did not answer in time; the operation may still complete"
            } else {
                "is unreachable"
            };
            return ApiError::Unavailable(format!(
                "manager at {} {why}: {}",
                state.config.manager_url,
                upstream::chain(&e)
            ))
            .into_response();
        }
    };
    let status = resp.status();
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::Unavailable(format!(
                "manager answer could not be read: {}",
                upstream::chain(&e)
            ))
            .into_response()
        }
    };
    passthrough(status, &bytes)
}

/// The manager's answer as it was; a body that is not JSON is wrapped in the failure shape.
pub(crate) fn passthrough(status: StatusCode, bytes: &[u8]) -> Response {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => (status, Json(v)).into_response(),
        Err(_) => {
            let text = String::from_utf8_lossy(bytes).trim().to_owned();
            if status.is_success() {
                return (status, Json(json!({"message": text, "status": "success"})))
                    .into_response();
            }
            // Keep the manager's status, with the code and outcome every failure body has.
            let body = ApiError::from_status(status.as_u16(), text).body();
            (status, Json(body)).into_response()
        }
    }
}

pub(crate) fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Ok(());
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("wrong admin token".into())),
        None => Err(ApiError::Unauthorized(
            "admin token required: send Authorization: Bearer <token>".into(),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn admin_token() {
        let mut h = HeaderMap::new();
        assert!(authorize(None, &h).is_ok());
        assert_eq!(
            authorize(Some("s3cret"), &h).unwrap_err().status(),
            StatusCode::UNAUTHORIZED
        );
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer nope"));
        assert!(authorize(Some("s3cret"), &h).is_err());
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(authorize(Some("s3cret"), &h).is_ok());
    }

    #[test]
    fn non_json_manager_answers_keep_their_status() {
        let r = passthrough(StatusCode::BAD_GATEWAY, b"oops");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let r = passthrough(
            StatusCode::CONFLICT,
            br#"{"message":"x","status":"failure"}"#,
        );
        assert_eq!(r.status(), StatusCode::CONFLICT);
    }
}
