//! `POST /write`, `PUT /update`, `DELETE /del`: accepted only by the shard's primary, which
//! appends one WAL entry and answers once a majority of replicas applied it.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use shardline::body::ApiJson;
use shardline::internal::{DeleteRequest, Done, UpdateRequest, WriteRequest};
use shardline::wal::WalOp;
use shardline::ApiError;

use super::{check_keyed, configured_schema};
use crate::server::Server;
use crate::store::Outcome;

pub async fn write(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<WriteRequest>,
) -> Result<Json<Done>, ApiError> {
    let schema = configured_schema(&s)?;
    let WriteRequest { shard, data: rows } = body;
    if rows.is_empty() {
        return Err(ApiError::BadRequest("field `data` is empty".into()));
    }
    let mut objects = Vec::with_capacity(rows.len());
    let sm = s.current_meta();
    let range = sm.as_ref().and_then(|m| m.shard(shard.as_str()).cloned());
    for (i, r) in rows.iter().enumerate() {
        let row = schema
            .parse_row(r, s.max_string_bytes)
            .map_err(|e| ApiError::BadRequest(format!("data[{i}]: {e}")))?;
        let k = shardline::schema::key_of(&row);
        if let Some(range) = &range {
            if !range.contains(k) {
                return Err(ApiError::BadRequest(format!(
                    "data[{i}]: key {k} is outside shard {shard} [{}, {})",
                    range.low,
                    range.end()
                )));
            }
        }
        objects.push(schema.row_to_json(&row));
    }
    let leader = s.leader(shard.as_str())?;
    let n = objects.len();
    let op = WalOp::Insert { rows: objects };
    match leader.replica.propose(op, leader.term).await? {
        Outcome::Applied => Ok(Json(Done::new(format!("{n} Data entries added")))),
        other => Err(rejected(shard.as_str(), other)),
    }
}

pub async fn update(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<UpdateRequest>,
) -> Result<Json<Done>, ApiError> {
    let schema = configured_schema(&s)?;
    check_keyed(&body, &schema, true)?;
    let key = schema.key();
    let (shard, k) = (body.shard, body.value);
    let data = body
        .data
        .ok_or_else(|| ApiError::BadRequest("missing field `data`".into()))?;
    let row = schema
        .parse_row(&data, s.max_string_bytes)
        .map_err(|e| ApiError::BadRequest(format!("data: {e}")))?;
    if row[0] != shardline::schema::Value::Int(k) {
        return Err(ApiError::BadRequest(format!(
            "data.{key} must equal {key} ({k}): the key of a row cannot change"
        )));
    }
    let leader = s.leader(shard.as_str())?;
    let op = WalOp::Update {
        key: k,
        row: schema.row_to_json(&row),
    };
    match leader.replica.propose(op, leader.term).await? {
        Outcome::Applied => Ok(Json(Done::new(format!("Data entry for {key}:{k} updated")))),
        other => Err(rejected(shard.as_str(), other)),
    }
}

pub async fn delete(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<DeleteRequest>,
) -> Result<Json<Done>, ApiError> {
    let schema = configured_schema(&s)?;
    check_keyed(&body, &schema, false)?;
    let key = schema.key();
    let (shard, k) = (body.shard, body.value);
    let leader = s.leader(shard.as_str())?;
    let op = WalOp::Delete { key: k };
    match leader.replica.propose(op, leader.term).await? {
        Outcome::Applied => Ok(Json(Done::new(format!(
            "Data entry with {key}:{k} removed from all replicas"
        )))),
        other => Err(rejected(shard.as_str(), other)),
    }
}

fn duplicate(shard: &str, keys: &[i64]) -> ApiError {
    let list: Vec<String> = keys.iter().map(i64::to_string).collect();
    ApiError::Duplicate(format!(
        "shard {shard}: duplicate key(s) {}; nothing was written to this shard",
        list.join(", ")
    ))
}

fn rejected(shard: &str, outcome: Outcome) -> ApiError {
    match outcome {
        Outcome::Duplicate(keys) => duplicate(shard, &keys),
        Outcome::Missing(k) => {
            ApiError::NotFound(format!("no record with key {k} in shard {shard}"))
        }
        Outcome::Invalid(e) => ApiError::BadRequest(format!("shard {shard}: entry rejected: {e}")),
        Outcome::StaleTerm { .. }
        | Outcome::NewTerm(_)
        | Outcome::IgnoredMarker { .. }
        | Outcome::Applied
        | Outcome::Batch(_) => {
            ApiError::Internal(format!("shard {shard}: unexpected outcome {outcome:?}"))
        }
    }
}
