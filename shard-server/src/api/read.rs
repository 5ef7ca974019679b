//! `POST|GET /read`: rows of one shard in an inclusive key range.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use shardline::body::ApiJson;
use shardline::schema::parse_number;
use shardline::ApiError;

use super::{configured_schema, object, only_fields, shard_field};
use crate::server::Server;

pub async fn read(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let schema = configured_schema(&s)?;
    let key = schema.key();
    let body = object(body)?;
    only_fields(&body, &["shard", key])?;
    let shard = shard_field(&body)?;
    let range = body.get(key).and_then(Value::as_object).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "field `{key}` must be {{\"low\": .., \"high\": ..}}"
        ))
    })?;
    only_fields(range, &["low", "high"])?;
    let bound = |f: &str| {
        range
            .get(f)
            .ok_or_else(|| ApiError::BadRequest(format!("missing field `{key}.{f}`")))
            .and_then(|v| parse_number(&format!("{key}.{f}"), v).map_err(ApiError::BadRequest))
    };
    let (low, high) = (bound("low")?, bound("high")?);
    if low > high {
        return Err(ApiError::BadRequest(format!(
            "`{key}.low` ({low}) is greater than `{key}.high` ({high})"
        )));
    }
    let replica = s.replica(&shard)?;
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
    // The rows arrive as JSON text from SQLite; splice them in rather than re-encode.
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"data":{rows},"status":"success"}}"#),
    )
        .into_response())
}
