//! Prometheus metrics of a shard server, served as text at `GET /metrics` on the server's own
//! HTTP port (the address in `/status` metadata, `LISTENING <addr>` on its stdout).
//!
//! Series:
//! - `shardline_server_applied_entries_total{shard}`: WAL entries applied to SQLite
//! - `shardline_server_apply_batch_entries{shard}` (histogram): entries per applied batch
//!   (one SQLite transaction)
//! - `shardline_server_applied_seq{shard}`: last applied WAL sequence
//! - `shardline_server_commit_duration_seconds{shard, outcome}` (histogram): a primary's
//!   write from append to majority applied
//! - `shardline_server_log_fault{shard}`: 1 while the replica has found a log fault
//!   (README "Log faults"), else 0 once it had one

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const APPLIED_ENTRIES: &str = "shardline_server_applied_entries_total";
pub const APPLY_BATCH: &str = "shardline_server_apply_batch_entries";
pub const APPLIED_SEQ: &str = "shardline_server_applied_seq";
pub const COMMIT_SECONDS: &str = "shardline_server_commit_duration_seconds";
pub const LOG_FAULT: &str = "shardline_server_log_fault";

/// Installs the process-wide recorder once; later calls (a second server run in one test
/// process) reuse it.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(COMMIT_SECONDS.into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(APPLY_BATCH.into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        )?
        .install_recorder()?;
    metrics::describe_counter!(APPLIED_ENTRIES, "WAL entries applied to SQLite");
    metrics::describe_histogram!(APPLY_BATCH, "WAL entries per applied batch");
    metrics::describe_gauge!(APPLIED_SEQ, "Last applied WAL sequence");
    metrics::describe_gauge!(
        LOG_FAULT,
        "1 while the replica found that its stream lost entries it applied"
    );
    metrics::describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "A primary's write from WAL append to majority applied"
    );
    shardline::telemetry::spawn_upkeep(&handle);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// `GET /metrics`, merged into the server's router.
pub fn router(handle: PrometheusHandle) -> Router {
    shardline::telemetry::metrics_router(handle)
}

pub fn applied(shard: &str, entries: usize, seq: shardline::Seq) {
    let shard = shard.to_owned();
    metrics::counter!(APPLIED_ENTRIES, "shard" => shard.clone()).increment(entries as u64);
    metrics::histogram!(APPLY_BATCH, "shard" => shard.clone()).record(entries as f64);
    metrics::gauge!(APPLIED_SEQ, "shard" => shard).set(seq.get() as f64);
}

pub fn commit(shard: &str, outcome: &str, elapsed: Duration) {
    metrics::histogram!(COMMIT_SECONDS, "shard" => shard.to_owned(), "outcome" => outcome.to_owned())
        .record(elapsed.as_secs_f64());
}

/// Whether the replica of `shard` has a log fault now.
pub fn log_fault(shard: &str, faulty: bool) {
    metrics::gauge!(LOG_FAULT, "shard" => shard.to_owned()).set(if faulty { 1.0 } else { 0.0 });
}
