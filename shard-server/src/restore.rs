//! Installing a shard's snapshot from a backup (the manager's `/restore`): `PUT
//! /snapshot/{shard}` stores the uploaded SQLite file next to the shard's database as
//! `<shard>.restore`; when the server then opens the shard (`/config`), [`install_pending`]
//! installs it (`Store::install`, which checks it against the schema), so the replica starts
//! at the snapshot's position and follows the log from the next sequence.
//!
//! Only a shard this server has not opened takes a snapshot this way (a running replica
//! answers 409): a restore creates new servers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use futures::TryStreamExt;
use shardline::names::ShardId;
use shardline::{ApiError, Position};
use tokio::io::AsyncWriteExt;

use crate::server::Server;
use crate::store::{self, Store};

/// The first bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8] = b"SQLite format 3\0";

/// Where an uploaded snapshot waits for the shard to be opened.
pub fn pending_path(data_dir: &Path, shard: &ShardId) -> PathBuf {
    data_dir.join(format!("{shard}.restore"))
}

/// Stores the upload of `shard`'s snapshot; returns its size.
pub async fn receive(server: &Server, shard: &ShardId, body: Body) -> Result<u64, ApiError> {
    if server.replica(shard.as_str()).is_ok() {
        return Err(ApiError::Conflict(format!(
            "server {} already runs shard {shard}: a snapshot is installed only before the shard is opened",
            server.name
        )));
    }
    let internal = |e: std::io::Error| ApiError::Internal(format!("storing the snapshot: {e}"));
    tokio::fs::create_dir_all(&server.data_dir)
        .await
        .map_err(internal)?;
    let part = server.data_dir.join(format!("{shard}.restore.part"));
    let mut out = tokio::fs::File::create(&part).await.map_err(internal)?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    let mut head = Vec::with_capacity(SQLITE_MAGIC.len());
    let received: Result<(), ApiError> = async {
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| ApiError::BadRequest(format!("the upload broke off: {e}")))?
        {
            if head.len() < SQLITE_MAGIC.len() {
                let n = (SQLITE_MAGIC.len() - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..n]);
            }
            size += chunk.len() as u64;
            out.write_all(&chunk).await.map_err(internal)?;
        }
        if head != SQLITE_MAGIC {
            return Err(ApiError::BadRequest(format!(
                "the snapshot of shard {shard} is not a SQLite database file"
            )));
        }
        out.sync_all().await.map_err(internal)?;
        Ok(())
    }
    .await;
    drop(out);
    if let Err(e) = received {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    tokio::fs::rename(&part, pending_path(&server.data_dir, shard))
        .await
        .map_err(internal)?;
    tracing::info!(server = %server.name, shard = %shard, bytes = size, "snapshot received; installed when the shard is opened");
    Ok(size)
}

/// If a snapshot waits for `shard`, installs it into the shard's freshly opened `store`
/// (`Store::install`: refused, changing nothing, when its `records` table is not this
/// schema's) and removes the file. Call before the replica starts.
pub async fn install_pending(
    server: &Server,
    shard: &ShardId,
    store: &Arc<Store>,
) -> Result<Option<Position>, ApiError> {
    let pending = pending_path(&server.data_dir, shard);
    if !pending.exists() {
        return Ok(None);
    }
    let src = pending.clone();
    let at = store::blocking(store, move |s| s.install(&src))
        .await
        .map_err(|e| {
            ApiError::BadRequest(format!("the snapshot received for shard {shard}: {e}"))
        })?;
    store::remove_db_files(&pending);
    // The snapshot names the backed-up cluster's stream as its log: this replica's log is the
    // stream the restore made (README "Log faults": else it reads as re-created).
    let adopt = async {
        let mut stream = server
            .js
            .get_stream(shardline::wal::stream_name(shard))
            .await?;
        let info = stream.info().await?;
        let id = crate::replica::logcheck::log_id(info);
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.set_log_id(id)).await??;
        anyhow::Ok(id)
    };
    let log_id = adopt.await.map_err(|e| {
        ApiError::Unavailable(format!(
            "shard {shard}: cannot adopt the restored stream: {e}"
        ))
    })?;
    tracing::info!(shard = %shard, seq = %at.seq, term = %at.term, log_id, "installed the snapshot from a backup");
    Ok(Some(at))
}
