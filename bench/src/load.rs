//! The closed-loop load runner: `clients` workers pull request indices from one counter,
//! each measuring its own requests; bounded by count and by a time limit.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What one request ended with: an HTTP status (or JetStream ack = 200), or a transport
/// error (status 0).
pub type Outcome = u16;
pub const TRANSPORT_ERROR: Outcome = 0;

/// Raw measurements of one phase.
pub struct Phase {
    pub name: String,
    pub planned: usize,
    pub clients: usize,
    pub elapsed: Duration,
    /// Latency of every completed request, microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Status of every request index (None: not sent, time limit hit).
    pub statuses: Vec<Option<Outcome>>,
    /// Extra counter the request closure may bump (e.g. rows returned by reads).
    pub extra: u64,
    pub timed_out: bool,
}

impl Phase {
    pub fn completed(&self) -> usize {
        self.latencies_us.len()
    }

    pub fn ok(&self) -> usize {
        self.statuses
            .iter()
            .filter(|s| matches!(s, Some(200)))
            .count()
    }

    pub fn throughput(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile, milliseconds.
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let n = self.latencies_us.len();
        let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
        self.latencies_us[rank.min(n) - 1] as f64 / 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.iter().sum::<u64>() as f64 / self.latencies_us.len() as f64 / 1000.0
    }

    /// Counts by status ("200", "409", "transport", ...).
    pub fn by_status(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in self.statuses.iter().flatten() {
            let k = if *s == TRANSPORT_ERROR {
                "transport".to_owned()
            } else {
                s.to_string()
            };
            *m.entry(k).or_insert(0) += 1;
        }
        m
    }

    /// Everything that is not a 200 (409s included; they are also listed by status).
    pub fn errors(&self) -> usize {
        self.statuses
            .iter()
            .flatten()
            .filter(|s| **s != 200)
            .count()
    }

    pub fn summary_json(&self) -> Value {
        json!({
            "requests_planned": self.planned,
            "requests_completed": self.completed(),
            "clients": self.clients,
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "throughput_per_s": round3(self.throughput()),
            "ok_per_s": round3(self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)),
            "latency_ms": {
                "mean": round3(self.mean_ms()),
                "p50": round3(self.pct_ms(50.0)),
                "p90": round3(self.pct_ms(90.0)),
                "p99": round3(self.pct_ms(99.0)),
                "max": round3(self.pct_ms(100.0)),
            },
            "by_status": self.by_status(),
            "errors": self.errors(),
            "time_limit_hit": self.timed_out,
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs `n` requests with `clients` concurrent workers. `req(i)` performs request `i` and
/// returns its outcome and an amount to add to [`Phase::extra`].
pub async fn run<F, Fut>(name: &str, n: usize, clients: usize, max: Duration, req: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (Outcome, u64)> + Send + 'static,
{
    let req = Arc::new(req);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let errs = Arc::new(AtomicUsize::new(0));
    let extra = Arc::new(AtomicU64::new(0));
    // u16::MAX = not sent.
    let statuses: Arc<Vec<AtomicU16>> =
        Arc::new((0..n).map(|_| AtomicU16::new(u16::MAX)).collect());
    let start = Instant::now();
    let deadline = start + max;

    let progress = {
        let (done, errs, name) = (done.clone(), errs.clone(), name.to_owned());
        tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            let mut last = (Instant::now(), 0usize);
            let mut tick = 0u64;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                tick += 1;
                let d = done.load(Ordering::Relaxed);
                let now = Instant::now();
                let rate = (d - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, d);
                let line = format!(
                    "  {name:<28} {d:>7}/{n:<7} {rate:>9.0} req/s  errors {:<6} {:>5.1}s",
                    errs.load(Ordering::Relaxed),
                    now.duration_since(start).as_secs_f64()
                );
                if tty {
                    eprint!("\r{line}");
                } else if tick % 10 == 0 {
                    eprintln!("{line}");
                }
            }
        })
    };

    let mut workers = Vec::with_capacity(clients);
    for _ in 0..clients.max(1) {
        let (req, next, done, errs, extra, statuses) = (
            req.clone(),
            next.clone(),
            done.clone(),
            errs.clone(),
            extra.clone(),
            statuses.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut timed_out = false;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if Instant::now() >= deadline {
                    timed_out = true;
                    break;
                }
                let t0 = Instant::now();
                let (status, x) = req(i).await;
                lat.push(t0.elapsed().as_micros() as u64);
                statuses[i].store(status, Ordering::Relaxed);
                if status != 200 {
                    errs.fetch_add(1, Ordering::Relaxed);
                }
                extra.fetch_add(x, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }
            (lat, timed_out)
        }));
    }
    let mut latencies_us = Vec::with_capacity(n);
    let mut timed_out = false;
    for w in workers {
        if let Ok((lat, t)) = w.await {
            latencies_us.extend(lat);
            timed_out |= t;
        }
    }
    let elapsed = start.elapsed();
    progress.abort();
    if std::io::stderr().is_terminal() {
        eprint!("\r{:100}\r", "");
    }
    latencies_us.sort_unstable();
    let statuses = statuses
        .iter()
        .map(|s| match s.load(Ordering::Relaxed) {
            u16::MAX => None,
            v => Some(v),
        })
        .collect();
    Phase {
        name: name.to_owned(),
        planned: n,
        clients,
        elapsed,
        latencies_us,
        statuses,
        extra: extra.load(Ordering::Relaxed),
        timed_out,
    }
}
