//! The manager's admin HTTP API: `/init`, `/add`, `/rm` with the gateway's bodies and
//! answers (the gateway forwards them here), and `/healthz`.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use shardline::body::ApiJson;
use shardline::meta::{AddRequest, InitRequest, RmRequest};
use shardline::ApiError;

use crate::cluster::Cluster;
use crate::runtime::Runtime;

pub fn router<R: Runtime>(cluster: Arc<Cluster<R>>) -> Router {
    Router::new()
        .route("/init", post(init::<R>))
        .route("/add", post(add::<R>))
        .route("/rm", delete(rm::<R>))
        .route(
            "/healthz",
            get(|| async { Json(json!({"status": "success"})) }),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(cluster)
}

async fn init<R: Runtime>(
    State(c): State<Arc<Cluster<R>>>,
    ApiJson(req): ApiJson<InitRequest>,
) -> Result<Json<Value>, ApiError> {
    c.init(req).await.map(Json)
}

async fn add<R: Runtime>(
    State(c): State<Arc<Cluster<R>>>,
    ApiJson(req): ApiJson<AddRequest>,
) -> Result<Json<Value>, ApiError> {
    c.add(req).await.map(Json)
}

async fn rm<R: Runtime>(
    State(c): State<Arc<Cluster<R>>>,
    ApiJson(req): ApiJson<RmRequest>,
) -> Result<Json<Value>, ApiError> {
    c.rm(req).await.map(Json)
}
