//! Prometheus metrics of the gateway, served as text at `GET /metrics`.
//!
//! The `metrics` facade records from anywhere (`metrics::counter!` …); the Prometheus recorder
//! installed here keeps the values and renders them on demand, so the gateway opens no second
//! listener. Request metrics come from one middleware ([`track`]) labelled with the *route
//! template* (`/read/{server}`), never the raw path, so a scan of random URLs cannot blow up
//! the number of series.
//!
//! Series:
//! - `shardline_gateway_requests_total{endpoint, method, status}`
//! - `shardline_gateway_request_duration_seconds{endpoint, method, status}` (histogram)
//! - `shardline_gateway_shard_write_duration_seconds{shard, op, outcome}` (histogram): one
//!   shard group sent to its primary until committed (or failed)
//! - `shardline_gateway_retries_total{shard, reason}`: a write re-sent to another primary,
//!   or a read re-tried on another replica
//! - `shardline_gateway_write_batches_total{shard}` and
//!   `shardline_gateway_batched_writes_total{shard}`: `/write_batch` requests sent to a
//!   primary and the writes they carried (their ratio is the mean batch size)
//! - `shardline_gateway_read_batches_total{server}` and
//!   `shardline_gateway_batched_reads_total{server}`: the same for `/read_batch` requests
//!   to a shard server

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::router::AppState;

pub const REQUESTS: &str = "shardline_gateway_requests_total";
pub const REQUEST_SECONDS: &str = "shardline_gateway_request_duration_seconds";
pub const SHARD_WRITE_SECONDS: &str = "shardline_gateway_shard_write_duration_seconds";
pub const RETRIES: &str = "shardline_gateway_retries_total";
pub const WRITE_BATCHES: &str = "shardline_gateway_write_batches_total";
pub const BATCHED_WRITES: &str = "shardline_gateway_batched_writes_total";
pub const READ_BATCHES: &str = "shardline_gateway_read_batches_total";
pub const BATCHED_READS: &str = "shardline_gateway_batched_reads_total";

/// Latency buckets from 1 ms to 30 s: a local read is ~1 ms, a write waits for a majority
/// (a few ms), an /init spawns processes (seconds).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process-wide recorder on first use and returns its handle; later calls (a
/// second [`crate::run`] in one process, as in tests) get the same handle.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)?
        .install_recorder()?;
    metrics::describe_counter!(
        REQUESTS,
        "HTTP requests answered, by route template and status"
    );
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "HTTP request latency, by route template and status"
    );
    metrics::describe_histogram!(
        SHARD_WRITE_SECONDS,
        metrics::Unit::Seconds,
        "Latency of one shard's group of a write, sent to its primary until committed"
    );
    metrics::describe_counter!(
        RETRIES,
        "Requests re-sent after a primary refused or a replica failed"
    );
    metrics::describe_counter!(
        WRITE_BATCHES,
        "Batches of coalesced writes sent to a shard's primary as one /write_batch"
    );
    metrics::describe_counter!(
        BATCHED_WRITES,
        "Writes sent to a shard's primary inside a /write_batch"
    );
    metrics::describe_counter!(
        READ_BATCHES,
        "Batches of coalesced reads sent to a shard server as one /read_batch"
    );
    metrics::describe_counter!(
        BATCHED_READS,
        "Reads sent to a shard server inside a /read_batch"
    );
    shardline::telemetry::spawn_upkeep(&handle);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Counts and times every request under its route template.
pub async fn track(req: Request, next: Next) -> Response {
    let endpoint = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let start = Instant::now();
    let response = next.run(req).await;
    let elapsed = start.elapsed();
    // Unknown routes share one label rather than one series per probed URL.
    let endpoint = endpoint.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status();
    crate::ui::traffic::record(endpoint, status.as_u16(), elapsed);
    static SERIES: Handles<(metrics::Counter, metrics::Histogram)> = Handles::new();
    let (count, seconds) = SERIES.get(
        [endpoint, method_label(&method), status.as_str()],
        |labels| {
            (
                metrics::counter!(REQUESTS, &labels),
                metrics::histogram!(REQUEST_SECONDS, &labels),
            )
        },
    );
    count.increment(1);
    seconds.record(elapsed.as_secs_f64());
    response
}

/// The `method` label: the standard methods by name, anything else as `other`, so made-up
/// methods cannot create new series without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Label sets by their hash, each with its handles.
type ByHash<H> = HashMap<u64, Vec<([Box<str>; 3], H)>>;

/// Metric handles by their three label values, each registered once: registering builds the
/// labels (`String`s) and looks the key up in the recorder's registry, which cost more than
/// the rest of the metrics together. At most [`Handles::MAX`] label sets are kept (only
/// made-up methods could reach it); the others are registered on every use.
struct Handles<H> {
    names: [&'static str; 3],
    by_hash: RwLock<Option<ByHash<H>>>,
}

impl<H: Clone> Handles<H> {
    const MAX: usize = 1024;

    const fn new_with(names: [&'static str; 3]) -> Self {
        Handles {
            names,
            by_hash: RwLock::new(None),
        }
    }

    const fn new() -> Self {
        Self::new_with(["endpoint", "method", "status"])
    }

    fn get(&self, values: [&str; 3], register: impl FnOnce([(&'static str, String); 3]) -> H) -> H {
        let hash = {
            let mut h = std::hash::DefaultHasher::new();
            values.hash(&mut h);
            h.finish()
        };
        let find = |map: &Option<ByHash<H>>| {
            map.as_ref()?
                .get(&hash)?
                .iter()
                .find(|(v, _)| v.iter().zip(&values).all(|(a, b)| **a == **b))
                .map(|(_, h)| h.clone())
        };
        if let Some(h) = find(&self.by_hash.read().unwrap_or_else(PoisonError::into_inner)) {
            return h;
        }
        let handle = register([
            (self.names[0], values[0].to_owned()),
            (self.names[1], values[1].to_owned()),
            (self.names[2], values[2].to_owned()),
        ]);
        let mut map = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
        if find(&map).is_none() {
            let map = map.get_or_insert_with(HashMap::new);
            if map.values().map(Vec::len).sum::<usize>() < Self::MAX {
                map.entry(hash)
                    .or_default()
                    .push((values.map(Box::from), handle.clone()));
            }
        }
        handle
    }
}

/// `GET /metrics`: the Prometheus text exposition format.
pub async fn render(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

/// Records how long one shard group of a write/update/delete took, and how it ended.
pub fn shard_write(shard: &str, op: &'static str, outcome: &str, elapsed: Duration) {
    static SERIES: Handles<metrics::Histogram> = Handles::new_with(["shard", "op", "outcome"]);
    SERIES
        .get([shard, op, outcome], |labels| {
            metrics::histogram!(SHARD_WRITE_SECONDS, &labels)
        })
        .record(elapsed.as_secs_f64());
}

/// Counts one `/write_batch` of `writes` writes sent to a shard's primary.
pub fn write_batch(shard: &str, writes: usize) {
    metrics::counter!(WRITE_BATCHES, "shard" => shard.to_owned()).increment(1);
    metrics::counter!(BATCHED_WRITES, "shard" => shard.to_owned()).increment(writes as u64);
}

/// Counts one `/read_batch` of `reads` reads sent to a shard server.
pub fn read_batch(server: &str, reads: usize) {
    metrics::counter!(READ_BATCHES, "server" => server.to_owned()).increment(1);
    metrics::counter!(BATCHED_READS, "server" => server.to_owned()).increment(reads as u64);
}

pub fn retry(shard: &str, reason: &'static str) {
    metrics::counter!(RETRIES, "shard" => shard.to_owned(), "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn made_up_methods_share_one_label() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::POST), "POST");
        for m in ["FOO", "BAR1", "PROPFIND"] {
            assert_eq!(
                method_label(&Method::from_bytes(m.as_bytes()).unwrap()),
                "other"
            );
        }
    }

    #[test]
    fn each_label_set_is_registered_once_and_the_cache_is_bounded() {
        let handles: Handles<usize> = Handles::new();
        let registered = Cell::new(0);
        let get = |values: [&str; 3]| {
            handles.get(values, |labels| {
                assert_eq!(
                    labels.clone().map(|(k, _)| k),
                    ["endpoint", "method", "status"]
                );
                assert_eq!(labels.map(|(_, v)| v), values.map(str::to_owned));
                registered.set(registered.get() + 1);
                registered.get()
            })
        };
        let a = get(["/read", "POST", "200"]);
        let b = get(["/read", "POST", "503"]);
        let c = get(["/read", "GET", "200"]);
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(get(["/read", "POST", "200"]), a);
        assert_eq!(get(["/read", "POST", "503"]), b);
        // The values are compared, not only their hash: a shifted split is another set.
        assert_ne!(get(["/rea", "dPOST", "200"]), a);
        assert_eq!(registered.get(), 4);

        for i in 0..Handles::<usize>::MAX {
            get(["/x", &i.to_string(), "200"]);
        }
        let before = registered.get();
        // Past the bound: registered on every use, the earlier ones still cached.
        get(["/y", "POST", "200"]);
        get(["/y", "POST", "200"]);
        assert_eq!(registered.get(), before + 2);
        assert_eq!(get(["/read", "GET", "200"]), c);
        assert_eq!(registered.get(), before + 2);
    }
}
