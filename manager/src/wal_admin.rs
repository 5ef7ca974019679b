//! Administration of the shards' write-ahead-log streams in JetStream: creating a shard's
//! stream, appending the term markers that start a primary's term (the manager writes only
//! those), and dropping a removed server's consumer. The entries themselves are the shard
//! servers' business.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use shardline::meta::ShardMeta;
use shardline::names::{ServerName, ShardId};
use shardline::wal::{self, now_ms, WalEntry, WalOp};
use shardline::ApiError;

pub struct WalAdmin {
    js: jetstream::Context,
    /// JetStream replicas of each WAL stream (3 on a 3-node NATS cluster).
    replicas: usize,
}

impl WalAdmin {
    pub fn new(js: jetstream::Context, replicas: usize) -> WalAdmin {
        WalAdmin { js, replicas }
    }

    /// Creates the shard's WAL stream, deleting any left from an earlier cluster.
    pub async fn reset_stream(&self, shard: &ShardId) -> Result<(), ApiError> {
        let name = wal::stream_name(shard);
        let _ = self.js.delete_stream(&name).await;
        self.js
            .create_stream(stream::Config {
                name: name.clone(),
                description: Some(format!("shardline write-ahead log of shard {shard}")),
                subjects: vec![wal::subject(shard)],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            // Nothing was appended: the operation that wanted the stream can be retried.
            .map_err(|e| {
                ApiError::Unavailable(format!("shard {shard}: cannot create stream {name}: {e}"))
            })?;
        Ok(())
    }

    /// Appends the marker that starts `shard.term` with `shard.primary`. From its sequence
    /// on, every replica skips entries of older terms.
    pub async fn append_marker(&self, shard: &ShardMeta) -> Result<(), ApiError> {
        let primary = shard
            .primary
            .clone()
            .ok_or_else(|| ApiError::Internal(format!("shard {} has no primary", shard.id)))?;
        let entry = WalEntry {
            op: WalOp::Term { primary },
            term: shard.term,
            by: wal::MANAGER.into(),
            ts_ms: now_ms(),
        };
        // The publish may have reached the stream without its acknowledgement reaching us.
        let unconfirmed = |e: String| {
            ApiError::LogUnavailable(format!(
                "shard {}: cannot append term marker: {e}",
                shard.id
            ))
        };
        self.js
            .publish(wal::subject(&shard.id), entry.encode().into())
            .await
            .map_err(|e| unconfirmed(e.to_string()))?
            .await
            .map_err(|e| unconfirmed(e.to_string()))?;
        Ok(())
    }

    /// Deletes the durable consumer a removed server read `shard`'s stream with, if any.
    pub async fn forget_consumer(&self, shard: &ShardId, server: &ServerName) {
        if let Ok(stream) = self.js.get_stream(wal::stream_name(shard)).await {
            let _ = stream.delete_consumer(server.as_str()).await;
        }
    }
}
