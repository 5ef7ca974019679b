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
use serde_json::Value;
use shardline::internal::{frames, WriteBatchAnswer};
use shardline::names::{ServerName, ShardId};
use shardline::ApiError;
use tokio::sync::{oneshot, Notify};
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
/// Most bytes of requests in one batch (and never more than the gateway's own
/// `--body-limit`, which the servers are run with too): a batch must never be refused for
/// its size when its requests would each have been taken.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Most requests waiting in one lane; one more is refused at once (503, not sent).
pub const MAX_QUEUED: usize = 4096;

/// A write waiting in a lane: its rows, encoded once as the JSON array `/write` and
/// `/write_batch` carry.
pub struct Queued {
    data: Bytes,
    rows: usize,
    started: Instant,
    reply: oneshot::Sender<Result<(), ApiError>>,
}

/// What a lane needs to know of a waiting request.
pub trait Waiting {
    /// The rows it carries (a read: the most its range can match).
    fn rows(&self) -> usize;
    /// Its size in a batch's body.
    fn bytes(&self) -> usize;
    /// When it was queued.
    fn queued_at(&self) -> Instant;
    /// Its caller went away: it is dropped without being sent.
    fn abandoned(&self) -> bool;
    /// Answers it without sending it: 503 `unavailable` (it was certainly not applied).
    fn refuse(self, message: String);
}

impl Waiting for Queued {
    fn rows(&self) -> usize {
        self.rows
    }
    fn bytes(&self) -> usize {
        self.data.len()
    }
    fn queued_at(&self) -> Instant {
        self.started
    }
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
    fn refuse(self, message: String) {
        let _ = self.reply.send(Err(ApiError::Unavailable(message)));
    }
}

/// One shard's queue and how many senders work on it.
#[derive(Debug)]
pub struct Lane<T> {
    senders: usize,
    queue: VecDeque<T>,
    /// Requests ever queued here (a lingering sender counts the ones since it began).
    arrivals: u64,
    /// Woken at every arrival, for a lingering sender.
    arrived: Arc<Notify>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane {
            senders: 0,
            queue: VecDeque::new(),
            arrivals: 0,
            arrived: Arc::default(),
        }
    }
}

/// What became of a request put in a lane.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// Queued, and the caller must start a sender for the lane.
    StartSender,
    /// Queued behind the senders at work.
    Queued,
    /// Not queued: the lane holds [`MAX_QUEUED`] already.
    Full(T),
}

impl<T: Waiting> Lane<T> {
    /// Queues a request; a sender is to be started when fewer than `max_senders` are at work.
    pub fn push(&mut self, item: T, max_senders: usize) -> Pushed<T> {
        if self.queue.len() >= MAX_QUEUED {
            return Pushed::Full(item);
        }
        self.queue.push_back(item);
        self.arrivals += 1;
        if self.senders < max_senders {
            self.senders += 1;
            Pushed::StartSender
        } else {
            Pushed::Queued
        }
    }

    /// Whether what waits fills a batch already (by count, rows or bytes, as [`Lane::take`]
    /// cuts them).
    fn holds_full_batch(&self, max_bytes: usize) -> bool {
        if self.queue.len() >= MAX_WRITES_PER_BATCH {
            return true;
        }
        let (rows, bytes) = self.queue.iter().fold((0usize, 0usize), |(r, b), q| {
            (r.saturating_add(q.rows()), b.saturating_add(q.bytes()))
        });
        rows >= MAX_ROWS_PER_BATCH || bytes >= max_bytes
    }

    /// The next batch for a sender, in arrival order, within [`MAX_WRITES_PER_BATCH`],
    /// [`MAX_ROWS_PER_BATCH`] and `max_bytes` (a larger request goes alone); `None` when nothing waits, and
    /// the sender stops. Requests whose caller went away are dropped; those queued more
    /// than `max_wait` before `now` are refused, unsent: their lane's requests in flight are
    /// not coming back, and a request that waits longer would outlive its caller's patience.
    pub fn take(
        &mut self,
        now: Instant,
        max_wait: std::time::Duration,
        max_bytes: usize,
    ) -> Option<Vec<T>> {
        let mut batch: Vec<T> = Vec::new();
        let (mut rows, mut bytes) = (0usize, 0usize);
        while batch.len() < MAX_WRITES_PER_BATCH {
            let Some(next) = self.queue.front() else {
                break;
            };
            let fits = batch.is_empty()
                || (rows.saturating_add(next.rows()) <= MAX_ROWS_PER_BATCH
                    && bytes.saturating_add(next.bytes()) <= max_bytes);
            if !fits {
                break;
            }
            let Some(next) = self.queue.pop_front() else {
                break;
            };
            let waited = now.saturating_duration_since(next.queued_at());
            if next.abandoned() {
                continue;
            }
            if waited > max_wait {
                next.refuse(format!(
                    "waited {} ms for the requests in flight before it (limit {} ms); not sent, retry",
                    waited.as_millis(),
                    max_wait.as_millis()
                ));
                continue;
            }
            rows = rows.saturating_add(next.rows());
            bytes = bytes.saturating_add(next.bytes());
            batch.push(next);
        }
        if batch.is_empty() {
            self.senders = self.senders.saturating_sub(1);
            return None;
        }
        Some(batch)
    }
}

/// The lanes of every shard (or server), keyed by `K`.
pub struct Lanes<K, T> {
    max_senders: usize,
    /// Longest a request may wait in a lane before it is refused unsent.
    max_wait: std::time::Duration,
    /// Most bytes of requests in one batch.
    max_bytes: usize,
    lanes: Mutex<HashMap<K, Lane<T>>>,
}

impl<K: Hash + Eq + Clone, T: Waiting> Lanes<K, T> {
    pub fn new(max_senders: usize, max_wait: std::time::Duration, max_bytes: usize) -> Lanes<K, T> {
        Lanes {
            max_senders,
            max_wait,
            max_bytes: max_bytes.min(MAX_BATCH_BYTES),
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

    /// Queues `item` in `key`'s lane.
    pub fn push(&self, key: &K, item: T) -> Pushed<T> {
        let max = self.max_senders;
        let mut lanes = self.lock();
        let lane = lanes.entry(key.clone()).or_default();
        let pushed = lane.push(item, max);
        lane.arrived.notify_waiters();
        pushed
    }

    /// Holds a sender of `key`'s lane until `expect` more requests arrived, the lane holds a
    /// full batch, or `max` passed (at most half the longest a request may wait; tokio's
    /// timers round it up to the next millisecond); with `max` or `expect` zero it returns
    /// at once.
    pub async fn linger(&self, key: &K, expect: usize, max: std::time::Duration) {
        let max = max.min(self.max_wait / 2);
        if max.is_zero() || expect == 0 {
            return;
        }
        let deadline = Instant::now() + max;
        let (arrived, start) = match self.lock().get(key) {
            Some(lane) => (lane.arrived.clone(), lane.arrivals),
            None => return,
        };
        loop {
            let notified = arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let lanes = self.lock();
                let Some(lane) = lanes.get(key) else { return };
                let came = lane.arrivals.saturating_sub(start);
                if came >= expect as u64 || lane.holds_full_batch(self.max_bytes) {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// The next batch of `key`'s lane for one of its senders; `None` stops that sender, and
    /// a lane left without senders or requests is forgotten (shards and servers come and go).
    pub fn take(&self, key: &K) -> Option<Vec<T>> {
        let now = Instant::now();
        let mut lanes = self.lock();
        let lane = lanes.get_mut(key)?;
        let batch = lane.take(now, self.max_wait, self.max_bytes);
        if batch.is_none() && lane.senders == 0 && lane.queue.is_empty() {
            lanes.remove(key);
        }
        batch
    }

    /// How many lanes exist.
    #[cfg(test)]
    fn lanes(&self) -> usize {
        self.lock().len()
    }

    /// A sender of `key`'s lane ended without finishing (it panicked): it no longer counts,
    /// and when it was the last, what waits is dropped (each caller hears that its sender
    /// stopped) rather than left waiting for a sender that will not come.
    fn sender_lost(&self, key: &K) {
        let mut lanes = self.lock();
        if let Some(lane) = lanes.get_mut(key) {
            lane.senders = lane.senders.saturating_sub(1);
            if lane.senders == 0 {
                lane.queue.clear();
            }
        }
    }
}

/// Held by a lane's sender task: if the task unwinds, the lane learns it lost a sender.
struct SenderGuard<'a, K: Hash + Eq + Clone, T: Waiting> {
    lanes: &'a Lanes<K, T>,
    key: &'a K,
}

impl<K: Hash + Eq + Clone, T: Waiting> Drop for SenderGuard<'_, K, T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.lanes.sender_lost(self.key);
        }
    }
}

/// The write lanes: one per shard.
pub type WriteLanes = Lanes<ShardId, Queued>;

/// Whether a write of `rows` rows goes through its shard's lane.
pub fn coalesces(lanes: &WriteLanes, rows: usize) -> bool {
    lanes.enabled() && rows <= MAX_COALESCED_ROWS
}

/// Sends one shard's rows through its lane and waits for their outcome.
pub async fn submit(
    state: &Arc<AppState>,
    shard: &ShardId,
    rows: &[Value],
) -> Result<(), ApiError> {
    let (reply, answer) = oneshot::channel();
    let item = Queued {
        data: upstream::encode(rows)?,
        rows: rows.len(),
        started: Instant::now(),
        reply,
    };
    match state.lanes.push(shard, item) {
        // A task of its own: the sender outlives this request if the client goes away, so
        // the writes it carries still get their outcome recorded.
        Pushed::StartSender => {
            tokio::spawn(send_forever(state.clone(), shard.clone()));
        }
        Pushed::Queued => {}
        Pushed::Full(_) => {
            return Err(ApiError::Unavailable(format!(
                "shard {shard}: overloaded ({MAX_QUEUED} writes wait for its primary); not sent, retry later"
            )));
        }
    }
    answer.await.unwrap_or_else(|_| {
        Err(ApiError::OutcomeUnknown(format!(
            "shard {shard}: the write's sender stopped; the write may or may not have been applied"
        )))
    })
}

async fn send_forever(state: Arc<AppState>, shard: ShardId) {
    let _guard = SenderGuard {
        lanes: &state.lanes,
        key: &shard,
    };
    let linger = state.config.write_linger();
    let mut answered: usize = 0;
    loop {
        // Before each batch after the first, wait (at most `--write-linger-us`) for half as
        // many writes as the last batch carried: under load the writers just answered send
        // again at once, and without the wait the next batch would leave with only the few
        // that queued meanwhile, the rest waiting a whole round behind it (the shard's
        // writers split into two alternating halves). Their next writes spread over every
        // shard, so half is what reliably arrives in time. A lone writer's next write is
        // sent the moment it arrives; a lane whose writers do not come back loses `linger`.
        state
            .lanes
            .linger(&shard, answered.div_ceil(2), linger)
            .await;
        let Some(batch) = state.lanes.take(&shard) else {
            break;
        };
        answered = batch.len();
        send(&state, &shard, batch).await;
    }
}

/// Sends a batch: a lone write as a plain `/write`, several as one `/write_batch`.
async fn send(state: &AppState, shard: &ShardId, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        if let Some(q) = batch.pop() {
            send_alone(state, shard, q).await;
        }
        return;
    }
    crate::metrics::write_batch(shard.as_str(), batch.len());
    let n = batch.len();
    let results = match send_batch(state, shard, &batch).await {
        Ok(results) => results,
        // Refused whole as too large (nothing of it was applied): each write alone.
        Err(ApiError::PayloadTooLarge(_)) => {
            let alone = batch.into_iter().map(|q| send_alone(state, shard, q));
            futures::future::join_all(alone).await;
            return;
        }
        Err(e) => vec![Err(e); n],
    };
    for (q, result) in batch.into_iter().zip(results) {
        crate::write::record(shard.as_str(), "write", &result, q.started);
        let _ = q.reply.send(result);
    }
}

/// Sends one write as a plain `/write` ([`shardline::internal::WriteRequest`]).
async fn send_alone(state: &AppState, shard: &ShardId, q: Queued) {
    let body = json_object(shard, "data", [&q.data].into_iter(), false);
    let result = crate::write::to_primary(state, shard.as_str(), "write", Method::POST, body).await;
    let _ = q.reply.send(result);
}

/// `{"shard": <shard>, "<field>": <value>}`, or with `list` `"<field>": [values]`, from
/// values already encoded.
fn json_object<'a>(
    shard: &ShardId,
    field: &str,
    values: impl Iterator<Item = &'a Bytes>,
    list: bool,
) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(br#"{"shard":"#);
    // A shard id is a validated name; encoding it cannot fail.
    out.extend_from_slice(&serde_json::to_vec(shard).unwrap_or_default());
    out.extend_from_slice(format!(r#","{field}":"#).as_bytes());
    if list {
        push_list(&mut out, values);
    } else {
        values.for_each(|v| out.extend_from_slice(v));
    }
    out.push(b'}');
    out.into()
}

/// Appends the JSON list `[v1,v2,…]` of values already encoded.
fn push_list<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = &'a Bytes>) {
    out.push(b'[');
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(v);
    }
    out.push(b']');
}

/// One result per write of the batch, in order; `Err` when the batch failed as a whole.
async fn send_batch(
    state: &AppState,
    shard: &ShardId,
    batch: &[Queued],
) -> Result<Vec<Result<(), ApiError>>, ApiError> {
    let n = batch.len();
    let body = json_object(shard, "writes", batch.iter().map(|q| &q.data), true);
    let answer = upstream::to_primary(
        state,
        shard.as_str(),
        upstream::Kind::Write,
        Method::POST,
        "/write_batch",
        body,
    )
    .await;
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
    Ok(decoded?
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
        .collect())
}

/// A read waiting in a server's lane: its encoded `/read` body and the most rows it can
/// match (its range's width).
pub struct QueuedRead {
    req: Bytes,
    width: usize,
    queued_at: Instant,
    reply: oneshot::Sender<Result<Bytes, CallError>>,
}

impl Waiting for QueuedRead {
    fn rows(&self) -> usize {
        self.width
    }
    fn bytes(&self) -> usize {
        self.req.len()
    }
    fn queued_at(&self) -> Instant {
        self.queued_at
    }
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
    fn refuse(self, message: String) {
        let _ = self
            .reply
            .send(Err(CallError::Status(ApiError::Unavailable(message))));
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
    width: usize,
) -> Result<Bytes, CallError> {
    let (reply, answer) = oneshot::channel();
    let item = QueuedRead {
        req,
        width,
        queued_at: Instant::now(),
        reply,
    };
    match state.read_lanes.push(server, item) {
        Pushed::StartSender => {
            tokio::spawn(read_forever(state.clone(), server.clone()));
        }
        Pushed::Queued => {}
        Pushed::Full(_) => {
            return Err(CallError::Status(ApiError::Unavailable(format!(
                "server {server}: overloaded ({MAX_QUEUED} reads wait for it)"
            ))));
        }
    }
    answer
        .await
        .unwrap_or_else(|_| Err(CallError::Transport("the read's sender stopped".into())))
}

async fn read_forever(state: Arc<AppState>, server: ServerName) {
    let _guard = SenderGuard {
        lanes: &state.read_lanes,
        key: &server,
    };
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
    body.extend_from_slice(br#"{"reads":"#);
    push_list(&mut body, batch.iter().map(|q| &q.req));
    body.push(b'}');
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
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;

    /// A stand-in request: its rows, when queued, whether its caller left, and where its
    /// refusal goes.
    #[derive(Debug, PartialEq)]
    struct W {
        rows: usize,
        at: Instant,
        gone: bool,
        refused: Rc<RefCell<Vec<String>>>,
    }

    impl Waiting for W {
        fn rows(&self) -> usize {
            self.rows
        }
        fn bytes(&self) -> usize {
            self.rows.saturating_mul(10)
        }
        fn queued_at(&self) -> Instant {
            self.at
        }
        fn abandoned(&self) -> bool {
            self.gone
        }
        fn refuse(self, message: String) {
            self.refused.borrow_mut().push(message);
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    fn w(rows: usize) -> W {
        W {
            rows,
            at: Instant::now(),
            gone: false,
            refused: Rc::default(),
        }
    }

    fn sizes(batch: Option<Vec<W>>) -> Option<Vec<usize>> {
        batch.map(|b| b.iter().map(|w| w.rows).collect())
    }

    #[test]
    fn a_lane_starts_at_most_its_senders_and_stops_them_when_empty() {
        let now = Instant::now();
        let mut lane = Lane::default();
        assert_eq!(lane.push(w(1), 2), Pushed::StartSender);
        assert_eq!(lane.push(w(1), 2), Pushed::StartSender);
        assert_eq!(lane.push(w(1), 2), Pushed::Queued, "no third sender");
        assert_eq!(
            sizes(lane.take(now, WAIT, usize::MAX)),
            Some(vec![1, 1, 1]),
            "everything waiting goes together"
        );
        assert!(lane.take(now, WAIT, usize::MAX).is_none());
        assert_eq!(lane.senders, 1, "the sender that found nothing stopped");
        assert_eq!(
            lane.push(w(1), 2),
            Pushed::StartSender,
            "a free slot starts a sender again"
        );
        assert!(lane.take(now, WAIT, usize::MAX).is_some());
        assert!(lane.take(now, WAIT, usize::MAX).is_none());
        assert!(lane.take(now, WAIT, usize::MAX).is_none());
        assert_eq!(lane.senders, 0);
    }

    #[test]
    fn batches_keep_order_and_the_limits() {
        let now = Instant::now();
        let mut lane = Lane::default();
        for _ in 0..MAX_WRITES_PER_BATCH + 3 {
            lane.push(w(1), 1);
        }
        let first = lane.take(now, WAIT, usize::MAX).unwrap();
        assert_eq!(first.len(), MAX_WRITES_PER_BATCH);
        assert_eq!(lane.take(now, WAIT, usize::MAX).map(|b| b.len()), Some(3));
        assert!(lane.take(now, WAIT, usize::MAX).is_none());

        let mut lane = Lane::default();
        let big = MAX_COALESCED_ROWS;
        let fit = MAX_ROWS_PER_BATCH / big;
        for _ in 0..fit + 1 {
            lane.push(w(big), 1);
        }
        let first = lane.take(now, WAIT, usize::MAX).unwrap();
        assert_eq!(
            first.len(),
            fit,
            "rows per batch stay within the entry's limit"
        );
        assert_eq!(lane.take(now, WAIT, usize::MAX).map(|b| b.len()), Some(1));

        // A request over the row limit goes alone, and does not hold up the ones behind it.
        let mut lane = Lane::default();
        for rows in [usize::MAX, 5, 5] {
            lane.push(w(rows), 1);
        }
        assert_eq!(
            sizes(lane.take(now, WAIT, usize::MAX)),
            Some(vec![usize::MAX])
        );
        assert_eq!(sizes(lane.take(now, WAIT, usize::MAX)), Some(vec![5, 5]));
    }

    #[test]
    fn batches_keep_within_the_byte_limit() {
        let now = Instant::now();
        let mut lane = Lane::default();
        for _ in 0..5 {
            lane.push(w(3), 1);
        }
        // 30 bytes each: two fit in 70, and one over the limit alone still goes.
        assert_eq!(sizes(lane.take(now, WAIT, 70)), Some(vec![3, 3]));
        assert_eq!(sizes(lane.take(now, WAIT, 20)), Some(vec![3]));
        assert_eq!(sizes(lane.take(now, WAIT, 1000)), Some(vec![3, 3]));
    }

    #[test]
    fn gone_callers_are_dropped_and_stale_requests_refused_unsent() {
        let now = Instant::now();
        let refused: Rc<RefCell<Vec<String>>> = Rc::default();
        let mut lane = Lane::default();
        let mut gone = w(2);
        gone.gone = true;
        let mut stale = w(3);
        stale.at = now - WAIT - Duration::from_millis(1);
        stale.refused = refused.clone();
        lane.push(gone, 1);
        lane.push(stale, 1);
        lane.push(w(4), 1);
        assert_eq!(sizes(lane.take(now, WAIT, usize::MAX)), Some(vec![4]));
        let refused = refused.borrow();
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("not sent"), "{}", refused[0]);
        // Only stale or abandoned requests: the sender finds nothing to send and stops.
        let mut gone = w(1);
        gone.gone = true;
        lane.push(gone, 1);
        assert!(lane.take(now, WAIT, usize::MAX).is_none());
        assert_eq!(lane.senders, 0);
    }

    #[test]
    fn a_full_lane_refuses_at_once() {
        let mut lane = Lane::default();
        for _ in 0..MAX_QUEUED {
            assert!(!matches!(lane.push(w(1), 1), Pushed::Full(_)));
        }
        assert!(matches!(lane.push(w(1), 1), Pushed::Full(_)));
    }

    #[test]
    fn an_idle_lane_is_forgotten() {
        let lanes: Lanes<u8, W> = Lanes::new(1, WAIT, MAX_BATCH_BYTES);
        assert_eq!(lanes.push(&1, w(1)), Pushed::StartSender);
        assert_eq!(lanes.push(&2, w(1)), Pushed::StartSender);
        assert_eq!(lanes.lanes(), 2);
        assert!(lanes.take(&1).is_some());
        assert!(lanes.take(&1).is_none());
        assert_eq!(lanes.lanes(), 1, "lane 1 has no sender and nothing waiting");
        assert_eq!(
            lanes.push(&1, w(1)),
            Pushed::StartSender,
            "a new lane starts afresh"
        );
        assert_eq!(lanes.lanes(), 2);
    }

    #[tokio::test]
    async fn a_panicking_sender_does_not_leave_its_lane_stuck() {
        let lanes: Arc<Lanes<u8, Queued>> = Arc::new(Lanes::new(1, WAIT, MAX_BATCH_BYTES));
        let (reply, answer) = oneshot::channel();
        let q = Queued {
            data: Bytes::new(),
            rows: 0,
            started: Instant::now(),
            reply,
        };
        assert!(matches!(lanes.push(&7, q), Pushed::StartSender));
        let l = lanes.clone();
        let task = tokio::spawn(async move {
            let _guard = SenderGuard { lanes: &l, key: &7 };
            panic!("a sender bug");
        });
        assert!(task.await.is_err());
        assert!(
            answer.await.is_err(),
            "the waiting write heard its sender stopped"
        );
        let (reply, _answer) = oneshot::channel();
        let q = Queued {
            data: Bytes::new(),
            rows: 0,
            started: Instant::now(),
            reply,
        };
        assert!(
            matches!(lanes.push(&7, q), Pushed::StartSender),
            "the next write starts a new sender"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_sender_goes_once_enough_arrived_or_at_its_deadline() {
        // tokio's timers tick in milliseconds.
        const MAX: Duration = Duration::from_millis(10);
        let lanes: Lanes<u8, W> = Lanes::new(1, WAIT, MAX_BATCH_BYTES);
        assert_eq!(lanes.push(&1, w(1)), Pushed::StartSender);
        assert!(lanes.take(&1).is_some(), "the sender's first batch");

        // Two writes expected: the sender waits through the first, goes with the second.
        let t0 = Instant::now();
        let arrivals = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(2)).await;
                assert_eq!(lanes.push(&1, w(1)), Pushed::Queued);
            }
        };
        let went = async {
            lanes.linger(&1, 2, MAX).await;
            t0.elapsed()
        };
        let (went, ()) = tokio::join!(went, arrivals);
        assert_eq!(went, Duration::from_millis(4), "went at the 2nd");
        assert_eq!(sizes(lanes.take(&1)), Some(vec![1, 1, 1]));

        // Fewer than expected: it goes at its deadline with what came.
        let t0 = Instant::now();
        assert_eq!(lanes.push(&1, w(1)), Pushed::Queued);
        lanes.linger(&1, 3, MAX).await;
        assert!(t0.elapsed() >= MAX, "waited {:?}", t0.elapsed());
        assert!(t0.elapsed() <= MAX * 2, "waited {:?}", t0.elapsed());
        assert_eq!(sizes(lanes.take(&1)), Some(vec![1]));

        // Writes queued before it began do not count; a full batch waiting ends it.
        for _ in 0..MAX_WRITES_PER_BATCH {
            lanes.push(&1, w(1));
        }
        let t0 = Instant::now();
        lanes.linger(&1, 5, MAX).await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "a full batch waits");
        assert_eq!(lanes.take(&1).map(|b| b.len()), Some(MAX_WRITES_PER_BATCH));

        // A full batch by rows, or by bytes, ends it too.
        lanes.push(&1, w(MAX_ROWS_PER_BATCH));
        let t0 = Instant::now();
        lanes.linger(&1, 5, MAX).await;
        assert_eq!(t0.elapsed(), Duration::ZERO, "a batch full of rows waits");
        assert_eq!(sizes(lanes.take(&1)), Some(vec![MAX_ROWS_PER_BATCH]));
        let small: Lanes<u8, W> = Lanes::new(1, WAIT, 100);
        assert_eq!(small.push(&1, w(1)), Pushed::StartSender);
        assert!(small.take(&1).is_some());
        small.push(&1, w(6));
        small.push(&1, w(6));
        let t0 = Instant::now();
        small.linger(&1, 5, MAX).await;
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "120 bytes wait, 100 fit a batch"
        );

        // Never longer than half the longest a request may wait.
        let hasty: Lanes<u8, W> = Lanes::new(1, Duration::from_millis(4), MAX_BATCH_BYTES);
        assert_eq!(hasty.push(&1, w(1)), Pushed::StartSender);
        assert!(hasty.take(&1).is_some());
        let t0 = Instant::now();
        hasty.linger(&1, 5, Duration::from_secs(60)).await;
        assert!(
            t0.elapsed() <= Duration::from_millis(3),
            "{:?}",
            t0.elapsed()
        );

        // Nothing expected, or no linger configured: at once.
        let t0 = Instant::now();
        lanes.linger(&1, 0, MAX).await;
        lanes.linger(&1, 4, Duration::ZERO).await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }
}
