//! `manager`: shardline's control plane. It owns the cluster metadata in NATS KV, runs the
//! admin operations (`/init`, `/add`, `/rm`), heartbeats the shard servers, elects primaries
//! with term fencing and respawns dead servers through a [`runtime::Runtime`].
//!
//! - `metadata`: compare-and-set writes of the metadata document (the manager is its only writer).
//! - `cluster`: the admin operations, elections, and bringing servers up.
//! - `monitor`: heartbeats, failure detection, failover and respawn with back-off.
//! - `runtime`: where servers run (local processes; Docker comes next).
//! - `admin`: the HTTP routes.

mod admin;
mod cluster;
mod metadata;
mod metrics;
mod monitor;
mod runtime;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use crate::cluster::{Cluster, Settings};
use crate::metadata::MetaStore;
use crate::runtime::docker::{DockerRuntime, DockerSettings};
use crate::runtime::process::ProcessRuntime;
use crate::runtime::Runtime;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RuntimeKind {
    Process,
    Docker,
}

/// The shardline manager.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    /// Address of the admin HTTP API (port 0 picks a free port, printed as `LISTENING <addr>`).
    #[arg(
        long,
        env = "SHARDLINE_MANAGER_LISTEN",
        default_value = "127.0.0.1:5001"
    )]
    listen: String,
    /// NATS server URL (also passed to the shard servers).
    #[arg(
        long,
        env = "SHARDLINE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// NATS credentials; also handed to the shard servers, as environment variables.
    #[command(flatten)]
    nats_auth: shardline::nats::NatsAuthArgs,
    /// Where the process runtime keeps one directory per server.
    #[arg(long, env = "SHARDLINE_DATA_DIR", default_value = "./data/servers")]
    data_dir: PathBuf,
    /// Where shard servers run: `process` (local child processes) or `docker` (containers).
    #[arg(long, env = "SHARDLINE_RUNTIME", value_enum, default_value = "process")]
    runtime: RuntimeKind,
    /// The shard-server binary (default: next to this executable).
    #[arg(long, env = "SHARDLINE_SERVER_BIN")]
    server_bin: Option<PathBuf>,
    /// Docker runtime: project name, the prefix of server container names (`<project>-<server>`)
    /// and the value of the `io.shardline.project` label on everything it creates.
    #[arg(long, env = "SHARDLINE_DOCKER_PROJECT", default_value = "shardline")]
    docker_project: String,
    /// Docker runtime: the user-defined network servers join (default `<project>-net`).
    #[arg(long, env = "SHARDLINE_DOCKER_NETWORK")]
    docker_network: Option<String>,
    /// Docker runtime: the shard-server image (default `shardline-shard-server:<version>`).
    #[arg(long, env = "SHARDLINE_DOCKER_IMAGE")]
    docker_image: Option<String>,
    /// Docker runtime: volume name prefix, one volume per server (default `<project>-data-`).
    #[arg(long, env = "SHARDLINE_DOCKER_VOLUME_PREFIX")]
    docker_volume_prefix: Option<String>,
    /// SQLite `synchronous` for the servers: normal or full.
    #[arg(long, env = "SHARDLINE_SQLITE_SYNC", default_value = "normal")]
    sqlite_sync: String,
    /// JetStream replicas per WAL stream (3 with a 3-node NATS cluster).
    #[arg(long, env = "SHARDLINE_STREAM_REPLICAS", default_value_t = 1)]
    stream_replicas: usize,
    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "SHARDLINE_HEARTBEAT_MS", default_value_t = 300)]
    heartbeat_ms: u64,
    /// Heartbeat timeout in milliseconds.
    #[arg(long, env = "SHARDLINE_HEARTBEAT_TIMEOUT_MS", default_value_t = 250)]
    heartbeat_timeout_ms: u64,
    /// Missed heartbeats in a row after which a server is dead.
    #[arg(long, env = "SHARDLINE_DEAD_AFTER", default_value_t = 3)]
    dead_after: u32,
    /// Respawns allowed per server within 5 minutes before it is marked failed.
    #[arg(long, env = "SHARDLINE_MAX_RESPAWNS", default_value_t = 5)]
    max_respawns: usize,
    /// Seconds a new or respawned server may take to catch up.
    #[arg(long, env = "SHARDLINE_CATCH_UP_TIMEOUT_S", default_value_t = 300)]
    catch_up_timeout_s: u64,
    /// Stop the servers when the manager is asked to stop (SIGINT/SIGTERM); a manager that
    /// is killed leaves them running either way.
    #[arg(long, env = "SHARDLINE_STOP_SERVERS_ON_EXIT", default_value_t = true, action = clap::ArgAction::Set)]
    stop_servers_on_exit: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shardline::telemetry::init_logging();
    let config = Config::parse();
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
        config.sqlite_sync.clone(),
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
            std::fs::create_dir_all(&config.data_dir)?;
            let runtime = ProcessRuntime {
                bin,
                data_dir: std::fs::canonicalize(&config.data_dir)?,
                args: server_args,
                env: server_env,
            };
            serve(config, nats_auth, runtime).await
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
            serve(config, nats_auth, runtime).await
        }
    }
}

async fn serve<R: Runtime>(
    config: Config,
    nats_auth: shardline::nats::NatsAuth,
    runtime: R,
) -> anyhow::Result<()> {
    let nats = shardline::nats::connect(&config.nats_url, "shardline manager", &nats_auth)
        .await
        .with_context(|| format!("connecting to NATS at {}", config.nats_url))?;
    let js = async_nats::jetstream::new(nats);
    let meta = loop {
        match MetaStore::open(&js, config.stream_replicas).await {
            Ok(m) => break m,
            Err(e) => {
                tracing::warn!(error = %e, "metadata bucket not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let cluster = Arc::new(Cluster {
        meta,
        js,
        runtime,
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(30))
            .build()?,
        settings: Settings {
            stream_replicas: config.stream_replicas,
            catch_up_timeout: Duration::from_secs(config.catch_up_timeout_s),
        },
        admin: tokio::sync::Mutex::new(()),
        elections: tokio::sync::Mutex::new(()),
    });
    tokio::spawn(monitor::run(
        cluster.clone(),
        monitor::Settings {
            interval: Duration::from_millis(config.heartbeat_ms),
            timeout: Duration::from_millis(config.heartbeat_timeout_ms),
            dead_after: config.dead_after,
            max_respawns: config.max_respawns,
            respawn_window: Duration::from_secs(300),
        },
    ));

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!("LISTENING {addr}");
    tracing::info!(%addr, "manager listening");
    let metrics = metrics::install()?;
    let app = admin::router(cluster.clone()).merge(metrics::router(metrics));
    // An admin call in flight (an /init waiting for catch-up) gets a few seconds, not forever.
    shardline::shutdown::serve(listener, app, Duration::from_secs(5)).await?;
    if config.stop_servers_on_exit {
        cluster.runtime.shutdown().await;
    }
    tracing::info!("manager stopped");
    Ok(())
}
