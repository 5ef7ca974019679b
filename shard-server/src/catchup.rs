//! Catch-up of a replica that starts with an empty database: copy a snapshot from a healthy
//! replica (`GET /snapshot/{shard}`: its SQLite file, consistent with the WAL position in the
//! headers) so the applier starts from there instead of replaying the whole history. When no
//! peer can give one, the applier replays the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use shardline::meta::{ClusterMeta, Health};
use shardline::names::ShardId;
use shardline::{Position, Seq, Term};
use tokio::io::AsyncWriteExt;

use crate::api::snapshot::{SEQ_HEADER, SQLITE_MEDIA_TYPE, TERM_HEADER};
use crate::server::Server;
use crate::store::{self, Store};

/// How long a replica waits for the cluster metadata (to find its peers) before giving up
/// on a snapshot and replaying the log instead.
const META_WAIT: Duration = Duration::from_secs(5);
/// Longest a whole snapshot download may take, and the longest wait for its next chunk.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

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
        match copy_from(server, shard, &addr, store).await {
            Ok(at) => {
                tracing::info!(
                    shard = %shard, server = %server.name, peer = %peer, seq = %at.seq,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "restored snapshot from a peer; applying the log from the next sequence"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(shard = %shard, peer = %peer, error = %e, "snapshot copy failed")
            }
        }
    }
}

/// Downloads `GET http://{addr}/snapshot/{shard}` into a temporary file of the data
/// directory, chunk by chunk (memory bounded by a chunk whatever the size of the shard),
/// installs it in `store` (`Store::install`: the applier must not be applying meanwhile)
/// and removes the file. Returns the position installed.
pub async fn copy_from(
    server: &Server,
    shard: &ShardId,
    addr: &str,
    store: &Arc<Store>,
) -> anyhow::Result<Position> {
    copy_with(&server.http, &server.data_dir, shard, addr, store).await
}

/// [`copy_from`] with the server's HTTP client and data directory (what a replica holds).
pub async fn copy_with(
    http: &reqwest::Client,
    data_dir: &Path,
    shard: &ShardId,
    addr: &str,
    store: &Arc<Store>,
) -> anyhow::Result<Position> {
    let incoming = Incoming(data_dir.join(format!(
        ".incoming-{shard}-{}.sqlite3",
        uuid::Uuid::new_v4()
    )));
    download_and_install(http, shard, addr, store, &incoming.0).await
}

/// Removes the snapshot files a previous process of this server left in `data_dir` when it
/// was killed while serving (`.snapshot-*`) or receiving (`.incoming-*`) one. Call it before
/// anything can make new ones. Returns how many it removed.
pub fn remove_stale_files(data_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if (name.starts_with(".snapshot-") || name.starts_with(".incoming-"))
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// The downloaded file, removed when dropped: after the install, after a failure, or when
/// the replica stops mid-copy.
struct Incoming(PathBuf);

impl Drop for Incoming {
    fn drop(&mut self) {
        store::remove_db_files(&self.0);
    }
}

async fn download_and_install(
    http: &reqwest::Client,
    shard: &ShardId,
    addr: &str,
    store: &Arc<Store>,
    path: &Path,
) -> anyhow::Result<Position> {
    let mut resp = http
        .get(format!("http://{addr}/snapshot/{shard}"))
        .timeout(DOWNLOAD_TIMEOUT)
        .send()
        .await?
        .error_for_status()?;
    let media = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    anyhow::ensure!(
        media == SQLITE_MEDIA_TYPE,
        "the snapshot of {shard} from {addr} came as {media:?}, not {SQLITE_MEDIA_TYPE}"
    );
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow::anyhow!("the snapshot of {shard} from {addr} has no {name}"))
    };
    let announced = Position {
        seq: Seq(header(SEQ_HEADER)?),
        term: Term(header(TERM_HEADER)?),
    };
    let mut file = tokio::fs::File::create(path).await?;
    let mut bytes = 0u64;
    loop {
        let chunk = tokio::time::timeout(CHUNK_TIMEOUT, resp.chunk())
            .await
            .map_err(|_| {
                anyhow::anyhow!("the snapshot of {shard} from {addr} stalled after {bytes} bytes")
            })??;
        let Some(chunk) = chunk else { break };
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    drop(file);
    let src = path.to_owned();
    let at = store::blocking(store, move |s| s.install(&src)).await?;
    anyhow::ensure!(
        at == announced,
        "the snapshot of {shard} from {addr} holds position {at:?} but announced {announced:?}"
    );
    tracing::info!(shard = %shard, from = addr, seq = %at.seq, bytes, "snapshot installed");
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_snapshot_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            ".snapshot-sh1-1.sqlite3",
            ".incoming-sh1-2.sqlite3",
            ".incoming-sh1-2.sqlite3-journal",
            "sh1.db",
            "sh1.db-wal",
            "server.log",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_files(dir.path()), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["server.log", "sh1.db", "sh1.db-wal"]);
        assert_eq!(remove_stale_files(&dir.path().join("missing")), 0);
    }
}
