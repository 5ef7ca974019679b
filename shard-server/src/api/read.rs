//! `POST|GET /read`: rows of one shard in an inclusive key range, at the level the query
//! parameter `consistency` asks for (`any` when absent):
//!
//! - `any`: this replica, if it is not recovering and confirmed being caught up with its
//!   stream within the maximum staleness (one atomic load and a clock read);
//! - `primary`: only the primary of the current term that applied the term's marker (the
//!   checks writes make), and also within the maximum staleness, so a primary that was
//!   paused refuses until it has heard from the stream again;
//! - `linearizable`: the `primary` checks, then read-index: the stream's last sequence is
//!   fetched, this replica waits (bounded by the commit timeout) until it applied it, and
//!   checks it still leads the same term before reading.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shardline::body::ApiJson;
use shardline::internal::{frames, ReadBatch, ReadLevel, ReadRequest};
use shardline::names::ShardId;
use shardline::schema::Schema;
use shardline::ApiError;

use super::{check_batch_len, check_keyed, configured_schema};
use crate::replica::Replica;
use crate::server::Server;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    #[serde(default)]
    consistency: ReadLevel,
}

pub async fn read(
    State(s): State<Arc<Server>>,
    query: Result<Query<ReadQuery>, QueryRejection>,
    ApiJson(body): ApiJson<ReadRequest>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let schema = configured_schema(&s)?;
    let (shard, low, high) = checked_range(&schema, body)?;
    let replica = match query.consistency {
        ReadLevel::Any => fresh_replica(&s, s.replica(shard.as_str())?)?,
        ReadLevel::Primary => fresh_replica(&s, s.leader(shard.as_str())?.replica)?,
        ReadLevel::Linearizable => read_index(&s, shard.as_str()).await?,
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        answer(&replica, low, high)?,
    )
        .into_response())
}

/// `POST /read_batch`: several reads at the `any` level, answered in one response of
/// [`frames`], each frame what that read alone would have got from `/read`.
pub async fn read_batch(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<ReadBatch>,
) -> Result<Response, ApiError> {
    let schema = configured_schema(&s)?;
    let n = body.reads.len();
    check_batch_len(n, "reads")?;
    let mut out = Vec::with_capacity(n * 2048);
    for req in body.reads {
        let one = checked_range(&schema, req).and_then(|(shard, low, high)| {
            let replica = fresh_replica(&s, s.replica(shard.as_str())?)?;
            answer(&replica, low, high)
        });
        match one {
            Ok(text) => frames::push(&mut out, 200, &text),
            Err(e) => {
                let body = serde_json::to_vec(&e.body()).unwrap_or_default();
                frames::push(&mut out, e.status().as_u16(), &body);
            }
        }
        // Each read runs in place on the server's thread: let heartbeats and the applier
        // in between, however many wide reads the batch holds.
        tokio::task::yield_now().await;
    }
    Ok(([(header::CONTENT_TYPE, frames::CONTENT_TYPE)], out).into_response())
}

/// A read's shard and inclusive range, once its key field and bounds are checked.
fn checked_range(schema: &Schema, body: ReadRequest) -> Result<(ShardId, i64, i64), ApiError> {
    check_keyed(&body, schema, false)?;
    let (low, high) = (body.value.low, body.value.high);
    if low > high {
        let key = schema.key();
        return Err(ApiError::BadRequest(format!(
            "`{key}.low` ({low}) is greater than `{key}.high` ({high})"
        )));
    }
    Ok((body.shard, low, high))
}

/// The `/read` answer: the rows are written as JSON text straight from SQLite's column
/// values into the `ReadResponse` shape, never as a `serde_json::Value`.
fn answer(replica: &Replica, low: i64, high: i64) -> Result<Vec<u8>, ApiError> {
    // Room for a typical 50-row read without a reallocation.
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(br#"{"data":"#);
    replica
        .store
        .read_range_into(low, high, &mut out)
        .map_err(|e| ApiError::Internal(format!("shard {}: {e}", replica.shard)))?;
    out.extend_from_slice(br#","status":"success"}"#);
    Ok(out)
}

/// The replica, if it is caught up within the maximum staleness.
fn fresh_replica(s: &Server, replica: Arc<Replica>) -> Result<Arc<Replica>, ApiError> {
    replica.check_log_serving()?;
    let shard = &replica.shard;
    if replica.is_recovering() {
        return Err(ApiError::Unavailable(format!(
            "shard {shard}: server {} is still catching up",
            s.name
        )));
    }
    let max = s.max_staleness.as_millis() as u64;
    match replica.stale_ms() {
        Some(ms) if ms <= max => Ok(replica),
        Some(ms) => Err(ApiError::Unavailable(format!(
            "shard {shard}: server {} is stale: last confirmed caught up with the log {ms} ms ago (max {max} ms)",
            s.name
        ))),
        None => Err(ApiError::Unavailable(format!(
            "shard {shard}: server {} has not yet confirmed it is caught up with the log",
            s.name
        ))),
    }
}

/// Read-index: the primary of the current term, once it applied everything the stream held
/// when the read arrived, and still the primary of that term afterwards.
async fn read_index(s: &Server, shard: &str) -> Result<Arc<Replica>, ApiError> {
    let leader = s.leader(shard)?;
    let last = leader.replica.stream_last_seq().await?;
    let deadline = tokio::time::Instant::now() + s.commit_timeout;
    if !leader.replica.wait_applied(last, deadline).await {
        return Err(ApiError::Unavailable(format!(
            "shard {shard}: primary {} did not apply the log up to {last} in time for a linearizable read",
            s.name
        )));
    }
    let again = s.leader(shard)?;
    if again.term != leader.term {
        return Err(ApiError::Deposed(format!(
            "shard {shard}: server {} was deposed during the read (term {} became {}); retry",
            s.name, leader.term, again.term
        )));
    }
    Ok(again.replica)
}
