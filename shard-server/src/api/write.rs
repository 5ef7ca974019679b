//! `POST /write`, `PUT /update`, `DELETE /del`: accepted only by the shard's primary, which
//! appends one WAL entry and answers once a majority of replicas applied it.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::Value;
use shardline::body::ApiJson;
use shardline::internal::{
    BatchResult, DeleteRequest, Done, UpdateRequest, WriteBatch, WriteBatchAnswer, WriteRequest,
};
use shardline::meta::ShardMeta;
use shardline::names::ShardId;
use shardline::schema::Schema;
use shardline::wal::WalOp;
use shardline::ApiError;

use super::{check_batch_len, check_keyed, configured_schema};
use crate::server::{Leader, Server};
use crate::store::Outcome;

pub async fn write(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<WriteRequest>,
) -> Result<Json<Done>, ApiError> {
    let schema = configured_schema(&s)?;
    let WriteRequest { shard, data: rows } = body;
    let range = shard_range(&s, &shard);
    let op = insert_op(&s, &schema, &shard, range.as_ref(), &rows)?;
    let leader = s.leader(shard.as_str())?;
    insert(&leader, &shard, op).await.map(Json)
}

/// `POST /write_batch`: several writes to one shard, proposed together (so they share a log
/// entry) and answered one by one. Only the batch's shape and this server's leadership are
/// checked for the batch as a whole (a refusal there proposes nothing); each write's rows
/// are checked on their own, as `/write` checks them.
pub async fn write_batch(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<WriteBatch>,
) -> Result<Json<WriteBatchAnswer>, ApiError> {
    let schema = configured_schema(&s)?;
    let WriteBatch { shard, writes } = body;
    check_batch_len(writes.len(), "writes")?;
    let leader = s.leader(shard.as_str())?;
    let range = shard_range(&s, &shard);
    // Every proposal is queued on the first poll, in order, so the proposer takes them as
    // one group.
    let proposals = writes.iter().map(|rows| {
        let op = insert_op(&s, &schema, &shard, range.as_ref(), rows);
        let (leader, shard) = (&leader, &shard);
        async move { insert(leader, shard, op?).await }
    });
    let results = futures::future::join_all(proposals)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(_) => BatchResult {
                http: 200,
                error: None,
            },
            Err(e) => BatchResult {
                http: e.status().as_u16(),
                error: Some(e.body()),
            },
        })
        .collect();
    Ok(Json(WriteBatchAnswer { results }))
}

/// The shard's key range, as the current metadata has it.
fn shard_range(s: &Server, shard: &ShardId) -> Option<ShardMeta> {
    s.current_meta()
        .as_ref()
        .and_then(|m| m.shard(shard.as_str()).cloned())
}

/// One write's rows checked against the schema and the shard's range, as an insert op.
fn insert_op(
    s: &Server,
    schema: &Schema,
    shard: &ShardId,
    range: Option<&ShardMeta>,
    rows: &[Value],
) -> Result<WalOp, ApiError> {
    if rows.is_empty() {
        return Err(ApiError::BadRequest("field `data` is empty".into()));
    }
    let mut objects = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let row = schema
            .parse_row(r, s.max_string_bytes)
            .map_err(|e| ApiError::BadRequest(format!("data[{i}]: {e}")))?;
        let k = shardline::schema::key_of(&row);
        if let Some(range) = range {
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
    Ok(WalOp::Insert { rows: objects })
}

/// Proposes an insert as the leader and answers as `/write` does.
async fn insert(leader: &Leader, shard: &ShardId, op: WalOp) -> Result<Done, ApiError> {
    let n = match &op {
        WalOp::Insert { rows } => rows.len(),
        _ => 0,
    };
    match leader.replica.propose(op, leader.term).await? {
        Outcome::Applied => Ok(Done::new(format!("{n} Data entries added"))),
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
