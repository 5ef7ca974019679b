//! One shard replica: its [`Store`], the applier that follows the shard's WAL stream, and the
//! commit tracking that lets a primary answer a write once a majority has applied it.
//!
//! Every replica, the primary included, applies the stream strictly in sequence order through
//! a durable pull consumer named after the server (so `nats consumer ls WAL_<shard>` shows each
//! replica's progress), commits each batch in one SQLite transaction together with the last
//! applied sequence, acknowledges the batch cumulatively to JetStream, and announces its
//! applied sequence on a core-NATS subject that the primary listens to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, message::PublishMessage};
use futures::{FutureExt, StreamExt};
use shardline::meta::majority;
use shardline::names::{ServerName, ShardId};
use shardline::wal::{self, Applied, WalEntry};
use shardline::watch::MetaRx;
use shardline::{ApiError, Seq, Term};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::store::{Outcome, Store};

/// Most entries applied in one SQLite transaction.
const MAX_BATCH: usize = 1024;

pub struct Replica {
    pub shard: ShardId,
    pub store: Arc<Store>,
    server: ServerName,
    js: jetstream::Context,
    nats: async_nats::Client,
    meta: MetaRx,
    applied: AtomicU64,
    term: AtomicU64,
    recovering: AtomicBool,
    /// Writes this server appended and is waiting on, by `Nats-Msg-Id`.
    pending: Mutex<HashMap<String, oneshot::Sender<(Seq, Outcome)>>>,
    /// Highest applied sequence announced by each replica of the shard.
    acks: Mutex<HashMap<ServerName, Seq>>,
    acked: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    pub applied: Seq,
    pub term: Term,
    pub recovering: bool,
}

impl Replica {
    pub async fn start(
        shard: ShardId,
        store: Store,
        server: ServerName,
        js: jetstream::Context,
        nats: async_nats::Client,
        meta: MetaRx,
    ) -> anyhow::Result<Arc<Replica>> {
        let (applied, term) = store.position().await?;
        let replica = Arc::new(Replica {
            shard,
            store: Arc::new(store),
            server,
            js,
            nats,
            meta,
            applied: AtomicU64::new(applied),
            term: AtomicU64::new(term),
            recovering: AtomicBool::new(true),
            pending: Mutex::new(HashMap::new()),
            acks: Mutex::new(HashMap::new()),
            acked: Notify::new(),
            tasks: Mutex::new(Vec::new()),
        });
        let tasks = vec![
            tokio::spawn(replica.clone().follow_acks()),
            tokio::spawn(replica.clone().announce_periodically()),
            tokio::spawn(replica.clone().apply_forever()),
        ];
        *lock(&replica.tasks) = tasks;
        Ok(replica)
    }

    pub fn progress(&self) -> Progress {
        Progress {
            applied: self.applied.load(Ordering::Acquire),
            term: self.term.load(Ordering::Acquire),
            recovering: self.recovering.load(Ordering::Acquire),
        }
    }

    pub fn is_recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }

    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// Appends `entry` to the log and waits until it is applied here (for its outcome) and
    /// by a majority of the shard's replicas. The caller has checked that this server is the
    /// primary for `entry.term`.
    pub async fn commit(&self, entry: WalEntry, timeout: Duration) -> Result<Outcome, ApiError> {
        let deadline = Instant::now() + timeout;
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        let result = self.commit_inner(&id, entry, rx, deadline).await;
        lock(&self.pending).remove(&id);
        result
    }

    async fn commit_inner(
        &self,
        id: &str,
        entry: WalEntry,
        rx: oneshot::Receiver<(Seq, Outcome)>,
        deadline: Instant,
    ) -> Result<Outcome, ApiError> {
        let shard = &self.shard;
        let unavailable = |what: String| ApiError::Unavailable(format!("shard {shard}: {what}"));
        let publish = PublishMessage::build()
            .payload(entry.encode().into())
            .message_id(id);
        let ack = self
            .js
            .send_publish(wal::subject(shard), publish)
            .await
            .map_err(|e| unavailable(format!("the WAL is unreachable: {e}")))?;
        let ack = tokio::time::timeout_at(deadline.into(), ack)
            .await
            .map_err(|_| unavailable("the WAL did not acknowledge the append in time".into()))?
            .map_err(|e| unavailable(format!("the WAL rejected the append: {e}")))?;
        let (seq, outcome) = tokio::time::timeout_at(deadline.into(), rx)
            .await
            .map_err(|_| {
                unavailable(format!(
                    "entry {} was appended but not applied in time; its outcome is unknown",
                    ack.sequence
                ))
            })?
            .map_err(|_| unavailable("the replica stopped while the write was pending".into()))?;
        if let Outcome::StaleTerm { entry, current } = outcome {
            return Err(unavailable(format!(
                "this primary was deposed (entry of term {entry} skipped, the log is at term {current}); retry"
            )));
        }
        self.wait_for_majority(seq, deadline).await?;
        Ok(outcome)
    }

    async fn wait_for_majority(&self, seq: Seq, deadline: Instant) -> Result<(), ApiError> {
        loop {
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (have, need) = self.quorum(seq);
            if have >= need {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return Err(ApiError::Unavailable(format!(
                    "shard {}: no quorum: entry {seq} applied by {have} of the {need} replicas required",
                    self.shard
                )));
            }
        }
    }

    /// (replicas that applied `seq`, replicas needed for a majority) per current metadata.
    fn quorum(&self, seq: Seq) -> (usize, usize) {
        let meta = self.meta.borrow().clone();
        let Some(meta) = meta else { return (0, 1) };
        let replicas: Vec<ServerName> = meta.replicas(self.shard.as_str()).cloned().collect();
        let acks = lock(&self.acks);
        let have = replicas
            .iter()
            .filter(|r| acks.get(*r).is_some_and(|s| *s >= seq))
            .count();
        (have, majority(replicas.len().max(1)))
    }

    fn record_ack(&self, server: ServerName, seq: Seq) {
        let mut acks = lock(&self.acks);
        let e = acks.entry(server).or_insert(0);
        if seq > *e {
            *e = seq;
            drop(acks);
            self.acked.notify_waiters();
        }
    }

    async fn follow_acks(self: Arc<Self>) {
        loop {
            match self.nats.subscribe(wal::applied_subject(&self.shard)).await {
                Ok(mut sub) => {
                    while let Some(msg) = sub.next().await {
                        if let Ok(a) = serde_json::from_slice::<Applied>(&msg.payload) {
                            self.record_ack(a.server, a.seq);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(shard = %self.shard, error = %e, "cannot subscribe to acks")
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn announce(&self, seq: Seq) {
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

    /// Core NATS may drop a message (e.g. across a reconnect); repeating the cumulative
    /// sequence now and then means a lost announcement only delays a commit.
    async fn announce_periodically(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let seq = self.applied.load(Ordering::Acquire);
            if seq > 0 {
                self.announce(seq).await;
            }
        }
    }

    async fn apply_forever(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.apply_stream().await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(shard = %self.shard, server = %self.server, error = %e, "applier interrupted; restarting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Follows the stream from the stored position until an error.
    async fn apply_stream(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut stream = self.js.get_stream(wal::stream_name(&self.shard)).await?;
        let (mut applied, _) = self.store.position().await?;
        let target = stream.info().await?.state.last_sequence;
        // The consumer is re-created at every (re)start so that it begins exactly after the
        // sequence stored with the data, whatever position it had before.
        let _ = stream.delete_consumer(self.server.as_str()).await;
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(self.server.to_string()),
                description: Some(format!("replica {} of shard {}", self.server, self.shard)),
                deliver_policy: if applied == 0 {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence {
                        start_sequence: applied + 1,
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
        loop {
            let first = messages
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("message stream ended"))??;
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
                let seq = m
                    .info()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .stream_sequence;
                if seq <= applied {
                    continue;
                }
                if seq != applied + 1 + entries.len() as u64 {
                    anyhow::bail!(
                        "gap in the log: expected {} got {seq}",
                        applied + 1 + entries.len() as u64
                    );
                }
                entries.push((seq, WalEntry::decode(&m.payload).map_err(|e| e.to_string())));
                ids.push(
                    m.headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Msg-Id"))
                        .map(|v| v.to_string()),
                );
            }
            if let Some(last) = batch.last() {
                if !entries.is_empty() {
                    let (seq, term, outcomes) = self.store.apply(&entries).await?;
                    applied = seq;
                    self.applied.store(seq, Ordering::Release);
                    self.term.store(term, Ordering::Release);
                    self.resolve(&ids, outcomes);
                    self.record_ack(self.server.clone(), seq);
                    self.announce(seq).await;
                }
                // AckAll: one ack covers the whole batch.
                last.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            self.mark_caught_up_if(applied >= target, started);
        }
    }

    fn mark_caught_up_if(&self, caught_up: bool, started: Instant) {
        if caught_up && self.recovering.swap(false, Ordering::AcqRel) {
            tracing::info!(
                shard = %self.shard,
                server = %self.server,
                seq = self.applied.load(Ordering::Acquire),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "replica caught up with the log"
            );
        }
    }

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

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
