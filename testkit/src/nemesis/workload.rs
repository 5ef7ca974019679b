//! The clients of a nemesis run, each recording every operation it performs:
//!
//! - register clients: insert / update / read (`"consistency": "linearizable"`) on a small pool
//!   of keys, several clients on the same key at once; each key retires after
//!   [`OPS_PER_KEY`] operations so the exhaustive checker stays fast;
//! - a set client: unique inserts, each key once;
//! - a staleness reader: default (`any`) reads of set keys whose insert was acknowledged,
//!   measuring how long after the acknowledgement a read still missed it.
//!
//! Requests go through the gateway; every answer is classified by its failure body's
//! `outcome` ([`crate::workload::classify`]). Everything is bounded by a deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize as _;
use serde_json::{json, Value};
use shardline::error::{ErrorBody, ErrorCode};

use super::checker::{Op, RegOp, RegRet, Status};
use crate::workload::{classify, Outcome};

/// Operations per register key (the checker is exhaustive: keep it small).
pub const OPS_PER_KEY: usize = 10;
/// Keys per shard, and where the set's keys start within a shard (a1: 4 shards × 4096).
const SHARD_SIZE: i64 = 4096;
const SHARDS: i64 = 4;
const SET_BASE: i64 = 2048;

/// The shard (`sh1`..`sh4`) of a key in the a1 layout.
pub fn shard_of(key: i64) -> String {
    format!("sh{}", key / SHARD_SIZE + 1)
}

/// A small deterministic generator (splitmix64): the runs are seeded.
#[derive(Clone, Debug)]
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// The register keys in use, and how many operations each has had.
struct KeyPool {
    active: Vec<(i64, usize)>,
    next: i64,
}
impl KeyPool {
    /// Key number `n`, round-robin over the shards.
    fn key(n: i64) -> i64 {
        (n % SHARDS) * SHARD_SIZE + (n / SHARDS) % SET_BASE
    }
    /// Takes one operation's turn on a random active key; retires exhausted keys.
    fn take(&mut self, rng: &mut Rng) -> i64 {
        let i = rng.below(self.active.len());
        let (key, n) = &mut self.active[i];
        let k = *key;
        *n += 1;
        if *n >= OPS_PER_KEY {
            self.active[i] = (Self::key(self.next), 0);
            self.next += 1;
        }
        k
    }
}

/// A default-consistency read of a set key: (key, found (None: no answer), invoke,
/// staleness when it missed an insert acknowledged before it began).
pub type AnyRead = (i64, Option<bool>, Duration, Option<Duration>);

/// Shared state of the clients of one run.
pub struct Recorder {
    pub t0: Instant,
    deadline: Instant,
    stop: AtomicBool,
    http: reqwest::Client,
    base: String,
    pool: Mutex<KeyPool>,
    value: AtomicU64,
    /// Set when the gateway refused `linearizable` (400): reads fall back to `primary`.
    pub linearizable_refused: AtomicBool,
    pub register: Mutex<Vec<Op>>,
    /// Set inserts: (key, status, invoke, complete).
    pub set: Mutex<Vec<(i64, Status, Duration, Duration)>>,
    /// `any` reads of acknowledged set keys: (key, found, invoke, staleness if missed).
    pub any_reads: Mutex<Vec<AnyRead>>,
}

impl Recorder {
    pub fn new(base: &str, keys: usize, duration: Duration, timeout: Duration) -> Arc<Self> {
        let t0 = Instant::now();
        Arc::new(Recorder {
            t0,
            deadline: t0 + duration,
            stop: AtomicBool::new(false),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("reqwest client"),
            base: base.to_string(),
            pool: Mutex::new(KeyPool {
                active: (0..keys as i64).map(|n| (KeyPool::key(n), 0)).collect(),
                next: keys as i64,
            }),
            value: AtomicU64::new(1),
            linearizable_refused: AtomicBool::new(false),
            register: Mutex::new(Vec::new()),
            set: Mutex::new(Vec::new()),
            any_reads: Mutex::new(Vec::new()),
        })
    }

    pub fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst) && Instant::now() < self.deadline
    }
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    async fn send(&self, method: Method, path: &str, body: &Value) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        crate::http::send(&self.http, method, &url, Some(body)).await
    }

    /// One register operation: performs and records it.
    async fn register_op(&self, process: usize, key: i64, op: RegOp) {
        let invoke = self.now();
        let row = |v: i64| json!({"Stud_id": key, "Stud_name": format!("v{v}"), "Stud_marks": v});
        let (code, body) = match &op {
            RegOp::Insert(v) => {
                self.send(Method::POST, "/write", &json!({"data": [row(*v)]}))
                    .await
            }
            RegOp::Update(v) => {
                let b = json!({"Stud_id": key, "data": row(*v)});
                self.send(Method::PUT, "/update", &b).await
            }
            RegOp::Read => self.read(key).await,
        };
        let err = ErrorBody::deserialize(&body).ok().and_then(|b| b.code);
        let (status, ret) = match (&op, code, err) {
            (RegOp::Insert(_), 200, _) => (Status::Ok, Some(RegRet::Inserted)),
            (RegOp::Update(_), 200, _) => (Status::Ok, Some(RegRet::Updated)),
            (RegOp::Insert(_), 409, Some(ErrorCode::DuplicateKey)) => {
                (Status::Ok, Some(RegRet::Duplicate))
            }
            (RegOp::Update(_), 404, Some(ErrorCode::NotFound)) => {
                (Status::Ok, Some(RegRet::NotFound))
            }
            (RegOp::Read, 200, _) => match read_value(&body) {
                Ok(v) => (Status::Ok, Some(RegRet::Value(v))),
                // A row that is not one this harness writes: keep it as a read of an
                // impossible value so the checker flags it.
                Err(_) => (Status::Ok, Some(RegRet::Value(Some(-1)))),
            },
            _ => match classify(code, &body) {
                Outcome::Acked => (Status::Ok, None),
                Outcome::Rejected => (Status::Failed, None),
                Outcome::Unknown => (Status::Unknown, None),
            },
        };
        let note = match err {
            Some(e) => format!("{code} {e:?}"),
            None => code.to_string(),
        };
        let rec = Op {
            process,
            key,
            op,
            ret,
            status,
            invoke,
            complete: self.now(),
            note,
        };
        self.register
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rec);
    }

    /// A linearizable read of one key; `primary` once the gateway refused `linearizable`.
    async fn read(&self, key: i64) -> (u16, Value) {
        let body =
            |level: &str| json!({"Stud_id": {"low": key, "high": key}, "consistency": level});
        if !self.linearizable_refused.load(Ordering::SeqCst) {
            let (code, b) = self
                .send(Method::POST, "/read", &body("linearizable"))
                .await;
            let refused = code == 400 && b.to_string().contains("consistency");
            if !refused {
                return (code, b);
            }
            self.linearizable_refused.store(true, Ordering::SeqCst);
        }
        self.send(Method::POST, "/read", &body("primary")).await
    }

    /// A register client: random operations on the key pool until the deadline.
    pub async fn register_client(self: Arc<Self>, process: usize, seed: u64) {
        let mut rng = Rng::new(seed ^ (process as u64).wrapping_mul(0x1234_5678_9ABC));
        while self.running() {
            let key = {
                let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                p.take(&mut rng)
            };
            let v = self.value.fetch_add(1, Ordering::SeqCst) as i64;
            let op = match rng.below(10) {
                0..=1 => RegOp::Insert(v),
                2..=5 => RegOp::Update(v),
                _ => RegOp::Read,
            };
            self.register_op(process, key, op).await;
        }
    }

    /// The set client: unique inserts, round-robin over the shards.
    pub async fn set_client(self: Arc<Self>) {
        let mut n: i64 = 0;
        while self.running() {
            let key = (n % SHARDS) * SHARD_SIZE + SET_BASE + (n / SHARDS) % SET_BASE;
            n += 1;
            let invoke = self.now();
            let row = json!({"Stud_id": key, "Stud_name": format!("s{key}"), "Stud_marks": 0});
            let (code, body) = self
                .send(Method::POST, "/write", &json!({"data": [row]}))
                .await;
            let status = match classify(code, &body) {
                Outcome::Acked => Status::Ok,
                Outcome::Rejected => Status::Failed,
                Outcome::Unknown => Status::Unknown,
            };
            let rec = (key, status, invoke, self.now());
            self.set.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
        }
    }

    /// Default-consistency reads of set keys acknowledged before the read began.
    pub async fn any_reader(self: Arc<Self>, seed: u64) {
        let mut rng = Rng::new(seed ^ 0xA11);
        while self.running() {
            let pick = {
                let set = self.set.lock().unwrap_or_else(|e| e.into_inner());
                let acked: Vec<_> = set.iter().filter(|s| s.1 == Status::Ok).collect();
                // Mostly the newest acknowledged keys: those are the ones a lagging replica misses.
                let n = acked.len();
                (n > 0).then(|| *acked[n - 1 - rng.below(n.min(8))])
            };
            let Some((key, _, _, acked_at)) = pick else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let invoke = self.now();
            let body = json!({"Stud_id": {"low": key, "high": key}});
            let (code, b) = self.send(Method::POST, "/read", &body).await;
            let found = (code == 200).then(|| b["data"].as_array().is_some_and(|d| !d.is_empty()));
            let stale = (found == Some(false)).then(|| invoke.saturating_sub(acked_at));
            let rec = (key, found, invoke, stale);
            self.any_reads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(rec);
        }
    }
}

/// The value a single-key read returned: `None` when absent.
pub fn read_value(body: &Value) -> Result<Option<i64>, String> {
    let rows = body["data"].as_array().ok_or("no data array")?;
    match rows.as_slice() {
        [] => Ok(None),
        [r] => {
            let v = r["Stud_marks"].as_i64().ok_or("no Stud_marks")?;
            if r["Stud_name"] != format!("v{v}") {
                return Err(format!("row with a foreign value: {r}"));
            }
            Ok(Some(v))
        }
        _ => Err(format!("{} rows for one key", rows.len())),
    }
}
