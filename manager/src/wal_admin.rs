//! Administration of the shards' write-ahead-log streams in JetStream: creating a shard's
//! stream, appending the term markers that start a primary's term (the manager writes only
//! those), finding the latest marker of a stream, and dropping a removed server's consumer.
//! The entries themselves are the shard servers' business.
//!
//! Markers of one stream have strictly increasing terms in stream order: an election appends
//! its marker only if the stream still ends where it looked for the latest marker
//! (`Nats-Expected-Last-Sequence`), so two managers (or a stale one) cannot both append a
//! marker of the same term, nor one of a lower term after a higher one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use shardline::meta::ShardMeta;
use shardline::names::{ServerName, ShardId};
use shardline::wal::{self, now_ms, WalEntry, WalOp};
use shardline::{ApiError, Seq, Term};

use crate::lease::Lease;

/// How many entries back from the end of a stream [`WalAdmin::tail`] looks for the latest
/// marker. A marker the metadata does not know yet (an election that crashed between the
/// marker and the metadata) is followed only by the few entries its deposed primary had in
/// flight: nobody writes in its term until the metadata names its primary. A marker further
/// back than this is one the metadata already records (or a lower term).
pub const MARKER_SCAN: u64 = 512;

/// How often [`WalAdmin::recreate_stream_at`] deletes and creates a stream that did not
/// come back empty.
const RECREATE_ATTEMPTS: u32 = 5;

/// How many messages [`WalAdmin::tail`] fetches at once.
const SCAN_CHUNK: u64 = 32;

/// A term marker found in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub seq: Seq,
    pub term: Term,
    pub primary: ServerName,
}

/// The end of a shard's stream: its last sequence, the term of its last entry and the latest
/// marker among its last [`MARKER_SCAN`] entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub last_seq: Seq,
    pub last_term: Option<Term>,
    pub marker: Option<Marker>,
}

/// Why a marker was not appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Something was appended after the sequence the election looked at: look again.
    #[error("shard {0}: the stream moved on while the marker was being appended")]
    Moved(ShardId),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> ApiError {
        match e {
            AppendError::Moved(shard) => ApiError::Unavailable(format!(
                "shard {shard}: the log kept moving during the election; retry"
            )),
            AppendError::Api(e) => e,
        }
    }
}

pub struct WalAdmin {
    js: jetstream::Context,
    /// Checked right before every marker: only the lease holder appends one.
    lease: Arc<Lease>,
    /// JetStream replicas of each WAL stream (3 on a 3-node NATS cluster).
    replicas: usize,
}

impl WalAdmin {
    pub fn new(js: jetstream::Context, replicas: usize, lease: Arc<Lease>) -> WalAdmin {
        WalAdmin {
            js,
            lease,
            replicas,
        }
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

    /// Makes the empty stream of `shard` (just created) continue after `seq`: a purge up to
    /// `seq + 1` leaves it empty with first sequence `seq + 1` and last `seq`, so the next
    /// entry gets `seq + 1` (a restored replica's stored position stays valid).
    pub async fn continue_after(&self, shard: &ShardId, seq: Seq) -> Result<(), ApiError> {
        let fail = |e: String| {
            ApiError::Unavailable(format!("shard {shard}: cannot set its stream's start: {e}"))
        };
        let mut stream =
            (self.js.get_stream(wal::stream_name(shard)).await).map_err(|e| fail(e.to_string()))?;
        stream
            .purge()
            .sequence(seq.get() + 1)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let state = stream
            .info()
            .await
            .map_err(|e| fail(e.to_string()))?
            .state
            .clone();
        if state.last_sequence != seq.get() || state.messages != 0 {
            return Err(fail(format!(
                "after the purge it holds {} messages up to {}, expected none up to {seq}",
                state.messages, state.last_sequence
            )));
        }
        Ok(())
    }

    /// Deletes `shard`'s stream (undoing a restore that could not finish).
    pub async fn delete_stream(&self, shard: &ShardId) {
        let _ = self.js.delete_stream(wal::stream_name(shard)).await;
    }

    /// Deletes `shard`'s stream (if any) and creates it again, empty, with its first
    /// sequence `first` (README "Log faults": the recovered log continues right after the
    /// base replica's position). Returns the new stream's identity (`created`, ns).
    ///
    /// nats-server removes a deleted stream's files in the background, and a stream of the
    /// same name created meanwhile can come back with the old messages: what was created is
    /// checked, and deleted and created again (a few times, backing off) until it is empty.
    pub async fn recreate_stream_at(&self, shard: &ShardId, first: Seq) -> Result<u64, ApiError> {
        let name = wal::stream_name(shard);
        let unavailable = |what: &str, e: String| {
            ApiError::Unavailable(format!("shard {shard}: cannot {what} stream {name}: {e}"))
        };
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=RECREATE_ATTEMPTS {
            self.lease.check()?;
            let _ = self.js.delete_stream(&name).await;
            let mut stream = self
                .js
                .create_stream(stream::Config {
                    name: name.clone(),
                    description: Some(format!("shardline write-ahead log of shard {shard}")),
                    subjects: vec![wal::subject(shard)],
                    storage: stream::StorageType::File,
                    num_replicas: self.replicas,
                    duplicate_window: Duration::from_secs(120),
                    first_sequence: Some(first.get()),
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("re-create", e.to_string()))?;
            let info = stream
                .info()
                .await
                .map_err(|e| unavailable("read", e.to_string()))?;
            let st = &info.state;
            if st.messages == 0
                && st.first_sequence == first.get()
                && st.last_sequence + 1 == first.get()
            {
                return Ok(info.created.unix_timestamp_nanos().max(0) as u64);
            }
            tracing::warn!(
                shard = %shard, attempt, messages = st.messages, first = st.first_sequence,
                last = st.last_sequence, want_first = first.get(),
                "the re-created stream is not empty at the wanted first sequence (old files not removed yet); again"
            );
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        Err(ApiError::Unavailable(format!(
            "shard {shard}: stream {name} did not come back empty at sequence {first} in {RECREATE_ATTEMPTS} attempts"
        )))
    }

    /// The last sequence of `shard`'s stream, the term of its last entry, and the latest
    /// marker among its last `scan` entries (`scan` 0: only the last entry is read).
    pub async fn tail(&self, shard: &ShardId, scan: u64) -> Result<Tail, ApiError> {
        let unreachable = |e: String| {
            ApiError::Unavailable(format!("shard {shard}: cannot read its stream: {e}"))
        };
        let mut stream = (self.js.get_stream(wal::stream_name(shard)).await)
            .map_err(|e| unreachable(e.to_string()))?;
        let state = stream
            .info()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .state
            .clone();
        let mut tail = Tail {
            last_seq: Seq(state.last_sequence),
            last_term: None,
            marker: None,
        };
        let first = state
            .first_sequence
            .max(state.last_sequence.saturating_sub(scan));
        // From the end backwards, a chunk of messages fetched at once at a time: an
        // election waits for this scan.
        let mut high = state.last_sequence;
        let low = first.max(1);
        'scan: while high >= low {
            let chunk_low = high.saturating_sub(SCAN_CHUNK - 1).max(low);
            let fetched = futures::future::join_all((chunk_low..=high).rev().map(|seq| {
                let stream = &stream;
                async move { (seq, stream.get_raw_message(seq).await) }
            }))
            .await;
            for (seq, msg) in fetched {
                // A message may be gone (deleted, or the stream was purged under us): skip it.
                let Some(entry) = msg.ok().and_then(|m| WalEntry::decode(&m.payload).ok()) else {
                    continue;
                };
                tail.last_term.get_or_insert(entry.term);
                if let WalOp::Term { primary } = entry.op {
                    tail.marker = Some(Marker {
                        seq: Seq(seq),
                        term: entry.term,
                        primary,
                    });
                    break 'scan;
                }
            }
            high = chunk_low - 1;
        }
        Ok(tail)
    }

    /// Appends the marker that starts `shard.term` with `shard.primary`, if the stream still
    /// ends at `after` (when given). From its sequence on, every replica skips entries of
    /// older terms.
    pub async fn append_marker_after(
        &self,
        shard: &ShardMeta,
        after: Seq,
    ) -> Result<Seq, AppendError> {
        self.publish_marker(shard, Some(after)).await
    }

    /// Appends the marker that starts `shard.term` with `shard.primary` to a stream just
    /// created (`/init`, `/add`). From its sequence on, every replica skips entries of older
    /// terms.
    pub async fn append_marker(&self, shard: &ShardMeta) -> Result<(), ApiError> {
        self.publish_marker(shard, None).await?;
        Ok(())
    }

    async fn publish_marker(
        &self,
        shard: &ShardMeta,
        after: Option<Seq>,
    ) -> Result<Seq, AppendError> {
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
        self.lease.check()?;
        let mut publish =
            jetstream::message::PublishMessage::build().payload(entry.encode().into());
        if let Some(after) = after {
            publish = publish.expected_last_sequence(after.get());
        }
        let moved = |e: &jetstream::context::PublishError| {
            e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
        };
        let ack = self
            .js
            .send_publish(wal::subject(&shard.id), publish)
            .await
            .map_err(|e| unconfirmed(e.to_string()))?
            .await;
        match ack {
            Ok(ack) => Ok(Seq(ack.sequence)),
            Err(e) if moved(&e) => Err(AppendError::Moved(shard.id.clone())),
            Err(e) => Err(unconfirmed(e.to_string()).into()),
        }
    }

    /// Deletes the durable consumer a removed server read `shard`'s stream with, if any.
    pub async fn forget_consumer(&self, shard: &ShardId, server: &ServerName) {
        if let Ok(stream) = self.js.get_stream(wal::stream_name(shard)).await {
            let _ = stream.delete_consumer(server.as_str()).await;
        }
    }
}
