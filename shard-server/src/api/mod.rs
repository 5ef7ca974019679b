//! The server's HTTP API (docs/internal-api.md): one module per endpoint family.

mod admin;
mod read;
mod write;

use std::sync::Arc;

use axum::routing::{delete, get, post, put};
use axum::Router;
use shardline::ApiError;

use crate::server::Server;

pub fn router(server: Arc<Server>, body_limit: usize) -> Router {
    Router::new()
        .route("/heartbeat", get(admin::heartbeat))
        .route("/config", post(admin::config))
        .route("/copy", get(admin::copy).post(admin::copy))
        .route("/read_all", get(admin::read_all).post(admin::read_all))
        .route("/read", get(read::read).post(read::read))
        .route("/write", post(write::write))
        .route("/update", put(write::update))
        .route("/del", delete(write::delete))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(server)
}

/// The key field of a body: named after the schema's key column.
fn key_field(
    body: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<i64, ApiError> {
    let v = body
        .get(key)
        .ok_or_else(|| ApiError::BadRequest(format!("missing field `{key}`")))?;
    shardline::schema::parse_number(key, v).map_err(ApiError::BadRequest)
}

fn object(v: serde_json::Value) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    match v {
        serde_json::Value::Object(m) => Ok(m),
        _ => Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        )),
    }
}

fn only_fields(
    body: &serde_json::Map<String, serde_json::Value>,
    allowed: &[&str],
) -> Result<(), ApiError> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::BadRequest(format!(
            "unknown field `{k}`; expected {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn shard_field(body: &serde_json::Map<String, serde_json::Value>) -> Result<String, ApiError> {
    match body.get("shard") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::BadRequest(
            "field `shard` must be a string".into(),
        )),
        None => Err(ApiError::BadRequest("missing field `shard`".into())),
    }
}

fn configured_schema(server: &Server) -> Result<Arc<shardline::schema::Schema>, ApiError> {
    server.schema().ok_or_else(|| {
        ApiError::Unavailable(format!("server {} is not configured yet", server.name))
    })
}
