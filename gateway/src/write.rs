//! `POST /write`, `PUT /update`, `DELETE /del`: validated here in full (nothing reaches a
//! server for a rejected request), then sent to each shard's primary, which commits through
//! the WAL before answering. The bodies sent are [`shardline::internal`]'s `WriteRequest`,
//! `UpdateRequest` and `DeleteRequest`; the primary answers a [`Done`].
//!
//! A `/write` whose rows span several shards sends one group per shard, in parallel. When
//! some group fails, the answer has the worst failure's status and this body
//! (`PartialFailure`):
//!
//! ```json
//! {"message": "partial write: 1 of 2 data entries added (shards sh1); not added: sh2: …",
//!  "code": "partial_write", "outcome": "unknown",
//!  "committed": ["sh1"],
//!  "failed": {"sh2": "<message>"}, "failed_codes": {"sh2": "no_quorum"},
//!  "status": "failure"}
//! ```
//!
//! `code` is `partial_write` (outcome `unknown`) when some shard committed; when none did, it
//! is the code of the worst failure (highest status), and `outcome` is `unknown` if any
//! failure's is. A write whose only group failed answers that group's failure as it is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use hyper::Method;
use serde::Serialize;
use serde_json::Value;
use shardline::body::{bad, int, kind, object, only_fields, required, some, ApiJson};
use shardline::internal::{DeleteRequest, Done, Status, UpdateRequest, WriteRequest};
use shardline::meta::ClusterMeta;
use shardline::names::{ColumnName, ShardId};
use shardline::schema;
use shardline::{ApiError, Effect, ErrorCode};
use tokio::time::Instant;

use crate::router::AppState;
use crate::{coalesce, upstream};

/// A validated `/write`: the rows grouped by shard, groups in key order, rows as given.
#[derive(Debug)]
pub struct WritePlan {
    pub total: usize,
    pub groups: Vec<Group>,
}

#[derive(Debug)]
pub struct Group {
    pub shard: ShardId,
    pub rows: Vec<Value>,
}

/// Validates `{"data": [rows]}`: every row typed against the schema, inside some shard,
/// no key twice.
pub fn plan_write(
    meta: &ClusterMeta,
    body: &Value,
    max_batch: usize,
    max_string_bytes: usize,
) -> Result<WritePlan, ApiError> {
    let obj = object(body)?;
    only_fields(obj, &["data"], "")?;
    let data = required(obj, "", "data")?;
    let rows = data.as_array().ok_or_else(|| {
        bad(format!(
            "`data` must be an array of rows, got {}",
            kind(data)
        ))
    })?;
    if rows.is_empty() {
        return Err(bad("`data` is empty; at least one row is required"));
    }
    if rows.len() > max_batch {
        return Err(bad(format!(
            "`data` has {} rows; at most {max_batch} are accepted per request",
            rows.len()
        )));
    }
    let key = meta.schema.key();
    // Keyed by the shard's low bound so the groups come out in key order.
    let mut groups: BTreeMap<i64, Group> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut twice = BTreeSet::new();
    for (i, row) in rows.iter().enumerate() {
        let k = row_key(meta, row, max_string_bytes).map_err(|e| bad(format!("data[{i}]: {e}")))?;
        let shard = meta
            .shard_of(k)
            .ok_or_else(|| bad(format!("data[{i}]: {key} {k} is outside every shard")))?;
        if !seen.insert(k) {
            twice.insert(k);
        }
        groups
            .entry(shard.low)
            .or_insert_with(|| Group {
                shard: shard.id.clone(),
                rows: Vec::new(),
            })
            .rows
            .push(row.clone());
    }
    if !twice.is_empty() {
        let keys: Vec<i64> = twice.into_iter().collect();
        return Err(ApiError::Conflict(format!(
            "duplicate {key} in the request: {}",
            some(&keys, 20)
        )));
    }
    Ok(WritePlan {
        total: rows.len(),
        groups: groups.into_values().collect(),
    })
}

/// Checks a row against the schema and returns its key.
fn row_key(meta: &ClusterMeta, row: &Value, max_string_bytes: usize) -> Result<i64, String> {
    let parsed = meta.schema.parse_row(row, max_string_bytes)?;
    match parsed.first() {
        Some(schema::Value::Int(k)) => Ok(*k),
        _ => Err(format!("{:?} must be a Number", meta.schema.key())),
    }
}

/// A validated `/update` or `/del`: the key, its shard and (for an update) the new row.
#[derive(Debug, PartialEq)]
pub struct KeyPlan {
    pub shard: ShardId,
    pub key: i64,
    pub row: Option<Value>,
}

/// Validates `{"<key>": int, "data": full row}`; the row's key must be the given key.
pub fn plan_update(
    meta: &ClusterMeta,
    body: &Value,
    max_string_bytes: usize,
) -> Result<KeyPlan, ApiError> {
    let key = meta.schema.key();
    let obj = object(body)?;
    only_fields(obj, &[key, "data"], "")?;
    let k = int(key, required(obj, "", key)?)?;
    let row = required(obj, "", "data")?;
    let row_k = row_key(meta, row, max_string_bytes).map_err(|e| bad(format!("data: {e}")))?;
    if row_k != k {
        return Err(bad(format!(
            "`data.{key}` is {row_k} but `{key}` is {k}: the key cannot change"
        )));
    }
    Ok(KeyPlan {
        shard: shard_holding(meta, k)?,
        key: k,
        row: Some(row.clone()),
    })
}

/// Validates `{"<key>": int}`.
pub fn plan_delete(meta: &ClusterMeta, body: &Value) -> Result<KeyPlan, ApiError> {
    let key = meta.schema.key();
    let obj = object(body)?;
    only_fields(obj, &[key], "")?;
    let k = int(key, required(obj, "", key)?)?;
    Ok(KeyPlan {
        shard: shard_holding(meta, k)?,
        key: k,
        row: None,
    })
}

/// A key outside every shard cannot name an existing entry: 404, as for any unknown key.
fn shard_holding(meta: &ClusterMeta, k: i64) -> Result<ShardId, ApiError> {
    let key = meta.schema.key();
    meta.shard_of(k).map(|s| s.id.clone()).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no data entry with {key}:{k} (outside every shard)"
        ))
    })
}

pub async fn write(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let mut plan = {
        let topology = state.topology.borrow().clone();
        let c = &state.config;
        plan_write(
            &topology.routing()?.meta,
            &body,
            c.max_batch,
            c.max_string_bytes,
        )?
    };
    drop(body);
    let sends = plan.groups.iter_mut().map(|g| {
        let state = &state;
        async move {
            let result = if coalesce::coalesces(&state.lanes, g.rows.len()) {
                coalesce::submit(state, &g.shard, &g.rows).await
            } else {
                match encode_group(g) {
                    Ok(req) => {
                        to_primary(state, g.shard.as_str(), "write", Method::POST, req).await
                    }
                    Err(e) => Err(e),
                }
            };
            (&*g, result)
        }
    });
    let results = futures::future::join_all(sends).await;
    Ok(summarize(plan.total, results))
}

/// The group's [`WriteRequest`], encoded; the rows are moved in and back out, not copied.
fn encode_group(g: &mut Group) -> Result<Bytes, ApiError> {
    let req = WriteRequest {
        shard: g.shard.clone(),
        data: std::mem::take(&mut g.rows),
    };
    let bytes = upstream::encode(&req);
    g.rows = req.data;
    bytes
}

/// Sends one shard's part of a write to its primary (`/<op>`), timing it for the metrics.
/// The primary's answer is a [`Done`]; one that does not decode leaves the outcome unknown.
pub(crate) async fn to_primary(
    state: &AppState,
    shard: &str,
    op: &'static str,
    method: Method,
    req: Bytes,
) -> Result<(), ApiError> {
    let start = Instant::now();
    let result = upstream::to_primary(
        state,
        shard,
        upstream::Kind::Write,
        method,
        &format!("/{op}"),
        req,
    )
        .await
        .and_then(|answer| {
            upstream::decode::<Done>(&answer).map_err(|e| {
                ApiError::OutcomeUnknown(format!(
                    "shard {shard}: the primary's answer {e}; the request may or may not have been applied"
                ))
            })
        });
    let result = result.map(|_| ());
    record(shard, op, &result, start);
    result
}

/// Counts one shard write in the metrics: its outcome and its time since `start`.
pub(crate) fn record(shard: &str, op: &'static str, result: &Result<(), ApiError>, start: Instant) {
    let status;
    let outcome = match result {
        Ok(()) => "committed",
        Err(e) => {
            status = e.status();
            status.as_str()
        }
    };
    crate::metrics::shard_write(shard, op, outcome, start.elapsed());
}

/// The answer to a `/write`: 200 only when every group committed; one group's failure as it
/// is; otherwise [`PartialFailure`].
fn summarize(total: usize, results: Vec<(&Group, Result<(), ApiError>)>) -> Response {
    match summary(total, results) {
        Summary::Committed(done) => Json(done).into_response(),
        Summary::Failed(e) => e.into_response(),
        Summary::Partial(status, body) => (status, Json(body)).into_response(),
    }
}

#[derive(Debug)]
enum Summary<'a> {
    Committed(Done),
    /// The only group failed: its error, as a single-shard write answers.
    Failed(ApiError),
    Partial(StatusCode, PartialFailure<'a>),
}

/// The failure body of a write over several shards that did not commit everywhere: the usual
/// failure fields plus which shards committed (`committed`), and per failed shard its message
/// (`failed`) and its error code (`failed_codes`). `code` is `partial_write` when some shard
/// committed, else the worst failure's code (highest status); `outcome` is `unknown` when
/// some shard committed or some failure's outcome is unknown. The status is the worst
/// failure's.
#[derive(Debug, Serialize)]
struct PartialFailure<'a> {
    message: String,
    code: ErrorCode,
    outcome: Effect,
    committed: Vec<&'a str>,
    #[serde(serialize_with = "in_order")]
    failed: Vec<(&'a str, String)>,
    #[serde(serialize_with = "in_order")]
    failed_codes: Vec<(&'a str, ErrorCode)>,
    status: Status,
}

/// Pairs as a JSON object, in the order given (shards in key order).
fn in_order<S: serde::Serializer, V: Serialize>(
    pairs: &[(&str, V)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

fn summary(total: usize, results: Vec<(&Group, Result<(), ApiError>)>) -> Summary<'_> {
    let mut committed = Vec::new();
    let mut failed = Vec::new();
    for (g, r) in results {
        match r {
            Ok(()) => committed.push(g),
            Err(e) => failed.push((g, e)),
        }
    }
    if failed.is_empty() {
        return Summary::Committed(Done::new(format!("{total} Data entries added")));
    }
    if failed.len() == 1 && committed.is_empty() {
        if let Some((_, e)) = failed.pop() {
            return Summary::Failed(e);
        }
    }
    let worst = failed
        .iter()
        .map(|(_, e)| e)
        .max_by_key(|e| (e.status(), e.effect() == Effect::Unknown));
    let status = worst.map_or(StatusCode::INTERNAL_SERVER_ERROR, ApiError::status);
    let some_unknown = failed.iter().any(|(_, e)| e.effect() == Effect::Unknown);
    let (code, outcome) = match worst {
        _ if !committed.is_empty() => (ErrorCode::PartialWrite, Effect::Unknown),
        Some(e) if some_unknown => (e.code(), Effect::Unknown),
        Some(e) => (e.code(), e.effect()),
        None => (ErrorCode::Internal, Effect::Unknown),
    };
    let reasons: Vec<String> = failed
        .iter()
        .map(|(g, e)| format!("{}: {}", g.shard, e.message()))
        .collect();
    let message = if committed.is_empty() {
        format!("no data entries added; {}", reasons.join("; "))
    } else {
        let added: usize = committed.iter().map(|g| g.rows.len()).sum();
        let shards: Vec<&str> = committed.iter().map(|g| g.shard.as_str()).collect();
        format!(
            "partial write: {added} of {total} data entries added (shards {}); not added: {}",
            shards.join(", "),
            reasons.join("; ")
        )
    };
    Summary::Partial(
        status,
        PartialFailure {
            message,
            code,
            outcome,
            committed: committed.iter().map(|g| g.shard.as_str()).collect(),
            failed: failed
                .iter()
                .map(|(g, e)| (g.shard.as_str(), e.message()))
                .collect(),
            failed_codes: failed
                .iter()
                .map(|(g, e)| (g.shard.as_str(), e.code()))
                .collect(),
            status: Status::Failure,
        },
    )
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Done>, ApiError> {
    let (plan, key) = {
        let topology = state.topology.borrow().clone();
        let meta = &topology.routing()?.meta;
        (
            plan_update(meta, &body, state.config.max_string_bytes)?,
            key_column(meta)?,
        )
    };
    let shard = plan.shard.as_str().to_owned();
    let message = format!("Data entry for {key}:{} updated", plan.key);
    let req = UpdateRequest {
        shard: plan.shard,
        key,
        value: plan.key,
        data: plan.row,
    };
    to_primary(
        &state,
        &shard,
        "update",
        Method::PUT,
        upstream::encode(&req)?,
    )
    .await?;
    Ok(Json(Done::new(message)))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Done>, ApiError> {
    let (plan, key) = {
        let topology = state.topology.borrow().clone();
        let meta = &topology.routing()?.meta;
        (plan_delete(meta, &body)?, key_column(meta)?)
    };
    let shard = plan.shard.as_str().to_owned();
    let message = format!(
        "Data entry with {key}:{} removed from all replicas",
        plan.key
    );
    let req = DeleteRequest {
        shard: plan.shard,
        key,
        value: plan.key,
        data: None,
    };
    to_primary(
        &state,
        &shard,
        "del",
        Method::DELETE,
        upstream::encode(&req)?,
    )
    .await?;
    Ok(Json(Done::new(message)))
}

/// The schema's key column, which names the key field of the shard servers' bodies.
pub fn key_column(meta: &ClusterMeta) -> Result<ColumnName, ApiError> {
    meta.schema
        .columns
        .first()
        .cloned()
        .ok_or_else(|| ApiError::Internal("the schema has no columns".into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use shardline::meta::InitRequest;

    /// The assignment's A1 layout: sh1..sh4 over [0, 16384), 4096 keys each.
    pub(crate) fn a1() -> ClusterMeta {
        let req: InitRequest =
            serde_json::from_str(include_str!("../../workloads/a1.init.json")).unwrap();
        let plan = req.validate().unwrap();
        let mut meta = ClusterMeta {
            schema: plan.schema,
            shards: plan.shards,
            servers: Default::default(),
        };
        meta.sort_shards();
        meta
    }

    fn row(k: i64) -> Value {
        json!({"Stud_id": k, "Stud_name": "ABC", "Stud_marks": 57})
    }

    fn write_err(body: Value) -> ApiError {
        plan_write(&a1(), &body, 100, 100).unwrap_err()
    }

    #[test]
    fn rows_are_grouped_by_shard_in_key_order() {
        let p = plan_write(
            &a1(),
            &json!({"data": [row(9000), row(1), row(2), row(4096)]}),
            100,
            100,
        )
        .unwrap();
        assert_eq!(p.total, 4);
        let got: Vec<_> = p
            .groups
            .iter()
            .map(|g| (g.shard.as_str(), g.rows.len()))
            .collect();
        assert_eq!(got, [("sh1", 2), ("sh2", 1), ("sh3", 1)]);
        assert_eq!(p.groups[0].rows[0], row(1));
    }

    #[test]
    fn bad_writes_are_rejected_with_the_reason() {
        let e = write_err(json!({"data": []}));
        assert!(e.message().contains("empty"), "{e}");
        let e = write_err(json!({"data": [row(1)], "extra": 1}));
        assert!(e.message().contains("unknown field `extra`"), "{e}");
        let e = write_err(json!({"rows": [row(1)]}));
        assert!(e.message().contains("`rows`"), "{e}");
        let e = write_err(json!({}));
        assert!(e.message().contains("missing field `data`"), "{e}");
        let e = write_err(json!({"data": row(1)}));
        assert!(e.message().contains("must be an array"), "{e}");
        let e = write_err(json!({"data": [row(1), {"Stud_id": 2, "Stud_marks": 1}]}));
        assert!(
            e.message()
                .contains("data[1]: missing column \"Stud_name\""),
            "{e}"
        );
        let e = write_err(json!({"data": [{"Stud_id": "2", "Stud_name": "A", "Stud_marks": 1}]}));
        assert!(
            e.message().starts_with("data[0]:") && e.message().contains("Stud_id"),
            "{e}"
        );
        let e = write_err(json!({"data": [row(1), row(99999)]}));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(
            e.message()
                .contains("data[1]: Stud_id 99999 is outside every shard"),
            "{e}"
        );
        let e = write_err(json!({"data": [row(-1)]}));
        assert!(e.message().contains("outside every shard"), "{e}");
        let long = json!({"Stud_id": 1, "Stud_name": "x".repeat(101), "Stud_marks": 1});
        let e = write_err(json!({ "data": [long] }));
        assert!(e.message().contains("the limit is 100"), "{e}");
        let rows: Vec<Value> = (0..101).map(row).collect();
        let e = write_err(json!({ "data": rows }));
        assert!(e.message().contains("at most 100"), "{e}");
    }

    #[test]
    fn duplicate_keys_in_a_request_conflict() {
        let e = write_err(json!({"data": [row(7), row(5000), row(7), row(5000), row(7)]}));
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(e.message().contains("7, 5000"), "{e}");
        // A bad row wins over a duplicate: the request is malformed before it conflicts.
        let e = write_err(json!({"data": [row(7), row(7), {"Stud_id": 1}]}));
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn update_and_delete_bodies() {
        let m = a1();
        let p = plan_update(&m, &json!({"Stud_id": 4097, "data": row(4097)}), 100).unwrap();
        assert_eq!(p.shard.as_str(), "sh2");
        assert_eq!(p.row, Some(row(4097)));
        let err = |v: Value| plan_update(&m, &v, 100).unwrap_err();
        let e = err(json!({"Stud_id": 1, "data": row(2)}));
        assert!(e.message().contains("the key cannot change"), "{e}");
        let e = err(json!({"Stud_id": 1, "data": {"Stud_id": 1, "Stud_name": "A"}}));
        assert!(
            e.message().contains("data: missing column \"Stud_marks\""),
            "{e}"
        );
        let e = err(json!({"Stud_id": "1", "data": row(1)}));
        assert!(e.message().contains("Stud_id"), "{e}");
        let e = err(json!({"data": row(1)}));
        assert!(e.message().contains("missing field `Stud_id`"), "{e}");
        let e = err(json!({"Stud_id": 1}));
        assert!(e.message().contains("missing field `data`"), "{e}");
        let e = err(json!({"Stud_id": 1, "data": row(1), "shard": "sh1"}));
        assert!(e.message().contains("unknown field `shard`"), "{e}");
        let e = err(json!({"Stud_id": 99999, "data": row(99999)}));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);

        let p = plan_delete(&m, &json!({"Stud_id": 16383})).unwrap();
        assert_eq!((p.shard.as_str(), p.key, p.row), ("sh4", 16383, None));
        let err = |v: Value| plan_delete(&m, &v).unwrap_err();
        assert!(err(json!({})).message().contains("missing field `Stud_id`"));
        assert!(err(json!({"Stud_id": 1.0})).message().contains("Stud_id"));
        assert!(err(json!({"Stud_id": 1, "x": 2})).message().contains("`x`"));
        assert!(err(json!("x")).message().contains("JSON object"));
        assert_eq!(
            err(json!({"Stud_id": 16384})).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn partial_writes_are_not_reported_as_success() {
        let g1 = Group {
            shard: ShardId::parse("sh1").unwrap(),
            rows: vec![row(1)],
        };
        let g2 = Group {
            shard: ShardId::parse("sh2").unwrap(),
            rows: vec![row(4096)],
        };
        let r = summarize(2, vec![(&g1, Ok(())), (&g2, Ok(()))]);
        assert_eq!(r.status(), StatusCode::OK);
        let r = summarize(
            2,
            vec![
                (&g1, Ok(())),
                (&g2, Err(ApiError::Unavailable("no quorum".into()))),
            ],
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = summarize(
            2,
            vec![
                (&g1, Err(ApiError::Conflict("dup".into()))),
                (&g2, Err(ApiError::Unavailable("no quorum".into()))),
            ],
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = summarize(1, vec![(&g1, Err(ApiError::Conflict("dup 1".into())))]);
        assert_eq!(r.status(), StatusCode::CONFLICT);
    }

    fn partial(s: Summary<'_>) -> (StatusCode, Value) {
        match s {
            Summary::Partial(status, body) => (status, serde_json::to_value(body).unwrap()),
            other => panic!("not a partial failure: {other:?}"),
        }
    }

    #[test]
    fn partial_writes_say_what_happened_per_shard() {
        let g = |id: &str, k: i64| Group {
            shard: ShardId::parse(id).unwrap(),
            rows: vec![row(k)],
        };
        let (g1, g2, g3) = (g("sh1", 1), g("sh2", 4096), g("sh3", 8192));
        // Some shard committed: the write as a whole is partial, its outcome unknown.
        let (status, body) = partial(summary(
            3,
            vec![
                (&g1, Ok(())),
                (&g2, Err(ApiError::Unavailable("down".into()))),
                (&g3, Err(ApiError::Duplicate("dup".into()))),
            ],
        ));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["code"], "partial_write");
        assert_eq!(body["outcome"], "unknown");
        assert_eq!(body["committed"], json!(["sh1"]));
        assert_eq!(body["failed"], json!({"sh2": "down", "sh3": "dup"}));
        assert_eq!(
            body["failed_codes"],
            json!({"sh2": "unavailable", "sh3": "duplicate_key"})
        );
        assert_eq!(body["status"], "failure");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .starts_with("partial write: 1 of 3 data entries added (shards sh1)"));
        // Nothing committed: the worst failure's code; certainly not applied only if no
        // failure's outcome is unknown.
        let (_, body) = partial(summary(
            2,
            vec![
                (&g1, Err(ApiError::Duplicate("dup".into()))),
                (&g2, Err(ApiError::Unavailable("down".into()))),
            ],
        ));
        assert_eq!(body["code"], "unavailable");
        assert_eq!(body["outcome"], "not_applied");
        let (_, body) = partial(summary(
            2,
            vec![
                (&g1, Err(ApiError::Unavailable("down".into()))),
                (&g2, Err(ApiError::NoQuorum("slow".into()))),
            ],
        ));
        assert_eq!(body["code"], "no_quorum");
        assert_eq!(body["outcome"], "unknown");
        let (_, body) = partial(summary(
            2,
            vec![
                (&g1, Err(ApiError::Duplicate("dup".into()))),
                (&g2, Err(ApiError::Internal("disk".into()))),
            ],
        ));
        assert_eq!(body["code"], "internal");
        assert_eq!(body["outcome"], "unknown");
    }
}
