//! `shard-server`: one server holding one or more shard replicas, each its own SQLite
//! database. As a shard's primary it appends WAL entries to JetStream and answers once a
//! majority applied them; as any replica it applies the shard's log in sequence order.
//!
//! The binary (`main.rs`) only parses the [`Config`], builds the runtime, binds the listener
//! and calls [`run`]; everything else lives here so it can be tested in-process.
//!
//! - `server`: shared state (name, replicas by shard, watched metadata) and the primary
//!   checks every write makes.
//! - `replica`: one shard replica, split by role:
//!   - `replica::propose`: the proposer (group commit, refusing doomed ops, splitting a group
//!     to fit a log entry, appending);
//!   - `replica::apply`: the applier following the shard's stream;
//!   - `replica::quorum`: ack tracking and waiting for a majority (no NATS inside);
//!   - `replica::announce`: publishing this replica's applied sequence and, on the primary,
//!     following the others'.
//! - `store`: the SQLite database of one replica (rows + applied position), with
//!   `store::apply` (applying entries) and `store::sql` (statements).
//! - `catchup`: snapshot copy from a peer (a replica that starts empty, or is re-seeded).
//! - `restore`: a snapshot from a backup (`PUT /snapshot/{shard}`), installed when the shard
//!   is opened.
//! - `api`: the HTTP endpoints (docs/internal-api.md), with the bodies of
//!   `shardline::internal`.
//! - `metrics`: the Prometheus series at `GET /metrics`.

mod api;
mod catchup;
mod metrics;
mod replica;
mod restore;
mod server;
mod store;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use shardline::names::ServerName;
use shardline::SyncMode;

use crate::server::Server;

/// One shardline shard server.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Config {
    /// Server name (as in the cluster metadata).
    #[arg(long, env = "SHARDLINE_SERVER_NAME")]
    pub name: String,
    /// Address to listen on; port 0 picks a free port (printed as `LISTENING <addr>`).
    #[arg(long, env = "SHARDLINE_SERVER_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Directory for this server's shard databases.
    #[arg(long, env = "SHARDLINE_SERVER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// NATS server URL.
    #[arg(
        long,
        env = "SHARDLINE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    #[command(flatten)]
    pub nats_auth: shardline::nats::NatsAuthArgs,
    /// SQLite `synchronous` setting: `normal` (survives process crashes) or `full`
    /// (survives power loss too, slower).
    #[arg(
        long,
        env = "SHARDLINE_SQLITE_SYNC",
        value_enum,
        default_value = "normal"
    )]
    pub sqlite_sync: SyncMode,
    /// How long a primary waits for a majority before answering 503.
    #[arg(long, env = "SHARDLINE_COMMIT_TIMEOUT_MS", default_value_t = 5000)]
    pub commit_timeout_ms: u64,
    /// Request body limit in bytes.
    #[arg(long, env = "SHARDLINE_BODY_LIMIT", default_value_t = 8 * 1024 * 1024)]
    pub body_limit: usize,
    /// Longest accepted String value in bytes.
    #[arg(long, env = "SHARDLINE_MAX_STRING_BYTES", default_value_t = shardline::schema::DEFAULT_MAX_STRING_BYTES)]
    pub max_string_bytes: usize,
    /// Threads serving requests and applying the log. 1 (a single-threaded runtime) is the
    /// cheapest when several servers share a few cores, as in the local cluster; raise it
    /// for a server alone on a big machine (0 = one per core).
    #[arg(long, env = "SHARDLINE_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// Most writes queued per shard on a primary; more are refused with 503 "overloaded".
    #[arg(long, env = "SHARDLINE_MAX_QUEUED_WRITES", default_value_t = 4096)]
    pub max_queued_writes: usize,
    /// A replica that has not confirmed being caught up with its stream for longer than
    /// this refuses `any` reads (the gateway then tries the next replica).
    #[arg(long, env = "SHARDLINE_MAX_STALENESS_MS", default_value_t = 1000)]
    pub max_staleness_ms: u64,
}

impl Config {
    pub fn commit_timeout(&self) -> Duration {
        Duration::from_millis(self.commit_timeout_ms)
    }
}

/// Runs the server on `listener` until `shutdown` resolves, then lets requests in flight
/// finish (bounded by the commit timeout) and stops every replica.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tracing::info!(?config, "starting shard-server");
    let name = ServerName::parse(&config.name).map_err(anyhow::Error::msg)?;
    let nats_auth = config.nats_auth.auth()?;

    let nats = shardline::nats::connect(
        &config.nats_url,
        &format!("shard-server {name}"),
        &nats_auth,
    )
    .await
    .with_context(|| format!("connecting to NATS at {}", config.nats_url))?;
    let js = async_nats::jetstream::new(nats.clone());
    let meta = shardline::watch::spawn(js.clone());

    let stale = catchup::remove_stale_files(&config.data_dir);
    if stale > 0 {
        tracing::info!(
            files = stale,
            "removed snapshot files left by a previous process"
        );
    }
    let server = Arc::new(Server::new(
        name,
        config.data_dir.clone(),
        js,
        nats,
        meta,
        config.sqlite_sync,
        config.commit_timeout(),
        config.max_string_bytes,
        config.max_queued_writes,
        Duration::from_millis(config.max_staleness_ms),
    ));
    tokio::spawn(configure_from_metadata(server.clone()));

    tracing::info!(addr = %listener.local_addr()?, server = %server.name, "shard-server listening");
    let metrics = metrics::install()?;
    let app = api::router(server.clone(), config.body_limit).merge(metrics::router(metrics));
    // Bounded by the commit timeout: a write in flight either commits or answers 503 by then.
    let drain = config.commit_timeout() + Duration::from_secs(1);
    shardline::shutdown::serve_until(listener, app, drain, shutdown).await?;
    server.shutdown().await;
    tracing::info!(server = %server.name, "shard-server stopped");
    Ok(())
}

/// A server restarted under its old name finds its shards in the metadata and resumes them
/// without waiting for the manager's `/config`.
async fn configure_from_metadata(server: Arc<Server>) {
    let mut rx = server.meta.clone();
    let Ok(meta) = rx
        .wait_for(|m| {
            m.as_ref()
                .is_some_and(|m| m.servers.contains_key(&server.name))
        })
        .await
        .map(|m| m.clone())
    else {
        return;
    };
    let Some(meta) = meta else { return };
    let shards = meta.servers[&server.name].shards.clone();
    if let Err(e) = server.configure(meta.schema.clone(), &shards).await {
        tracing::warn!(server = %server.name, error = %e, "cannot configure from metadata");
    }
}
