//! Request coalescing. For writes: the gateway keeps at most `--write-inflight` requests per shard in
//! flight to the shard's primary; a small write that arrives while they are all busy waits
//! in the shard's lane, and the next free sender takes everything waiting as one
//! `POST /write_batch` ([`shardline::internal::WriteBatch`]). The primary proposes a batch's
//! writes together, so under load many clients' writes share one request, one log entry and
//! one commit round, while a lone write still goes at once, as a plain `/write`.
//!
//! Each write keeps its own answer: the batch answer carries one result per write, and a
//! failure of the batch as a whole (no primary, no answer) is every write's failure, with
//! the same retry rules as a single write (`upstream::to_primary`: a batch is sent again
//! only when it certainly reached no primary).
//!
//! Reads at the `any` level do the same per shard server (`--read-inflight`): the reads that
//! queue behind the ones in flight to a server go as one `POST /read_batch`, answered in
//! [`shardline::internal::frames`], one frame per read ([`read`]).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::Method;
use serde::Serialize;
use serde_json::Value;
use shardline::internal::{frames, WriteBatchAnswer, WriteRequest};
use shardline::names::{ServerName, ShardId};
use shardline::ApiError;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::router::AppState;
use crate::upstream::{self, CallError};

/// Writes of more rows than this are sent on their own: coalescing pays for many small
/// writes, and a big one would make the others wait for its encoding.
pub const MAX_COALESCED_ROWS: usize = 64;
/// Most writes in one batch (the most requests the primary folds into one log entry).
pub const MAX_WRITES_PER_BATCH: usize = shardline::internal::MAX_BATCH_REQUESTS;
/// Most rows in one batch (the primary's rows per entry).
pub const MAX_ROWS_PER_BATCH: usize = 2048;

/// What a write gets back: its rows (the caller's summary counts them) and its result.
pub type Answer = (Vec<Value>, Result<(), ApiError>);

/// A write waiting in a lane.
pub struct Queued {
    rows: Vec<Value>,
    started: Instant,
    reply: oneshot::Sender<Answer>,
}

/// What a lane needs to know of a waiting write.
pub trait Weighed {
    fn rows(&self) -> usize;
}

impl Weighed for Queued {
    fn rows(&self) -> usize {
        self.rows.len()
    }
}

/// One shard's queue and how many senders work on it.
#[derive(Debug)]
pub struct Lane<T> {
    senders: usize,
    queue: VecDeque<T>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane {
            senders: 0,
            queue: VecDeque::new(),
        }
    }
}

impl<T: Weighed> Lane<T> {
    /// Queues a write; true when the caller must start a sender for the lane (fewer than
    /// `max_senders` are at work).
    pub fn push(&mut self, item: T, max_senders: usize) -> bool {
        self.queue.push_back(item);
        if self.senders < max_senders {
            self.senders += 1;
            true
        } else {
            false
        }
    }

    /// The next batch for a sender, in arrival order, within [`MAX_WRITES_PER_BATCH`] and
    /// [`MAX_ROWS_PER_BATCH`]; `None` when nothing waits, and the sender stops.
    pub fn take(&mut self) -> Option<Vec<T>> {
        let Some(first) = self.queue.pop_front() else {
            self.senders = self.senders.saturating_sub(1);
            return None;
        };
        let mut rows = first.rows();
        let mut batch = vec![first];
        while batch.len() < MAX_WRITES_PER_BATCH {
            match self.queue.front() {
                Some(next) if rows + next.rows() <= MAX_ROWS_PER_BATCH => {
                    rows += next.rows();
                    batch.extend(self.queue.pop_front());
                }
                _ => break,
            }
        }
        Some(batch)
    }
}

/// The lanes of every shard (or server), keyed by `K`.
pub struct Lanes<K, T> {
    max_senders: usize,
    lanes: Mutex<HashMap<K, Lane<T>>>,
}

impl<K: Hash + Eq + Clone, T: Weighed> Lanes<K, T> {
    pub fn new(max_senders: usize) -> Lanes<K, T> {
        Lanes {
            max_senders,
            lanes: Mutex::default(),
        }
    }

    /// Whether requests go through lanes at all (`0` senders: each goes on its own).
    pub fn enabled(&self) -> bool {
        self.max_senders > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Lane<T>>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` in `key`'s lane; true when the caller must start a sender for it.
    pub fn push(&self, key: &K, item: T) -> bool {
        let max = self.max_senders;
        self.lock().entry(key.clone()).or_default().push(item, max)
    }

    /// The next batch of `key`'s lane for one of its senders; `None` stops that sender.
    pub fn take(&self, key: &K) -> Option<Vec<T>> {
        self.lock().get_mut(key).and_then(Lane::take)
    }
}

/// The write lanes: one per shard.
pub type WriteLanes = Lanes<ShardId, Queued>;

/// Whether a write of `rows` rows goes through its shard's lane.
pub fn coalesces(lanes: &WriteLanes, rows: usize) -> bool {
    lanes.enabled() && rows <= MAX_COALESCED_ROWS
}

/// Sends one shard's rows through its lane and waits for their answer.
pub async fn submit(state: &Arc<AppState>, shard: &ShardId, rows: Vec<Value>) -> Answer {
    let (reply, answer) = oneshot::channel();
    let item = Queued {
        rows,
        started: Instant::now(),
        reply,
    };
    if state.lanes.push(shard, item) {
        // A task of its own: the sender outlives this request if the client goes away, so
        // the writes it carries still get their outcome recorded.
        tokio::spawn(send_forever(state.clone(), shard.clone()));
    }
    answer.await.unwrap_or_else(|_| {
        (
            Vec::new(),
            Err(ApiError::OutcomeUnknown(format!(
                "shard {shard}: the write's sender stopped; the write may or may not have been applied"
            ))),
        )
    })
}

async fn send_forever(state: Arc<AppState>, shard: ShardId) {
    while let Some(batch) = state.lanes.take(&shard) {
        send(&state, &shard, batch).await;
    }
}

/// Sends a batch: a lone write as a plain `/write`, several as one `/write_batch`.
async fn send(state: &AppState, shard: &ShardId, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        if let Some(q) = batch.pop() {
            let req = WriteRequest {
                shard: shard.clone(),
                data: q.rows,
            };
            let result = match upstream::encode(&req) {
                Ok(body) => {
                    crate::write::to_primary(state, shard.as_str(), "write", Method::POST, body)
                        .await
                }
                Err(e) => Err(e),
            };
            let _ = q.reply.send((req.data, result));
        }
        return;
    }
    crate::metrics::write_batch(shard.as_str(), batch.len());
    let results = send_batch(state, shard, &batch).await;
    for (q, result) in batch.into_iter().zip(results) {
        crate::write::record(shard.as_str(), "write", &result, q.started);
        let _ = q.reply.send((q.rows, result));
    }
}

/// The body of a [`shardline::internal::WriteBatch`], borrowing the rows.
#[derive(Serialize)]
struct BatchBody<'a> {
    shard: &'a ShardId,
    writes: Vec<&'a [Value]>,
}

/// One result per write of the batch, in order.
async fn send_batch(
    state: &AppState,
    shard: &ShardId,
    batch: &[Queued],
) -> Vec<Result<(), ApiError>> {
    let n = batch.len();
    let body = BatchBody {
        shard,
        writes: batch.iter().map(|q| q.rows.as_slice()).collect(),
    };
    let answer = match upstream::encode(&body) {
        Ok(body) => {
            upstream::to_primary(
                state,
                shard.as_str(),
                upstream::Kind::Write,
                Method::POST,
                "/write_batch",
                body,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let decoded = answer.and_then(|bytes| {
        upstream::decode::<WriteBatchAnswer>(&bytes)
            .ok()
            .filter(|a| a.results.len() == n)
            .ok_or_else(|| {
                ApiError::OutcomeUnknown(format!(
                    "shard {shard}: the primary's answer to a batch of {n} writes does not decode; they may or may not have been applied"
                ))
            })
    });
    match decoded {
        Ok(answer) => answer
            .results
            .into_iter()
            .map(|r| match (r.http, r.error) {
                (200, _) => Ok(()),
                (status, Some(body)) => Err(upstream::error_from_body(status, body)),
                (status, None) => Err(ApiError::from_status(
                    status,
                    format!("shard {shard}: HTTP {status}"),
                )),
            })
            .collect(),
        Err(e) => vec![Err(e); n],
    }
}

/// A read waiting in a server's lane: its encoded `/read` body.
pub struct QueuedRead {
    req: Bytes,
    reply: oneshot::Sender<Result<Bytes, CallError>>,
}

impl Weighed for QueuedRead {
    fn rows(&self) -> usize {
        1
    }
}

/// The read lanes: one per shard server.
pub type ReadLanes = Lanes<ServerName, QueuedRead>;

/// Sends an `any`-level `/read` body to `server` through its lane; the answer is what
/// [`upstream::call`] of `/read` gives.
pub async fn read(
    state: &Arc<AppState>,
    server: &ServerName,
    req: Bytes,
) -> Result<Bytes, CallError> {
    let (reply, answer) = oneshot::channel();
    if state.read_lanes.push(server, QueuedRead { req, reply }) {
        tokio::spawn(read_forever(state.clone(), server.clone()));
    }
    answer
        .await
        .unwrap_or_else(|_| Err(CallError::Transport("the read's sender stopped".into())))
}

async fn read_forever(state: Arc<AppState>, server: ServerName) {
    while let Some(batch) = state.read_lanes.take(&server) {
        send_reads(&state, &server, batch).await;
    }
}

/// Sends a lone read as a plain `/read`, several as one `/read_batch` whose body is their
/// `/read` bodies, as they were encoded, in a list.
async fn send_reads(state: &AppState, server: &ServerName, mut batch: Vec<QueuedRead>) {
    let target = {
        let topology = state.topology.borrow();
        topology
            .routing()
            .ok()
            .and_then(|r| r.target(server.as_str()))
    };
    let Some(target) = target else {
        for q in batch {
            let _ = q.reply.send(Err(CallError::Connect(format!(
                "server {server} has no address"
            ))));
        }
        return;
    };
    if batch.len() == 1 {
        if let Some(q) = batch.pop() {
            let answer = upstream::call(
                &state.upstream,
                Method::POST,
                target.uri("/read"),
                Some(q.req),
            )
            .await;
            let _ = q.reply.send(answer);
        }
        return;
    }
    let n = batch.len();
    crate::metrics::read_batch(server.as_str(), n);
    let mut body = Vec::with_capacity(16 + batch.iter().map(|q| q.req.len() + 1).sum::<usize>());
    body.extend_from_slice(br#"{"reads":["#);
    for (i, q) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&q.req);
    }
    body.extend_from_slice(b"]}");
    let answer = upstream::call(
        &state.upstream,
        Method::POST,
        target.uri("/read_batch"),
        Some(body.into()),
    )
    .await;
    let parts = answer.and_then(|bytes| {
        frames::split(&bytes)
            .ok()
            .filter(|parts| parts.len() == n)
            .ok_or_else(|| {
                CallError::Transport(format!(
                    "the answer to a batch of {n} reads is not {n} frames"
                ))
            })
    });
    match parts {
        Ok(parts) => {
            for (q, (status, body)) in batch.into_iter().zip(parts) {
                let result = if status == 200 {
                    Ok(body)
                } else {
                    Err(CallError::Status(upstream::error_from(status, &body)))
                };
                let _ = q.reply.send(result);
            }
        }
        Err(e) => {
            for q in batch {
                let _ = q.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct W(usize);
    impl Weighed for W {
        fn rows(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn a_lane_starts_at_most_its_senders_and_stops_them_when_empty() {
        let mut lane = Lane::default();
        assert!(lane.push(W(1), 2));
        assert!(lane.push(W(1), 2));
        assert!(!lane.push(W(1), 2), "a third sender is not started");
        assert_eq!(
            lane.take().map(|b| b.len()),
            Some(3),
            "everything waiting goes together"
        );
        assert!(lane.take().is_none());
        assert_eq!(lane.senders, 1, "the sender that found nothing stopped");
        assert!(lane.push(W(1), 2), "a free slot starts a sender again");
        assert!(lane.take().is_some());
        assert!(lane.take().is_none());
        assert!(lane.take().is_none());
        assert_eq!(lane.senders, 0);
    }

    #[test]
    fn batches_keep_order_and_the_limits() {
        let mut lane = Lane::default();
        for _ in 0..MAX_WRITES_PER_BATCH + 3 {
            lane.push(W(1), 1);
        }
        assert_eq!(lane.take().map(|b| b.len()), Some(MAX_WRITES_PER_BATCH));
        assert_eq!(lane.take().map(|b| b.len()), Some(3));
        assert!(lane.take().is_none());

        let mut lane = Lane::default();
        let big = MAX_COALESCED_ROWS;
        let fit = MAX_ROWS_PER_BATCH / big;
        for _ in 0..fit + 1 {
            lane.push(W(big), 1);
        }
        let first = lane.take().unwrap();
        assert_eq!(
            first.len(),
            fit,
            "rows per batch stay within the entry's limit"
        );
        assert_eq!(first.iter().map(|w| w.0).sum::<usize>(), MAX_ROWS_PER_BATCH);
        assert_eq!(lane.take().map(|b| b.len()), Some(1));
    }
}
