//! `PUT /snapshot/{shard}`: a shard's snapshot from a backup, installed when the shard is
//! opened (see `crate::restore`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::Json;
use shardline::internal::Done;
use shardline::names::ShardId;
use shardline::ApiError;

use crate::server::Server;

pub async fn put_snapshot(
    State(s): State<Arc<Server>>,
    Path(shard): Path<String>,
    body: Body,
) -> Result<Json<Done>, ApiError> {
    let shard = ShardId::parse(&shard).map_err(ApiError::BadRequest)?;
    let bytes = crate::restore::receive(&s, &shard, body).await?;
    Ok(Json(Done::new(format!(
        "{}:{shard} snapshot of {bytes} bytes received; installed at /config",
        s.name
    ))))
}
