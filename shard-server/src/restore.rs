//! Installing a shard's snapshot from a backup (the manager's `/restore`): `PUT
//! /snapshot/{shard}` stores the uploaded SQLite file next to the shard's database as
//! `<shard>.restore`; when the server then opens the shard (`/config`), [`take_pending`]
//! checks the file against the schema and moves it into place, so the replica starts at the
//! snapshot's position and follows the log from the next sequence.
//!
//! Only a shard this server has not opened takes a snapshot this way (a running replica
//! answers 409): a restore creates new servers.

use std::path::{Path, PathBuf};

use axum::body::Body;
use futures::TryStreamExt;
use rusqlite::{Connection, OpenFlags};
use shardline::names::ShardId;
use shardline::schema::Schema;
use shardline::{ApiError, Position, Seq, Term};
use tokio::io::AsyncWriteExt;

use crate::server::Server;

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

/// If a snapshot waits for `shard`, checks it against `schema` and makes it the shard's
/// database `db` (any earlier file of the shard is replaced). Call before opening `db`.
pub fn take_pending(
    data_dir: &Path,
    shard: &ShardId,
    db: &Path,
    schema: &Schema,
) -> Result<Option<Position>, ApiError> {
    let pending = pending_path(data_dir, shard);
    if !pending.exists() {
        return Ok(None);
    }
    let at = check(&pending, schema).map_err(|e| {
        ApiError::BadRequest(format!("the snapshot received for shard {shard}: {e}"))
    })?;
    let internal = |e: std::io::Error| {
        ApiError::Internal(format!("installing the snapshot of shard {shard}: {e}"))
    };
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(PathBuf::from(p)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(internal(e)),
            _ => {}
        }
    }
    std::fs::rename(&pending, db).map_err(internal)?;
    tracing::info!(shard = %shard, seq = %at.seq, term = %at.term, "installed the snapshot from a backup");
    Ok(Some(at))
}

/// The position a snapshot file holds, once its `records` columns are the schema's.
fn check(path: &Path, schema: &Schema) -> Result<Position, String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| e.to_string())?;
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('records') ORDER BY cid")
        .and_then(|mut st| {
            st.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(|e| e.to_string())?;
    let want: Vec<String> = schema.columns.iter().map(|c| c.to_string()).collect();
    if cols != want {
        return Err(format!(
            "its columns {cols:?} are not the schema's {want:?}"
        ));
    }
    let (seq, term): (i64, i64) = conn
        .query_row(
            "SELECT applied_seq, term FROM replica_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(|e| format!("no log position: {e}"))?;
    Ok(Position {
        seq: Seq(seq as u64),
        term: Term(term as u64),
    })
}
