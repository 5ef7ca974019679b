//! One configuration's run: a fresh cluster, `/init`, the write and read phases, the
//! JetStream baseline, verification, and its `<label>.json`.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use testkit::paths::resolve;

use crate::cli::variant;
use crate::cluster::BenchCluster;
use crate::load::round3;
use crate::phases::{chart_hist, phase_json, print_phase, read_phase, write_phase, Ctx};
use crate::probe::{probe_end, probe_start};
use crate::workload::{keys_for, Workload};
use crate::{baseline, verify};

/// One configuration: fresh cluster, /init, writes, reads, baseline, verification.
pub async fn run(ctx: &Ctx, name: &str) -> anyhow::Result<(Value, bool)> {
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
    let cluster = BenchCluster::start(&ctx.opts, name).await?;
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
    // The WAL's message pattern alone (publish, one delivery per replica, announcements):
    // the floor nats-server sets under a log entry, without shardline's processes.
    let followers = wl.topology()["replicas_per_shard"].as_u64().unwrap_or(3) as usize;
    let probe = probe_start(&cluster);
    let fan = baseline::fan_out(
        &cluster.nats_url,
        args.baseline_messages.unwrap_or(args.writes),
        args.clients,
        followers,
        ctx.max,
    )
    .await?;
    let (fres, line) = probe_end(&cluster, &probe, fan.elapsed);
    print_phase(&fan, "msgs");
    println!("{line}");
    println!(
        "  ({followers} pull consumers as replicas, {} announcing per batch; CPU per message: nats-server {:.0} µs, the consumers and publishers {:.0} µs)",
        followers.saturating_sub(1),
        per_message(&fres, "nats_server", fan.ok()),
        per_message(&fres, "bench_client", fan.ok()),
    );
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
        "jetstream_fan_out": phase_json(&fan, fres),
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

/// µs of CPU per message of `process` (a key of a probe's `totals_cpu_s`) over `n` messages.
fn per_message(res: &Value, process: &str, n: usize) -> f64 {
    res["totals_cpu_s"][process].as_f64().unwrap_or(0.0) * 1e6 / n.max(1) as f64
}
