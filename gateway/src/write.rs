//! `POST /write`, `PUT /update`, `DELETE /del`: validated here in full (nothing reaches a
//! server for a rejected request), then sent to each shard's primary, which commits through
//! the WAL before answering.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use reqwest::Method;
use serde_json::{json, Map, Value};
use shardline::body::ApiJson;
use shardline::meta::ClusterMeta;
use shardline::names::ShardId;
use shardline::schema;
use shardline::ApiError;

use crate::body::{bad, int, kind, object, only_fields, required, some};
use crate::router::AppState;
use crate::upstream;

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
    let plan = {
        let topology = state.topology.borrow().clone();
        let c = &state.config;
        plan_write(
            &topology.cluster()?.meta,
            &body,
            c.max_batch,
            c.max_string_bytes,
        )?
    };
    drop(body);
    let sends = plan.groups.iter().map(|g| {
        let state = &state;
        async move {
            let req = json!({"shard": g.shard, "data": g.rows});
            let result = to_primary(state, g.shard.as_str(), "write", Method::POST, &req).await;
            (g, result.map(|_| ()))
        }
    });
    let results = futures::future::join_all(sends).await;
    Ok(summarize(plan.total, results))
}

/// Sends one shard's part of a write to its primary (`/<op>`), timing it for the metrics.
async fn to_primary(
    state: &AppState,
    shard: &str,
    op: &'static str,
    method: Method,
    req: &Value,
) -> Result<Value, ApiError> {
    let start = std::time::Instant::now();
    let result = upstream::to_primary(state, shard, method, &format!("/{op}"), req).await;
    let outcome = match &result {
        Ok(_) => "committed".to_owned(),
        Err(e) => e.status().as_u16().to_string(),
    };
    crate::metrics::shard_write(shard, op, &outcome, start.elapsed());
    result
}

/// 200 only when every group committed; otherwise the worst failure status, and (when there
/// was more than one group) which shards committed and which did not.
fn summarize(total: usize, results: Vec<(&Group, Result<(), ApiError>)>) -> Response {
    let mut committed = Vec::new();
    let mut failed = Vec::new();
    for (g, r) in results {
        match r {
            Ok(()) => committed.push(g),
            Err(e) => failed.push((g, e)),
        }
    }
    if failed.is_empty() {
        return Json(
            json!({"message": format!("{total} Data entries added"), "status": "success"}),
        )
        .into_response();
    }
    if failed.len() == 1 && committed.is_empty() {
        if let Some((_, e)) = failed.pop() {
            return e.into_response();
        }
    }
    let worst = failed.iter().map(|(_, e)| e).max_by_key(|e| e.status());
    let status = worst.map_or(StatusCode::INTERNAL_SERVER_ERROR, |e| e.status());
    // Like every failure body, a code and an outcome: `partial_write` once some shard
    // committed, else the worst failure's code (docs/API.md, POST /write).
    let code = match worst {
        Some(e) if committed.is_empty() => e.code(),
        _ => shardline::ErrorCode::PartialWrite,
    };
    let unknown = !committed.is_empty()
        || failed
            .iter()
            .any(|(_, e)| e.effect() == shardline::Effect::Unknown);
    let outcome = if unknown {
        shardline::Effect::Unknown
    } else {
        shardline::Effect::NotApplied
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
    let failed: Map<String, Value> = failed
        .iter()
        .map(|(g, e)| (g.shard.to_string(), Value::from(e.message())))
        .collect();
    let committed: Vec<&str> = committed.iter().map(|g| g.shard.as_str()).collect();
    let body = json!({
        "message": message,
        "code": code,
        "outcome": outcome,
        "committed": committed,
        "failed": failed,
        "status": "failure",
    });
    (status, Json(body)).into_response()
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let (plan, key) = {
        let topology = state.topology.borrow().clone();
        let meta = &topology.cluster()?.meta;
        let plan = plan_update(meta, &body, state.config.max_string_bytes)?;
        (plan, meta.schema.key().to_owned())
    };
    let mut req = Map::new();
    req.insert("shard".into(), plan.shard.as_str().into());
    req.insert(key.clone(), plan.key.into());
    req.insert("data".into(), plan.row.unwrap_or_default());
    let req = Value::Object(req);
    to_primary(&state, plan.shard.as_str(), "update", Method::PUT, &req).await?;
    Ok(Json(json!({
        "message": format!("Data entry for {key}:{} updated", plan.key),
        "status": "success",
    })))
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let (plan, key) = {
        let topology = state.topology.borrow().clone();
        let meta = &topology.cluster()?.meta;
        (plan_delete(meta, &body)?, meta.schema.key().to_owned())
    };
    let mut req = Map::new();
    req.insert("shard".into(), plan.shard.as_str().into());
    req.insert(key.clone(), plan.key.into());
    let req = Value::Object(req);
    to_primary(&state, plan.shard.as_str(), "del", Method::DELETE, &req).await?;
    Ok(Json(json!({
        "message": format!("Data entry with {key}:{} removed from all replicas", plan.key),
        "status": "success",
    })))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
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
}
