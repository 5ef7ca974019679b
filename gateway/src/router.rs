//! The shared state of every handler and the route table. Unknown routes (`not_found`) and
//! wrong methods (405, which has no error code of its own) answer in the API's JSON failure
//! shape.

use std::sync::Arc;

use async_nats::jetstream;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde_json::json;
use shardline::ApiError;

use crate::topology::TopologyRx;
use crate::{admin, backup, health, metrics, openapi, read, status, write, Config};

pub struct AppState {
    pub config: Config,
    /// This gateway's request id on the read rings under `--read-policy affinity`.
    pub read_id: u64,
    pub topology: TopologyRx,
    /// For /status: WAL stream and consumer progress.
    pub jetstream: jetstream::Context,
    /// Calls to the shard servers.
    pub upstream: crate::upstream::Client,
    /// Calls to the manager.
    pub http: reqwest::Client,
    /// Per-shard queues of writes waiting for a slot to their primary.
    pub lanes: crate::coalesce::WriteLanes,
    /// Per-server queues of `any`-level reads waiting for a slot to their server.
    pub read_lanes: crate::coalesce::ReadLanes,
    /// Renders the process's metrics for `GET /metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The dashboard's event list (`/ui`).
    pub ui: crate::ui::Dashboard,
}

pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.body_limit;
    Router::new()
        .route("/init", post(admin::init))
        .route("/add", post(admin::add))
        .route("/rm", delete(admin::rm))
        .route("/backup", get(backup::backup))
        .route(
            "/restore",
            post(backup::restore).layer(DefaultBodyLimit::disable()),
        )
        .route("/status", get(status::status))
        .route("/read", get(read::read).post(read::read))
        .route(
            "/read/{server}",
            get(read::read_server).post(read::read_server),
        )
        .route("/write", post(write::write))
        .route("/update", put(write::update))
        .route("/del", delete(write::delete))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::serve))
        .merge(crate::ui::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        // Outermost, so rejected bodies (413) and fallbacks are counted too.
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> impl IntoResponse {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({
            "message": format!("method {method} is not allowed on {}", uri.path()),
            "code": shardline::ErrorCode::BadRequest,
            "outcome": shardline::Effect::NotApplied,
            "status": "failure",
        })),
    )
}
