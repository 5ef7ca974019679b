//! `manager`: shardline's control plane. It owns the cluster metadata in NATS KV, runs the
//! admin operations (`/init`, `/add`, `/rm`), heartbeats the shard servers, elects primaries
//! with term fencing and respawns dead servers through a [`runtime::Runtime`].
//!
//! [`run`] serves the admin API on a listener until a shutdown future resolves; `main.rs`
//! only parses the [`Config`], binds and calls it.
//!
//! - [`control_plane`]: [`control_plane::ControlPlane`], the state every operation shares,
//!   and the locks that keep operations from interleaving.
//! - [`routes`]: the admin HTTP API (`/init`, `/add`, `/rm`, `/restore`, `/recover`, `/healthz`).
//! - [`ops`]: the admin operations themselves; [`ops::placement`] names new servers and
//!   spreads primaries.
//! - [`restore`]: `/restore`, a new cluster from a backup archive (checked whole first).
//! - [`election`]: choosing a shard's new primary and fencing the old one with a new term;
//!   reconciling the metadata with a marker an interrupted election left.
//! - [`lease`]: the manager lease; only its holder acts, other managers stand by.
//! - [`failpoint`]: named crash points for tests (`SHARDLINE_FAILPOINTS`).
//! - [`bring_up`]: spawn → `/config` → caught up → up, for new and respawned servers.
//! - [`monitor`]: heartbeat rounds, failover and respawns with back-off;
//!   [`monitor::tracker`] is its per-server state machine.
//! - [`log_recovery`]: freezing a shard whose stream lost entries its replicas applied, and
//!   recovering it on the most advanced replica of a majority (README "Log faults").
//! - [`wal_admin`]: the shards' JetStream streams and the term markers in them.
//! - [`shard_client`]: the HTTP client to the shard servers (`/heartbeat`, `/config`,
//!   `/adopt_log`).
//! - [`retention`]: trimming the streams below what every replica applied, keeping a margin.
//! - [`messages`]: the wording of the admin answers.
//! - [`metadata`]: compare-and-set writes of the metadata document (the manager is its only
//!   writer).
//! - [`runtime`]: where servers run: local child processes or Docker containers.
//! - [`metrics`]: the Prometheus series at `GET /metrics`.

pub mod bring_up;
pub mod control_plane;
pub mod election;
pub mod failpoint;
pub mod lease;
pub mod log_recovery;
pub mod messages;
pub mod metadata;
pub mod metrics;
pub mod monitor;
pub mod ops;
pub mod restore;
pub mod retention;
pub mod routes;
pub mod runtime;
pub mod shard_client;
pub mod wal_admin;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use shardline::SyncMode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control_plane::{ControlPlane, Settings};
use crate::lease::Lease;
use crate::metadata::MetaStore;
use crate::runtime::docker::{DockerRuntime, DockerSettings};
use crate::runtime::process::ProcessRuntime;
use crate::runtime::Runtime;
use crate::shard_client::ShardClient;
use crate::wal_admin::WalAdmin;

/// How long the admin calls in flight at shutdown (an `/init` waiting for catch-up) get.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RuntimeKind {
    Process,
    Docker,
}

/// The shardline manager.
#[derive(Debug, clap::Parser)]
#[command(version, about)]
pub struct Config {
    /// Address of the admin HTTP API (port 0 picks a free port, printed as `LISTENING <addr>`).
    #[arg(
        long,
        env = "SHARDLINE_MANAGER_LISTEN",
        default_value = "127.0.0.1:5001"
    )]
    pub listen: String,
    /// NATS server URL (also passed to the shard servers).
    #[arg(
        long,
        env = "SHARDLINE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// NATS credentials; also handed to the shard servers, as environment variables.
    #[command(flatten)]
    pub nats_auth: shardline::nats::NatsAuthArgs,
    /// Where the process runtime keeps one directory per server (`--data-dir` is the old
    /// spelling).
    #[arg(
        long,
        alias = "data-dir",
        env = "SHARDLINE_SERVERS_DIR",
        default_value = "./data/servers"
    )]
    pub servers_dir: PathBuf,
    /// Where shard servers run: `process` (local child processes) or `docker` (containers).
    #[arg(long, env = "SHARDLINE_RUNTIME", value_enum, default_value = "process")]
    pub runtime: RuntimeKind,
    /// The shard-server binary (default: next to this executable).
    #[arg(long, env = "SHARDLINE_SERVER_BIN")]
    pub server_bin: Option<PathBuf>,
    /// Docker runtime: project name, the prefix of server container names (`<project>-<server>`)
    /// and the value of the `io.shardline.project` label on everything it creates.
    #[arg(long, env = "SHARDLINE_DOCKER_PROJECT", default_value = "shardline")]
    pub docker_project: String,
    /// Docker runtime: the user-defined network servers join (default `<project>-net`).
    #[arg(long, env = "SHARDLINE_DOCKER_NETWORK")]
    pub docker_network: Option<String>,
    /// Docker runtime: the shard-server image (default `shardline-shard-server:<version>`).
    #[arg(long, env = "SHARDLINE_DOCKER_IMAGE")]
    pub docker_image: Option<String>,
    /// Docker runtime: volume name prefix, one volume per server (default `<project>-data-`).
    #[arg(long, env = "SHARDLINE_DOCKER_VOLUME_PREFIX")]
    pub docker_volume_prefix: Option<String>,
    /// SQLite `synchronous` for the servers: normal or full.
    #[arg(
        long,
        env = "SHARDLINE_SQLITE_SYNC",
        value_enum,
        default_value = "normal"
    )]
    pub sqlite_sync: SyncMode,
    /// JetStream replicas per WAL stream (3 with a 3-node NATS cluster).
    #[arg(long, env = "SHARDLINE_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// Heartbeat interval in milliseconds (`--heartbeat-ms` is the old spelling).
    #[arg(
        long,
        alias = "heartbeat-ms",
        env = "SHARDLINE_HEARTBEAT_INTERVAL_MS",
        default_value_t = 300
    )]
    pub heartbeat_interval_ms: u64,
    /// Heartbeat timeout in milliseconds.
    #[arg(long, env = "SHARDLINE_HEARTBEAT_TIMEOUT_MS", default_value_t = 250)]
    pub heartbeat_timeout_ms: u64,
    /// A primary whose oldest write has waited this long to commit (or that lost NATS) is
    /// replaced by a replica that can commit, in milliseconds; also how long a primary may
    /// report a term other than the metadata's.
    #[arg(long, env = "SHARDLINE_COMMIT_STALL_MS", default_value_t = 2000)]
    pub commit_stall_ms: u64,
    /// Time to live of the manager lease, in milliseconds: a standby manager takes over this
    /// long after the active one stopped renewing it.
    #[arg(long, env = "SHARDLINE_LEASE_TTL_MS", default_value_t = 2000)]
    pub lease_ttl_ms: u64,
    /// Missed heartbeats in a row after which a server is dead.
    #[arg(long, env = "SHARDLINE_DEAD_AFTER", default_value_t = 3)]
    pub dead_after: u32,
    /// Respawns allowed per server within 5 minutes before it is marked failed.
    #[arg(long, env = "SHARDLINE_MAX_RESPAWNS", default_value_t = 5)]
    pub max_respawns: usize,
    /// Milliseconds a new or respawned server may take to catch up.
    #[arg(long, env = "SHARDLINE_CATCH_UP_TIMEOUT_MS", default_value_t = 300_000)]
    pub catch_up_timeout_ms: u64,
    /// Stop the servers when the manager is asked to stop (SIGINT/SIGTERM); a manager that
    /// is killed leaves them running either way.
    #[arg(long, env = "SHARDLINE_STOP_SERVERS_ON_EXIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub stop_servers_on_exit: bool,
    /// Milliseconds between two rounds of WAL trimming (purging each shard's stream below
    /// what every replica applied, minus the retained margin); 0 disables trimming.
    #[arg(long, env = "SHARDLINE_WAL_TRIM_INTERVAL_MS", default_value_t = 5000)]
    pub wal_trim_interval_ms: u64,
    /// WAL entries kept at and below the floor (what every replica applied), so that a
    /// replica back from a short outage catches up from the log.
    #[arg(long, env = "SHARDLINE_WAL_RETAIN_ENTRIES", default_value_t = 1000)]
    pub wal_retain_entries: u64,
    /// WAL entries younger than this many milliseconds are never purged (0: no age limit).
    #[arg(long, env = "SHARDLINE_WAL_RETAIN_MS", default_value_t = 0)]
    pub wal_retain_ms: u64,
    /// A replica that does not answer holds the WAL floor while it is at most this many
    /// entries behind the stream's end; beyond, it is released and re-seeds from a snapshot
    /// when it returns.
    #[arg(
        long,
        env = "SHARDLINE_WAL_HOLD_MAX_ENTRIES",
        default_value_t = 1_000_000
    )]
    pub wal_hold_max_entries: u64,
}

impl Config {
    /// Refuses settings that cannot work (NATS credentials that contradict each other), so
    /// that the binary stops before it binds and prints `LISTENING`.
    pub fn check(&self) -> anyhow::Result<()> {
        self.nats_auth.auth()?;
        Ok(())
    }
}

/// Runs the manager on `listener` until `shutdown` resolves: connects to NATS, starts the
/// monitor, serves the admin API, and at shutdown lets admin calls in flight finish for a few
/// seconds, stops the monitor and (if configured) the servers.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // `shutdown` is watched from the start (a stop request while NATS is still unreachable
    // must not wait for it) until the manager has stopped.
    let stop = CancellationToken::new();
    let stopped = CancellationToken::new();
    let ((), result) = tokio::join!(
        // Polled first, so that the shutdown future (a signal handler) is in place before
        // anything else runs.
        biased;
        async {
            tokio::select! {
                () = shutdown => stop.cancel(),
                () = stopped.cancelled() => {}
            }
        },
        async {
            let _stopped = stopped.drop_guard_ref();
            start(config, listener, stop.clone()).await
        },
    );
    result
}

/// Picks the runtime the configuration names and serves until `stop`.
async fn start(
    config: Config,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(?config, "starting manager");
    let nats_auth = config.nats_auth.auth()?;
    // The servers get the manager's NATS credentials explicitly, whether the manager got
    // them from its environment or its command line (and never on a command line).
    let server_env: Vec<(String, String)> = (nats_auth.env().into_iter())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let server_args = vec![
        "--nats-url".to_string(),
        config.nats_url.clone(),
        "--sqlite-sync".into(),
        config.sqlite_sync.as_arg().into(),
    ];
    match config.runtime {
        RuntimeKind::Process => {
            let bin = match &config.server_bin {
                Some(p) => p.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .context("executable has no directory")?
                    .join("shard-server"),
            };
            std::fs::create_dir_all(&config.servers_dir)?;
            let runtime = ProcessRuntime {
                bin,
                data_dir: std::fs::canonicalize(&config.servers_dir)?,
                args: server_args,
                env: server_env,
            };
            serve(config, nats_auth, runtime, listener, stop).await
        }
        RuntimeKind::Docker => {
            let project = config.docker_project.clone();
            let runtime = DockerRuntime::connect(DockerSettings {
                network: (config.docker_network.clone())
                    .unwrap_or_else(|| format!("{project}-net")),
                image: (config.docker_image.clone()).unwrap_or_else(|| {
                    format!("shardline-shard-server:{}", env!("CARGO_PKG_VERSION"))
                }),
                volume_prefix: (config.docker_volume_prefix.clone())
                    .unwrap_or_else(|| format!("{project}-data-")),
                project,
                args: server_args,
                env: server_env,
            })
            .await?;
            serve(config, nats_auth, runtime, listener, stop).await
        }
    }
}

async fn serve<R: Runtime>(
    config: Config,
    nats_auth: shardline::nats::NatsAuth,
    runtime: R,
    listener: TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let lease = Arc::new(Lease::new(
        lease::manager_id(),
        Duration::from_millis(config.lease_ttl_ms.max(100)),
    ));
    let started = async {
        let nats = shardline::nats::connect(&config.nats_url, "shardline manager", &nats_auth)
            .await
            .with_context(|| format!("connecting to NATS at {}", config.nats_url))?;
        let js = async_nats::jetstream::new(nats);
        loop {
            match MetaStore::open(&js, config.stream_replicas, lease.clone()).await {
                Ok(m) => break anyhow::Ok((js, m)),
                Err(e) => {
                    tracing::warn!(error = %e, "metadata bucket not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    };
    let (js, meta) = tokio::select! {
        started = started => started?,
        () = stop.cancelled() => {
            tracing::info!("manager stopped before NATS was reachable");
            return Ok(());
        }
    };
    let trim_js = js.clone();
    let control = Arc::new(ControlPlane::new(
        meta,
        WalAdmin::new(js, config.stream_replicas, lease.clone()),
        runtime,
        ShardClient::build()?,
        Settings {
            catch_up_timeout: Duration::from_millis(config.catch_up_timeout_ms),
            staging_dir: config.servers_dir.clone(),
        },
        lease.clone(),
    ));
    tracing::info!(manager = %lease.id(), ttl_ms = lease.ttl().as_millis() as u64, "standing by for the manager lease");
    // One step before serving, so that a sole manager answers its first admin call active.
    if let Err(e) = lease.round(&control.meta.bucket()).await {
        tracing::warn!(error = %e, "manager lease round failed");
    }
    let stop_lease = CancellationToken::new();
    let keeper = tokio::spawn({
        let (lease, kv, stop) = (lease.clone(), control.meta.bucket(), stop_lease.clone());
        async move { lease.keep(kv, stop).await }
    });
    // The monitor keeps watching while admin calls drain, and stops before the servers do
    // (so that it does not respawn them).
    let stop_monitor = CancellationToken::new();
    let monitor = tokio::spawn(monitor::run(
        control.clone(),
        monitor::Settings {
            interval: Duration::from_millis(config.heartbeat_interval_ms),
            timeout: Duration::from_millis(config.heartbeat_timeout_ms),
            dead_after: config.dead_after,
            max_respawns: config.max_respawns,
            respawn_window: Duration::from_secs(300),
            commit_stall: Duration::from_millis(config.commit_stall_ms),
        },
        stop_monitor.clone(),
    ));
    let trimmer = tokio::spawn(retention::run(
        control.clone(),
        trim_js,
        retention::Settings {
            interval: Duration::from_millis(config.wal_trim_interval_ms),
            retain_entries: config.wal_retain_entries,
            retain_age: Duration::from_millis(config.wal_retain_ms),
            hold_max: config.wal_hold_max_entries,
            heartbeat_timeout: Duration::from_millis(config.heartbeat_timeout_ms.max(1000)),
        },
        stop_monitor.clone(),
    ));

    let addr = listener.local_addr()?;
    tracing::info!(%addr, "manager listening");
    let metrics = metrics::install()?;
    let app = routes::router(control.clone()).merge(metrics::router(metrics));
    serve_http(listener, app, stop).await?;
    stop_monitor.cancel();
    if let Err(e) = monitor.await {
        tracing::error!(error = %e, "monitor task failed");
    }
    if let Err(e) = trimmer.await {
        tracing::error!(error = %e, "WAL trimming task failed");
    }
    // The servers are stopped only by the manager that ran them; a standby leaves them to
    // the active one.
    let active = control.lease.check().is_ok();
    stop_lease.cancel();
    if let Err(e) = keeper.await {
        tracing::error!(error = %e, "lease task failed");
    }
    if config.stop_servers_on_exit && active {
        control.runtime.shutdown().await;
    }
    tracing::info!("manager stopped");
    Ok(())
}

/// Serves the admin API until `stop` is cancelled, then lets calls in flight finish for at
/// most [`DRAIN`].
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    shardline::shutdown::serve_until(listener, app, DRAIN, stop.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    async fn listener() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        (l, url)
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_waits_for_calls_in_flight_but_not_forever() {
        let (l, url) = listener().await;
        let reached = Arc::new(tokio::sync::Notify::new());
        let app = axum::Router::new().route(
            "/hang",
            get({
                let reached = reached.clone();
                || async move {
                    reached.notify_one();
                    std::future::pending::<()>().await
                }
            }),
        );
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_http(l, app, stop.clone()));
        let call = tokio::spawn(async move { reqwest::get(format!("{url}/hang")).await });
        reached.notified().await;
        let stopping = tokio::time::Instant::now();
        stop.cancel();
        server.await.unwrap().unwrap();
        assert!(
            stopping.elapsed() >= DRAIN,
            "stopped after {:?}",
            stopping.elapsed()
        );
        drop(call); // still hanging; it ends with the test runtime
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_without_calls_in_flight_is_immediate() {
        let (l, url) = listener().await;
        let app = axum::Router::new().route("/ok", get(|| async { "ok" }));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_http(l, app, stop.clone()));
        let body = reqwest::get(format!("{url}/ok")).await.unwrap();
        assert_eq!(body.text().await.unwrap(), "ok");
        let stopping = tokio::time::Instant::now();
        stop.cancel();
        server.await.unwrap().unwrap();
        assert!(
            stopping.elapsed() < DRAIN,
            "stopped after {:?}",
            stopping.elapsed()
        );
    }
}
