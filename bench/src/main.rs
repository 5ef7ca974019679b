//! `shardline-bench`: the load generator of the performance analysis (`make bench`).
//!
//! For each configuration (A1/A2/A3 from `workloads/`) it starts a fresh local cluster
//! (nats-server + manager with the process runtime + gateway, release binaries), `/init`s it,
//! runs a write phase (unique keys), a read phase (ranges over the written key space) and a
//! JetStream baseline (raw synchronous publishes on the same nats-server), then checks that
//! every acknowledged write is readable and all replicas agree. Results go to
//! `<out>/<config>.json`, SVG charts next to them, and a table on the terminal.

mod baseline;
mod charts;
mod cluster;
mod http;
mod load;
mod procstat;
mod verify;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use memchr::memmem;
use rand::seq::SliceRandom as _;
use rand::Rng as _;
use serde_json::{json, Value};

use crate::cluster::{Cluster, ClusterOpts};
use crate::load::{round3, Phase, TRANSPORT_ERROR};

/// Load generator for shardline: writes, reads, a JetStream baseline, sweeps, charts.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
struct Args {
    /// Configurations to run (workload files `<name>.init.json`).
    #[arg(long, value_delimiter = ',', default_value = "a1,a2,a3")]
    configs: Vec<String>,
    /// Write requests per configuration.
    #[arg(long, default_value_t = 10_000)]
    writes: usize,
    /// Read requests per configuration.
    #[arg(long, default_value_t = 10_000)]
    reads: usize,
    /// Concurrent clients (closed loop: each sends its next request when the last returns).
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Rows per write request.
    #[arg(long, default_value_t = 1)]
    rows_per_write: usize,
    /// Read ranges are `{"low": L, "high": L + read_width}` (inclusive, as the original).
    #[arg(long, default_value_t = 50)]
    read_width: i64,
    /// Draw write keys at random with repeats, like the original (repeats get 409, counted apart).
    #[arg(long)]
    random_keys: bool,
    /// Durable mode: JetStream `sync_interval: always` and SQLite `synchronous=FULL`.
    #[arg(long)]
    durable: bool,
    /// Also run the concurrency sweep and the batch sweep on A1.
    #[arg(long)]
    sweeps: bool,
    /// Clients per point of the concurrency sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,5,20,50,100")]
    sweep_clients: Vec<usize>,
    /// Rows per write per point of the batch sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    sweep_batches: Vec<usize>,
    /// Requests per phase per sweep point.
    #[arg(long, default_value_t = 5_000)]
    sweep_requests: usize,
    /// Messages of the JetStream baseline (default: as many as --writes).
    #[arg(long)]
    baseline_messages: Option<usize>,
    /// Acknowledged keys read back one by one after the load (at least 1000, or all).
    #[arg(long, default_value_t = 1_000)]
    verify_sample: usize,
    /// Rounds: every configuration is run this many times, interleaved (a1 a2 a3 a1 a2 a3
    /// ...), each on a fresh cluster; the table and the targets use each figure's median,
    /// so a slow moment of a shared machine does not decide a comparison.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Tiny run for `make test`: 300 writes, 300 reads, a1 only, no sweeps, no charts.
    #[arg(long)]
    smoke: bool,
    /// Draw charts even in --smoke.
    #[arg(long)]
    charts: bool,
    /// Time limit of each phase, seconds.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// Output directory for JSON results and charts.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Directory holding the release `manager`, `gateway` and `shard-server`.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The nats-server binary.
    #[arg(long, default_value = ".tools/bin/nats-server")]
    nats_bin: PathBuf,
    /// Directory of the workload `/init` bodies.
    #[arg(long, default_value = "workloads")]
    workloads: PathBuf,
    /// nats-server config used by --durable.
    #[arg(long, default_value = "nats/durable.conf")]
    durable_conf: PathBuf,
    /// Keep each cluster's temp dir (logs, data) after a successful run.
    #[arg(long)]
    keep: bool,
}

/// A relative default path is looked up in the current directory, then in the workspace.
fn resolve(p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p);
    if ws.exists() {
        ws
    } else {
        p.to_path_buf()
    }
}

// ---------------------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Workload {
    name: String,
    init: Value,
    /// (column, dtype) in schema order; the first is the shard key.
    columns: Vec<(String, String)>,
    lo: i64,
    hi: i64,
}

impl Workload {
    fn load(dir: &Path, name: &str) -> anyhow::Result<Workload> {
        let path = dir.join(format!("{name}.init.json"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Workload::from_init(name, serde_json::from_str(&text)?)
    }

    fn from_init(name: &str, init: Value) -> anyhow::Result<Workload> {
        let cols = init["schema"]["columns"]
            .as_array()
            .context("schema.columns")?;
        let types = init["schema"]["dtypes"]
            .as_array()
            .context("schema.dtypes")?;
        let columns = cols
            .iter()
            .zip(types)
            .map(|(c, t)| {
                (
                    c.as_str().unwrap_or_default().to_owned(),
                    t.as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect::<Vec<_>>();
        let shards = init["shards"].as_array().context("shards")?;
        let lo = shards
            .iter()
            .filter_map(|s| s["Stud_id_low"].as_i64())
            .min()
            .context("no shards")?;
        let hi = shards
            .iter()
            .filter_map(|s| Some(s["Stud_id_low"].as_i64()? + s["Shard_size"].as_i64()?))
            .max()
            .context("no shards")?;
        Ok(Workload {
            name: name.to_owned(),
            init,
            columns,
            lo,
            hi,
        })
    }

    fn key_col(&self) -> &str {
        &self.columns[0].0
    }

    fn keyspace(&self) -> usize {
        (self.hi - self.lo) as usize
    }

    /// The same topology with every shard `factor` times wider (sweeps need more keys).
    fn scaled(&self, factor: i64) -> anyhow::Result<Workload> {
        let mut init = self.init.clone();
        for s in init["shards"].as_array_mut().context("shards")? {
            let low = s["Stud_id_low"].as_i64().unwrap_or(0);
            let size = s["Shard_size"].as_i64().unwrap_or(0);
            s["Stud_id_low"] = json!(low * factor);
            s["Shard_size"] = json!(size * factor);
        }
        Workload::from_init(&self.name, init)
    }

    fn topology(&self) -> Value {
        let servers = self.init["servers"].as_object();
        let shards = self.init["shards"].as_array().map_or(0, |s| s.len());
        let placements: usize = servers.map_or(0, |m| {
            m.values()
                .map(|v| v.as_array().map_or(0, |a| a.len()))
                .sum()
        });
        json!({
            "servers": servers.map_or(0, |m| m.len()),
            "shards": shards,
            "replicas_per_shard": placements.checked_div(shards).unwrap_or(0),
            "key_space": [self.lo, self.hi],
        })
    }

    /// `{"data":[rows]}` for the given keys, built as text (cheap for the client).
    fn write_body(&self, keys: &[i64]) -> String {
        let mut s = String::with_capacity(16 + keys.len() * 64);
        s.push_str("{\"data\":[");
        for (i, &k) in keys.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('{');
            for (j, (c, t)) in self.columns.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                let v = if j == 0 {
                    k.to_string()
                } else if t == "Number" {
                    marks(k).to_string()
                } else {
                    "\"GHI\"".to_owned()
                };
                s.push_str(&format!("\"{c}\":{v}"));
            }
            s.push('}');
        }
        s.push_str("]}");
        s
    }
}

/// The value written in the Number columns of row `k` (0..=100), checked on read-back.
fn marks(k: i64) -> i64 {
    (k.wrapping_mul(7919)).rem_euclid(101)
}

// ---------------------------------------------------------------------------------------
// Per-process CPU and memory around a phase
// ---------------------------------------------------------------------------------------

struct Probe {
    cpu0: HashMap<u32, f64>,
    client0: f64,
}

fn probe_start(cluster: &Cluster) -> Probe {
    let mut cpu0 = HashMap::new();
    for (_, pid) in cluster.component_pids() {
        cpu0.insert(pid, procstat::cpu_seconds(pid).unwrap_or(0.0));
        procstat::reset_peak_rss(pid);
    }
    procstat::reset_peak_rss(std::process::id());
    Probe {
        cpu0,
        client0: procstat::self_cpu_seconds(),
    }
}

/// Per component: CPU seconds during the phase and peak RSS; plus a one-line summary.
fn probe_end(cluster: &Cluster, p: &Probe, elapsed: Duration) -> (Value, String) {
    let mut comps = serde_json::Map::new();
    let (mut nats, mut mgr, mut gw, mut servers, mut servers_rss) = (0.0, 0.0, 0.0, 0.0, 0.0f64);
    for (name, pid) in cluster.component_pids() {
        let cpu =
            procstat::cpu_seconds(pid).unwrap_or(0.0) - p.cpu0.get(&pid).copied().unwrap_or(0.0);
        let rss = procstat::peak_rss_mib(pid).unwrap_or(0.0);
        match name.as_str() {
            "nats-server" => nats = cpu,
            "manager" => mgr = cpu,
            "gateway" => gw = cpu,
            _ => {
                servers += cpu;
                servers_rss = servers_rss.max(rss);
            }
        }
        comps.insert(
            name,
            json!({"pid": pid, "cpu_s": round3(cpu), "peak_rss_mib": round3(rss)}),
        );
    }
    let client = procstat::self_cpu_seconds() - p.client0;
    let client_rss = procstat::self_peak_rss_mib();
    let total = nats + mgr + gw + servers + client;
    let wall = elapsed.as_secs_f64().max(1e-9);
    let line = format!(
        "    CPU s: bench {client:.2} | gateway {gw:.2} | shard-servers {servers:.2} | nats {nats:.2} | manager {mgr:.2} \
         = {total:.2} of {:.2} core-s ({:.0}% of {} cores)",
        wall * cores() as f64,
        100.0 * total / (wall * cores() as f64),
        cores()
    );
    (
        json!({
            "client": {"cpu_s": round3(client), "peak_rss_mib": round3(client_rss)},
            "components": comps,
            "totals_cpu_s": {"bench_client": round3(client), "gateway": round3(gw),
                              "shard_servers": round3(servers), "nats_server": round3(nats),
                              "manager": round3(mgr), "all": round3(total)},
            "shard_server_max_peak_rss_mib": round3(servers_rss),
            "cores": cores(),
        }),
        line,
    )
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------------------

struct Ctx {
    args: Args,
    /// Setup, settling and verification.
    http: reqwest::Client,
    /// The load phases.
    load: http::LoadClient,
    opts: ClusterOpts,
    max: Duration,
}

fn print_phase(p: &Phase, unit: &str) {
    let st = p.by_status();
    println!(
        "  {:<26} {:>6} req in {:>6.2}s = {:>8.1} {unit}/s  p50 {:>6.2}  p90 {:>6.2}  p99 {:>7.2}  max {:>7.2} ms  {}{}",
        p.name,
        p.completed(),
        p.elapsed.as_secs_f64(),
        p.throughput(),
        p.pct_ms(50.0),
        p.pct_ms(90.0),
        p.pct_ms(99.0),
        p.pct_ms(100.0),
        serde_json::to_string(&st).unwrap_or_default(),
        if p.timed_out { "  (time limit hit)" } else { "" }
    );
}

/// Writes `keys` in requests of `rpw` rows, in order. Returns the phase
/// and the acknowledged rows (key → marks).
async fn write_phase(
    ctx: &Ctx,
    c: &Cluster,
    wl: &Workload,
    name: &str,
    keys: Arc<Vec<i64>>,
    rpw: usize,
    clients: usize,
) -> (Phase, HashMap<i64, i64>, Value) {
    let n = keys.len() / rpw.max(1);
    let url = phase_url(c, "/write");
    // Built before the clock starts; a `Bytes` clone per request is a reference count.
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..n)
            .map(|i| Bytes::from(wl.write_body(&keys[i * rpw..(i + 1) * rpw])))
            .collect(),
    );
    let http = ctx.load.clone();
    let probe = probe_start(c);
    let b2 = bodies.clone();
    let phase = load::run(name, n, clients, ctx.max, move |i| {
        let (http, url, body) = (http.clone(), url.clone(), b2[i].clone());
        async move {
            match http.post_json(url, body).await {
                Some((s, _)) => (s, 0),
                None => (TRANSPORT_ERROR, 0),
            }
        }
    })
    .await;
    let (res, line) = probe_end(c, &probe, phase.elapsed);
    print_phase(&phase, "writes");
    println!("{line}");
    let mut acked = HashMap::new();
    for (i, s) in phase.statuses.iter().enumerate() {
        if *s == Some(200) {
            for &k in &keys[i * rpw..(i + 1) * rpw] {
                acked.insert(k, marks(k));
            }
        }
    }
    (phase, acked, res)
}

/// The gateway URL of a load phase, parsed once rather than per request.
fn phase_url(c: &Cluster, path: &str) -> hyper::Uri {
    format!("{}{path}", c.gateway_url)
        .parse()
        .expect("the gateway URL is built from a socket address")
}

async fn read_phase(
    ctx: &Ctx,
    c: &Cluster,
    wl: &Workload,
    name: &str,
    n: usize,
    clients: usize,
) -> (Phase, Value) {
    let url = phase_url(c, "/read");
    let width = ctx.args.read_width;
    let max_low = (wl.hi - width).max(wl.lo + 1);
    let mut rng = rand::rng();
    let key = wl.key_col().to_owned();
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..n)
            .map(|_| {
                let l = rng.random_range(wl.lo..max_low);
                Bytes::from(format!(
                    "{{\"{key}\":{{\"low\":{l},\"high\":{}}}}}",
                    l + width
                ))
            })
            .collect(),
    );
    // Rows are counted by their key field; the finder is built once, not per response.
    let pattern = Arc::new(memmem::Finder::new(format!("\"{key}\":").as_bytes()).into_owned());
    // A write is acknowledged once a majority applied it; the other replicas may still be
    // applying the tail of the log. Let them finish, so the read phase measures reads.
    let settled = verify::settle(&ctx.http, &c.gateway_url, Duration::from_secs(60)).await;
    match &settled {
        Ok(d) => println!(
            "  every replica applied the whole log {} ms after the write phase",
            d.as_millis()
        ),
        Err(e) => println!("  replicas still behind after 60 s: {e}"),
    }
    let http = ctx.load.clone();
    let probe = probe_start(c);
    let phase = load::run(name, n, clients, ctx.max, move |i| {
        let (http, url, body) = (http.clone(), url.clone(), bodies[i].clone());
        let pattern = pattern.clone();
        async move {
            match http.post_json(url, body).await {
                Some((s, answer)) => (s, pattern.find_iter(&answer).count() as u64),
                None => (TRANSPORT_ERROR, 0),
            }
        }
    })
    .await;
    let (mut res, line) = probe_end(c, &probe, phase.elapsed);
    res["replicas_settled_ms"] = settled.map_or(Value::Null, |d| json!(d.as_millis() as u64));
    print_phase(&phase, "reads");
    println!(
        "    rows returned per read: {:.1}",
        phase.extra as f64 / phase.completed().max(1) as f64
    );
    println!("{line}");
    (phase, res)
}

fn phase_json(p: &Phase, res: Value) -> Value {
    let mut v = p.summary_json();
    // All processes' CPU (load generator included) per completed request: on a shared
    // machine a steadier measure of cost than throughput.
    let cpu = f(&res, &["totals_cpu_s", "all"]);
    v["cpu_us_per_request"] = json!(round3(cpu * 1e6 / p.completed().max(1) as f64));
    v["resources"] = res;
    v
}

fn chart_hist(ctx: &Ctx, label: &str, phase: &Phase, title: &str) -> Option<String> {
    if ctx.args.smoke && !ctx.args.charts {
        return None;
    }
    let file = format!(
        "{label}-{}-latency.svg",
        phase.name.split_whitespace().last().unwrap_or("x")
    );
    let path = ctx.args.out.join(&file);
    match charts::latency_histogram(&path, title, &phase.latencies_us) {
        Ok(()) => Some(file),
        Err(e) => {
            eprintln!("warning: {e}");
            None
        }
    }
}

fn keys_for(wl: &Workload, needed: usize, random: bool) -> anyhow::Result<Vec<i64>> {
    let mut rng = rand::rng();
    if random {
        return Ok((0..needed)
            .map(|_| rng.random_range(wl.lo..wl.hi))
            .collect());
    }
    if needed > wl.keyspace() {
        bail!(
            "{} needs {needed} unique keys but its key space holds {}; lower --writes or --rows-per-write",
            wl.name,
            wl.keyspace()
        );
    }
    let mut all: Vec<i64> = (wl.lo..wl.hi).collect();
    all.shuffle(&mut rng);
    all.truncate(needed);
    Ok(all)
}

fn variant(args: &Args) -> String {
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

/// One configuration: fresh cluster, /init, writes, reads, baseline, verification.
async fn run_config(ctx: &Ctx, name: &str) -> anyhow::Result<(Value, bool)> {
    let args = &ctx.args;
    let wl = Workload::load(&resolve(&args.workloads), name)?;
    let label = format!("{name}{}", variant(args));
    println!(
        "== {label}: {} ({} writes x {} rows, {} reads of width {}, {} clients)",
        wl.topology(),
        args.writes,
        args.rows_per_write,
        args.reads,
        args.read_width,
        args.clients
    );
    let keys = Arc::new(keys_for(
        &wl,
        args.writes * args.rows_per_write,
        args.random_keys,
    )?);
    let t0 = Instant::now();
    let cluster = Cluster::start(&ctx.opts, name)?;
    let started_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    cluster.init(&ctx.http, &wl.init).await?;
    let init_s = t1.elapsed().as_secs_f64();
    println!(
        "  cluster up in {started_s:.2}s, /init + ready in {init_s:.2}s ({})",
        cluster.dir.display()
    );

    let (w, acked, wres) = write_phase(
        ctx,
        &cluster,
        &wl,
        &format!("{label} write"),
        keys,
        args.rows_per_write,
        args.clients,
    )
    .await;
    let (r, rres) = read_phase(
        ctx,
        &cluster,
        &wl,
        &format!("{label} read"),
        args.reads,
        args.clients,
    )
    .await;

    let probe = probe_start(&cluster);
    let b = baseline::run(
        &cluster.nats_url,
        args.baseline_messages.unwrap_or(args.writes),
        args.clients,
        ctx.max,
    )
    .await?;
    let (bres, line) = probe_end(&cluster, &probe, b.elapsed);
    print_phase(&b, "msgs");
    println!("{line}");
    let rows_per_s = w.ok() as f64 * args.rows_per_write as f64 / w.elapsed.as_secs_f64().max(1e-9);
    let ratio = w.throughput() / b.throughput().max(1e-9);
    println!(
        "  shardline writes / JetStream publishes = {:.1} / {:.1} = {:.3}",
        w.throughput(),
        b.throughput(),
        ratio
    );

    let v = verify::verify(
        &ctx.http,
        &cluster.gateway_url,
        wl.key_col(),
        &acked,
        args.verify_sample,
        args.clients,
    )
    .await?;
    if v.ok {
        println!(
            "  verify: OK ({} acknowledged rows; {} sampled keys read back; all replicas identical)",
            acked.len(),
            v.report["sample_checked"]
        );
    } else {
        println!("  verify: FAILED");
        for p in &v.problems {
            println!("    {p}");
        }
    }

    let mut figures = Vec::new();
    for (p, t) in [(&w, "writes"), (&r, "reads"), (&b, "JetStream publishes")] {
        if let Some(f) = chart_hist(ctx, &label, p, &format!("{label} {t}")) {
            figures.push(f);
        }
    }
    let mut read_json = phase_json(&r, rres);
    read_json["rows_per_read"] = json!(round3(r.extra as f64 / r.completed().max(1) as f64));
    let summary = json!({
        "config": name,
        "label": label,
        "durable": args.durable,
        "random_keys": args.random_keys,
        "topology": wl.topology(),
        "params": {"writes": args.writes, "reads": args.reads, "clients": args.clients,
                   "rows_per_write": args.rows_per_write, "read_width": args.read_width,
                   "max_seconds_per_phase": args.max_seconds},
        "cluster_start_s": round3(started_s),
        "init_s": round3(init_s),
        "write": phase_json(&w, wres),
        "write_rows_per_s": round3(rows_per_s),
        "read": read_json,
        "jetstream_baseline": phase_json(&b, bres),
        "write_to_baseline_ratio": round3(ratio),
        "verify": v.report,
        "figures": figures,
    });
    std::fs::write(
        args.out.join(format!("{label}.json")),
        serde_json::to_string_pretty(&summary)?,
    )?;
    cluster.finish();
    Ok((summary, v.ok))
}

// ---------------------------------------------------------------------------------------
// Sweeps (A1)
// ---------------------------------------------------------------------------------------

/// Concurrency sweep (writes and reads at each client count) and batch sweep (rows per
/// write), each on one fresh A1 cluster whose shards are widened so every write of the
/// sweep gets a unique key (same topology: servers, shards, replicas).
async fn run_sweeps(ctx: &Ctx) -> anyhow::Result<(Value, bool)> {
    let args = &ctx.args;
    let base = Workload::load(&resolve(&args.workloads), "a1")?;
    let n = args.sweep_requests;
    let label = format!("a1{}", if args.durable { "-durable" } else { "" });
    let mut ok = true;

    // Concurrency.
    let needed = n * args.sweep_clients.len();
    let wl = base.scaled((needed as i64 / base.keyspace() as i64 + 1).max(1))?;
    println!(
        "== {label} concurrency sweep {:?} clients, {n} writes + {n} reads each, key space {:?}",
        args.sweep_clients,
        [wl.lo, wl.hi]
    );
    let keys = Arc::new(keys_for(&wl, needed, false)?);
    let cluster = Cluster::start(&ctx.opts, "sweep-clients")?;
    cluster.init(&ctx.http, &wl.init).await?;
    let mut acked_all = HashMap::new();
    let mut points = Vec::new();
    for (pi, &clients) in args.sweep_clients.iter().enumerate() {
        let slice = Arc::new(keys[pi * n..(pi + 1) * n].to_vec());
        let (w, acked, wres) = write_phase(
            ctx,
            &cluster,
            &wl,
            &format!("{label} c={clients} write"),
            slice,
            1,
            clients,
        )
        .await;
        acked_all.extend(acked);
        let (r, rres) = read_phase(
            ctx,
            &cluster,
            &wl,
            &format!("{label} c={clients} read"),
            n,
            clients,
        )
        .await;
        points.push(json!({"clients": clients, "write": phase_json(&w, wres), "read": phase_json(&r, rres)}));
    }
    let v = verify::verify(
        &ctx.http,
        &cluster.gateway_url,
        wl.key_col(),
        &acked_all,
        args.verify_sample,
        20,
    )
    .await?;
    println!(
        "  verify: {}",
        if v.ok {
            "OK".to_owned()
        } else {
            v.problems.join("; ")
        }
    );
    ok &= v.ok;
    cluster.finish();
    let concurrency = json!({"points": points, "verify": v.report});

    // Batch size.
    let rows: usize = args.sweep_batches.iter().map(|b| b * n).sum();
    let wl = base.scaled((rows as i64 / base.keyspace() as i64 + 1).max(1))?;
    println!(
        "== {label} batch sweep {:?} rows per write, {n} writes each, {} clients, key space {:?}",
        args.sweep_batches,
        args.clients,
        [wl.lo, wl.hi]
    );
    let keys = Arc::new(keys_for(&wl, rows, false)?);
    let cluster = Cluster::start(&ctx.opts, "sweep-batch")?;
    cluster.init(&ctx.http, &wl.init).await?;
    let mut acked_all = HashMap::new();
    let mut bpoints = Vec::new();
    let mut off = 0;
    for &b in &args.sweep_batches {
        let slice = Arc::new(keys[off..off + b * n].to_vec());
        off += b * n;
        let (w, acked, wres) = write_phase(
            ctx,
            &cluster,
            &wl,
            &format!("{label} rows={b} write"),
            slice,
            b,
            args.clients,
        )
        .await;
        let rows_s = w.ok() as f64 * b as f64 / w.elapsed.as_secs_f64().max(1e-9);
        println!("    = {rows_s:.0} rows/s");
        acked_all.extend(acked);
        bpoints.push(json!({"rows_per_write": b, "rows_per_s": round3(rows_s), "write": phase_json(&w, wres)}));
    }
    let v = verify::verify(
        &ctx.http,
        &cluster.gateway_url,
        wl.key_col(),
        &acked_all,
        args.verify_sample,
        20,
    )
    .await?;
    println!(
        "  verify: {}",
        if v.ok {
            "OK".to_owned()
        } else {
            v.problems.join("; ")
        }
    );
    ok &= v.ok;
    cluster.finish();
    let batch = json!({"points": bpoints, "verify": v.report});

    // Charts.
    let get = |pts: &[Value], phase: &str, f: &dyn Fn(&Value) -> f64| -> Vec<f64> {
        pts.iter().map(|p| f(&p[phase])).collect()
    };
    let thr = |v: &Value| v["throughput_per_s"].as_f64().unwrap_or(0.0);
    let p99 = |v: &Value| v["latency_ms"]["p99"].as_f64().unwrap_or(0.0);
    let xs: Vec<String> = args.sweep_clients.iter().map(|c| c.to_string()).collect();
    let mut figures = Vec::new();
    let mut draw = |file: String, r: anyhow::Result<()>| match r {
        Ok(()) => figures.push(file),
        Err(e) => eprintln!("warning: {e}"),
    };
    let f = format!("{label}-sweep-clients.svg");
    draw(
        f.clone(),
        charts::lines(
            &args.out.join(&f),
            &format!("{label}: throughput vs concurrent clients"),
            "concurrent clients",
            "requests/s",
            &xs,
            &[
                ("writes/s".into(), get(&points, "write", &thr)),
                ("reads/s".into(), get(&points, "read", &thr)),
            ],
        ),
    );
    let f = format!("{label}-sweep-clients-p99.svg");
    draw(
        f.clone(),
        charts::lines(
            &args.out.join(&f),
            &format!("{label}: p99 latency vs concurrent clients"),
            "concurrent clients",
            "p99 latency (ms)",
            &xs,
            &[
                ("write p99".into(), get(&points, "write", &p99)),
                ("read p99".into(), get(&points, "read", &p99)),
            ],
        ),
    );
    let bx: Vec<String> = args.sweep_batches.iter().map(|b| b.to_string()).collect();
    let f = format!("{label}-sweep-batch.svg");
    draw(
        f.clone(),
        charts::lines(
            &args.out.join(&f),
            &format!(
                "{label}: write throughput vs rows per write ({} clients)",
                args.clients
            ),
            "rows per write",
            "per second",
            &bx,
            &[
                (
                    "rows/s".into(),
                    bpoints
                        .iter()
                        .map(|p| p["rows_per_s"].as_f64().unwrap_or(0.0))
                        .collect(),
                ),
                ("requests/s".into(), get(&bpoints, "write", &thr)),
            ],
        ),
    );
    let out = json!({"label": label, "durable": args.durable, "concurrency": concurrency, "batch": batch, "figures": figures});
    std::fs::write(
        args.out.join(format!("{label}-sweeps.json")),
        serde_json::to_string_pretty(&out)?,
    )?;
    Ok((out, ok))
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

/// One summary from several rounds of a configuration: the last round's, with each
/// throughput and latency figure replaced by its median over the rounds, and every round's
/// figures under `rounds`. One round: that round's summary as it is.
fn medians(mut runs: Vec<Value>) -> Value {
    let Some(mut out) = runs.pop() else {
        return Value::Null;
    };
    if runs.is_empty() {
        return out;
    }
    runs.push(out.clone());
    let figures: [&[&str]; 12] = [
        &["write", "cpu_us_per_request"],
        &["read", "cpu_us_per_request"],
        &["write", "throughput_per_s"],
        &["write", "latency_ms", "p50"],
        &["write", "latency_ms", "p90"],
        &["write", "latency_ms", "p99"],
        &["write", "latency_ms", "max"],
        &["read", "throughput_per_s"],
        &["read", "latency_ms", "p50"],
        &["read", "latency_ms", "p90"],
        &["read", "latency_ms", "p99"],
        &["read", "latency_ms", "max"],
    ];
    for path in figures {
        let mut xs: Vec<f64> = runs.iter().map(|r| f(r, path)).collect();
        xs.sort_by(f64::total_cmp);
        let mid = xs[xs.len() / 2];
        let slot = path.iter().fold(&mut out, |v, k| &mut v[*k]);
        *slot = json!(round3(mid));
    }
    out["rounds"] = Value::Array(
        runs.iter()
            .map(|r| {
                json!({
                    "writes_per_s": r["write"]["throughput_per_s"],
                    "write_p99_ms": r["write"]["latency_ms"]["p99"],
                    "reads_per_s": r["read"]["throughput_per_s"],
                    "read_p99_ms": r["read"]["latency_ms"]["p99"],
                    "write_cpu_us": r["write"]["cpu_us_per_request"],
                    "read_cpu_us": r["read"]["cpu_us_per_request"],
                })
            })
            .collect(),
    );
    out["figures_are"] = json!(format!(
        "medians of {} rounds (CPU, memory, histograms: the last round)",
        runs.len()
    ));
    out
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

fn reference(config: &str, durable: bool) -> &'static str {
    match config {
        "a1" if durable => "target w>=2500/s (durable); Python 28.78 w/s 105.31 r/s",
        "a2" | "a3" if durable => "",
        "a1" => "target w>=5000/s p99<=15ms, r>=10000/s p99<=10ms; Python 28.78 w/s 105.31 r/s",
        "a2" => "target w>=0.6 x A1 w; Python 18.63 w/s 138.06 r/s",
        "a3" => "target r>=0.9 x A1 r; Python 16.86 w/s 145.43 r/s",
        _ => "",
    }
}

fn print_table(rows: &[(Value, &str)]) {
    println!();
    println!(
        "{:<16}| {:>9} {:>7} {:>7} {:>7} {:>7} | {:>9} {:>7} {:>7} {:>7} {:>7} | {:>6} | {:>9} {:>6} | reference",
        "config", "writes/s", "p50", "p90", "p99", "max", "reads/s", "p50", "p90", "p99", "max", "errors", "JS pub/s", "w/JS"
    );
    println!("{}", "-".repeat(170));
    for (s, note) in rows {
        let w = &s["write"];
        let r = &s["read"];
        let errs = w["errors"].as_u64().unwrap_or(0) + r["errors"].as_u64().unwrap_or(0);
        let c409 = w["by_status"]["409"].as_u64().unwrap_or(0);
        let label = format!("{}{note}", s["label"].as_str().unwrap_or("?"));
        println!(
            "{:<16}| {:>9.1} {:>7.2} {:>7.2} {:>7.2} {:>7.1} | {:>9.1} {:>7.2} {:>7.2} {:>7.2} {:>7.1} | {:>6} | {:>9.1} {:>6.3} | {}",
            label,
            f(w, &["throughput_per_s"]),
            f(w, &["latency_ms", "p50"]),
            f(w, &["latency_ms", "p90"]),
            f(w, &["latency_ms", "p99"]),
            f(w, &["latency_ms", "max"]),
            f(r, &["throughput_per_s"]),
            f(r, &["latency_ms", "p50"]),
            f(r, &["latency_ms", "p90"]),
            f(r, &["latency_ms", "p99"]),
            f(r, &["latency_ms", "max"]),
            if c409 > 0 { format!("{errs}({c409}x409)") } else { errs.to_string() },
            f(s, &["jetstream_baseline", "throughput_per_s"]),
            f(s, &["write_to_baseline_ratio"]),
            reference(
                s["config"].as_str().unwrap_or(""),
                s["durable"].as_bool().unwrap_or(false)
            ),
        );
    }
    println!("(latencies in ms; errors = non-200 responses of both phases; JS pub/s = raw JetStream synchronous publishes, same nats-server, same clients; w/JS = shardline writes/s / JS pub/s)");
    // Targets, for the configurations of this run.
    let find = |c: &str| {
        rows.iter()
            .find(|(s, n)| n.is_empty() && s["config"] == c)
            .map(|(s, _)| s)
    };
    let yes = |b: bool| if b { "met" } else { "MISSED" };
    if let Some(a1) = find("a1").filter(|a1| a1["durable"] == true) {
        // Durable mode has one target of its own; the others are about the default mode.
        let w = f(a1, &["write", "throughput_per_s"]);
        println!("targets: A1 durable writes >= 2500/s: {}", yes(w >= 2500.0));
    } else if let Some(a1) = find("a1") {
        let (w, wp, r, rp) = (
            f(a1, &["write", "throughput_per_s"]),
            f(a1, &["write", "latency_ms", "p99"]),
            f(a1, &["read", "throughput_per_s"]),
            f(a1, &["read", "latency_ms", "p99"]),
        );
        println!(
            "targets: A1 writes >= 5000/s and p99 <= 15 ms: {}; A1 reads >= 10000/s and p99 <= 10 ms: {}",
            yes(w >= 5000.0 && wp <= 15.0),
            yes(r >= 10000.0 && rp <= 10.0)
        );
        if let Some(a2) = find("a2") {
            let x = f(a2, &["write", "throughput_per_s"]) / w;
            println!(
                "targets: A2 writes = {x:.2} x A1 writes (>= 0.6): {}",
                yes(x >= 0.6)
            );
        }
        if let Some(a3) = find("a3") {
            let x = f(a3, &["read", "throughput_per_s"]) / r;
            let cost =
                f(a3, &["read", "cpu_us_per_request"]) / f(a1, &["read", "cpu_us_per_request"]);
            println!(
                "targets: A3 reads = {x:.2} x A1 reads (>= 0.9): {} (CPU per read: A3 = {cost:.2} x A1)",
                yes(x >= 0.9)
            );
        }
    }
}

fn throughput_chart(args: &Args, rows: &[(Value, &str)]) {
    let labels: Vec<String> = rows
        .iter()
        .map(|(s, _)| s["label"].as_str().unwrap_or("?").to_owned())
        .collect();
    let col = |p: &[&str]| rows.iter().map(|(s, _)| f(s, p)).collect::<Vec<_>>();
    let series = vec![
        ("writes/s".to_owned(), col(&["write", "throughput_per_s"])),
        ("reads/s".to_owned(), col(&["read", "throughput_per_s"])),
        (
            "JetStream sync publishes/s".to_owned(),
            col(&["jetstream_baseline", "throughput_per_s"]),
        ),
    ];
    let path = args.out.join("throughput.svg");
    match charts::grouped_bars(
        &path,
        "shardline write and read throughput (20 clients, one 2-core machine)",
        "requests/s",
        &labels,
        &series,
    ) {
        Ok(()) => println!("chart: {}", path.display()),
        Err(e) => eprintln!("warning: {e}"),
    }
}

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
        if !bin_dir.join(b).is_file() {
            bail!(
                "{} not found: build first (cargo build --release --workspace)",
                bin_dir.join(b).display()
            );
        }
    }
    if !nats_bin.is_file() {
        bail!(
            "{} not found: run scripts/install-nats.sh",
            nats_bin.display()
        );
    }
    let durable_conf = resolve(&args.durable_conf);
    if args.durable && !durable_conf.is_file() {
        bail!("{} not found (needed by --durable)", durable_conf.display());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let opts = ClusterOpts {
        bin_dir,
        nats_bin,
        durable_conf: args.durable.then_some(durable_conf),
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
    let mut all_ok = true;
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); args.configs.len()];
    for round in 1..=args.rounds.max(1) {
        if args.rounds > 1 {
            println!("-- round {round} of {}", args.rounds);
        }
        for (i, c) in args.configs.iter().enumerate() {
            let (s, ok) = run_config(&ctx, c).await?;
            all_ok &= ok;
            runs[i].push(s);
        }
    }
    let mut summaries = Vec::new();
    for runs in runs {
        let s = medians(runs);
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
        let (_, ok) = run_sweeps(&ctx).await?;
        all_ok &= ok;
    }
    print_table(&rows);
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
        throughput_chart(&args, &rows);
    }
    Ok(all_ok)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardline-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C/SIGTERM the run future is dropped, and with it every Cluster (whose Drop
    // stops all of its processes).
    let res = tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated")),
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
