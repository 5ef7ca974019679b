//! `GET /healthz` (the process is alive) and `GET /readyz` (the cluster is configured and
//! every shard has a primary, so every request can be routed).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use shardline::ApiError;

use crate::router::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"message": "alive", "status": "success"}))
}

pub async fn readyz(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let topology = state.topology.borrow().clone();
    let routing = topology.routing()?;
    routing.ready()?;
    Ok(Json(
        json!({"message": "ready", "revision": routing.revision, "status": "success"}),
    ))
}
