//! `shardline-bench`: the load generator of the performance analysis (`make bench`).
//!
//! For each configuration (A1/A2/A3 from `workloads/`) it starts a fresh local cluster
//! (nats-server + manager with the process runtime + gateway, release binaries), `/init`s it,
//! runs a write phase (unique keys), a read phase (ranges over the written key space) and a
//! JetStream baseline (raw synchronous publishes on the same nats-server), then checks that
//! every acknowledged write is readable and all replicas agree. Results go to
//! `<out>/<config>.json`, SVG charts next to them, and a table on the terminal.

//!
//! Modules: `cli` (flags), `cluster` (the cluster of one measurement, on testkit's process
//! handling), `workload`, `phases` (writes, reads), `baseline` (JetStream), `load` (the
//! closed-loop driver), `http` (its client), `probe`/`procstat` (CPU, peak RSS), `verify`,
//! `configuration` (one configuration's run), `sweeps`, `report` (table, medians),
//! `charts`, `peers` (`--peers`: PostgreSQL with quorum standbys beside A1).

mod baseline;
mod charts;
mod cli;
mod cluster;
mod configuration;
mod http;
mod load;
mod peers;
mod phases;
mod probe;
mod procstat;
mod report;
mod sweeps;
mod verify;
mod workload;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::Value;
use testkit::paths::{bin_in, resolve};

use crate::cli::{variant, Args};
use crate::cluster::BenchOpts;
use crate::phases::Ctx;
use crate::probe::cores;

async fn run(mut args: Args) -> anyhow::Result<bool> {
    if args.smoke {
        args.writes = 300;
        args.reads = 300;
        args.configs = vec!["a1".into()];
        args.sweeps = false;
    }
    let bin_dir = resolve(&args.bin_dir);
    let nats_bin = resolve(&args.nats_bin);
    for b in ["manager", "gateway", "shard-server"] {
        bin_in(&bin_dir, b)
            .map_err(|e| anyhow::anyhow!("{e}: build first (cargo build --release --workspace)"))?;
    }
    if !nats_bin.is_file() {
        bail!(
            "{} not found: run scripts/install-nats.sh",
            nats_bin.display()
        );
    }
    let durable_conf = resolve(&args.durable_conf);
    if (args.durable || args.peers) && !durable_conf.is_file() {
        bail!(
            "{} not found (needed by --durable and --peers)",
            durable_conf.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let opts = BenchOpts {
        bin_dir,
        nats_bin,
        durable_conf: args.durable.then(|| durable_conf.clone()),
        sqlite_full: args.durable,
        keep_dirs: args.keep,
    };
    let max_idle = args
        .clients
        .max(*args.sweep_clients.iter().max().unwrap_or(&0))
        * 2
        + 8;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(max_idle)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let ctx = Ctx {
        max: Duration::from_secs(args.max_seconds),
        args: args.clone(),
        http,
        load: http::LoadClient::new(max_idle),
        opts,
    };
    println!(
        "shardline-bench: {} cores, durable={}, random_keys={}, out={}",
        cores(),
        args.durable,
        args.random_keys,
        args.out.display()
    );
    if args.peers {
        return peers::run(&ctx, durable_conf).await;
    }
    let mut all_ok = true;
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); args.configs.len()];
    for round in 1..=args.rounds.max(1) {
        if args.rounds > 1 {
            println!("-- round {round} of {}", args.rounds);
        }
        for (i, c) in args.configs.iter().enumerate() {
            let (s, ok) = configuration::run(&ctx, c).await?;
            all_ok &= ok;
            runs[i].push(s);
        }
    }
    let mut summaries = Vec::new();
    for runs in runs {
        let s = report::medians(runs);
        let label = s["label"].as_str().unwrap_or("run").to_owned();
        std::fs::write(
            args.out.join(format!("{label}.json")),
            serde_json::to_string_pretty(&s)?,
        )?;
        summaries.push(s);
    }
    // The other mode (durable vs default) from an earlier run, beside this one.
    let mut rows: Vec<(Value, &str)> = summaries.iter().map(|s| (s.clone(), "")).collect();
    for c in &args.configs {
        let mut other = args.clone();
        other.durable = !args.durable;
        let file = args.out.join(format!("{c}{}.json", variant(&other)));
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                rows.push((v, "*"));
            }
        }
    }
    if args.sweeps {
        let (_, ok) = sweeps::run(&ctx).await?;
        all_ok &= ok;
    }
    report::print_table(&rows);
    if args.rounds > 1 {
        println!(
            "(this run's figures: medians of {} interleaved rounds, each on a fresh cluster; every round in <config>.json under \"rounds\")",
            args.rounds
        );
    }
    if rows.iter().any(|(_, n)| !n.is_empty()) {
        println!(
            "(* = from an earlier run's JSON in {}, shown beside this run)",
            args.out.display()
        );
    }
    if !args.smoke || args.charts {
        report::throughput_chart(&args, &rows);
    }
    Ok(all_ok)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Both handlers are installed before anything runs: a Ctrl-C that arrives while the
    // run is in blocking code (e.g. starting PostgreSQL for --peers) is then held until the
    // run's next await, instead of killing the process with its servers left behind.
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("shardline-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C/SIGTERM the run future is dropped, and with it every Cluster (whose Drop
    // stops all of its processes) and PostgreSQL set.
    let res = tokio::select! {
        biased;
        _ = int.recv() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
        r = run(args) => r,
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("shardline-bench: CORRECTNESS FAILURE: an acknowledged write is unreadable or replicas differ");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("shardline-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
