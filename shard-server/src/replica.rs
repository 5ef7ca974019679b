//! One shard replica: its [`Store`], the applier that follows the shard's WAL stream, and the
//! commit tracking that lets a primary answer a write once a majority has applied it.
//!
//! Every replica, the primary included, applies the stream strictly in sequence order through
//! a durable pull consumer named after the server (so `nats consumer ls WAL_<shard>` shows each
//! replica's progress), commits each batch in one SQLite transaction together with the last
//! applied sequence, announces that sequence on a core-NATS subject that the primary listens
//! to, and acknowledges to JetStream cumulatively, at most every [`ACK_INTERVAL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, message::PublishMessage};
use futures::{FutureExt, StreamExt};
use shardline::meta::majority;
use shardline::names::{ServerName, ShardId};
use shardline::wal::{self, now_ms, Applied, WalEntry, WalOp};
use shardline::watch::MetaRx;
use shardline::{ApiError, Seq, Term};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::store::{self, Outcome, Store};

/// Most entries applied in one SQLite transaction.
const MAX_BATCH: usize = 1024;
/// Longest a replica defers acknowledging applied entries to JetStream. Acks only show
/// progress (`nats consumer ls`): a restarted replica resumes from the sequence stored with
/// its data, not from its ack floor. So one cumulative ack per interval replaces one per
/// batch, which under load was a message, and in durable mode a disk write, per entry.
const ACK_INTERVAL: Duration = Duration::from_millis(50);
/// Most client requests a primary folds into one WAL entry (group commit).
const MAX_OPS_PER_ENTRY: usize = 128;
/// Most rows a group-committed entry may carry (a single larger request goes alone).
const MAX_ROWS_PER_ENTRY: usize = 2048;

/// A client request waiting to be appended by the proposer.
struct Proposal {
    op: WalOp,
    term: Term,
    reply: oneshot::Sender<Result<Outcome, ApiError>>,
}

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
    proposals: mpsc::UnboundedSender<Proposal>,
    commit_timeout: Duration,
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
        store: Arc<Store>,
        server: ServerName,
        js: jetstream::Context,
        nats: async_nats::Client,
        meta: MetaRx,
        commit_timeout: Duration,
    ) -> anyhow::Result<Arc<Replica>> {
        let at = store.position();
        let (proposals, proposed) = mpsc::unbounded_channel();
        let replica = Arc::new(Replica {
            shard,
            store,
            server,
            js,
            nats,
            meta,
            applied: AtomicU64::new(at.seq.0),
            term: AtomicU64::new(at.term.0),
            recovering: AtomicBool::new(true),
            pending: Mutex::new(HashMap::new()),
            acks: Mutex::new(HashMap::new()),
            acked: Notify::new(),
            proposals,
            commit_timeout,
            tasks: Mutex::new(Vec::new()),
        });
        let tasks = vec![
            tokio::spawn(replica.clone().propose_forever(proposed)),
            tokio::spawn(replica.clone().follow_acks()),
            tokio::spawn(replica.clone().announce_periodically()),
            tokio::spawn(replica.clone().apply_forever()),
        ];
        *lock(&replica.tasks) = tasks;
        Ok(replica)
    }

    pub fn progress(&self) -> Progress {
        Progress {
            applied: Seq(self.applied.load(Ordering::Acquire)),
            term: Term(self.term.load(Ordering::Acquire)),
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

    /// Submits one client request (`op`, checked by the caller to come from the primary of
    /// `term`) and waits until its entry is applied here (for its outcome) and by a majority
    /// of the shard's replicas. Concurrent requests are folded into one entry.
    pub async fn propose(&self, op: WalOp, term: Term) -> Result<Outcome, ApiError> {
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        let result = match self.proposals.send(Proposal { op, term, reply }) {
            Err(_) => Err(self.unavailable("the replica is stopping".into())),
            // The proposer's completion task enforces the commit timeout; this one only
            // guards against a lost reply.
            Ok(()) => match tokio::time::timeout(self.commit_timeout * 2, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(self.unknown("the replica stopped while the write was pending")),
                Err(_) => Err(self.unknown("the write's outcome is unknown (timed out)")),
            },
        };
        let outcome = match &result {
            Ok(_) => "applied".to_owned(),
            Err(e) => e.status().as_u16().to_string(),
        };
        crate::metrics::commit(self.shard.as_str(), &outcome, started.elapsed());
        result
    }

    fn unavailable(&self, what: String) -> ApiError {
        ApiError::Unavailable(format!("shard {}: {what}", self.shard))
    }

    /// The write may have been applied (it was appended, or may have been).
    fn unknown(&self, what: &str) -> ApiError {
        ApiError::OutcomeUnknown(format!("shard {}: {what}", self.shard))
    }

    /// The append's outcome is unknown: JetStream may have stored the entry.
    fn log_unavailable(&self, what: String) -> ApiError {
        ApiError::LogUnavailable(format!("shard {}: {what}", self.shard))
    }

    /// Group commit: takes every request queued since the last append, appends them as one
    /// entry, and hands the wait for its outcome to a task so the next append can start (in
    /// durable mode, once that entry is committed).
    async fn propose_forever(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<Proposal>) {
        let mut carry: Option<Proposal> = None;
        loop {
            let first = match carry.take() {
                Some(p) => p,
                None => match queue.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            let term = first.term;
            let mut rows = op_rows(&first.op);
            let mut group = vec![first];
            while group.len() < MAX_OPS_PER_ENTRY && rows < MAX_ROWS_PER_ENTRY {
                match queue.try_recv() {
                    Ok(p) if p.term == term && rows + op_rows(&p.op) <= MAX_ROWS_PER_ENTRY => {
                        rows += op_rows(&p.op);
                        group.push(p);
                    }
                    Ok(p) => {
                        carry = Some(p);
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.append_group(term, group).await;
        }
    }

    async fn append_group(self: &Arc<Self>, term: Term, group: Vec<Proposal>) {
        let group = self.refuse_doomed(group).await;
        self.append_fitting(term, group).await;
    }

    /// Appends the group as one entry if it fits in a NATS message; otherwise appends each
    /// half on its own, down to a single request, which is refused with 413 if it alone is
    /// too large (rather than a 503 from the failed publish).
    async fn append_fitting(self: &Arc<Self>, term: Term, group: Vec<Proposal>) {
        if group.is_empty() {
            return;
        }
        let (mut ops, replies): (Vec<WalOp>, Vec<_>) =
            group.into_iter().map(|p| (p.op, p.reply)).unzip();
        let op = if ops.len() == 1 {
            ops.pop().expect("one op")
        } else {
            WalOp::Batch { ops }
        };
        let entry = WalEntry {
            op,
            term,
            by: self.server.to_string(),
            ts_ms: now_ms(),
        };
        let payload = entry.encode();
        let max = self.nats.server_info().max_payload;
        if max > 0 && payload.len() > max {
            let ops = match entry.op {
                WalOp::Batch { ops } => ops,
                one => vec![one],
            };
            if ops.len() == 1 {
                let e = ApiError::PayloadTooLarge(format!(
                    "shard {}: the write needs a {}-byte log entry; the log takes at most {max} bytes per entry (send fewer or smaller rows)",
                    self.shard,
                    payload.len()
                ));
                for r in replies {
                    let _ = r.send(Err(e.clone()));
                }
                return;
            }
            let mut group: Vec<Proposal> = ops
                .into_iter()
                .zip(replies)
                .map(|(op, reply)| Proposal { op, term, reply })
                .collect();
            let second = group.split_off(group.len() / 2);
            Box::pin(self.append_fitting(term, group)).await;
            Box::pin(self.append_fitting(term, second)).await;
            return;
        }
        let deadline = Instant::now() + self.commit_timeout;
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        match self.append(&id, payload, deadline).await {
            Err(e) => {
                lock(&self.pending).remove(&id);
                for r in replies {
                    let _ = r.send(Err(e.clone()));
                }
            }
            Ok(seq) => {
                let me = self.clone();
                let completion = tokio::spawn(async move {
                    let result = me.complete(seq, rx, deadline).await;
                    lock(&me.pending).remove(&id);
                    distribute(result, replies);
                });
                // Durable mode: every entry costs an fsync on every replica, so the next
                // entry waits until this one is committed and takes everything that arrived
                // meanwhile (classic group commit). Otherwise entries are pipelined.
                if self.store.is_durable() {
                    let _ = completion.await;
                }
            }
        }
    }

    /// Answers, without touching the log, the requests that applying would reject: inserts
    /// of keys that exist and updates/deletes of keys that do not. One query covers the
    /// whole group. (Applying stays authoritative; this only keeps rejects out of the WAL.)
    async fn refuse_doomed(&self, group: Vec<Proposal>) -> Vec<Proposal> {
        let keys: Vec<i64> = group.iter().flat_map(|p| op_keys(&p.op)).collect();
        let existing: std::collections::HashSet<i64> = match self.store.existing(&keys) {
            Ok(found) => found.into_iter().collect(),
            Err(e) => {
                tracing::warn!(shard = %self.shard, error = %e, "pre-check failed; appending as is");
                return group;
            }
        };
        let mut keep = Vec::with_capacity(group.len());
        for p in group {
            let verdict = match &p.op {
                WalOp::Insert { .. } => {
                    let mut dup: Vec<i64> = op_keys(&p.op)
                        .into_iter()
                        .filter(|k| existing.contains(k))
                        .collect();
                    dup.sort_unstable();
                    (!dup.is_empty()).then_some(Outcome::Duplicate(dup))
                }
                WalOp::Update { key, .. } | WalOp::Delete { key } => {
                    (!existing.contains(key)).then_some(Outcome::Missing(*key))
                }
                _ => None,
            };
            match verdict {
                Some(outcome) => {
                    let _ = p.reply.send(Ok(outcome));
                }
                None => keep.push(p),
            }
        }
        keep
    }

    /// Appends the entry and returns its sequence once JetStream has stored it.
    async fn append(&self, id: &str, payload: Vec<u8>, deadline: Instant) -> Result<Seq, ApiError> {
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(id);
        let ack = self
            .js
            .send_publish(wal::subject(&self.shard), publish)
            .await
            .map_err(|e| self.log_unavailable(format!("the WAL is unreachable: {e}")))?;
        let ack = tokio::time::timeout_at(deadline.into(), ack)
            .await
            .map_err(|_| {
                self.log_unavailable("the WAL did not acknowledge the append in time".into())
            })?
            .map_err(|e| self.log_unavailable(format!("the WAL rejected the append: {e}")))?;
        Ok(Seq(ack.sequence))
    }

    /// Waits for the appended entry's outcome here and for a majority to have applied it.
    async fn complete(
        &self,
        seq: Seq,
        rx: oneshot::Receiver<(Seq, Outcome)>,
        deadline: Instant,
    ) -> Result<Outcome, ApiError> {
        let (_, outcome) = tokio::time::timeout_at(deadline.into(), rx)
            .await
            .map_err(|_| {
                self.unknown(&format!(
                    "entry {seq} was appended but not applied in time; its outcome is unknown"
                ))
            })?
            .map_err(|_| self.unknown("the replica stopped while the write was pending"))?;
        if let Outcome::StaleTerm { entry, current } = outcome {
            return Err(ApiError::Deposed(format!(
                "shard {}: this primary was deposed (entry of term {entry} skipped, the log is at term {current}); retry",
                self.shard
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
                return Err(ApiError::NoQuorum(format!(
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

    /// Records the latest sequence a replica announced. Announcements of one replica arrive
    /// in order, so the latest is the truth even if it went down (a replica that lost its
    /// disk must not keep counting for entries it no longer holds).
    fn record_ack(&self, server: ServerName, seq: Seq) {
        let previous = lock(&self.acks).insert(server, seq).unwrap_or_default();
        if seq > previous {
            self.acked.notify_waiters();
        }
    }

    fn is_primary(&self) -> bool {
        self.meta.borrow().as_ref().is_some_and(|m| {
            m.shard(self.shard.as_str())
                .is_some_and(|s| s.primary.as_ref() == Some(&self.server))
        })
    }

    /// Only the primary needs the replicas' announcements: it subscribes while it leads, so
    /// each announcement is delivered once rather than to every replica.
    async fn follow_acks(self: Arc<Self>) {
        let mut meta = self.meta.clone();
        loop {
            if !self.is_primary() {
                if meta.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let mut sub = match self.nats.subscribe(wal::applied_subject(&self.shard)).await {
                Ok(sub) => sub,
                Err(e) => {
                    tracing::warn!(shard = %self.shard, error = %e, "cannot subscribe to acks");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    msg = sub.next() => match msg {
                        Some(msg) => {
                            if let Ok(a) = serde_json::from_slice::<Applied>(&msg.payload) {
                                self.record_ack(a.server, a.seq);
                            }
                        }
                        None => break,
                    },
                    changed = meta.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if !self.is_primary() {
                            break;
                        }
                    }
                }
            }
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
                self.announce(Seq(seq)).await;
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
        let mut applied = self.store.position().seq.0;
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
                entries.push((
                    Seq(seq),
                    WalEntry::decode(&m.payload).map_err(|e| e.to_string()),
                ));
                ids.push(
                    m.headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Msg-Id"))
                        .map(|v| v.to_string()),
                );
            }
            if !entries.is_empty() {
                let count = entries.len();
                let (seq, term, outcomes) = self.commit(entries).await?;
                crate::metrics::applied(self.shard.as_str(), count, seq.0);
                applied = seq.0;
                self.applied.store(seq.0, Ordering::Release);
                self.term.store(term.0, Ordering::Release);
                self.resolve(&ids, outcomes);
                self.record_ack(self.server.clone(), seq);
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

    /// Applies a batch in one transaction: in place normally (a few microseconds of SQLite),
    /// on the blocking pool when the commit waits for the disk.
    async fn commit(
        &self,
        entries: Vec<(Seq, Result<WalEntry, String>)>,
    ) -> anyhow::Result<store::BatchApplied> {
        if self.store.is_durable() {
            store::blocking(&self.store, move |s| s.apply(&entries)).await
        } else {
            Ok(self.store.apply(&entries)?)
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

/// Acknowledges `msg` and, the consumer being AckAll, every message before it.
async fn ack(msg: Option<jetstream::Message>, last_ack: &mut Instant) -> anyhow::Result<()> {
    if let Some(msg) = msg {
        msg.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    *last_ack = Instant::now();
    Ok(())
}

/// Keys an op names (inserted rows' keys, or the updated/deleted key).
fn op_keys(op: &WalOp) -> Vec<i64> {
    match op {
        WalOp::Insert { rows } => rows
            .iter()
            .filter_map(|r| r.values().next().and_then(serde_json::Value::as_i64))
            .collect(),
        WalOp::Update { key, .. } | WalOp::Delete { key } => vec![*key],
        _ => Vec::new(),
    }
}

/// Rows an op carries, for sizing a group-committed entry.
fn op_rows(op: &WalOp) -> usize {
    match op {
        WalOp::Insert { rows } => rows.len(),
        _ => 1,
    }
}

/// Hands each request of a group its own outcome.
fn distribute(
    result: Result<Outcome, ApiError>,
    replies: Vec<oneshot::Sender<Result<Outcome, ApiError>>>,
) {
    match result {
        Err(e) => {
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
        }
        Ok(Outcome::Batch(outcomes)) if outcomes.len() == replies.len() => {
            for (r, o) in replies.into_iter().zip(outcomes) {
                let _ = r.send(Ok(o));
            }
        }
        Ok(outcome) if replies.len() == 1 => {
            if let Some(r) = replies.into_iter().next() {
                let _ = r.send(Ok(outcome));
            }
        }
        Ok(other) => {
            for r in replies {
                let _ = r.send(Err(ApiError::Internal(format!(
                    "a group-committed entry had an unexpected outcome {other:?}"
                ))));
            }
        }
    }
}
