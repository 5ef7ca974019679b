//! `--peers` (`make bench-peers`): a peer measured in the same invocation as shardline.
//!
//! The peer is PostgreSQL with a primary and two streaming standbys and quorum commit
//! ([`pg`]), in two settings: durable (`fsync=on, synchronous_commit=on`) and relaxed
//! (`fsync=off, synchronous_commit=remote_apply`). Each round runs, alternating which side
//! goes first: PostgreSQL durable, shardline A1 durable, PostgreSQL relaxed, shardline A1
//! default, every run on a fresh cluster / fresh PostgreSQL set. The same shapes and client
//! count on both sides: single-row inserts of unique keys, then ranges `[low, low + width]`
//! over A1's key space holding as many rows as shardline's write phase leaves. The table
//! shows each figure's median over the rounds, and the ratios the issue sets targets for.

pub mod pg;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use testkit::paths::resolve;

use crate::cluster::BenchOpts;
use crate::configuration;
use crate::load::round3;
use crate::phases::Ctx;
use crate::report::{self, f};
use crate::workload::Workload;
use pg::PgMode;

/// The A1 runs and the PostgreSQL runs, alternating; prints both tables; returns whether
/// every shardline run verified.
pub async fn run(ctx: &Ctx, durable_conf: PathBuf) -> anyhow::Result<bool> {
    let args = &ctx.args;
    let bins = pg::find_bins(args.pg_bin.as_deref())?;
    let wl = Workload::load(&resolve(&args.workloads), "a1")?;
    let ctx_default = mode_ctx(ctx, false, None);
    let ctx_durable = mode_ctx(ctx, true, Some(durable_conf));
    let rounds = args.rounds.max(1);
    println!(
        "peers: PostgreSQL from {} (primary + 2 standbys, synchronous_standby_names = 'ANY 1 (s1, s2)', pgbench -M prepared -c {} -T {}) beside shardline A1, {rounds} round(s)",
        bins.display(),
        args.clients,
        args.peer_seconds
    );
    // pg durable, shardline durable, pg relaxed, shardline default.
    let mut runs: [Vec<Value>; 4] = Default::default();
    let mut all_ok = true;
    for round in 1..=rounds {
        println!("-- round {round} of {rounds}");
        let pg_first = round % 2 == 1;
        for (pg_i, sl_i, mode, sl_ctx) in [
            (0, 1, PgMode::Durable, &ctx_durable),
            (2, 3, PgMode::Relaxed, &ctx_default),
        ] {
            for pg_turn in [pg_first, !pg_first] {
                if pg_turn {
                    runs[pg_i].push(pg_run(ctx, &bins, &wl, mode).await?);
                } else {
                    let (s, ok) = configuration::run(sl_ctx, "a1").await?;
                    all_ok &= ok;
                    runs[sl_i].push(s);
                }
            }
        }
    }
    let [pgd, sld, pgr, sl] = runs.map(report::medians);
    for s in [&sl, &sld] {
        let label = s["label"].as_str().unwrap_or("run");
        std::fs::write(
            args.out.join(format!("{label}.json")),
            serde_json::to_string_pretty(s)?,
        )?;
    }
    report::print_table(&[(sl.clone(), ""), (sld.clone(), "")]);
    let sides = Sides {
        pg_durable: &pgd,
        pg_relaxed: &pgr,
        shardline: &sl,
        shardline_durable: &sld,
    };
    let ratios = ratios(&sides);
    println!();
    print!("{}", table(&sides, rounds));
    print!("{}", ratio_lines(&ratios));
    let out = json!({
        "rounds": rounds,
        "clients": args.clients,
        "pgbench_seconds_per_phase": args.peer_seconds,
        "postgresql": {"durable": pgd, "relaxed": pgr},
        "shardline": {"default": sl, "durable": sld},
        "ratios": ratios.iter().map(|r| json!({
            "what": r.what, "value": round3(r.value), "target": r.target, "met": r.met(),
        })).collect::<Vec<_>>(),
    });
    let path = args.out.join("peers.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!(
        "(all figures: {}; every round in {})",
        figures_are(rounds),
        path.display()
    );
    Ok(all_ok)
}

fn figures_are(rounds: usize) -> String {
    if rounds > 1 {
        format!("medians of {rounds} alternating rounds")
    } else {
        "one round".to_owned()
    }
}

/// The context of one shardline mode (default or durable), as `main` builds it for `--durable`.
fn mode_ctx(ctx: &Ctx, durable: bool, durable_conf: Option<PathBuf>) -> Ctx {
    let mut args = ctx.args.clone();
    args.durable = durable;
    Ctx {
        args,
        http: ctx.http.clone(),
        load: ctx.load.clone(),
        opts: BenchOpts {
            durable_conf,
            sqlite_full: durable,
            ..ctx.opts.clone()
        },
        max: ctx.max,
    }
}

/// One PostgreSQL measurement on a fresh set: tables, the write phase, the read phase.
async fn pg_run(ctx: &Ctx, bins: &Path, wl: &Workload, mode: PgMode) -> anyhow::Result<Value> {
    let args = &ctx.args;
    let label = mode.label();
    println!(
        "== {label}: PostgreSQL primary + 2 quorum standbys, {} ({} clients, {} s per phase)",
        mode.settings(),
        args.clients,
        args.peer_seconds
    );
    let t0 = Instant::now();
    let set = pg::PgSet::start(bins, mode)?;
    let rows = args.writes.min(wl.keyspace());
    pg::load_tables(&set, wl.lo, wl.hi, rows)?;
    println!(
        "  3 servers up, standbys streaming, read table of {rows} rows in {}..{} loaded in {:.2}s ({})",
        wl.lo,
        wl.hi,
        t0.elapsed().as_secs_f64(),
        set.dir.display()
    );
    let w = pg::pgbench_phase(
        &set,
        &format!("{label} write"),
        &pg::write_script(),
        args.clients,
        args.peer_seconds,
    )
    .await?;
    let r = pg::pgbench_phase(
        &set,
        &format!("{label} read"),
        &pg::read_script(wl.lo, wl.hi, args.read_width),
        args.clients,
        args.peer_seconds,
    )
    .await?;
    // Every committed insert is there (a cheap check that the figures count real writes).
    let stored: u64 = set.psql("SELECT count(*) FROM w")?.trim().parse()?;
    let committed = w["requests_completed"].as_u64().unwrap_or(0);
    if stored != committed {
        anyhow::bail!(
            "{label}: pgbench committed {committed} inserts but the table holds {stored}"
        );
    }
    let per_read: f64 = set
        .psql(&format!(
            "SELECT avg((SELECT count(*) FROM r WHERE Stud_id BETWEEN l AND l + {})) FROM generate_series({}, {}) l",
            args.read_width,
            wl.lo,
            (wl.hi - args.read_width).max(wl.lo + 1) - 1
        ))?
        .trim()
        .parse()
        .unwrap_or(f64::NAN);
    println!("  check: the write table holds all {stored} committed rows; rows per read range (mean over every range): {per_read:.1}");
    drop(set);
    Ok(json!({
        "config": "postgresql",
        "label": label,
        "settings": mode.settings(),
        "synchronous_standby_names": "ANY 1 (s1, s2)",
        "params": {"clients": args.clients, "seconds_per_phase": args.peer_seconds,
                   "read_width": args.read_width, "read_table_rows": rows,
                   "key_space": [wl.lo, wl.hi], "query_mode": "prepared"},
        "write": w,
        "read": r,
        "rows_per_read": round3(per_read),
    }))
}

/// The four medians side by side.
pub struct Sides<'a> {
    pub pg_durable: &'a Value,
    pub pg_relaxed: &'a Value,
    pub shardline: &'a Value,
    pub shardline_durable: &'a Value,
}

/// A ratio with a target (`value >= target`).
#[derive(Debug, Clone)]
pub struct Ratio {
    pub what: String,
    pub num: f64,
    pub den: f64,
    pub value: f64,
    pub target: f64,
}

impl Ratio {
    fn new(what: &str, num: f64, den: f64, target: f64) -> Ratio {
        Ratio {
            what: what.to_owned(),
            num,
            den,
            value: num / den,
            target,
        }
    }

    /// NaN (a side without figures) is a miss.
    pub fn met(&self) -> bool {
        self.value >= self.target
    }
}

const W: [&str; 2] = ["write", "throughput_per_s"];
const R: [&str; 2] = ["read", "throughput_per_s"];

/// The targets: default-mode writes >= 0.6 x PostgreSQL relaxed writes, reads >= 1.0 x
/// PostgreSQL reads (against both settings), durable writes >= 0.5 x PostgreSQL durable writes.
pub fn ratios(s: &Sides) -> Vec<Ratio> {
    vec![
        Ratio::new(
            "shardline A1 writes / PostgreSQL relaxed writes",
            f(s.shardline, &W),
            f(s.pg_relaxed, &W),
            0.6,
        ),
        Ratio::new(
            "shardline A1 reads / PostgreSQL relaxed reads",
            f(s.shardline, &R),
            f(s.pg_relaxed, &R),
            1.0,
        ),
        Ratio::new(
            "shardline A1 reads / PostgreSQL durable reads",
            f(s.shardline, &R),
            f(s.pg_durable, &R),
            1.0,
        ),
        Ratio::new(
            "shardline A1 durable writes / PostgreSQL durable writes",
            f(s.shardline_durable, &W),
            f(s.pg_durable, &W),
            0.5,
        ),
    ]
}

/// The side-by-side table (markdown, as the README quotes it).
pub fn table(s: &Sides, rounds: usize) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Side by side ({}; latencies in ms; CPU = µs of all processes, load generator included, per request):\n",
        figures_are(rounds)
    ));
    out.push_str("| | writes/s | write p50 | write p99 | CPU/write | reads/s | read p50 | read p99 | CPU/read |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let rows = [
        (
            "PostgreSQL durable (fsync=on, synchronous_commit=on)",
            s.pg_durable,
        ),
        (
            "PostgreSQL relaxed (fsync=off, synchronous_commit=remote_apply)",
            s.pg_relaxed,
        ),
        ("shardline A1 (default mode)", s.shardline),
        ("shardline A1 durable", s.shardline_durable),
    ];
    for (name, v) in rows {
        out.push_str(&format!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} |\n",
            f(v, &W),
            f(v, &["write", "latency_ms", "p50"]),
            f(v, &["write", "latency_ms", "p99"]),
            f(v, &["write", "cpu_us_per_request"]),
            f(v, &R),
            f(v, &["read", "latency_ms", "p50"]),
            f(v, &["read", "latency_ms", "p99"]),
            f(v, &["read", "cpu_us_per_request"]),
        ));
    }
    out
}

pub fn ratio_lines(ratios: &[Ratio]) -> String {
    ratios
        .iter()
        .map(|r| {
            format!(
                "{} = {:.0} / {:.0} = {:.2} (target >= {}): {}\n",
                r.what,
                r.num,
                r.den,
                r.value,
                r.target,
                if r.met() { "PASS" } else { "MISS" }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(w: f64, r: f64) -> Value {
        json!({
            "write": {"throughput_per_s": w, "latency_ms": {"p50": 1.5, "p99": 4.25}, "cpu_us_per_request": 310.4},
            "read": {"throughput_per_s": r, "latency_ms": {"p50": 0.5, "p99": 2.0}, "cpu_us_per_request": 95.0},
        })
    }

    #[test]
    fn ratios_against_the_targets() {
        let (pgd, pgr) = (side(11_200.0, 24_700.0), side(13_700.0, 26_700.0));
        let (sl, sld) = (side(8_220.0, 25_000.0), side(5_600.0, 20_000.0));
        let s = Sides {
            pg_durable: &pgd,
            pg_relaxed: &pgr,
            shardline: &sl,
            shardline_durable: &sld,
        };
        let r = ratios(&s);
        let got: Vec<(f64, bool)> = r
            .iter()
            .map(|r| ((r.value * 1000.0).round() / 1000.0, r.met()))
            .collect();
        assert_eq!(
            got,
            vec![(0.6, true), (0.936, false), (1.012, true), (0.5, true)]
        );
        let lines = ratio_lines(&r);
        assert!(lines.contains("shardline A1 writes / PostgreSQL relaxed writes = 8220 / 13700 = 0.60 (target >= 0.6): PASS"), "{lines}");
        assert!(lines.contains("shardline A1 reads / PostgreSQL relaxed reads = 25000 / 26700 = 0.94 (target >= 1): MISS"), "{lines}");
        let t = table(&s, 3);
        assert!(t.contains("medians of 3 alternating rounds"), "{t}");
        assert!(
            t.contains("| PostgreSQL relaxed (fsync=off, synchronous_commit=remote_apply) | 13700 | 1.50 | 4.25 | 310 | 26700 | 0.50 | 2.00 | 95 |"),
            "{t}"
        );
        assert_eq!(t.lines().count(), 7, "{t}");
    }

    #[test]
    fn a_missing_side_is_a_miss_not_a_pass() {
        let (pgd, pgr, sl) = (side(1.0, 1.0), Value::Null, side(5.0, 5.0));
        let s = Sides {
            pg_durable: &pgd,
            pg_relaxed: &pgr,
            shardline: &sl,
            shardline_durable: &Value::Null,
        };
        let r = ratios(&s);
        assert!(!r[0].met() && !r[1].met() && r[2].met() && !r[3].met());
    }
}
