//! `/heartbeat`, `/config`, `/copy`, `/read_all`: what the manager and the gateway use to run
//! the server.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use shardline::body::ApiJson;
use shardline::internal::{
    AdoptLogRequest, ConfigRequest, CopyRequest, CopyResponse, Done, Heartbeat, ServerRows,
    Snapshot, Status,
};
use shardline::schema::Schema;
use shardline::ApiError;

use crate::server::Server;
use crate::store;

/// NATS silent for longer than this (no answer to a replica's stream question, which each
/// replica asks every 200 ms with a 2 s timeout) counts as disconnected.
const NATS_SILENCE_MS: u64 = 3000;

pub async fn heartbeat(State(s): State<Arc<Server>>) -> Json<Heartbeat> {
    let replicas = s.replicas();
    let shards = replicas
        .iter()
        .map(|r| (r.shard.clone(), r.progress()))
        .collect();
    // The client's state turns `Disconnected` only once its pings time out (minutes) when a
    // partition drops packets silently; the replicas' questions to JetStream notice in
    // about a second.
    let nats_connected = s.nats.connection_state() == async_nats::connection::State::Connected
        && replicas
            .iter()
            .all(|r| r.nats_silence_ms() <= NATS_SILENCE_MS);
    Json(Heartbeat {
        server: s.name.clone(),
        shards,
        nats_connected,
    })
}

pub async fn config(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<ConfigRequest>,
) -> Result<Json<Done>, ApiError> {
    let schema = Schema::parse(&body.schema).map_err(ApiError::BadRequest)?;
    s.configure(schema, &body.shards).await?;
    let names: Vec<String> = body
        .shards
        .iter()
        .map(|sh| format!("{}:{sh}", s.name))
        .collect();
    Ok(Json(Done::new(format!("{} configured", names.join(", ")))))
}

/// Snapshots of the named shards, each consistent with the log position it carries.
pub async fn copy(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<CopyRequest>,
) -> Result<Json<CopyResponse>, ApiError> {
    let mut shards = BTreeMap::new();
    for shard in body.shards {
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
        shards.insert(
            shard,
            Snapshot {
                rows,
                seq: at.seq,
                term: at.term,
            },
        );
    }
    Ok(Json(CopyResponse {
        shards,
        status: Status::Success,
    }))
}

pub async fn read_all(State(s): State<Arc<Server>>) -> Result<Json<ServerRows>, ApiError> {
    let mut shards = BTreeMap::new();
    for replica in s.replicas() {
        let rows = store::blocking(&replica.store, |s| s.read_all())
            .await
            .map_err(|e| ApiError::Internal(format!("shard {}: {e}", replica.shard)))?;
        shards.insert(replica.shard.clone(), rows);
    }
    Ok(Json(ServerRows {
        shards,
        status: Status::Success,
    }))
}

/// `POST /adopt_log` (the manager's log recovery, README "Log faults").
pub async fn adopt_log(
    State(s): State<Arc<Server>>,
    ApiJson(body): ApiJson<AdoptLogRequest>,
) -> Result<Json<Done>, ApiError> {
    let at = s.adopt_log(&body.shard, body.from.as_deref()).await?;
    Ok(Json(Done::new(format!(
        "{}:{} follows the shard's stream from sequence {}",
        s.name,
        body.shard,
        at.next()
    ))))
}
