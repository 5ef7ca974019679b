//! `gateway`: shardline's public HTTP API (docs/API.md). It holds no state of its own: it
//! follows the cluster metadata in the NATS KV bucket and turns each request into calls to
//! shard servers (data) or the manager (admin). `main.rs` parses the [`Config`], binds the
//! listener and calls [`run`]; tests call the modules' functions in-process.
//!
//! - [`config`]: the flags and their environment variables.
//! - [`topology`]: the routing view of the cluster ([`topology::Routing`]: metadata, one
//!   consistent-hash ring per shard, parsed server addresses), rebuilt for each metadata
//!   revision that [`shardline::watch`] delivers; never writes metadata.
//! - [`router`]: the shared [`router::AppState`], the route table, 404/405 fallbacks.
//! - [`upstream`]: the one HTTP client for shard servers and the manager; decodes their answers
//!   into [`shardline::ApiError`]s and routes a call to a shard's primary, retrying once after
//!   a failover ([`upstream::wait_for_primary`], [`upstream::after_first`]).
//! - [`read`], [`write`](mod@write), [`admin`], [`status`], [`health`]: one module per endpoint family,
//!   each owning its validation (pure functions over the metadata and the body) and execution.
//!   [`read::replicas`] picks the replica of a ring read and moves past those that cannot
//!   serve; `primary` and `linearizable` reads go through [`upstream::to_primary`].
//! - [`backup`]: `GET /backup` (a tar stream of every shard's snapshot) and `POST /restore`
//!   (streamed to the manager).
//! - [`metrics`]: the Prometheus series and the `/metrics` route.
//! - `openapi`: the OpenAPI document served at `/openapi.json`.

pub mod admin;
pub mod backup;
pub mod coalesce;
pub mod config;
pub mod health;
pub mod metrics;
mod openapi;
pub mod read;
pub mod router;
pub mod status;
pub mod topology;
mod ui;
pub mod upstream;
pub mod write;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use config::Config;

/// Serves the API on `listener` until `shutdown` resolves, then drains requests in flight for
/// at most `--drain-timeout-ms` and closes the NATS connection.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(?config, "gateway starting");
    let nats_auth = config.nats_auth.auth()?;
    let metrics = metrics::install()?;

    // Connect in the background: the gateway answers /healthz (and 503s) while NATS is away.
    let nats = shardline::nats::connect(&config.nats_url, "shardline-gateway", &nats_auth)
        .await
        .with_context(|| format!("invalid NATS url {}", config.nats_url))?;
    let jetstream = async_nats::jetstream::new(nats.clone());
    let topology = topology::spawn(jetstream.clone(), config.ring_hash);
    let upstream_timeout = Duration::from_millis(config.request_timeout_ms);
    let upstream = upstream::client(upstream_timeout);
    let http = upstream::manager_client()?;

    let addr = listener.local_addr()?;
    let drain = Duration::from_millis(config.drain_timeout_ms);
    // This gateway's place on the read rings (`--read-policy affinity`): random per process,
    // so several gateways spread their reads over a shard's replicas.
    let read_id: u64 = rand::random();
    tracing::info!(read_id, read_policy = ?config.read_policy, "read replica choice");
    let state = Arc::new(router::AppState {
        lanes: coalesce::Lanes::new(config.write_inflight, upstream_timeout, config.body_limit),
        read_lanes: coalesce::Lanes::new(config.read_inflight, upstream_timeout, config.body_limit),
        config,
        read_id,
        ui: ui::Dashboard::spawn(topology.clone()),
        topology,
        jetstream,
        upstream,
        http,
        metrics,
    });
    let app = router::router(state);
    tracing::info!(%addr, "gateway listening");

    shardline::shutdown::serve_until(listener, app, drain, shutdown)
        .await
        .context("HTTP server failed")?;
    // Flush and close the NATS connection rather than dropping it mid-request.
    if let Err(e) = nats.drain().await {
        tracing::debug!(error = %e, "NATS drain failed");
    }
    tracing::info!("gateway stopped");
    Ok(())
}
