//! Catch-up of a replica that starts with an empty database: copy a snapshot from a healthy
//! replica (`/copy`, consistent with a WAL sequence) so the applier starts from there instead
//! of replaying the whole history. When no peer can give one, the applier replays the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline::internal::{CopyRequest, CopyResponse};
use shardline::meta::{ClusterMeta, Health};
use shardline::names::ShardId;
use shardline::schema::Row;
use shardline::{Position, Seq};

use crate::server::Server;
use crate::store::{self, Store};

/// How long a replica waits for the cluster metadata (to find its peers) before giving up
/// on a snapshot and replaying the log instead.
const META_WAIT: Duration = Duration::from_secs(5);

pub async fn restore_from_peer(server: &Server, shard: &ShardId, store: &Arc<Store>) {
    // The manager's /config can arrive before this server's metadata watcher has its first
    // value (a respawned server answers HTTP at once): wait for a document naming the shard.
    let mut rx = server.meta.clone();
    let names_shard = |m: &Option<Arc<ClusterMeta>>| {
        m.as_ref()
            .is_some_and(|m| m.shard(shard.as_str()).is_some())
    };
    let meta = match tokio::time::timeout(META_WAIT, rx.wait_for(names_shard)).await {
        Ok(Ok(m)) => m.clone(),
        _ => None,
    };
    let Some(meta) = meta else {
        tracing::warn!(shard = %shard, server = %server.name, "no cluster metadata naming the shard yet; replaying the log instead of copying a snapshot");
        return;
    };
    let primary = meta.shard(shard.as_str()).and_then(|s| s.primary.clone());
    let mut peers: Vec<_> = meta
        .replicas(shard.as_str())
        .filter(|n| **n != server.name)
        .filter_map(|n| {
            let m = meta.servers.get(n)?;
            (m.health == Health::Up).then(|| (n.clone(), m.addr.clone()))
        })
        .collect();
    // The primary is the most up to date; try it first.
    peers.sort_by_key(|(n, _)| Some(n) != primary.as_ref());
    let started = Instant::now();
    for (peer, addr) in peers {
        match fetch(server, shard, &addr).await {
            Ok((rows, at)) if at.seq > Seq::ZERO => {
                let count = rows.len();
                let restored = store::blocking(store, move |s| s.restore(&rows, at)).await;
                if let Err(e) = restored {
                    tracing::warn!(shard = %shard, peer = %peer, error = %e, "cannot store snapshot");
                    continue;
                }
                tracing::info!(
                    shard = %shard, server = %server.name, peer = %peer, seq = %at.seq, rows = count,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "restored snapshot; applying the log from the next sequence"
                );
                return;
            }
            Ok(_) => return, // the peer has applied nothing either: replaying is as cheap
            Err(e) => {
                tracing::warn!(shard = %shard, peer = %peer, error = %e, "snapshot copy failed")
            }
        }
    }
}

/// Replaces `store`'s rows and position with a snapshot of `shard` from the server at
/// `addr` (a log recovery's re-seed from the base replica, `Server::adopt_log`).
pub async fn copy_snapshot(
    server: &Server,
    shard: &ShardId,
    addr: &str,
    store: &Arc<Store>,
) -> anyhow::Result<Seq> {
    let (rows, at) = fetch(server, shard, addr).await?;
    store::blocking(store, move |s| s.restore(&rows, at)).await?;
    Ok(at.seq)
}

/// Asks `addr` for a snapshot of `shard`: its rows (checked against this server's schema)
/// and the log position they are consistent with.
async fn fetch(
    server: &Server,
    shard: &ShardId,
    addr: &str,
) -> anyhow::Result<(Vec<Row>, Position)> {
    let mut body: CopyResponse = server
        .http
        .post(format!("http://{addr}/copy"))
        .json(&CopyRequest {
            shards: vec![shard.clone()],
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let snapshot = body
        .shards
        .remove(shard)
        .ok_or_else(|| anyhow::anyhow!("the answer has no snapshot of {shard}"))?;
    let schema = server
        .schema()
        .ok_or_else(|| anyhow::anyhow!("not configured"))?;
    let at = snapshot.position();
    let rows = snapshot
        .rows
        .iter()
        .map(|r| schema.parse_row(r, usize::MAX))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("snapshot row does not fit the schema: {e}"))?;
    Ok((rows, at))
}
