//! The applier: follows the shard's WAL stream from the position stored with the data and
//! applies it in sequence order, a batch per SQLite transaction. After each batch it hands
//! the outcomes to the writes this server is waiting on, counts itself towards the quorum and
//! (on a replica that is not the primary) announces the new sequence.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use shardline::wal::{self, WalEntry};
use shardline::Seq;

use super::{lock, Replica};
use crate::store::{self, Outcome};

/// Most entries applied in one SQLite transaction.
const MAX_BATCH: usize = 1024;
/// Largest batch (in log bytes) applied in place on the runtime's thread; a bigger one (a
/// replica catching up) goes to the blocking pool.
const IN_PLACE_BYTES: usize = 64 * 1024;
/// Longest a replica defers acknowledging applied entries to JetStream. Acks only show
/// progress (`nats consumer ls`): a restarted replica resumes from the sequence stored with
/// its data, not from its ack floor. So one cumulative ack per interval replaces one per
/// batch, which under load was a message, and in durable mode a disk write, per entry.
const ACK_INTERVAL: Duration = Duration::from_millis(50);

/// Applies the stream until the replica stops, restarting after errors with a backoff.
pub(super) async fn apply_forever(replica: Arc<Replica>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if replica.latched() {
            // The stream no longer holds what this replica applied: applying more of it
            // would diverge. The manager's recovery starts a new replica (`/adopt_log`).
            tracing::warn!(shard = %replica.shard, server = %replica.server, "applier stopped: log fault");
            return;
        }
        match replica.apply_stream().await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                tracing::warn!(shard = %replica.shard, server = %replica.server, error = %e, "applier interrupted; restarting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

impl Replica {
    /// Follows the stream from the stored position until an error.
    async fn apply_stream(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        // Entries this replica still needs may have been purged: then it re-seeds first.
        self.reseed_if_purged().await?;
        let mut stream = match self.js.get_stream(wal::stream_name(&self.shard)).await {
            Ok(s) => s,
            Err(e) if super::logcheck::not_found(&e) => {
                self.stream_missing();
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let mut applied = self.store.position().seq;
        let asked = self.fresh.now();
        let info = stream.info().await?.clone();
        self.check_at_start(&stream, &info).await?;
        let target = Seq(info.state.last_sequence);
        self.fresh.learned(target, asked, applied);
        // The consumer is re-created at every (re)start so that it begins exactly after the
        // sequence stored with the data, whatever position it had before.
        let _ = stream.delete_consumer(self.server.as_str()).await;
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(self.server.to_string()),
                description: Some(format!("replica {} of shard {}", self.server, self.shard)),
                deliver_policy: if applied == Seq::ZERO {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence {
                        start_sequence: applied.next().get(),
                    }
                },
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(MAX_BATCH)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await?;
        self.mark_caught_up_if(applied >= target, started);
        // The last applied message not yet acknowledged to JetStream, and when we last did.
        let mut unacked: Option<jetstream::Message> = None;
        // As if the last ack were an interval ago: the first batch is acked at once.
        let mut last_ack = Instant::now()
            .checked_sub(ACK_INTERVAL)
            .unwrap_or_else(Instant::now);
        loop {
            let next = match &unacked {
                None => messages.next().await,
                Some(_) => match tokio::time::timeout(ACK_INTERVAL, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        // Quiet for a while: make the consumer's progress current.
                        ack(unacked.take(), &mut last_ack).await?;
                        continue;
                    }
                },
            };
            let first = next.ok_or_else(|| anyhow::anyhow!("message stream ended"))??;
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    Some(Some(Err(e))) => return Err(e.into()),
                    Some(None) | None => break,
                }
            }
            let mut entries = Vec::with_capacity(batch.len());
            let mut ids = Vec::with_capacity(batch.len());
            for m in &batch {
                let seq = Seq(m
                    .info()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .stream_sequence);
                if seq <= applied {
                    // The consumer starts after the applied sequence, so this is a
                    // redelivery, or the consumer's own state went back with a rolled-back
                    // store: restart, which checks the log again (`logcheck`).
                    anyhow::bail!(
                        "entry {seq} delivered at or below the applied sequence {applied}; checking the log again"
                    );
                }
                let expected = Seq(applied.get() + 1 + entries.len() as u64);
                if seq != expected {
                    anyhow::bail!("gap in the log: expected {expected} got {seq}");
                }
                entries.push((seq, m.payload.clone()));
                ids.push(
                    m.headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Msg-Id"))
                        .map(|v| v.to_string()),
                );
            }
            if !entries.is_empty() {
                let count = entries.len();
                let done = self.commit(entries).await?;
                let seq = done.at.seq;
                crate::metrics::applied(self.shard.as_str(), count, seq);
                applied = seq;
                self.set_applied(done.at);
                self.resolve(&ids, done.outcomes);
                self.quorum.record(self.server.clone(), seq);
                // The primary counts itself above; only the others' announcements travel.
                if !self.is_primary() {
                    self.announce(seq).await;
                }
            }
            unacked = batch.pop();
            if last_ack.elapsed() >= ACK_INTERVAL {
                ack(unacked.take(), &mut last_ack).await?;
            }
            self.mark_caught_up_if(applied >= target, started);
        }
    }

    /// Decodes and applies a batch in one transaction: in place normally (a few
    /// microseconds of SQLite), on the blocking pool when the commit waits for the disk or
    /// the batch is big (a replica catching up), so the runtime's single thread keeps
    /// answering `/heartbeat` and reads meanwhile.
    async fn commit(&self, entries: Vec<(Seq, Bytes)>) -> anyhow::Result<store::BatchApplied> {
        let bytes: usize = entries.iter().map(|(_, p)| p.len()).sum();
        // The last entry's fingerprint, stored with the position (`logcheck`).
        let hash = entries.last().map(|(_, p)| store::fingerprint(p));
        if self.store.is_durable() || bytes > IN_PLACE_BYTES {
            let done = store::blocking(&self.store, move |s| {
                s.apply_hashed(&decode(&entries), hash)
            })
            .await;
            // Let the tasks that waited meanwhile run before the next batch.
            tokio::task::yield_now().await;
            done
        } else {
            Ok(self.store.apply_hashed(&decode(&entries), hash)?)
        }
    }

    fn mark_caught_up_if(&self, caught_up: bool, started: Instant) {
        if caught_up && self.recovering.swap(false, Ordering::AcqRel) {
            tracing::info!(
                shard = %self.shard,
                server = %self.server,
                seq = %self.progress().applied,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "replica caught up with the log"
            );
        }
    }

    /// Hands each applied entry's outcome to the write waiting on it, if this server
    /// appended it.
    fn resolve(&self, ids: &[Option<String>], outcomes: Vec<(Seq, Outcome)>) {
        let mut pending = lock(&self.pending);
        if pending.is_empty() {
            return;
        }
        for (id, (seq, outcome)) in ids.iter().zip(outcomes) {
            if let Some(tx) = id.as_ref().and_then(|id| pending.remove(id)) {
                let _ = tx.send((seq, outcome));
            }
        }
    }
}

/// Decodes each entry; one that does not decode is applied as invalid (skipped).
fn decode(entries: &[(Seq, Bytes)]) -> Vec<(Seq, Result<WalEntry, String>)> {
    entries
        .iter()
        .map(|(seq, p)| (*seq, WalEntry::decode(p).map_err(|e| e.to_string())))
        .collect()
}

/// Acknowledges `msg` and, the consumer being AckAll, every message before it.
async fn ack(msg: Option<jetstream::Message>, last_ack: &mut Instant) -> anyhow::Result<()> {
    if let Some(msg) = msg {
        msg.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    *last_ack = Instant::now();
    Ok(())
}
