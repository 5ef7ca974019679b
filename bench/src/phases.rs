//! The measured phases on a running cluster: writes of given keys, reads of random ranges,
//! their printed line, their JSON and their latency histogram.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use memchr::memmem;
use rand::Rng as _;
use serde_json::{json, Value};

use crate::cli::Args;
use crate::cluster::{BenchCluster, BenchOpts};
use crate::load::{self, round3, Phase, TRANSPORT_ERROR};
use crate::probe::{probe_end, probe_start};
use crate::report::f;
use crate::workload::{marks, Workload};
use crate::{charts, http, verify};

pub struct Ctx {
    pub args: Args,
    /// Setup, settling and verification.
    pub http: reqwest::Client,
    /// The load phases.
    pub load: http::LoadClient,
    pub opts: BenchOpts,
    pub max: Duration,
}

pub fn print_phase(p: &Phase, unit: &str) {
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
pub async fn write_phase(
    ctx: &Ctx,
    c: &BenchCluster,
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
pub fn phase_url(c: &BenchCluster, path: &str) -> hyper::Uri {
    format!("{}{path}", c.gateway_url)
        .parse()
        .expect("the gateway URL is built from a socket address")
}

pub async fn read_phase(
    ctx: &Ctx,
    c: &BenchCluster,
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
        Ok((d, status)) => println!(
            "  every replica applied the whole log {} ms after the write phase; {} log entries in all shards",
            d.as_millis(),
            verify::log_entries(status)
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
    res["replicas_settled_ms"] = settled.map_or(Value::Null, |(d, _)| json!(d.as_millis() as u64));
    print_phase(&phase, "reads");
    println!(
        "    rows returned per read: {:.1}",
        phase.extra as f64 / phase.completed().max(1) as f64
    );
    println!("{line}");
    (phase, res)
}

pub fn phase_json(p: &Phase, res: Value) -> Value {
    let mut v = p.summary_json();
    // All processes' CPU (load generator included) per completed request: on a shared
    // machine a steadier measure of cost than throughput.
    let cpu = f(&res, &["totals_cpu_s", "all"]);
    v["cpu_us_per_request"] = json!(round3(cpu * 1e6 / p.completed().max(1) as f64));
    v["resources"] = res;
    v
}

pub fn chart_hist(ctx: &Ctx, label: &str, phase: &Phase, title: &str) -> Option<String> {
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
