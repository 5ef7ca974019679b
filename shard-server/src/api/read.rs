//! `POST|GET /read`: rows of one shard in an inclusive key range.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use shardline::body::ApiJson;
use shardline::internal::ReadRequest;
use shardline::ApiError;

use super::{check_keyed, configured_schema};
use crate::server::Server;

pub async fn read(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<ReadRequest>,
) -> Result<Response, ApiError> {
    let schema = configured_schema(&s)?;
    check_keyed(&body, &schema, false)?;
    let key = schema.key();
    let (shard, range) = (body.shard, body.value);
    let (low, high) = (range.low, range.high);
    if low > high {
        return Err(ApiError::BadRequest(format!(
            "`{key}.low` ({low}) is greater than `{key}.high` ({high})"
        )));
    }
    let replica = s.replica(shard.as_str())?;
    if replica.is_recovering() {
        return Err(ApiError::Unavailable(format!(
            "shard {shard}: server {} is still catching up",
            s.name
        )));
    }
    let rows = replica
        .store
        .read_range_json(low, high)
        .map_err(|e| ApiError::Internal(format!("shard {shard}: {e}")))?;
    // The rows arrive as JSON text from SQLite; splice them into the `ReadResponse` shape
    // rather than decode and re-encode them.
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"data":{rows},"status":"success"}}"#),
    )
        .into_response())
}
