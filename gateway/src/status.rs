//! `GET /status`: the assignment's shape (N, schema, shards, servers) plus, per shard, the
//! primary, term and last WAL sequence; per server its health; per (server, shard) the
//! applied WAL sequence. Progress is read from JetStream (stream `WAL_<shard>` and the
//! replica's durable consumer, named after the server), falling back to what the manager last
//! recorded when NATS does not answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::extract::State;
use axum::Json;
use futures::future::join_all;
use serde_json::{json, Map, Value};
use shardline::meta::ClusterMeta;
use shardline::names::{ServerName, ShardId};
use shardline::wal::stream_name;
use shardline::{ApiError, Seq};

use crate::router::AppState;
use crate::topology::Topology;

/// Bound on each JetStream query, so /status stays quick when NATS is slow.
const NATS_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn status(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let topology = state.topology.borrow().clone();
    if let Topology::Unconfigured = *topology {
        return Ok(Json(
            json!({"N": 0, "shards": [], "servers": {}, "status": "success"}),
        ));
    }
    let meta = &topology.routing()?.meta;
    let js = &state.jetstream;
    let replicas: Vec<(&ServerName, &ShardId)> = meta
        .servers
        .iter()
        .flat_map(|(name, s)| s.shards.iter().map(move |sh| (name, sh)))
        .collect();
    let (last, acked) = tokio::join!(
        join_all(meta.shards.iter().map(|s| last_seq(js, &s.id))),
        join_all(replicas.iter().map(|(srv, sh)| ack_floor(js, sh, srv))),
    );
    let acked: Vec<_> = replicas.into_iter().zip(acked).collect();
    Ok(Json(render(meta, &last, &acked)))
}

/// The body, given the last sequence of each shard's stream (in `meta.shards` order) and the
/// consumer ack floor of each (server, shard) pair, `None` where NATS did not tell.
fn render(
    meta: &ClusterMeta,
    last: &[Option<Seq>],
    acked: &[((&ServerName, &ShardId), Option<Seq>)],
) -> Value {
    let shards: Vec<Value> = meta
        .shards
        .iter()
        .zip(last.iter().copied().chain(std::iter::repeat(None)))
        .map(|(s, last)| {
            let mut shard = json!({
                "Stud_id_low": s.low,
                "Shard_id": s.id,
                "Shard_size": s.size,
                "primary": s.primary,
                "term": s.term,
                "wal_last_seq": last,
            });
            // Frozen after a log fault (README "Log faults"): why, until recovered.
            if let (Some(fault), Some(m)) = (&s.fault, shard.as_object_mut()) {
                m.insert("fault".into(), json!(fault));
            }
            shard
        })
        .collect();
    let servers: Map<String, Value> = meta
        .servers
        .iter()
        .map(|(name, s)| (name.to_string(), json!(s.shards)))
        .collect();
    let health: Map<String, Value> = meta
        .servers
        .iter()
        .map(|(name, s)| (name.to_string(), json!(s.health)))
        .collect();
    let mut applied: BTreeMap<String, Map<String, Value>> = meta
        .servers
        .keys()
        .map(|n| (n.to_string(), Map::new()))
        .collect();
    for ((server, shard), seq) in acked {
        let reported = meta
            .servers
            .get(server.as_str())
            .and_then(|s| s.applied.get(shard.as_str()))
            .copied();
        if let Some(m) = applied.get_mut(server.as_str()) {
            m.insert(shard.to_string(), json!(seq.or(reported)));
        }
    }
    json!({
        "N": meta.servers.len(),
        "schema": meta.schema,
        "shards": shards,
        "servers": servers,
        "health": health,
        "applied": applied,
        "status": "success",
    })
}

pub(crate) async fn last_seq(js: &jetstream::Context, shard: &ShardId) -> Option<Seq> {
    let name = stream_name(shard);
    match tokio::time::timeout(NATS_TIMEOUT, js.get_stream(&name)).await {
        Ok(Ok(stream)) => Some(Seq(stream.cached_info().state.last_sequence)),
        Ok(Err(e)) => {
            tracing::debug!(stream = %name, error = %e, "no stream info");
            None
        }
        Err(_) => None,
    }
}

pub(crate) async fn ack_floor(
    js: &jetstream::Context,
    shard: &ShardId,
    server: &ServerName,
) -> Option<Seq> {
    let stream = js.get_stream_no_info(stream_name(shard)).await.ok()?;
    match tokio::time::timeout(NATS_TIMEOUT, stream.consumer_info(server.as_str())).await {
        Ok(Ok(info)) => Some(Seq(info.ack_floor.stream_sequence)),
        Ok(Err(e)) => {
            tracing::debug!(%shard, %server, error = %e, "no consumer info");
            None
        }
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::tests::a1;
    use shardline::meta::{Health, ServerMeta};

    #[test]
    fn status_has_the_assignment_shape_and_progress() {
        let mut meta = a1();
        let sh = |s: &str| ShardId::parse(s).unwrap();
        let s0 = ServerName::parse("Server0").unwrap();
        meta.servers.insert(
            s0.clone(),
            ServerMeta {
                addr: "127.0.0.1:1".into(),
                shards: vec![sh("sh1"), sh("sh2")],
                health: Health::Up,
                applied: [(sh("sh2"), Seq(4))].into_iter().collect(),
            },
        );
        meta.shards[0].primary = Some(s0.clone());
        meta.shards[0].term = shardline::Term(2);
        let (a, b) = (sh("sh1"), sh("sh2"));
        let v = render(
            &meta,
            &[Some(Seq(9))],
            &[((&s0, &a), Some(Seq(7))), ((&s0, &b), None)],
        );
        assert_eq!(v["N"], 1);
        assert_eq!(v["schema"]["columns"][0], "Stud_id");
        assert_eq!(v["schema"]["dtypes"][1], "String");
        assert_eq!(
            v["shards"][0],
            json!({"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 4096,
                   "primary": "Server0", "term": 2, "wal_last_seq": 9})
        );
        assert_eq!(v["shards"][1]["primary"], Value::Null);
        assert_eq!(v["servers"]["Server0"], json!(["sh1", "sh2"]));
        assert_eq!(v["health"]["Server0"], "up");
        assert_eq!(v["applied"]["Server0"], json!({"sh1": 7, "sh2": 4}));
        assert_eq!(v["status"], "success");
        assert_eq!(v["shards"][0].get("fault"), None);
        // A shard frozen after a log fault says why.
        meta.shards[1].fault = Some("Server0: rolled_back at applied 9".into());
        let v = render(&meta, &[Some(Seq(9))], &[]);
        assert_eq!(v["shards"][1]["fault"], "Server0: rolled_back at applied 9");
    }
}
