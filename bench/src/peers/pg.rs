//! PostgreSQL for the peer benchmark: a primary and two streaming standbys with quorum
//! commit (`synchronous_standby_names = 'ANY 1 (s1, s2)'`: a commit returns once two of the
//! three servers have it), in a temp dir, on loopback ports; the A1 shapes as pgbench
//! scripts; pgbench's output and per-transaction log parsed into the bench's summary JSON.
//!
//! PostgreSQL refuses to run as root: when the bench is root, every server-side command
//! (`initdb`, `pg_ctl`, `pg_basebackup`) runs as the `postgres` user (`runuser`), and the temp
//! dir belongs to it. pgbench and psql connect over TCP as the `postgres` role (trust
//! authentication on loopback), from the bench's own user. [`PgSet`]'s Drop stops the three
//! servers and removes the temp dir, also on error and Ctrl-C.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use testkit::paths::free_port;

use crate::load::round3;
use crate::procstat;

/// The binaries the peer benchmark needs from PostgreSQL's bin directory.
pub const NEEDED: [&str; 6] = [
    "initdb",
    "pg_ctl",
    "pg_basebackup",
    "pgbench",
    "psql",
    "postgres",
];

/// `explicit` if given, else the newest `/usr/lib/postgresql/<version>/bin` holding every
/// binary of [`NEEDED`] (Debian's layout; `scripts/install-postgres.sh` installs it).
pub fn find_bins(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let has_all = |d: &Path| NEEDED.iter().all(|b| d.join(b).is_file());
    if let Some(d) = explicit {
        if has_all(d) {
            return Ok(d.to_path_buf());
        }
        bail!(
            "--pg-bin {}: needs {} there",
            d.display(),
            NEEDED.join(", ")
        );
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_all(d))
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d).ok_or_else(|| {
        anyhow!("PostgreSQL not found under /usr/lib/postgresql: run scripts/install-postgres.sh (or make bench-peers)")
    })
}

/// The two settings the peer is measured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgMode {
    /// `fsync=on`, `synchronous_commit=on`: a commit is on disk on the primary and one standby.
    Durable,
    /// `fsync=off`, `synchronous_commit=remote_apply`: a commit is applied (in memory) on the
    /// primary and one standby; nothing waits for a disk.
    Relaxed,
}

impl PgMode {
    pub fn label(self) -> &'static str {
        match self {
            PgMode::Durable => "pg-durable",
            PgMode::Relaxed => "pg-relaxed",
        }
    }

    pub fn settings(self) -> &'static str {
        match self {
            PgMode::Durable => "fsync=on, synchronous_commit=on",
            PgMode::Relaxed => "fsync=off, synchronous_commit=remote_apply",
        }
    }
}

/// A running primary + two quorum-synchronous standbys in a temp dir.
pub struct PgSet {
    pub dir: PathBuf,
    bins: PathBuf,
    run_as: Option<String>,
    /// Primary, s1, s2.
    pub ports: [u16; 3],
    /// Data dirs of the servers started so far (stopped on drop).
    started: Vec<PathBuf>,
}

const NODES: [&str; 3] = ["primary", "s1", "s2"];

impl PgSet {
    /// initdb, start the primary, base-backup and start both standbys, and wait until both
    /// stream as quorum standbys.
    pub fn start(bins: &Path, mode: PgMode) -> anyhow::Result<PgSet> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shardline-peers-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let run_as = root.then(|| "postgres".to_owned());
        let mut set = PgSet {
            dir: dir.clone(),
            bins: bins.to_path_buf(),
            run_as,
            ports: [free_port(), free_port(), free_port()],
            started: Vec::new(),
        };
        if let Some(user) = &set.run_as {
            let st = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&dir)
                .status()
                .context("chown")?;
            if !st.success() {
                bail!(
                    "chown {user} {}: {st} (is there a '{user}' user? scripts/install-postgres.sh)",
                    dir.display()
                );
            }
        }
        let primary = dir.join("primary");
        set.server(
            "initdb",
            &[
                "-D",
                &primary.display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        let conf = format!(
            "\n# shardline-bench peer: {}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             max_connections = 100\n\
             synchronous_standby_names = 'ANY 1 (s1, s2)'\n\
             fsync = {}\n\
             synchronous_commit = {}\n",
            mode.settings(),
            dir.display(),
            if mode == PgMode::Durable { "on" } else { "off" },
            if mode == PgMode::Durable {
                "on"
            } else {
                "remote_apply"
            },
        );
        set.append_conf(&primary, &format!("{conf}port = {}\n", set.ports[0]))?;
        set.pg_ctl_start(&primary)?;
        for (i, name) in NODES.iter().enumerate().skip(1) {
            let d = dir.join(name);
            set.server(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &set.ports[0].to_string(),
                    "-U",
                    "postgres",
                    "-D",
                    &d.display().to_string(),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                    "-d",
                    &format!("application_name={name}"),
                ],
            )?;
            // The standby has the primary's postgresql.conf: its own port last wins.
            set.append_conf(&d, &format!("port = {}\n", set.ports[i]))?;
            set.pg_ctl_start(&d)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = set.psql(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'quorum'",
            )?;
            if n.trim() == "2" {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "standbys not streaming as quorum standbys after 30 s ({n:?}); logs in {}",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(set)
    }

    /// A server-side binary, as the `postgres` user when we are root.
    fn server(&self, bin: &str, args: &[&str]) -> anyhow::Result<String> {
        let path = self.bins.join(bin);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {bin}"))?;
        if !out.status.success() {
            bail!(
                "{bin} {}: {}: {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn append_conf(&self, data: &Path, text: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .with_context(|| format!("{}/postgresql.conf", data.display()))?;
        f.write_all(text.as_bytes())?;
        Ok(())
    }

    fn pg_ctl_start(&mut self, data: &Path) -> anyhow::Result<()> {
        let log = format!("{}.log", data.display());
        // Recorded first: a start that fails half-way is still stopped on drop.
        self.started.push(data.to_path_buf());
        self.server(
            "pg_ctl",
            &[
                "-D",
                &data.display().to_string(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .map(|_| ())
        .map_err(|e| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            anyhow!(
                "{e}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
    }

    /// Connection flags of the primary, for psql and pgbench.
    pub fn conn_args(&self) -> Vec<String> {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &self.ports[0].to_string(),
            "-U",
            "postgres",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// SQL on the primary (several `;`-separated statements run as one transaction, so
    /// VACUUM goes alone); returns the unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bins.join("psql"))
            .args(self.conn_args())
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql -c {sql:?}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The postmasters' pids (first line of `postmaster.pid`).
    pub fn postmaster_pids(&self) -> Vec<u32> {
        self.started
            .iter()
            .filter_map(|d| {
                std::fs::read_to_string(d.join("postmaster.pid"))
                    .ok()?
                    .lines()
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// CPU seconds of the three servers: each postmaster with its reaped children
    /// (backends that exited) plus its live children (walsenders, walreceivers, startup,
    /// checkpointer, backends still running).
    pub fn cpu_seconds(&self) -> f64 {
        let pms: HashSet<u32> = self.postmaster_pids().into_iter().collect();
        let mut total = 0.0;
        for pid in &pms {
            if let Some(t) = procstat::cpu_times(*pid) {
                total += t.own_s + t.children_s;
            }
        }
        for (_, t) in children_of(&pms) {
            total += t.own_s;
        }
        total
    }

    /// Live children of the primary's postmaster (client backends included).
    pub fn primary_children(&self) -> usize {
        let pms: HashSet<u32> = self.postmaster_pids().into_iter().take(1).collect();
        children_of(&pms).len()
    }
}

fn children_of(parents: &HashSet<u32>) -> Vec<(u32, procstat::CpuTimes)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(t) = procstat::cpu_times(pid) {
            if parents.contains(&t.ppid) {
                out.push((pid, t));
            }
        }
    }
    out
}

impl Drop for PgSet {
    fn drop(&mut self) {
        for d in self.started.iter().rev() {
            let pid = std::fs::read_to_string(d.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
            let stopped = self
                .server(
                    "pg_ctl",
                    &[
                        "-D",
                        &d.display().to_string(),
                        "-m",
                        "immediate",
                        "-w",
                        "-t",
                        "20",
                        "stop",
                    ],
                )
                .is_ok();
            if !stopped {
                if let Some(pid) = pid.filter(|p| *p > 1) {
                    // SAFETY: kill has no memory preconditions; the pid is the postmaster's.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The A1 shapes as SQL: the write table (empty; unique keys from a sequence) and the read
/// table (key space `lo..hi` holding `rows` keys drawn at random, like the one shardline's
/// read phase finds after its write phase).
pub fn load_tables(set: &PgSet, lo: i64, hi: i64, rows: usize) -> anyhow::Result<()> {
    let cols = "Stud_id int PRIMARY KEY, Stud_name text, Stud_marks int";
    set.psql(&format!(
        "CREATE TABLE w ({cols}); CREATE SEQUENCE w_ids START {lo} MINVALUE {lo}; CREATE TABLE r ({cols})"
    ))?;
    set.psql(&format!(
        "INSERT INTO r SELECT k, 'GHI', (k * 7919) % 101 FROM generate_series({lo}, {}) k ORDER BY random() LIMIT {rows}",
        hi - 1
    ))?;
    set.psql("VACUUM ANALYZE r")?;
    Ok(())
}

pub fn write_script() -> String {
    "\\set m random(0, 100)\n\
     INSERT INTO w (Stud_id, Stud_name, Stud_marks) VALUES (nextval('w_ids'), 'GHI', :m);\n"
        .to_owned()
}

/// Ranges as shardline's read phase draws them: `low` uniform in `lo..hi - width`, the
/// range `[low, low + width]` inclusive.
pub fn read_script(lo: i64, hi: i64, width: i64) -> String {
    let max_low = (hi - width).max(lo + 1);
    format!(
        "\\set low random({lo}, {})\n\
         SELECT Stud_id, Stud_name, Stud_marks FROM r WHERE Stud_id BETWEEN :low AND :low + {width};\n",
        max_low - 1
    )
}

/// What pgbench prints at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct PgbenchOut {
    pub tps: f64,
    pub processed: u64,
    pub failed: u64,
    pub latency_avg_ms: f64,
}

/// Parses pgbench's summary (`tps = … (without initial connection time)`, `number of
/// transactions actually processed: …`, `number of failed transactions: … (…%)`,
/// `latency average = … ms`).
pub fn parse_pgbench(out: &str) -> anyhow::Result<PgbenchOut> {
    let mut tps = None;
    let mut processed = None;
    let mut failed = 0;
    let mut lat = f64::NAN;
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("tps = ") {
            tps = rest.split_whitespace().next().and_then(|s| s.parse().ok());
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            // "12345" or "12345/20000" (with -t)
            processed = rest
                .trim()
                .split(['/', ' '])
                .next()
                .and_then(|s| s.parse().ok());
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = rest
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            lat = rest
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN);
        }
    }
    Ok(PgbenchOut {
        tps: tps.ok_or_else(|| anyhow!("no `tps = ` line in pgbench's output:\n{out}"))?,
        processed: processed.ok_or_else(|| {
            anyhow!("no `number of transactions actually processed` line in pgbench's output")
        })?,
        failed,
        latency_avg_ms: lat,
    })
}

/// Latencies (µs) of a pgbench `-l` log: `client_id transaction_no time script_no
/// time_epoch time_us`, `time` being the transaction's latency in µs (`failed`/`skipped` in
/// place of it for those, not counted).
pub fn parse_log(text: &str, into: &mut Vec<u64>) {
    for line in text.lines() {
        if let Some(t) = line.split_whitespace().nth(2).and_then(|s| s.parse().ok()) {
            into.push(t);
        }
    }
}

/// Nearest-rank percentile of sorted µs latencies, in ms (as the shardline phases).
pub fn pct_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let n = sorted_us.len();
    let rank = ((p / 100.0) * n as f64).ceil().max(1.0) as usize;
    sorted_us[rank.min(n) - 1] as f64 / 1000.0
}

/// One pgbench phase: `clients` clients (`-j` = cores), prepared statements, `seconds`
/// long, every transaction logged; returns the phase's JSON, shaped like a shardline phase's
/// (throughput, latency percentiles, CPU µs per request of the servers + pgbench).
pub async fn pgbench_phase(
    set: &PgSet,
    name: &str,
    script: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Value> {
    let work = set.dir.join(format!("bench-{name}"));
    std::fs::create_dir_all(&work)?;
    let script_path = work.join("script.sql");
    std::fs::write(&script_path, script)?;
    let threads = clients.clamp(1, crate::probe::cores().max(1));
    let idle_children = set.primary_children();
    let cpu0 = set.cpu_seconds();
    let kids0 = procstat::children_cpu_seconds();
    let out = tokio::process::Command::new(set.bins.join("pgbench"))
        .args(set.conn_args())
        .args(["-n", "-M", "prepared"])
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &seconds.to_string()])
        .arg("-f")
        .arg(&script_path)
        .arg("-l")
        .arg(format!("--log-prefix={}", work.join("log").display()))
        .arg("postgres")
        .current_dir(&work)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("running pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench ({name}): {}: {}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // The backends exit once pgbench disconnected; wait (bounded) until the postmaster has
    // reaped them, so their CPU is in its children's total.
    let deadline = Instant::now() + Duration::from_secs(5);
    while set.primary_children() > idle_children && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server_cpu = set.cpu_seconds() - cpu0;
    let pgbench_cpu = procstat::children_cpu_seconds() - kids0;
    let summary = parse_pgbench(&stdout)?;
    let mut lat = Vec::with_capacity(summary.processed as usize);
    for e in std::fs::read_dir(&work)?.flatten() {
        if e.file_name().to_string_lossy().starts_with("log.") {
            parse_log(&std::fs::read_to_string(e.path())?, &mut lat);
        }
    }
    lat.sort_unstable();
    let completed = summary.processed.max(1) as f64;
    let cpu_all = server_cpu + pgbench_cpu;
    let v = json!({
        "tool": "pgbench",
        "requests_completed": summary.processed,
        "failed": summary.failed,
        "clients": clients,
        "threads": threads,
        "elapsed_s": seconds,
        "throughput_per_s": round3(summary.tps),
        "latency_ms": {
            "mean": round3(summary.latency_avg_ms),
            "p50": round3(pct_ms(&lat, 50.0)),
            "p90": round3(pct_ms(&lat, 90.0)),
            "p99": round3(pct_ms(&lat, 99.0)),
            "max": round3(pct_ms(&lat, 100.0)),
        },
        "errors": summary.failed,
        "cpu_us_per_request": round3(cpu_all * 1e6 / completed),
        "resources": {"totals_cpu_s": {"postgres": round3(server_cpu), "pgbench": round3(pgbench_cpu), "all": round3(cpu_all)}},
    });
    println!(
        "  {:<26} {:>6} tx  in {:>6}s = {:>8.1} tx/s  p50 {:>6.2}  p90 {:>6.2}  p99 {:>7.2}  max {:>7.2} ms  failed {}",
        name,
        summary.processed,
        seconds,
        summary.tps,
        pct_ms(&lat, 50.0),
        pct_ms(&lat, 90.0),
        pct_ms(&lat, 99.0),
        pct_ms(&lat, 100.0),
        summary.failed
    );
    println!(
        "    CPU s: pgbench {pgbench_cpu:.2} | postgres (3 servers) {server_cpu:.2} = {cpu_all:.2} ({:.0} µs per transaction)",
        cpu_all * 1e6 / completed
    );
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: /tmp/x/w.sql
scaling factor: 1
query mode: prepared
number of clients: 20
number of threads: 2
maximum number of tries: 1
duration: 3 s
number of transactions actually processed: 41183
number of failed transactions: 0 (0.000%)
latency average = 1.449 ms
initial connection time = 25.863 ms
tps = 13805.478948 (without initial connection time)
";

    #[test]
    fn parses_pgbench_summary() {
        let p = parse_pgbench(OUT).unwrap();
        assert_eq!(
            p,
            PgbenchOut {
                tps: 13805.478948,
                processed: 41183,
                failed: 0,
                latency_avg_ms: 1.449
            }
        );
        let with_t = OUT
            .replace("41183", "9000/10000")
            .replace("0 (0.000%)", "3 (0.030%)");
        let p = parse_pgbench(&with_t).unwrap();
        assert_eq!((p.processed, p.failed), (9000, 3));
    }

    #[test]
    fn missing_tps_is_an_error_naming_it() {
        let e = parse_pgbench("pgbench: error: connection to server failed\n").unwrap_err();
        assert!(e.to_string().contains("tps = "), "{e}");
    }

    #[test]
    fn log_latencies_and_percentiles() {
        let mut lat = Vec::new();
        parse_log(
            "0 1 6514 0 1795956598 173599\n1 1 900 0 1795956598 173617\n2 7 failed 0 1795956598 173620\n\n",
            &mut lat,
        );
        parse_log("3 1 2000 0 1795956598 174815\n", &mut lat);
        lat.sort_unstable();
        assert_eq!(lat, vec![900, 2000, 6514]);
        assert_eq!(pct_ms(&lat, 50.0), 2.0);
        assert_eq!(pct_ms(&lat, 99.0), 6.514);
        assert!(pct_ms(&[], 99.0).is_nan());
    }

    #[test]
    fn read_script_mirrors_shardline_ranges() {
        let s = read_script(0, 16384, 50);
        assert!(s.contains("random(0, 16333)"), "{s}");
        assert!(s.contains("BETWEEN :low AND :low + 50"), "{s}");
    }
}
