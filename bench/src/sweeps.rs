//! The sweeps on A1: throughput and latency against the number of concurrent clients, and
//! write throughput against the rows per write. Each sweep runs on one fresh cluster
//! ([`SweepCluster`]) and ends with the same verification.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use testkit::paths::resolve;

use crate::charts;
use crate::cli::Args;
use crate::cluster::BenchCluster;
use crate::load::round3;
use crate::phases::{phase_json, read_phase, write_phase, Ctx};
use crate::verify;
use crate::workload::{keys_for, Workload};

/// One sweep's cluster: A1 with its shards widened so that every write of the sweep gets a
/// unique key (same topology: servers, shards, replicas), and the keys it will write.
struct SweepCluster {
    cluster: BenchCluster,
    wl: Workload,
    keys: Vec<i64>,
    /// key → marks of every acknowledged row, for the verification at the end.
    acked: HashMap<i64, i64>,
}

impl SweepCluster {
    /// Widens `base` for `needed` keys, prints `header` (given the widened workload),
    /// starts and `/init`s a cluster.
    async fn start(
        ctx: &Ctx,
        base: &Workload,
        tag: &str,
        needed: usize,
        header: impl FnOnce(&Workload) -> String,
    ) -> anyhow::Result<SweepCluster> {
        let wl = base.scaled((needed as i64 / base.keyspace() as i64 + 1).max(1))?;
        println!("{}", header(&wl));
        let keys = keys_for(&wl, needed, false)?;
        let cluster = BenchCluster::start(&ctx.opts, tag).await?;
        cluster.init(&ctx.http, &wl.init).await?;
        Ok(SweepCluster {
            cluster,
            wl,
            keys,
            acked: HashMap::new(),
        })
    }

    /// Verifies every acknowledged row, prints the verdict and stops the cluster; the
    /// report and whether it passed.
    async fn verify_and_finish(self, ctx: &Ctx) -> anyhow::Result<(Value, bool)> {
        let v = verify::verify(
            &ctx.http,
            &self.cluster.gateway_url,
            self.wl.key_col(),
            &self.acked,
            ctx.args.verify_sample,
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
        self.cluster.finish();
        Ok((v.report, v.ok))
    }
}

/// Concurrency sweep (writes and reads at each client count) and batch sweep (rows per
/// write), each on one fresh A1 cluster whose shards are widened so every write of the
/// sweep gets a unique key (same topology: servers, shards, replicas).
pub async fn run(ctx: &Ctx) -> anyhow::Result<(Value, bool)> {
    let args = &ctx.args;
    let base = Workload::load(&resolve(&args.workloads), "a1")?;
    let n = args.sweep_requests;
    let label = format!("a1{}", if args.durable { "-durable" } else { "" });

    // Concurrency.
    let needed = n * args.sweep_clients.len();
    let mut s = SweepCluster::start(ctx, &base, "sweep-clients", needed, |wl| {
        format!(
            "== {label} concurrency sweep {:?} clients, {n} writes + {n} reads each, key space {:?}",
            args.sweep_clients,
            [wl.lo, wl.hi]
        )
    })
    .await?;
    let mut points = Vec::new();
    for (pi, &clients) in args.sweep_clients.iter().enumerate() {
        let slice = Arc::new(s.keys[pi * n..(pi + 1) * n].to_vec());
        let name = format!("{label} c={clients} write");
        let (w, acked, wres) = write_phase(ctx, &s.cluster, &s.wl, &name, slice, 1, clients).await;
        s.acked.extend(acked);
        let name = format!("{label} c={clients} read");
        let (r, rres) = read_phase(ctx, &s.cluster, &s.wl, &name, n, clients).await;
        points.push(json!({"clients": clients, "write": phase_json(&w, wres), "read": phase_json(&r, rres)}));
    }
    let (report, clients_ok) = s.verify_and_finish(ctx).await?;
    let concurrency = json!({"points": points, "verify": report});

    // Batch size.
    let rows: usize = args.sweep_batches.iter().map(|b| b * n).sum();
    let mut s = SweepCluster::start(ctx, &base, "sweep-batch", rows, |wl| {
        format!(
            "== {label} batch sweep {:?} rows per write, {n} writes each, {} clients, key space {:?}",
            args.sweep_batches,
            args.clients,
            [wl.lo, wl.hi]
        )
    })
    .await?;
    let mut bpoints = Vec::new();
    let mut off = 0;
    for &b in &args.sweep_batches {
        let slice = Arc::new(s.keys[off..off + b * n].to_vec());
        off += b * n;
        let name = format!("{label} rows={b} write");
        let (w, acked, wres) =
            write_phase(ctx, &s.cluster, &s.wl, &name, slice, b, args.clients).await;
        let rows_s = w.ok() as f64 * b as f64 / w.elapsed.as_secs_f64().max(1e-9);
        println!("    = {rows_s:.0} rows/s");
        s.acked.extend(acked);
        bpoints.push(json!({"rows_per_write": b, "rows_per_s": round3(rows_s), "write": phase_json(&w, wres)}));
    }
    let (report, batch_ok) = s.verify_and_finish(ctx).await?;
    let batch = json!({"points": bpoints, "verify": report});

    let figures = draw_charts(&label, args, &points, &bpoints);
    let out = json!({"label": label, "durable": args.durable, "concurrency": concurrency, "batch": batch, "figures": figures});
    std::fs::write(
        args.out.join(format!("{label}-sweeps.json")),
        serde_json::to_string_pretty(&out)?,
    )?;
    Ok((out, clients_ok && batch_ok))
}

/// The sweeps' three line charts; the files drawn (a failed one is a warning).
fn draw_charts(label: &str, args: &Args, points: &[Value], bpoints: &[Value]) -> Vec<String> {
    // One series: a figure of one phase at every point.
    let series = |pts: &[Value], phase: &str, figure: &[&str]| -> Vec<f64> {
        pts.iter()
            .map(|p| figure.iter().fold(&p[phase], |v, k| &v[*k]))
            .map(|v| v.as_f64().unwrap_or(0.0))
            .collect()
    };
    let thr: &[&str] = &["throughput_per_s"];
    let p99: &[&str] = &["latency_ms", "p99"];
    let xs: Vec<String> = args.sweep_clients.iter().map(|c| c.to_string()).collect();
    let bx: Vec<String> = args.sweep_batches.iter().map(|b| b.to_string()).collect();
    // (file, title, x axis, y axis, x labels, series)
    type LineChart<'a> = (
        String,
        String,
        &'a str,
        &'a str,
        &'a [String],
        Vec<(String, Vec<f64>)>,
    );
    let charts: [LineChart; 3] = [
        (
            format!("{label}-sweep-clients.svg"),
            format!("{label}: throughput vs concurrent clients"),
            "concurrent clients",
            "requests/s",
            &xs,
            vec![
                ("writes/s".into(), series(points, "write", thr)),
                ("reads/s".into(), series(points, "read", thr)),
            ],
        ),
        (
            format!("{label}-sweep-clients-p99.svg"),
            format!("{label}: p99 latency vs concurrent clients"),
            "concurrent clients",
            "p99 latency (ms)",
            &xs,
            vec![
                ("write p99".into(), series(points, "write", p99)),
                ("read p99".into(), series(points, "read", p99)),
            ],
        ),
        (
            format!("{label}-sweep-batch.svg"),
            format!(
                "{label}: write throughput vs rows per write ({} clients)",
                args.clients
            ),
            "rows per write",
            "per second",
            &bx,
            vec![
                (
                    "rows/s".into(),
                    bpoints
                        .iter()
                        .map(|p| p["rows_per_s"].as_f64().unwrap_or(0.0))
                        .collect(),
                ),
                ("requests/s".into(), series(bpoints, "write", thr)),
            ],
        ),
    ];
    let mut figures = Vec::new();
    for (file, title, x_desc, y_desc, xs, lines) in charts {
        match charts::lines(&args.out.join(&file), &title, x_desc, y_desc, xs, &lines) {
            Ok(()) => figures.push(file),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    figures
}
