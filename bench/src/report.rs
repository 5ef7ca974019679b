//! The report: medians over rounds, the table printed at the end of a run (quoted by the
//! README and `bench/results/`: keep its format), the targets, and the throughput chart.

use serde_json::{json, Value};

use crate::charts;
use crate::cli::Args;
use crate::load::round3;

/// One summary from several rounds of a configuration: the last round's, with each
/// throughput and latency figure replaced by its median over the rounds, and every round's
/// figures under `rounds`. One round: that round's summary as it is.
pub fn medians(mut runs: Vec<Value>) -> Value {
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

pub fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

pub fn reference(config: &str, durable: bool) -> &'static str {
    match config {
        "a1" if durable => "target w>=2500/s (durable); Python 28.78 w/s 105.31 r/s",
        "a2" | "a3" if durable => "",
        "a1" => "target w>=5000/s p99<=15ms, r>=10000/s p99<=10ms; Python 28.78 w/s 105.31 r/s",
        "a2" => "target w>=0.6 x A1 w; Python 18.63 w/s 138.06 r/s",
        "a3" => "target r>=0.9 x A1 r; Python 16.86 w/s 145.43 r/s",
        _ => "",
    }
}

pub fn print_table(rows: &[(Value, &str)]) {
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

pub fn throughput_chart(args: &Args, rows: &[(Value, &str)]) {
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
