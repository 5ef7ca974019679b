//! `/heartbeat`, `/config`, `/copy`, `/read_all`: what the manager and the gateway use to run
//! the server.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use shardline::body::ApiJson;
use shardline::names::ShardId;
use shardline::schema::{Schema, SchemaSpec};
use shardline::ApiError;

use crate::server::Server;
use crate::store;

pub async fn heartbeat(State(s): State<Arc<Server>>) -> Json<Value> {
    let shards: BTreeMap<String, _> = s
        .replicas()
        .iter()
        .map(|r| (r.shard.to_string(), r.progress()))
        .collect();
    Json(json!({"server": s.name, "shards": shards}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigBody {
    schema: SchemaSpec,
    shards: Vec<ShardId>,
}

pub async fn config(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<ConfigBody>,
) -> Result<Json<Value>, ApiError> {
    let schema = Schema::parse(&body.schema).map_err(ApiError::BadRequest)?;
    s.configure(schema, &body.shards).await?;
    let names: Vec<String> = body
        .shards
        .iter()
        .map(|sh| format!("{}:{sh}", s.name))
        .collect();
    Ok(Json(json!({
        "message": format!("{} configured", names.join(", ")),
        "status": "success"
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyBody {
    shards: Vec<ShardId>,
}

pub async fn copy(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<CopyBody>,
) -> Result<Json<Value>, ApiError> {
    let mut out = Map::new();
    let mut seqs = Map::new();
    let mut terms = Map::new();
    for shard in &body.shards {
        let replica = s.replica(shard.as_str())?;
        if replica.is_recovering() {
            return Err(ApiError::Unavailable(format!(
                "shard {shard}: server {} is still catching up",
                s.name
            )));
        }
        let (rows, at) = store::blocking(&replica.store, |s| s.snapshot())
            .await
            .map_err(|e| ApiError::Internal(format!("shard {shard}: {e}")))?;
        out.insert(shard.to_string(), Value::Array(rows));
        seqs.insert(shard.to_string(), at.seq.0.into());
        terms.insert(shard.to_string(), at.term.0.into());
    }
    out.insert("seq".into(), Value::Object(seqs));
    out.insert("term".into(), Value::Object(terms));
    out.insert("status".into(), "success".into());
    Ok(Json(Value::Object(out)))
}

pub async fn read_all(State(s): State<Arc<Server>>) -> Result<Json<Value>, ApiError> {
    let mut out = Map::new();
    for replica in s.replicas() {
        let rows = store::blocking(&replica.store, |s| s.read_all())
            .await
            .map_err(|e| ApiError::Internal(format!("shard {}: {e}", replica.shard)))?;
        out.insert(replica.shard.to_string(), Value::Array(rows));
    }
    out.insert("status".into(), "success".into());
    Ok(Json(Value::Object(out)))
}
