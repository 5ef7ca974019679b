//! Applied announcements: every replica publishes the last sequence it committed on the
//! shard's core-NATS subject ([`wal::applied_subject`]); the primary subscribes while it leads
//! and feeds what it hears to its [`Quorum`](super::quorum::Quorum).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use shardline::wal::{self, Applied};
use shardline::Seq;

use super::Replica;

/// How often a replica repeats its applied sequence (see [`announce_periodically`]).
const REPEAT_INTERVAL: Duration = Duration::from_millis(500);

impl Replica {
    /// Publishes `seq` as this replica's applied sequence. Best effort: a lost message only
    /// delays a commit until the next repetition.
    pub(super) async fn announce(&self, seq: Seq) {
        let body = serde_json::to_vec(&Applied {
            server: self.server.clone(),
            seq,
        })
        .unwrap_or_default();
        if let Err(e) = self
            .nats
            .publish(wal::applied_subject(&self.shard), body.into())
            .await
        {
            tracing::debug!(shard = %self.shard, error = %e, "cannot announce applied sequence");
        }
    }
}

/// Core NATS may drop a message (e.g. across a reconnect); repeating the cumulative sequence
/// now and then means a lost announcement only delays a commit.
pub(super) async fn announce_periodically(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(REPEAT_INTERVAL);
    loop {
        tick.tick().await;
        let seq = replica.progress().applied;
        if seq > Seq::ZERO {
            replica.announce(seq).await;
        }
    }
}

/// Only the primary needs the replicas' announcements: it subscribes while it leads, so each
/// announcement is delivered once rather than to every replica.
pub(super) async fn follow_acks(replica: Arc<Replica>) {
    let mut meta = replica.meta.clone();
    loop {
        if !replica.is_primary() {
            if meta.changed().await.is_err() {
                return;
            }
            continue;
        }
        let subject = wal::applied_subject(&replica.shard);
        let mut sub = match replica.nats.subscribe(subject).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!(shard = %replica.shard, error = %e, "cannot subscribe to acks");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                msg = sub.next() => match msg {
                    Some(msg) => {
                        if let Ok(a) = serde_json::from_slice::<Applied>(&msg.payload) {
                            replica.quorum.record(a.server, a.seq);
                        }
                    }
                    None => break,
                },
                changed = meta.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !replica.is_primary() {
                        break;
                    }
                }
            }
        }
    }
}
