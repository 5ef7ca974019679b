//! Prometheus metrics of the manager, served as text at `GET /metrics` on its admin port.
//!
//! The monitor and the election code record through the `metrics` facade (one line each, at
//! the event); this module installs the recorder, names the series and renders them.
//!
//! Series:
//! - `shardline_manager_heartbeat_failures_total{server}`: heartbeats not answered in time
//! - `shardline_manager_elections_total{shard}`: primaries elected (each bumps the term)
//! - `shardline_manager_respawns_total{server}`: servers respawned by the runtime
//! - `shardline_manager_replica_applied_seq{server, shard}`: last applied WAL sequence, as
//!   reported by the server's heartbeat
//! - `shardline_manager_replica_lag{server, shard}`: entries this replica is behind the most
//!   advanced replica of the shard (from the same heartbeat round)
//! - `shardline_manager_log_faults_total{shard}`: shards frozen after a log fault
//! - `shardline_manager_log_recoveries_total{shard}`: log recoveries completed

use std::collections::BTreeMap;

use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use shardline::Seq;

use shardline::internal::Heartbeat;

pub const HEARTBEAT_FAILURES: &str = "shardline_manager_heartbeat_failures_total";
pub const ELECTIONS: &str = "shardline_manager_elections_total";
pub const RESPAWNS: &str = "shardline_manager_respawns_total";
pub const APPLIED: &str = "shardline_manager_replica_applied_seq";
pub const LAG: &str = "shardline_manager_replica_lag";
pub const LOG_FAULTS: &str = "shardline_manager_log_faults_total";
pub const LOG_RECOVERIES: &str = "shardline_manager_log_recoveries_total";

/// Installs the process-wide recorder. Call once, before serving.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    metrics::describe_counter!(HEARTBEAT_FAILURES, "Heartbeats not answered in time");
    metrics::describe_counter!(ELECTIONS, "Primaries elected");
    metrics::describe_counter!(RESPAWNS, "Servers respawned");
    metrics::describe_gauge!(APPLIED, "Last applied WAL sequence per replica");
    metrics::describe_counter!(LOG_FAULTS, "Shards frozen after a log fault");
    metrics::describe_counter!(LOG_RECOVERIES, "Log recoveries completed");
    metrics::describe_gauge!(
        LAG,
        "WAL entries a replica is behind the most advanced replica of its shard"
    );
    shardline::telemetry::spawn_upkeep(&handle);
    Ok(handle)
}

/// `GET /metrics`, to be merged into the admin router.
pub fn router(handle: PrometheusHandle) -> Router {
    shardline::telemetry::metrics_router(handle)
}

/// Applied sequence and lag per replica from one round of heartbeats.
pub fn record_progress<'a>(beats: impl IntoIterator<Item = (&'a str, &'a Heartbeat)>) {
    let mut by_shard: BTreeMap<&str, Vec<(&str, Seq)>> = BTreeMap::new();
    for (server, beat) in beats {
        for (shard, s) in &beat.shards {
            by_shard
                .entry(shard.as_str())
                .or_default()
                .push((server, s.applied));
        }
    }
    for (shard, replicas) in by_shard {
        let head = replicas.iter().map(|r| r.1).max().unwrap_or(Seq::ZERO);
        for (server, applied) in replicas {
            let labels = [("server", server.to_owned()), ("shard", shard.to_owned())];
            metrics::gauge!(APPLIED, &labels).set(applied.get() as f64);
            metrics::gauge!(LAG, &labels).set((head.get() - applied.get()) as f64);
        }
    }
}
