//! `GET /snapshot/{shard}`: the replica as one SQLite file (`Store::backup_to`), with the
//! log position it holds in the headers `shardline-seq` and `shardline-term`. The file is
//! made in the data directory on the blocking pool and streamed from disk, so memory stays
//! bounded whatever the size of the shard.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use shardline::ApiError;
use tokio_util::io::ReaderStream;

use crate::server::Server;
use crate::store;

/// The media type of a SQLite database file.
pub const SQLITE_MEDIA_TYPE: &str = "application/vnd.sqlite3";
/// Response headers carrying the position the file holds.
pub const SEQ_HEADER: &str = "shardline-seq";
pub const TERM_HEADER: &str = "shardline-term";

pub async fn snapshot(
    State(s): State<Arc<Server>>,
    Path(shard): Path<String>,
) -> Result<Response, ApiError> {
    let replica = s.replica(&shard)?;
    let shard = replica.shard.clone();
    if replica.is_recovering() {
        return Err(ApiError::Unavailable(format!(
            "shard {shard}: server {} is still catching up",
            s.name
        )));
    }
    let path = s.data_dir.join(format!(
        ".snapshot-{shard}-{}.sqlite3",
        uuid::Uuid::new_v4()
    ));
    let dest = path.clone();
    let made = store::blocking(&replica.store, move |st| st.backup_to(&dest)).await;
    let opened = match made {
        Ok(at) => tokio::fs::File::open(&path)
            .await
            .map(|f| (f, at))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    // The open file stays readable once unlinked: removing it now frees the disk space
    // when the stream ends, however it ends (done, or the client went away).
    store::remove_db_files(&path);
    let (file, at) =
        opened.map_err(|e| ApiError::Internal(format!("shard {shard}: snapshot: {e}")))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("shard {shard}: snapshot: {e}")))?
        .len();
    tracing::info!(shard = %shard, server = %s.name, seq = %at.seq, bytes = len, "serving a snapshot");
    Ok((
        [
            (header::CONTENT_TYPE, SQLITE_MEDIA_TYPE.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        [
            (SEQ_HEADER, at.seq.get().to_string()),
            (TERM_HEADER, at.term.get().to_string()),
        ],
        Body::from_stream(ReaderStream::with_capacity(file, 64 * 1024)),
    )
        .into_response())
}
