//! A concurrent writer for failure tests, and the checker that judges what it left behind.
//!
//! [`Workload::start`] runs `clients` concurrent tasks against the gateway. Each client owns a
//! disjoint set of keys (spread over `[key_low, key_high)` so that every shard gets traffic),
//! inserts them one by one (single-row `/write`s, so one request = one shard = one outcome),
//! and now and then updates or deletes one of its keys. Every request's outcome is recorded:
//!
//! - [`Outcome::Acked`]: 200, so the write is committed and must survive;
//! - [`Outcome::Rejected`]: a 4xx, or a 503 whose message says the write was certainly not
//!   applied (e.g. the entry of a deposed primary was skipped): it must be nowhere;
//! - [`Outcome::Unknown`]: a connection error, timeout or another 5xx: it may or may not have
//!   been applied. A client never touches a key again after an unknown outcome on it, so
//!   every key's possible final states stay easy to enumerate.
//!
//! The workload is bounded both in operations (`clients * keys_per_client` inserts plus the
//! updates/deletes) and in time (`max_duration`), and can be stopped early.
//!
//! [`check`] then waits for the cluster to settle and verifies: every replica of every shard
//! has applied the whole log and holds identical rows; every key read from the primaries and
//! from every replica is in one of its possible states (so every acknowledged write is there
//! with its last acknowledged value, deleted rows stay deleted, and nothing written by a
//! rejected request — such as a deposed primary's — exists anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::{wait_until, Cluster};

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
    /// Certainly not applied (4xx, or a 503 that says so).
    Rejected,
    /// Maybe applied (transport error, timeout, other 5xx).
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

/// Classifies an answer. A 503 is an unknown outcome unless its message says the write was
/// certainly not applied.
pub fn classify(status: u16, body: &Value) -> Outcome {
    let msg = message(body);
    match status {
        200 => Outcome::Acked,
        400..=499 => Outcome::Rejected,
        503 if certainly_not_applied(&msg) => Outcome::Rejected,
        _ => Outcome::Unknown,
    }
}

/// 503 messages after which the write is known not to be in the log (or to be skipped by
/// every replica). Anything else (no quorum, timeouts, no answer) may have been applied.
fn certainly_not_applied(msg: &str) -> bool {
    const NOT_APPLIED: [&str; 6] = [
        "was deposed",                    // the entry was skipped as of a stale term
        "has not yet applied the marker", // refused before appending
        "refused as not the primary",     // refused before appending
        "has no primary",                 // never sent
        "is unreachable",                 // connection refused: never sent
        "no live replica",                // never sent
    ];
    NOT_APPLIED.iter().any(|p| msg.contains(p))
}

fn message(body: &Value) -> String {
    match body.get("message") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => body.to_string(),
    }
}

/// One HTTP request; status 0 on a transport error (like [`Cluster::request`]).
pub async fn send(http: &reqwest::Client, method: Method, url: &str, body: &Value) -> (u16, Value) {
    let resp = match http.request(method, url).json(body).send().await {
        Ok(r) => r,
        Err(e) => return (0, Value::String(format!("request to {url} failed: {e}"))),
    };
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(b) => (
            status,
            serde_json::from_slice(&b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned())),
        ),
        Err(e) => (0, Value::String(format!("reading the answer failed: {e}"))),
    }
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
    pub fn start(cluster: &Cluster, config: WorkloadConfig) -> Workload {
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
                let (http, base, cfg) = (http.clone(), base.to_string(), config.clone());
                let (stop, done, acked, log) =
                    (stop.clone(), done.clone(), acked.clone(), log.clone());
                tokio::spawn(async move {
                    let running = || !stop.load(Ordering::SeqCst) && Instant::now() < deadline;
                    let record = |op: OpRecord| {
                        done.fetch_add(1, Ordering::SeqCst);
                        if op.outcome == Outcome::Acked {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        log.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(op.clone());
                        op
                    };
                    // Keys whose state is certain and present: (key, next version).
                    let mut live: Vec<(i64, i64)> = Vec::new();
                    for (i, &key) in mine.iter().enumerate() {
                        if !running() {
                            break;
                        }
                        let v = (format!("c{c}-k{key}-v0"), key % 100);
                        let op = record(
                            perform(&http, &base, c, key, OpKind::Insert, Some(v), started).await,
                        );
                        if op.outcome == Outcome::Acked {
                            live.push((key, 1));
                        }
                        tokio::time::sleep(cfg.pause).await;
                        if cfg.update_every > 0 && i % cfg.update_every == cfg.update_every - 1 {
                            if !running() {
                                break;
                            }
                            if !live.is_empty() {
                                let idx = (i * 7) % live.len();
                                let (k, ver) = live[idx];
                                let v = (format!("c{c}-k{k}-v{ver}"), 100 + ver);
                                let op = record(
                                    perform(&http, &base, c, k, OpKind::Update, Some(v), started)
                                        .await,
                                );
                                match op.outcome {
                                    Outcome::Acked => live[idx].1 += 1,
                                    Outcome::Rejected => live[idx].1 += 1, // fresh value next time
                                    Outcome::Unknown => {
                                        live.swap_remove(idx);
                                    }
                                }
                                tokio::time::sleep(cfg.pause).await;
                            }
                        }
                        if cfg.delete_every > 0 && i % cfg.delete_every == cfg.delete_every - 1 {
                            if !running() {
                                break;
                            }
                            if !live.is_empty() {
                                let idx = (i * 13) % live.len();
                                let (k, _) = live[idx];
                                let op = record(
                                    perform(&http, &base, c, k, OpKind::Delete, None, started)
                                        .await,
                                );
                                if op.outcome != Outcome::Rejected {
                                    live.swap_remove(idx);
                                }
                                tokio::time::sleep(cfg.pause).await;
                            }
                        }
                    }
                })
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

// ---------------------------------------------------------------------------------------
// Checking
// ---------------------------------------------------------------------------------------

/// The states a key may be in after `ops` (its operations, in the order one client sent
/// them): one state when its last operation was acknowledged, more after unknown outcomes.
pub fn possible_states(ops: &[&OpRecord]) -> BTreeSet<Option<RowValue>> {
    let mut states: BTreeSet<Option<RowValue>> = [None].into();
    for op in ops {
        let apply = |s: &Option<RowValue>| -> Option<RowValue> {
            match (op.kind, s) {
                (OpKind::Insert, None) => op.value.clone(),
                (OpKind::Insert, Some(x)) => Some(x.clone()),
                (OpKind::Update, Some(_)) => op.value.clone(),
                (OpKind::Update, None) => None,
                (OpKind::Delete, _) => None,
            }
        };
        match op.outcome {
            Outcome::Acked => {
                states = [match op.kind {
                    OpKind::Insert | OpKind::Update => op.value.clone(),
                    OpKind::Delete => None,
                }]
                .into()
            }
            Outcome::Rejected => {}
            Outcome::Unknown => {
                let next: Vec<_> = states.iter().map(apply).collect();
                states.extend(next);
            }
        }
    }
    states
}

/// What [`check`] found (it panics on any violation).
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub keys: usize,
    pub rows_present: usize,
    pub replicas_compared: usize,
    pub settle_time: Duration,
}

/// Waits (up to `settle`) until every server is up and every replica of every shard has
/// applied its shard's whole log; returns the last `/status`.
pub async fn settle(c: &Cluster, settle: Duration) -> Value {
    let deadline = Instant::now() + settle;
    let (ok, last) = loop {
        let (s, st) = c.get("/status").await;
        if s == 200 && settled(&st) {
            break (true, st);
        }
        if Instant::now() >= deadline {
            break (false, st);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        ok,
        "cluster did not settle within {settle:?}; last /status: {last:#}"
    );
    last
}

/// Every server up, every shard has a primary, every replica applied == wal_last_seq.
pub fn settled(st: &Value) -> bool {
    let Some(health) = st["health"].as_object() else {
        return false;
    };
    if !health.values().all(|h| h == "up") {
        return false;
    }
    let Some(shards) = st["shards"].as_array() else {
        return false;
    };
    shards.iter().all(|sh| {
        let id = sh["Shard_id"].as_str().unwrap_or_default();
        let last = sh["wal_last_seq"].as_u64();
        !sh["primary"].is_null()
            && last.is_some()
            && replicas_of(st, id)
                .iter()
                .all(|srv| st["applied"][srv.as_str()][id].as_u64() == last)
    })
}

/// Servers holding `shard` per `/status`.
pub fn replicas_of(st: &Value, shard: &str) -> Vec<String> {
    st["servers"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, shards)| {
                    shards
                        .as_array()
                        .is_some_and(|a| a.iter().any(|s| s == shard))
                })
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The primary of `shard` per `/status`.
pub fn primary_of(st: &Value, shard: &str) -> Option<String> {
    st["shards"]
        .as_array()?
        .iter()
        .find(|s| s["Shard_id"] == shard)?["primary"]
        .as_str()
        .map(str::to_owned)
}

/// `[low, high)` of `shard` per `/status`.
pub fn shard_range(st: &Value, shard: &str) -> Option<(i64, i64)> {
    let s = st["shards"]
        .as_array()?
        .iter()
        .find(|s| s["Shard_id"] == shard)?;
    let low = s["Stud_id_low"].as_i64()?;
    Some((low, low + s["Shard_size"].as_i64()?))
}

/// A replica's rows by key.
type Rows = BTreeMap<i64, RowValue>;

fn parse_rows(rows: &Value) -> Result<Rows, String> {
    let mut out = BTreeMap::new();
    for r in rows.as_array().ok_or("rows are not an array")? {
        let k = r["Stud_id"]
            .as_i64()
            .ok_or_else(|| format!("bad row {r}"))?;
        let name = r["Stud_name"].as_str().unwrap_or_default().to_string();
        let marks = r["Stud_marks"].as_i64().unwrap_or(i64::MIN);
        if out.insert(k, (name, marks)).is_some() {
            return Err(format!("key {k} appears twice"));
        }
    }
    Ok(out)
}

/// Settles the cluster, then checks (panicking with every problem found):
/// 1. each key of `history` read with `consistency: primary` and from every replica
///    (`/read/<server>`) is in one of its possible states: acknowledged writes are there
///    with their last acknowledged value, deleted rows stay deleted;
/// 2. all replicas of every shard hold identical rows and the same applied sequence;
/// 3. no row exists that the history cannot explain (a rejected request's row, a key never
///    written) — within `[key_low, key_high)`.
pub async fn check(
    c: &Cluster,
    history: &History,
    key_low: i64,
    key_high: i64,
    settle_timeout: Duration,
) -> CheckReport {
    let t = Instant::now();
    let st = settle(c, settle_timeout).await;
    let settle_time = t.elapsed();
    let mut problems: Vec<String> = Vec::new();

    // Possible states per key.
    let mut by_key: BTreeMap<i64, Vec<&OpRecord>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.key).or_default().push(op);
    }
    let possible: BTreeMap<i64, BTreeSet<Option<RowValue>>> = by_key
        .iter()
        .map(|(k, ops)| (*k, possible_states(ops)))
        .collect();
    // Judges the keys in `[low, high)` (a shard's range, or the whole read).
    let judge = |where_: &str, rows: &Rows, (low, high): (i64, i64), problems: &mut Vec<String>| {
        for (k, states) in possible.range(low..high) {
            let got = rows.get(k).cloned();
            if !states.contains(&got) {
                let ops: Vec<String> = by_key[k]
                    .iter()
                    .map(|o| {
                        format!(
                            "{:?} {:?} -> {} {:?} ({}) at {:?}",
                            o.kind, o.value, o.status, o.outcome, o.message, o.at
                        )
                    })
                    .collect();
                problems.push(format!(
                    "{where_}: key {k} is {got:?}, expected one of {states:?}; ops: {ops:?}"
                ));
            }
        }
        for (k, v) in rows.range(key_low.max(low)..key_high.min(high)) {
            if !possible.contains_key(k) {
                problems.push(format!(
                    "{where_}: key {k} = {v:?} was never written by anyone"
                ));
            }
        }
    };

    // 1a. Through the primaries.
    let (s, body) = c
        .post(
            "/read",
            json!({"Stud_id": {"low": key_low, "high": key_high - 1}, "consistency": "primary"}),
        )
        .await;
    let mut rows_present = 0;
    if s != 200 {
        problems.push(format!("primary read answered {s}: {body}"));
    } else {
        match parse_rows(&body["data"]) {
            Ok(rows) => {
                rows_present = rows.len();
                judge("primary read", &rows, (key_low, key_high), &mut problems);
            }
            Err(e) => problems.push(format!("primary read: {e}")),
        }
    }

    // 1b + 2. Every replica, shard by shard.
    let mut replicas_compared = 0;
    let servers: Vec<String> = st["servers"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut per_shard: BTreeMap<String, Vec<(String, Rows)>> = BTreeMap::new();
    for srv in &servers {
        let (s, body) = c.get(&format!("/read/{srv}")).await;
        if s != 200 {
            problems.push(format!("/read/{srv} answered {s}: {body}"));
            continue;
        }
        for shard in st["servers"][srv.as_str()]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            match parse_rows(&body[shard]) {
                Ok(rows) => {
                    let Some(range) = shard_range(&st, shard) else {
                        problems.push(format!("shard {shard} of {srv} is not in /status"));
                        continue;
                    };
                    judge(&format!("{srv}/{shard}"), &rows, range, &mut problems);
                    per_shard
                        .entry(shard.to_string())
                        .or_default()
                        .push((srv.clone(), rows));
                }
                Err(e) => problems.push(format!("/read/{srv} shard {shard}: {e}")),
            }
        }
    }
    for (shard, copies) in &per_shard {
        let applied: BTreeSet<Option<u64>> = copies
            .iter()
            .map(|(srv, _)| st["applied"][srv.as_str()][shard.as_str()].as_u64())
            .collect();
        if applied.len() != 1 {
            problems.push(format!(
                "shard {shard}: replicas applied differ: {applied:?}"
            ));
        }
        let (first_srv, first) = &copies[0];
        for (srv, rows) in &copies[1..] {
            replicas_compared += 1;
            if rows != first {
                let diff: Vec<i64> = first
                    .keys()
                    .chain(rows.keys())
                    .filter(|k| first.get(k) != rows.get(k))
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .take(20)
                    .collect();
                problems.push(format!(
                    "shard {shard}: {srv} ({} rows) differs from {first_srv} ({} rows); keys {diff:?}",
                    rows.len(),
                    first.len()
                ));
            }
        }
    }

    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(30);
        panic!(
            "check failed ({n} problems; {}):\n{}\n/status: {st:#}",
            history.summary(),
            problems.join("\n")
        );
    }
    CheckReport {
        keys: possible.len(),
        rows_present,
        replicas_compared,
        settle_time,
    }
}
