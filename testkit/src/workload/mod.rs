//! A concurrent writer for failure tests, and the checker that judges what it left behind.
//!
//! [`Workload::start`] runs `clients` concurrent tasks against the gateway. Each client owns a
//! disjoint set of keys (spread over `[key_low, key_high)` so that every shard gets traffic),
//! inserts them one by one (single-row `/write`s, so one request = one shard = one outcome),
//! and now and then updates or deletes one of its keys. Every request's outcome is recorded:
//!
//! - [`Outcome::Acked`]: 200, so the write is committed and must survive;
//! - [`Outcome::Rejected`]: a failure whose body says `"outcome": "not_applied"` (a 4xx, or a
//!   503 such as a deposed primary's skipped entry): it must be nowhere;
//! - [`Outcome::Unknown`]: a connection error, a timeout, or a failure whose `outcome` is
//!   `unknown` or missing: it may or may not have been applied. A client never touches a
//!   key again after an unknown outcome on it, so every key's possible final states stay
//!   easy to enumerate.
//!
//! The workload is bounded both in operations (`clients * keys_per_client` inserts plus the
//! updates/deletes) and in time (`max_duration`), and can be stopped early.
//!
//! [`check`] then waits for the cluster to settle and verifies: every replica of every shard
//! has applied the whole log and holds identical rows; every key read from the primaries and
//! from every replica is in one of its possible states (so every acknowledged write is there
//! with its last acknowledged value, deleted rows stay deleted, and nothing written by a
//! rejected request — such as a deposed primary's — exists anywhere).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize as _;
use serde_json::{json, Value};
use shardline::error::{Effect, ErrorBody};

use crate::{wait_until, LocalCluster};

mod verify;

pub use verify::{
    check, possible_states, primary_of, replicas_of, settle, settled, shard_range, CheckReport,
};

/// Shape of a [`Workload`].
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Concurrent clients (each one request at a time).
    pub clients: usize,
    /// Unique keys inserted by each client.
    pub keys_per_client: usize,
    /// Keys are spread evenly over `[key_low, key_high)`.
    pub key_low: i64,
    pub key_high: i64,
    /// After every `update_every`-th insert, a client updates one of its live keys (0: never).
    pub update_every: usize,
    /// After every `delete_every`-th insert, a client deletes one of its live keys (0: never).
    pub delete_every: usize,
    /// Pause between two requests of one client.
    pub pause: Duration,
    /// Hard bound on the run time; clients stop issuing requests after it.
    pub max_duration: Duration,
    /// Per-request timeout of the HTTP client (a timeout is an unknown outcome).
    pub request_timeout: Duration,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            clients: 6,
            keys_per_client: 150,
            key_low: 0,
            key_high: 16_384,
            update_every: 4,
            delete_every: 7,
            pause: Duration::from_millis(15),
            max_duration: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl WorkloadConfig {
    /// Every key this workload may write, in order.
    pub fn keys(&self) -> Vec<i64> {
        let total = (self.clients * self.keys_per_client) as i64;
        let span = self.key_high - self.key_low;
        assert!(
            total > 0 && span >= total,
            "key range too small for the workload"
        );
        (0..total)
            .map(|j| self.key_low + j * span / total)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// 200: committed.
    Acked,
    /// Certainly not applied (the failure body's `outcome` is `not_applied`).
    Rejected,
    /// Maybe applied (transport error, timeout, `outcome` `unknown` or missing).
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Insert,
    Update,
    Delete,
}

/// A row's non-key columns: `(Stud_name, Stud_marks)`.
pub type RowValue = (String, i64);

/// One request and what came of it.
#[derive(Clone, Debug)]
pub struct OpRecord {
    pub client: usize,
    pub key: i64,
    pub kind: OpKind,
    /// The row written (insert/update); `None` for a delete.
    pub value: Option<RowValue>,
    pub status: u16,
    pub message: String,
    pub outcome: Outcome,
    /// When the request was sent, since the workload started.
    pub at: Duration,
    pub took: Duration,
}

/// Everything a workload (or a test's own writes) did.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub ops: Vec<OpRecord>,
}

impl History {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.ops.iter().filter(|o| o.outcome == outcome).count()
    }
    pub fn extend(&mut self, other: History) {
        self.ops.extend(other.ops);
    }
    /// One line: how many requests of each outcome, and the statuses seen.
    pub fn summary(&self) -> String {
        let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
        for o in &self.ops {
            *statuses.entry(o.status).or_default() += 1;
        }
        format!(
            "{} requests: {} acked, {} rejected, {} unknown; by status {:?}",
            self.ops.len(),
            self.count(Outcome::Acked),
            self.count(Outcome::Rejected),
            self.count(Outcome::Unknown),
            statuses
        )
    }
}

/// The row as the API wants it.
pub fn row(key: i64, v: &RowValue) -> Value {
    json!({"Stud_id": key, "Stud_name": v.0, "Stud_marks": v.1})
}

/// Classifies an answer by its status and the failure body's `outcome`, never by its
/// English message: 200 is acknowledged; a failure body saying `"outcome": "not_applied"`
/// is certainly not applied; anything else (`unknown`, no answer, a body that is not a
/// shardline failure body, so says nothing about the outcome) may have been applied.
pub fn classify(status: u16, body: &Value) -> Outcome {
    if status == 200 {
        return Outcome::Acked;
    }
    match ErrorBody::deserialize(body) {
        Ok(ErrorBody {
            outcome: Some(Effect::NotApplied),
            ..
        }) if status != 0 => Outcome::Rejected,
        _ => Outcome::Unknown,
    }
}

fn message(body: &Value) -> String {
    match body.get("message") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => body.to_string(),
    }
}

/// One HTTP request; status 0 on a transport error (see [`crate::http::send`]).
pub async fn send(http: &reqwest::Client, method: Method, url: &str, body: &Value) -> (u16, Value) {
    crate::http::send(http, method, url, Some(body)).await
}

/// Performs one operation through the gateway at `base` and records it.
pub async fn perform(
    http: &reqwest::Client,
    base: &str,
    client: usize,
    key: i64,
    kind: OpKind,
    value: Option<RowValue>,
    t0: Instant,
) -> OpRecord {
    let started = Instant::now();
    let (method, path, body) = match kind {
        OpKind::Insert => (
            Method::POST,
            "/write",
            json!({"data": [row(key, value.as_ref().expect("insert has a value"))]}),
        ),
        OpKind::Update => (
            Method::PUT,
            "/update",
            json!({"Stud_id": key, "data": row(key, value.as_ref().expect("update has a value"))}),
        ),
        OpKind::Delete => (Method::DELETE, "/del", json!({"Stud_id": key})),
    };
    let (status, answer) = send(http, method, &format!("{base}{path}"), &body).await;
    OpRecord {
        client,
        key,
        kind,
        value,
        status,
        message: message(&answer),
        outcome: classify(status, &answer),
        at: started - t0,
        took: started.elapsed(),
    }
}

/// One client of a [`Workload`]: what it needs to send requests and to report them.
struct Client {
    id: usize,
    http: reqwest::Client,
    base: String,
    cfg: WorkloadConfig,
    started: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<OpRecord>>>,
}

impl Client {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst) && Instant::now() < self.deadline
    }

    /// Performs one operation, records it, then pauses.
    async fn op(&self, key: i64, kind: OpKind, value: Option<RowValue>) -> Outcome {
        let (http, base, c) = (&self.http, &self.base, self.id);
        let op = perform(http, base, c, key, kind, value, self.started).await;
        self.done.fetch_add(1, Ordering::SeqCst);
        if op.outcome == Outcome::Acked {
            self.acked.fetch_add(1, Ordering::SeqCst);
        }
        let outcome = op.outcome;
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(op);
        tokio::time::sleep(self.cfg.pause).await;
        outcome
    }

    /// Inserts `mine` one by one; after every `update_every`-th (`delete_every`-th) insert,
    /// updates (deletes) one of its keys whose state is certain.
    async fn run(self, mine: Vec<i64>) {
        let c = self.id;
        // Every `every`-th insert (0: never).
        let due = |every: usize, i: usize| every > 0 && i % every == every - 1;
        // Keys whose state is certain and present: (key, next version).
        let mut live: Vec<(i64, i64)> = Vec::new();
        for (i, &key) in mine.iter().enumerate() {
            if !self.running() {
                break;
            }
            let v = (format!("c{c}-k{key}-v0"), key % 100);
            if self.op(key, OpKind::Insert, Some(v)).await == Outcome::Acked {
                live.push((key, 1));
            }
            if due(self.cfg.update_every, i) {
                if !self.running() {
                    break;
                }
                if !live.is_empty() {
                    let idx = (i * 7) % live.len();
                    let (k, ver) = live[idx];
                    let v = (format!("c{c}-k{k}-v{ver}"), 100 + ver);
                    match self.op(k, OpKind::Update, Some(v)).await {
                        // Rejected: a fresh value next time all the same.
                        Outcome::Acked | Outcome::Rejected => live[idx].1 += 1,
                        Outcome::Unknown => {
                            live.swap_remove(idx);
                        }
                    }
                }
            }
            if due(self.cfg.delete_every, i) {
                if !self.running() {
                    break;
                }
                if !live.is_empty() {
                    let idx = (i * 13) % live.len();
                    if self.op(live[idx].0, OpKind::Delete, None).await != Outcome::Rejected {
                        live.swap_remove(idx);
                    }
                }
            }
        }
    }
}

/// A running writer; see the module docs.
pub struct Workload {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    acked: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<OpRecord>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub config: WorkloadConfig,
    pub started: Instant,
}

impl Workload {
    /// Starts the clients against the cluster's gateway.
    pub fn start(cluster: &LocalCluster, config: WorkloadConfig) -> Workload {
        Self::start_at(&cluster.gateway_url(), config)
    }

    /// Starts the clients against the gateway at `base` (`http://host:port`).
    pub fn start_at(base: &str, config: WorkloadConfig) -> Workload {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .expect("reqwest client");
        let keys = config.keys();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let deadline = started + config.max_duration;
        let tasks = (0..config.clients)
            .map(|c| {
                let mine: Vec<i64> = keys
                    .iter()
                    .copied()
                    .skip(c)
                    .step_by(config.clients)
                    .collect();
                let client = Client {
                    id: c,
                    http: http.clone(),
                    base: base.to_string(),
                    cfg: config.clone(),
                    started,
                    deadline,
                    stop: stop.clone(),
                    done: done.clone(),
                    acked: acked.clone(),
                    log: log.clone(),
                };
                tokio::spawn(client.run(mine))
            })
            .collect();
        Workload {
            stop,
            done,
            acked,
            log,
            tasks,
            config,
            started,
        }
    }

    /// Requests finished so far.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }
    /// Requests acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }
    /// A copy of the records so far.
    pub fn snapshot(&self) -> Vec<OpRecord> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Acked requests that were sent at or after `since` (relative to the start).
    pub fn acked_since(&self, since: Duration) -> usize {
        self.snapshot()
            .iter()
            .filter(|o| o.outcome == Outcome::Acked && o.at >= since)
            .count()
    }
    /// Asks the clients to stop after their current request.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
    /// Waits until at least `n` requests finished (or `timeout`); true if reached.
    pub async fn wait_done(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || async { self.done() >= n || self.finished() }).await
            && self.done() >= n
    }
    /// True once every client has finished.
    pub fn finished(&self) -> bool {
        self.tasks.iter().all(|t| t.is_finished())
    }
    /// Waits for the clients to run out of work (bounded by `max_duration` plus one request
    /// timeout), then returns the history.
    pub async fn finish(self) -> History {
        let limit = self.config.max_duration + self.config.request_timeout + Duration::from_secs(5);
        let left = limit.saturating_sub(self.started.elapsed());
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(left, all).await.is_err() {
            panic!("workload clients did not finish within {limit:?}");
        }
        let ops = self.log.lock().unwrap_or_else(|e| e.into_inner()).clone();
        History { ops }
    }
    /// [`Workload::stop`] then [`Workload::finish`].
    pub async fn stop_and_finish(self) -> History {
        self.stop();
        self.finish().await
    }
}
