//! The command line of `shardline-bench` (see `--help`), and the label suffix it gives
//! a run's result files.

use std::path::PathBuf;

use clap::Parser;

/// Load generator for shardline: writes, reads, a JetStream baseline, sweeps, charts.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Args {
    /// Configurations to run (workload files `<name>.init.json`).
    #[arg(long, value_delimiter = ',', default_value = "a1,a2,a3")]
    pub configs: Vec<String>,
    /// Write requests per configuration.
    #[arg(long, default_value_t = 10_000)]
    pub writes: usize,
    /// Read requests per configuration.
    #[arg(long, default_value_t = 10_000)]
    pub reads: usize,
    /// Concurrent clients (closed loop: each sends its next request when the last returns).
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    /// Rows per write request.
    #[arg(long, default_value_t = 1)]
    pub rows_per_write: usize,
    /// Read ranges are `{"low": L, "high": L + read_width}` (inclusive, as the original).
    #[arg(long, default_value_t = 50)]
    pub read_width: i64,
    /// Draw write keys at random with repeats, like the original (repeats get 409, counted apart).
    #[arg(long)]
    pub random_keys: bool,
    /// Durable mode: JetStream `sync_interval: always` and SQLite `synchronous=FULL`.
    #[arg(long)]
    pub durable: bool,
    /// Also run the concurrency sweep and the batch sweep on A1.
    #[arg(long)]
    pub sweeps: bool,
    /// Clients per point of the concurrency sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,5,20,50,100")]
    pub sweep_clients: Vec<usize>,
    /// Rows per write per point of the batch sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub sweep_batches: Vec<usize>,
    /// Requests per phase per sweep point.
    #[arg(long, default_value_t = 5_000)]
    pub sweep_requests: usize,
    /// Messages of the JetStream baseline (default: as many as --writes).
    #[arg(long)]
    pub baseline_messages: Option<usize>,
    /// Acknowledged keys read back one by one after the load (at least 1000, or all).
    #[arg(long, default_value_t = 1_000)]
    pub verify_sample: usize,
    /// Rounds: every configuration is run this many times, interleaved (a1 a2 a3 a1 a2 a3
    /// ...), each on a fresh cluster; the table and the targets use each figure's median,
    /// so a slow moment of a shared machine does not decide a comparison.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Tiny run for `make test`: 300 writes, 300 reads, a1 only, no sweeps, no charts.
    #[arg(long)]
    pub smoke: bool,
    /// Draw charts even in --smoke.
    #[arg(long)]
    pub charts: bool,
    /// Time limit of each phase, seconds.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Output directory for JSON results and charts.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Directory holding the release `manager`, `gateway` and `shard-server`.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// The nats-server binary.
    #[arg(long, default_value = ".tools/bin/nats-server")]
    pub nats_bin: PathBuf,
    /// Directory of the workload `/init` bodies.
    #[arg(long, default_value = "workloads")]
    pub workloads: PathBuf,
    /// nats-server config used by --durable.
    #[arg(long, default_value = "nats/durable.conf")]
    pub durable_conf: PathBuf,
    /// Keep each cluster's temp dir (logs, data) after a successful run.
    #[arg(long)]
    pub keep: bool,
    /// The peer benchmark (make bench-peers): PostgreSQL, a primary and two streaming
    /// standbys with quorum commit, durable and relaxed, measured with pgbench in the same
    /// shapes beside shardline's A1 in default and durable mode, alternating `--rounds`
    /// times; prints them side by side with the ratios. Ignores --configs and --sweeps.
    #[arg(long)]
    pub peers: bool,
    /// PostgreSQL's bin directory for --peers (default: the newest /usr/lib/postgresql/*/bin).
    #[arg(long)]
    pub pg_bin: Option<PathBuf>,
    /// Length of each pgbench phase (writes, reads) with --peers, seconds.
    #[arg(long, default_value_t = 3)]
    pub peer_seconds: u64,
}

pub fn variant(args: &Args) -> String {
    let mut s = String::new();
    if args.durable {
        s.push_str("-durable");
    }
    if args.random_keys {
        s.push_str("-random");
    }
    if args.rows_per_write != 1 {
        s.push_str(&format!("-rows{}", args.rows_per_write));
    }
    s
}
