//! The gateway's configuration: command-line flags, each with its environment variable.

use std::time::Duration;

use clap::Parser;
use shardline::ring::RingHash;

use crate::read;

/// shardline gateway: the public HTTP API.
#[derive(Parser, Clone)]
#[command(name = "gateway", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SHARDLINE_GATEWAY_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: String,
    /// NATS server holding the metadata bucket and the WAL streams.
    #[arg(
        long,
        env = "SHARDLINE_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    #[command(flatten)]
    pub nats_auth: shardline::nats::NatsAuthArgs,
    /// Base URL of the manager's admin API (/init, /add, /rm are forwarded there).
    #[arg(
        long,
        env = "SHARDLINE_MANAGER_URL",
        default_value = "http://127.0.0.1:5001"
    )]
    pub manager_url: String,
    /// Hash used by the read-replica rings: `mixed` (even spread) or `quadratic` (the assignment's).
    #[arg(long, env = "SHARDLINE_RING_HASH", default_value = "mixed")]
    pub ring_hash: RingHash,
    /// How a read picks each shard's replica on the ring: `affinity` places this gateway's own
    /// id on the ring, so its reads of a shard go to one replica (warm caches, few connections)
    /// and overflow to the next replica on the ring once that one has `--read-overflow` reads in
    /// flight; `spread` places a random id per read, as the assignment's load balancer does.
    #[arg(
        long,
        env = "SHARDLINE_READ_POLICY",
        value_enum,
        default_value = "affinity"
    )]
    pub read_policy: read::ReadPolicy,
    /// With `--read-policy affinity`: reads a replica may have in flight from this gateway
    /// before further reads go to the next replica on the ring.
    #[arg(long, env = "SHARDLINE_READ_OVERFLOW", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub read_overflow: u32,
    /// Largest accepted request body, in bytes (larger → 413).
    #[arg(long, env = "SHARDLINE_BODY_LIMIT", default_value_t = 8 * 1024 * 1024)]
    pub body_limit: usize,
    /// Most rows accepted by one /write (more → 400).
    #[arg(long, env = "SHARDLINE_MAX_BATCH", default_value_t = 10_000)]
    pub max_batch: usize,
    /// Longest accepted `String` value in a row, in bytes (longer → 400).
    #[arg(long, env = "SHARDLINE_MAX_STRING_BYTES", default_value_t = shardline::schema::DEFAULT_MAX_STRING_BYTES)]
    pub max_string_bytes: usize,
    /// Most rows one /read may return; a wider range gets a 400 asking for a narrower one.
    #[arg(long, env = "SHARDLINE_MAX_READ_ROWS", default_value_t = 100_000)]
    pub max_read_rows: usize,
    /// When set, /init, /add and /rm require `Authorization: Bearer <token>`.
    #[arg(long, env = "SHARDLINE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Timeout of one call to a shard server, in milliseconds.
    #[arg(
        long,
        env = "SHARDLINE_GATEWAY_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub request_timeout_ms: u64,
    /// Timeout of a forwarded admin call (/init spawns servers), in milliseconds.
    #[arg(
        long,
        env = "SHARDLINE_GATEWAY_ADMIN_TIMEOUT_MS",
        default_value_t = 300_000
    )]
    pub admin_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long requests in flight may take to finish, in milliseconds.
    #[arg(
        long,
        env = "SHARDLINE_GATEWAY_DRAIN_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub drain_timeout_ms: u64,
    /// How long a write waits for a new primary after its primary failed or refused, in ms.
    #[arg(
        long,
        env = "SHARDLINE_GATEWAY_FAILOVER_WAIT_MS",
        default_value_t = 2_000
    )]
    pub failover_wait_ms: u64,
    /// Writes to one shard this gateway keeps in flight to its primary; writes that arrive
    /// meanwhile queue and go together as one `/write_batch`, so they share a request and a
    /// log entry. 0 sends every write on its own.
    #[arg(long, env = "SHARDLINE_WRITE_INFLIGHT", default_value_t = 1)]
    pub write_inflight: usize,
    /// `any`-level reads this gateway keeps in flight to one shard server; reads that arrive
    /// meanwhile queue and go together as one `/read_batch`. 0 sends every read on its own.
    #[arg(long, env = "SHARDLINE_READ_INFLIGHT", default_value_t = 2)]
    pub read_inflight: usize,
    /// After a shard's batch of writes is answered, its sender waits up to this long (µs;
    /// tokio's timers round it up to the next millisecond, and it is at most half the
    /// request timeout) for half as many writes to arrive (the writers just answered,
    /// sending their next) before it sends what waits; 0 sends at once.
    #[arg(long, env = "SHARDLINE_WRITE_LINGER_US", default_value_t = 1000)]
    pub write_linger_us: u64,
    /// Threads of the gateway's runtime. 1 (the default) runs everything on one thread: on a
    /// few cores shared with the shard servers and nats-server that is cheapest (no hand-offs
    /// between workers); raise it for a gateway with cores of its own (0 = one per core).
    #[arg(long, env = "SHARDLINE_GATEWAY_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
}

impl std::fmt::Debug for Config {
    // Hand-written so the admin token never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("nats_url", &self.nats_url)
            .field("nats_auth", &self.nats_auth)
            .field("manager_url", &self.manager_url)
            .field("ring_hash", &self.ring_hash)
            .field("read_policy", &self.read_policy)
            .field("read_overflow", &self.read_overflow)
            .field("body_limit", &self.body_limit)
            .field("max_batch", &self.max_batch)
            .field("max_string_bytes", &self.max_string_bytes)
            .field("max_read_rows", &self.max_read_rows)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("admin_timeout_ms", &self.admin_timeout_ms)
            .field("failover_wait_ms", &self.failover_wait_ms)
            .field("drain_timeout_ms", &self.drain_timeout_ms)
            .field("write_inflight", &self.write_inflight)
            .field("read_inflight", &self.read_inflight)
            .field("write_linger_us", &self.write_linger_us)
            .field("worker_threads", &self.worker_threads)
            .finish()
    }
}

impl Config {
    pub fn failover_wait(&self) -> Duration {
        Duration::from_millis(self.failover_wait_ms)
    }

    pub fn write_linger(&self) -> Duration {
        Duration::from_micros(self.write_linger_us)
    }
}
