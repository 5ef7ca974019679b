//! The proposer: a primary's group commit. Client requests queued by [`Replica::propose`] are
//! taken together ([`form_group`]), the ones that applying would reject are answered without
//! touching the log, the rest are appended as one WAL entry (split in halves while it does not
//! fit a NATS message, [`Splitter`]), and each request is answered with its own outcome
//! once the entry is applied here and by a majority.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use async_nats::jetstream::message::PublishMessage;
use shardline::wal::{self, now_ms, WalEntry, WalOp};
use shardline::{ApiError, Seq, Term};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{lock, Replica};
use crate::store::Outcome;

/// Most client requests a primary folds into one WAL entry (group commit).
pub const MAX_OPS_PER_ENTRY: usize = 128;
/// Most rows a group-committed entry may carry (a single larger request goes alone).
pub const MAX_ROWS_PER_ENTRY: usize = 2048;

/// Bytes the `Nats-Msg-Id` header adds to an appended message: `NATS/1.0\r\n`, the
/// header line with its 36-character UUID, and the blank line ending the headers. The server
/// counts headers and payload together against `max_payload`.
pub const HEADER_BYTES: usize =
    "NATS/1.0\r\n".len() + "Nats-Msg-Id: ".len() + 36 + "\r\n".len() + "\r\n".len();

/// Whether an entry of `payload` bytes, with its header, fits a message of at most `max`
/// bytes (0: no limit known).
pub fn fits(payload: usize, max: usize) -> bool {
    max == 0 || payload + HEADER_BYTES <= max
}

type Reply = oneshot::Sender<Result<Outcome, ApiError>>;

/// A client request waiting to be appended by the proposer.
pub struct Proposal {
    op: WalOp,
    term: Term,
    reply: Reply,
}

/// What group forming needs to know of a queued request.
pub trait Queued {
    /// The term of the primary that accepted the request.
    fn term(&self) -> Term;
    /// The rows it carries.
    fn rows(&self) -> usize;
}

impl Queued for Proposal {
    fn term(&self) -> Term {
        self.term
    }

    fn rows(&self) -> usize {
        op_rows(&self.op)
    }
}

/// Forms one group starting with `first` from what `next` yields without waiting: at most
/// [`MAX_OPS_PER_ENTRY`] requests of one term and at most [`MAX_ROWS_PER_ENTRY`] rows (a
/// single larger request goes alone). The request that does not fit is returned to start the
/// next group, so order is kept and nothing is lost.
pub fn form_group<P: Queued>(first: P, mut next: impl FnMut() -> Option<P>) -> (Vec<P>, Option<P>) {
    let term = first.term();
    let mut rows = first.rows();
    let mut group = vec![first];
    while group.len() < MAX_OPS_PER_ENTRY && rows < MAX_ROWS_PER_ENTRY {
        match next() {
            Some(p) if p.term() == term && rows + p.rows() <= MAX_ROWS_PER_ENTRY => {
                rows += p.rows();
                group.push(p);
            }
            Some(p) => return (group, Some(p)),
            None => break,
        }
    }
    (group, None)
}

/// One encoding attempt of a run of ops: the payload, or the ops back when it is too large.
pub enum Encoded<T, P> {
    Fits(P),
    TooLarge { ops: Vec<T>, size: usize },
}

/// A run of consecutive ops, in order, and what becomes of it.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<P> {
    /// `ops` ops appended as one entry with this payload.
    Entry { payload: P, ops: usize },
    /// A single op whose entry alone is `size` bytes, over the limit.
    TooLarge { size: usize },
}

/// Splits a run of ops into entries that fit: the whole run if it encodes small enough,
/// otherwise each half on its own, down to a single op, which is reported as too large. The
/// pieces come one at a time, in op order, so the caller appends each before encoding the
/// next (encoding a large group is the costly part; the runtime keeps serving in between).
pub struct Splitter<T> {
    /// Runs still to encode, the next one last.
    runs: Vec<Vec<T>>,
}

impl<T> Splitter<T> {
    pub fn new(ops: Vec<T>) -> Splitter<T> {
        Splitter { runs: vec![ops] }
    }

    /// The next piece, or `None` when every op is covered.
    pub fn next_piece<P>(
        &mut self,
        encode: &mut impl FnMut(Vec<T>) -> Encoded<T, P>,
    ) -> Option<Piece<P>> {
        loop {
            let ops = self.runs.pop()?;
            let n = ops.len();
            if n == 0 {
                continue;
            }
            match encode(ops) {
                Encoded::Fits(payload) => return Some(Piece::Entry { payload, ops: n }),
                Encoded::TooLarge { size, .. } if n == 1 => return Some(Piece::TooLarge { size }),
                Encoded::TooLarge { mut ops, .. } => {
                    let second = ops.split_off(n / 2);
                    self.runs.push(second);
                    self.runs.push(ops);
                }
            }
        }
    }
}

/// Takes requests off the queue, a group at a time, until the queue closes.
pub(super) async fn propose_forever(replica: Arc<Replica>, mut queue: mpsc::Receiver<Proposal>) {
    let mut carry: Option<Proposal> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let (group, rest) = form_group(first, || queue.try_recv().ok());
        carry = rest;
        replica.append_group(group).await;
    }
}

impl Replica {
    /// Submits one client request (`op`, checked by the caller to come from the primary of
    /// `term`) and waits until its entry is applied here (for its outcome) and by a majority
    /// of the shard's replicas. Concurrent requests are folded into one entry.
    pub async fn propose(&self, op: WalOp, term: Term) -> Result<Outcome, ApiError> {
        let started = StdInstant::now();
        // Counted as waiting from now until answered (or until the caller goes away).
        let _waiting = self.inflight.start();
        let (reply, rx) = oneshot::channel();
        let result = match enqueue(&self.proposals, Proposal { op, term, reply }) {
            Err(full) => Err(self.error(ApiError::Unavailable, full)),
            // The proposer's completion task enforces the commit timeout; this one only
            // guards against a lost reply.
            Ok(()) => match tokio::time::timeout(self.commit_timeout * 2, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(self.error(
                    ApiError::OutcomeUnknown,
                    "the replica stopped while the write was pending",
                )),
                Err(_) => Err(self.error(
                    ApiError::OutcomeUnknown,
                    "the write's outcome is unknown (timed out)",
                )),
            },
        };
        let outcome = match &result {
            Ok(_) => "applied".to_owned(),
            Err(e) => e.status().as_u16().to_string(),
        };
        crate::metrics::commit(self.shard.as_str(), &outcome, started.elapsed());
        result
    }

    /// Appends a group (all of one term): refuses the doomed requests, then appends the rest
    /// as entries that fit.
    async fn append_group(self: &Arc<Self>, group: Vec<Proposal>) {
        let Some(term) = group.first().map(|p| p.term) else {
            return;
        };
        let group = self.refuse_doomed(drop_abandoned(group)).await;
        if group.is_empty() {
            return;
        }
        let (ops, replies): (Vec<WalOp>, Vec<Reply>) =
            group.into_iter().map(|p| (p.op, p.reply)).unzip();
        let max = self.nats.server_info().max_payload;
        let mut encode = |mut ops: Vec<WalOp>| {
            let op = match ops.len() {
                1 => ops.pop().expect("one op"),
                _ => WalOp::Batch { ops },
            };
            let entry = WalEntry {
                op,
                term,
                by: self.server.to_string(),
                ts_ms: now_ms(),
            };
            let payload = entry.encode();
            if !fits(payload.len(), max) {
                let ops = match entry.op {
                    WalOp::Batch { ops } => ops,
                    one => vec![one],
                };
                Encoded::TooLarge {
                    ops,
                    size: payload.len() + HEADER_BYTES,
                }
            } else {
                Encoded::Fits(payload)
            }
        };
        let mut splitter = Splitter::new(ops);
        let mut replies = replies.into_iter();
        while let Some(piece) = splitter.next_piece(&mut encode) {
            match piece {
                Piece::TooLarge { size } => {
                    // Refused with 413 rather than a 503 from the failed publish.
                    let e = self.error(
                        ApiError::PayloadTooLarge,
                        format_args!("the write needs a {size}-byte log entry; the log takes at most {max} bytes per entry (send fewer or smaller rows)"),
                    );
                    for r in replies.by_ref().take(1) {
                        let _ = r.send(Err(e.clone()));
                    }
                }
                Piece::Entry { payload, ops } => {
                    let replies = replies.by_ref().take(ops).collect();
                    self.append_entry(payload, replies).await;
                }
            }
        }
    }

    /// Appends one entry and hands the wait for its outcome to a task, so the next append can
    /// start (in durable mode, once this entry is committed).
    async fn append_entry(self: &Arc<Self>, payload: Vec<u8>, replies: Vec<Reply>) {
        let deadline = Instant::now() + self.commit_timeout;
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), tx);
        let seq = match self.append(&id, payload, deadline).await {
            Ok(seq) => seq,
            Err(e) => {
                lock(&self.pending).remove(&id);
                for r in replies {
                    let _ = r.send(Err(e.clone()));
                }
                return;
            }
        };
        let me = self.clone();
        let cancel = self.cancel.clone();
        // On stop the replies are dropped: the writers answer that the outcome is unknown.
        let completion = self.tasks.spawn(async move {
            if let Some(result) = cancel
                .run_until_cancelled(me.complete(seq, rx, deadline))
                .await
            {
                distribute(result, replies);
            }
            lock(&me.pending).remove(&id);
        });
        // Durable mode: every entry costs an fsync on every replica, so the next entry waits
        // until this one is committed and takes everything that arrived meanwhile (classic
        // group commit). Otherwise entries are pipelined.
        if self.store.is_durable() {
            let _ = completion.await;
        }
    }

    /// Answers, without touching the log, the requests that applying would reject: inserts
    /// of keys that exist and updates/deletes of keys that do not. One query covers the
    /// whole group. (Applying stays authoritative; this only keeps rejects out of the WAL.)
    async fn refuse_doomed(&self, group: Vec<Proposal>) -> Vec<Proposal> {
        let keys: Vec<i64> = group.iter().flat_map(|p| op_keys(&p.op)).collect();
        let existing: HashSet<i64> = match self.store.existing(&keys) {
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
            .map_err(|e| {
                self.error(
                    ApiError::LogUnavailable,
                    format_args!("the WAL is unreachable: {e}"),
                )
            })?;
        let ack = tokio::time::timeout_at(deadline, ack)
            .await
            .map_err(|_| {
                self.error(
                    ApiError::LogUnavailable,
                    "the WAL did not acknowledge the append in time",
                )
            })?
            .map_err(|e| {
                self.error(
                    ApiError::LogUnavailable,
                    format_args!("the WAL rejected the append: {e}"),
                )
            })?;
        Ok(Seq(ack.sequence))
    }

    /// Waits for the appended entry's outcome here and for a majority to have applied it.
    async fn complete(
        &self,
        seq: Seq,
        rx: oneshot::Receiver<(Seq, Outcome)>,
        deadline: Instant,
    ) -> Result<Outcome, ApiError> {
        let (_, outcome) = tokio::time::timeout_at(deadline, rx)
            .await
            .map_err(|_| {
                self.error(
                    ApiError::OutcomeUnknown,
                    format_args!(
                        "entry {seq} was appended but not applied in time; its outcome is unknown"
                    ),
                )
            })?
            .map_err(|_| {
                self.error(
                    ApiError::OutcomeUnknown,
                    "the replica stopped while the write was pending",
                )
            })?;
        if let Outcome::StaleTerm { entry, current } = outcome {
            return Err(self.error(
                ApiError::Deposed,
                format_args!("this primary was deposed (entry of term {entry} skipped, the log is at term {current}); retry"),
            ));
        }
        self.quorum.wait_for_majority(seq, deadline).await?;
        Ok(outcome)
    }
}

/// Queues a proposal without waiting: a full queue refuses it at once (nothing is appended,
/// so the caller may say "not applied"), as does a stopped proposer.
fn enqueue(queue: &mpsc::Sender<Proposal>, p: Proposal) -> Result<(), String> {
    queue.try_send(p).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => format!(
            "overloaded ({} writes queued); retry later",
            queue.max_capacity()
        ),
        mpsc::error::TrySendError::Closed(_) => "the replica is stopping".to_owned(),
    })
}

/// Drops the requests whose caller is gone (the HTTP request was dropped, or gave up after
/// its timeout and answered): nobody waits for them, and appending one now would apply a
/// write its client may have been told failed.
fn drop_abandoned(mut group: Vec<Proposal>) -> Vec<Proposal> {
    group.retain(|p| !p.reply.is_closed());
    group
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
fn distribute(result: Result<Outcome, ApiError>, replies: Vec<Reply>) {
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

#[cfg(test)]
mod tests;
