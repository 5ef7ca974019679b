//! The manager's admin HTTP API: `/init`, `/add`, `/rm` with the gateway's bodies and
//! answers (the gateway forwards them here), and `/healthz`. The operations are
//! [`crate::ops`]; this module only decodes and encodes.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use shardline::body::ApiJson;
use shardline::internal::{AddResponse, Done, RmResponse, Status};
use shardline::meta::{AddRequest, InitRequest, RmRequest};
use shardline::ApiError;

use crate::control_plane::ControlPlane;
use crate::lease::Role;
use crate::runtime::Runtime;

#[derive(serde::Serialize)]
struct Healthy {
    status: Status,
    /// `active` (holds the manager lease) or `standby`.
    role: Role,
    /// This manager's id.
    manager: String,
    /// The lease holder last seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    active: Option<String>,
}

pub fn router<R: Runtime>(control: Arc<ControlPlane<R>>) -> Router {
    Router::new()
        .route("/init", post(init::<R>))
        .route("/add", post(add::<R>))
        .route("/rm", delete(rm::<R>))
        .route("/restore", post(restore::<R>))
        .route("/recover", post(recover::<R>))
        .route("/healthz", get(healthz::<R>))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(control)
}

async fn healthz<R: Runtime>(State(c): State<Arc<ControlPlane<R>>>) -> Json<Healthy> {
    Json(Healthy {
        status: Status::Success,
        role: c.lease.role(),
        manager: c.lease.id().to_string(),
        active: c.lease.holder(),
    })
}

// A standby answers every admin call with 503 (checked again before each write).

async fn init<R: Runtime>(
    State(c): State<Arc<ControlPlane<R>>>,
    ApiJson(req): ApiJson<InitRequest>,
) -> Result<Json<Done>, ApiError> {
    c.lease.check()?;
    c.init(req).await.map(Json)
}

async fn add<R: Runtime>(
    State(c): State<Arc<ControlPlane<R>>>,
    ApiJson(req): ApiJson<AddRequest>,
) -> Result<Json<AddResponse>, ApiError> {
    c.lease.check()?;
    c.add(req).await.map(Json)
}

async fn restore<R: Runtime>(
    State(c): State<Arc<ControlPlane<R>>>,
    body: axum::body::Body,
) -> Result<Json<Done>, ApiError> {
    if let Err(e) = c.lease.check() {
        crate::restore::drain_body(body).await;
        return Err(e);
    }
    c.restore(body).await.map(Json)
}

async fn rm<R: Runtime>(
    State(c): State<Arc<ControlPlane<R>>>,
    ApiJson(req): ApiJson<RmRequest>,
) -> Result<Json<RmResponse>, ApiError> {
    c.lease.check()?;
    c.rm(req).await.map(Json)
}

/// `POST /recover` (README "Log faults").
async fn recover<R: Runtime>(
    State(c): State<Arc<ControlPlane<R>>>,
    ApiJson(req): ApiJson<crate::log_recovery::RecoverRequest>,
) -> Result<Json<Done>, ApiError> {
    c.lease.check()?;
    c.recover_on(req).await.map(Json)
}
