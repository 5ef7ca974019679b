//! `make soak`: a bounded long run that shows the disk and memory of a cluster plateau while
//! the WAL is trimmed (`--soak`).
//!
//! One A1 cluster (from `--bin-dir`, release binaries by default) with the manager's retention
//! margin set to `--soak-retain`. A fixed key set is inserted once; then `--soak-clients`
//! closed-loop clients update those keys (and now and then delete and re-insert one) for
//! `--soak-secs` seconds, so that the SQLite files stop growing while the log keeps growing.
//! At 15 % of the run one server is killed (the manager respawns it and it catches up from
//! the log); at 30 % another is paused until the manager releases it from the WAL floor (at
//! most until 60 %), then killed, so that it comes back behind the stream's first entry and
//! re-seeds from a peer. The faults sit in the first two thirds; the last third is the
//! steady state the plateau is judged on.
//!
//! Every `--soak-sample-ms` the run records each WAL stream's bytes, the bytes of the SQLite
//! files (database, `-wal`, `-shm`) under the servers' directories, and the RSS of every
//! process, into `<out>/soak.csv` and three SVG charts. At the end it checks that every key
//! holds its last acknowledged value (or the value of a later request whose outcome was
//! unknown), that the replicas of each shard hold identical rows, that each shard's log saw at
//! least 20 times the margin, and that stream bytes, SQLite bytes and RSS plateaued (the last
//! third's maximum at most `--soak-tolerance` times the middle third's); it prints PASS or
//! FAIL.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use async_nats::jetstream;
use rand::Rng as _;
use serde_json::{json, Value};
use testkit::workload::{classify, Outcome};
use testkit::Method;

use crate::charts;
use crate::cli::Args;
use crate::cluster::{BenchCluster, BenchOpts};

const SHARDS: [&str; 4] = ["sh1", "sh2", "sh3", "sh4"];
/// A1's key space.
const KEY_SPACE: i64 = 16_384;
/// RSS may vary more than disk (allocator caches, a respawned process starting small).
const RSS_TOLERANCE: f64 = 1.5;

/// One sample of the cluster.
#[derive(Clone, Debug, Default)]
struct Sample {
    t: f64,
    stream_bytes: BTreeMap<String, u64>,
    stream_first: BTreeMap<String, u64>,
    stream_last: BTreeMap<String, u64>,
    sqlite_bytes: BTreeMap<String, u64>,
    rss_kib: BTreeMap<String, u64>,
    ops: u64,
}

impl Sample {
    fn stream_total(&self) -> u64 {
        self.stream_bytes.values().sum()
    }
    fn sqlite_total(&self) -> u64 {
        self.sqlite_bytes.values().sum()
    }
    fn rss_total(&self) -> u64 {
        self.rss_kib.values().sum()
    }
}

/// What the clients know of one key: the state after its last acknowledged request, and the
/// state a later request with an unknown outcome may have left (then the key is retired).
#[derive(Clone, Debug)]
struct KeyState {
    acked: Option<(String, i64)>,
    maybe: Option<Option<(String, i64)>>,
}

type Keys = Arc<Mutex<HashMap<i64, KeyState>>>;

/// One figure of a sample (stream, SQLite or RSS total).
type Measure = fn(&Sample) -> u64;

fn row(key: i64, v: &(String, i64)) -> Value {
    json!({"Stud_id": key, "Stud_name": v.0, "Stud_marks": v.1})
}

pub async fn run(args: &Args, opts: &BenchOpts) -> anyhow::Result<bool> {
    let secs = args.soak_secs.max(20);
    let mut opts = opts.clone();
    opts.manager_args = vec![
        "--wal-retain-entries".into(),
        args.soak_retain.to_string(),
        "--wal-hold-max-entries".into(),
        args.soak_hold_max.to_string(),
        "--wal-trim-interval-ms".into(),
        args.soak_trim_ms.to_string(),
    ];
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.soak_clients * 2 + 8)
        .timeout(Duration::from_secs(20))
        .build()?;
    let cluster = BenchCluster::start(&opts, "soak").await?;
    let body: Value = serde_json::from_str(&std::fs::read_to_string(
        args.workloads.join("a1.init.json"),
    )?)?;
    cluster.init(&http, &body).await?;
    let gateway = cluster.gateway_url.clone();
    let nats = async_nats::connect(&cluster.nats_url).await?;
    let js = jetstream::new(nats);
    println!(
        "soak: {secs} s, {} keys, {} clients, retain {} entries, hold max {} entries, trim every {} ms; cluster in {}",
        args.soak_keys,
        args.soak_clients,
        args.soak_retain,
        args.soak_hold_max,
        args.soak_trim_ms,
        cluster.dir.display()
    );

    // The fixed key set, inserted once in batches.
    let n = args.soak_keys.clamp(1, KEY_SPACE as usize) as i64;
    let keys: Vec<i64> = (0..n).map(|i| i * (KEY_SPACE / n)).collect();
    let state: Keys = Arc::new(Mutex::new(HashMap::new()));
    for chunk in keys.chunks(200) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|&k| row(k, &(format!("k{k}-v0"), 0)))
            .collect();
        let r = http
            .post(format!("{gateway}/write"))
            .json(&json!({ "data": rows }))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "preload answered {}", r.status());
        let mut s = state.lock().unwrap();
        for &k in chunk {
            s.insert(
                k,
                KeyState {
                    acked: Some((format!("k{k}-v0"), 0)),
                    maybe: None,
                },
            );
        }
    }

    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..args.soak_clients.max(1))
        .map(|c| {
            let mine: Vec<i64> = keys
                .iter()
                .copied()
                .skip(c)
                .step_by(args.soak_clients.max(1))
                .collect();
            tokio::spawn(client(
                http.clone(),
                gateway.clone(),
                mine,
                state.clone(),
                stop.clone(),
                ops.clone(),
            ))
        })
        .collect();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = tokio::spawn(sample_forever(
        js.clone(),
        cluster.dir.join("servers"),
        cluster.component_pids_fn(),
        started,
        Duration::from_millis(args.soak_sample_ms.max(200)),
        samples.clone(),
        stop.clone(),
        ops.clone(),
    ));

    // The faults, on a timeline.
    let mut events: Vec<(f64, String)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let at = |f: f64| started + Duration::from_secs_f64(secs as f64 * f);
    tokio::time::sleep_until(at(0.15).into()).await;
    let killed = "Server1";
    match cluster.server_pid(killed) {
        Some(pid) => {
            testkit::signal(pid, libc::SIGKILL);
            events.push((started.elapsed().as_secs_f64(), format!("killed {killed}")));
            println!(
                "soak: {:>6.1} s killed {killed} (pid {pid})",
                started.elapsed().as_secs_f64()
            );
        }
        None => problems.push(format!("no pid for {killed}")),
    }
    tokio::time::sleep_until(at(0.3).into()).await;
    // A server that leads no shard: pausing a primary would stall its shard's writes until
    // the requests already sent to it time out, and this is about the floor, not failover.
    let paused = pure_secondary(&http, &gateway, killed)
        .await
        .unwrap_or_else(|| "Server4".to_owned());
    let paused = paused.as_str();
    match reseed(&cluster, &http, paused, started, at(0.6)).await {
        Ok(mut e) => events.append(&mut e),
        Err(e) => problems.push(format!("re-seed of {paused}: {e}")),
    }
    tokio::time::sleep_until(deadline.into()).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await?;
    }
    sampler.await?;
    let total_ops = ops.load(Ordering::SeqCst);
    println!(
        "soak: load stopped after {:.1} s: {total_ops} requests ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        total_ops as f64 / started.elapsed().as_secs_f64()
    );

    // Correctness.
    if let Err(e) = crate::verify::settle(&http, &gateway, Duration::from_secs(120)).await {
        problems.push(format!("replicas did not catch up within 120 s: {e}"));
    }
    problems.extend(check_values(&http, &gateway, &state).await?);
    problems.extend(check_replicas(&http, &gateway).await?);

    // Figures.
    let samples = samples.lock().unwrap().clone();
    std::fs::create_dir_all(&args.out)?;
    write_csv(&args.out.join("soak.csv"), &samples)?;
    draw(&args.out, &samples)?;
    problems.extend(judge(&samples, args));
    for (t, e) in &events {
        println!("soak: event at {t:.1} s: {e}");
    }
    println!(
        "soak: CSV and charts in {} (soak.csv, soak-stream.svg, soak-sqlite.svg, soak-rss.svg)",
        args.out.display()
    );
    if problems.is_empty() {
        println!("soak: PASS");
        cluster.finish();
        Ok(true)
    } else {
        for p in &problems {
            println!("soak: problem: {p}");
        }
        println!("soak: FAIL");
        Err(anyhow!(
            "soak FAILED: {} problem(s), listed above",
            problems.len()
        ))
    }
}

/// A server other than `except` that is primary of no shard, per `/status`.
async fn pure_secondary(http: &reqwest::Client, gateway: &str, except: &str) -> Option<String> {
    let st: Value = http
        .get(format!("{gateway}/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let primaries: Vec<&str> = st["shards"]
        .as_array()?
        .iter()
        .filter_map(|s| s["primary"].as_str())
        .collect();
    st["servers"]
        .as_object()?
        .keys()
        .find(|n| n.as_str() != except && !primaries.contains(&n.as_str()))
        .cloned()
}

/// Pauses `name` until the manager releases it from some shard's WAL floor (its metrics),
/// then kills it: respawned, it finds its next entry purged and re-seeds from a peer.
async fn reseed(
    cluster: &BenchCluster,
    http: &reqwest::Client,
    name: &str,
    started: Instant,
    until: Instant,
) -> anyhow::Result<Vec<(f64, String)>> {
    let mut events = Vec::new();
    let pid = cluster.server_pid(name).ok_or_else(|| anyhow!("no pid"))?;
    testkit::signal(pid, libc::SIGSTOP);
    events.push((started.elapsed().as_secs_f64(), format!("paused {name}")));
    println!(
        "soak: {:>6.1} s paused {name} (pid {pid})",
        started.elapsed().as_secs_f64()
    );
    let released = loop {
        let text = async {
            http.get(format!("{}/metrics", cluster.manager_url))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
        }
        .await
        .unwrap_or_default();
        let released = text
            .lines()
            .filter(|l| l.starts_with("shardline_wal_released_replicas{"))
            .any(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) > Some(0.0));
        if released || Instant::now() >= until {
            break released;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    testkit::signal(pid, libc::SIGKILL);
    testkit::signal(pid, libc::SIGCONT);
    let t = started.elapsed().as_secs_f64();
    if !released {
        events.push((t, format!("killed {name} (never released)")));
        anyhow::bail!("the manager did not release {name} from the WAL floor in time; use a smaller --soak-hold-max");
    }
    events.push((
        t,
        format!("{name} released from the WAL floor; killed (re-seeds when respawned)"),
    ));
    println!("soak: {t:>6.1} s {name} released; killed");
    Ok(events)
}

/// A closed-loop client over its own keys: mostly updates, now and then a delete followed
/// (next time) by a re-insert. A key whose last request had an unknown outcome is retired.
async fn client(
    http: reqwest::Client,
    gateway: String,
    mine: Vec<i64>,
    state: Keys,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) {
    let mut version: i64 = 0;
    let mut live = mine;
    while !stop.load(Ordering::SeqCst) && !live.is_empty() {
        let i = rand::rng().random_range(0..live.len());
        let key = live[i];
        version += 1;
        let current = state.lock().unwrap()[&key].acked.clone();
        let delete = current.is_some() && rand::rng().random_ratio(1, 20);
        let next = (!delete).then(|| (format!("k{key}-v{version}"), version));
        let (method, path, body) = match (&current, &next) {
            (_, None) => (Method::DELETE, "/del", json!({"Stud_id": key})),
            (None, Some(v)) => (Method::POST, "/write", json!({"data": [row(key, v)]})),
            (Some(_), Some(v)) => (
                Method::PUT,
                "/update",
                json!({"Stud_id": key, "data": row(key, v)}),
            ),
        };
        let (status, answer) =
            testkit::workload::send(&http, method, &format!("{gateway}{path}"), &body).await;
        ops.fetch_add(1, Ordering::Relaxed);
        let outcome = classify(status, &answer);
        {
            let mut s = state.lock().unwrap();
            let entry = s.get_mut(&key).expect("own key");
            match outcome {
                Outcome::Acked => entry.acked = next,
                Outcome::Rejected => {}
                Outcome::Unknown => {
                    entry.maybe = Some(next);
                    live.swap_remove(i);
                }
            }
        }
        if outcome != Outcome::Acked {
            // A failover or an overloaded primary: give it a moment.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn sample_forever(
    js: jetstream::Context,
    servers_dir: std::path::PathBuf,
    pids: impl Fn() -> Vec<(String, u32)>,
    started: Instant,
    every: Duration,
    out: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let mut s = Sample {
            t: started.elapsed().as_secs_f64(),
            ops: ops.load(Ordering::Relaxed),
            ..Sample::default()
        };
        for shard in SHARDS {
            if let Ok(mut stream) = js.get_stream(format!("WAL_{shard}")).await {
                if let Ok(info) = stream.info().await {
                    s.stream_bytes.insert(shard.into(), info.state.bytes);
                    s.stream_first
                        .insert(shard.into(), info.state.first_sequence);
                    s.stream_last.insert(shard.into(), info.state.last_sequence);
                }
            }
        }
        for server in std::fs::read_dir(&servers_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = server.file_name().to_string_lossy().into_owned();
            let bytes: u64 = std::fs::read_dir(server.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().contains(".db"))
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.len())
                .sum();
            s.sqlite_bytes.insert(name, bytes);
        }
        for (name, pid) in pids() {
            if let Some(kib) = rss_kib(pid) {
                s.rss_kib.insert(name, kib);
            }
        }
        out.lock().unwrap().push(s);
    }
}

/// VmRSS of a live process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Every key, read through the primaries, must hold its last acknowledged state (or, for a
/// retired key, the state its unknown request would have left).
async fn check_values(
    http: &reqwest::Client,
    gateway: &str,
    state: &Keys,
) -> anyhow::Result<Vec<String>> {
    let r: Value = http
        .post(format!("{gateway}/read"))
        .json(&json!({"Stud_id": {"low": 0, "high": KEY_SPACE - 1}, "consistency": "primary"}))
        .send()
        .await?
        .json()
        .await?;
    let rows = r["data"]
        .as_array()
        .ok_or_else(|| anyhow!("final read answered {r}"))?;
    let got: HashMap<i64, (String, i64)> = rows
        .iter()
        .filter_map(|row| {
            Some((
                row["Stud_id"].as_i64()?,
                (
                    row["Stud_name"].as_str()?.to_owned(),
                    row["Stud_marks"].as_i64()?,
                ),
            ))
        })
        .collect();
    let state = state.lock().unwrap();
    let mut bad = Vec::new();
    let mut retired = 0;
    for (k, s) in state.iter() {
        let have = got.get(k).cloned();
        let ok = have == s.acked || s.maybe.as_ref().is_some_and(|m| *m == have);
        retired += usize::from(s.maybe.is_some());
        if !ok {
            bad.push(format!(
                "key {k}: read {have:?}, acknowledged {:?} (unknown: {:?})",
                s.acked, s.maybe
            ));
        }
    }
    let extra = got.keys().filter(|k| !state.contains_key(k)).count();
    println!(
        "soak: {} keys checked ({retired} retired after an unknown outcome): {} wrong, {extra} unexpected rows",
        state.len(),
        bad.len()
    );
    if extra > 0 {
        bad.push(format!("{extra} rows that no client wrote"));
    }
    bad.truncate(20);
    Ok(bad)
}

/// The replicas of each shard hold identical rows (`GET /read/<server>` on every server).
async fn check_replicas(http: &reqwest::Client, gateway: &str) -> anyhow::Result<Vec<String>> {
    let status: Value = http
        .get(format!("{gateway}/status"))
        .send()
        .await?
        .json()
        .await?;
    let servers = status["servers"]
        .as_object()
        .context("/status has no servers")?;
    let mut by_shard: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for server in servers.keys() {
        let r: Value = http
            .get(format!("{gateway}/read/{server}"))
            .timeout(Duration::from_secs(120))
            .send()
            .await?
            .json()
            .await?;
        for (shard, rows) in r.as_object().into_iter().flatten() {
            if rows.is_array() {
                by_shard
                    .entry(shard.clone())
                    .or_default()
                    .insert(server.clone(), rows.clone());
            }
        }
    }
    let mut bad = Vec::new();
    for (shard, reps) in &by_shard {
        let first = reps.values().next();
        let counts: BTreeMap<&String, usize> = reps
            .iter()
            .map(|(s, r)| (s, r.as_array().map_or(0, Vec::len)))
            .collect();
        if !reps.values().all(|r| Some(r) == first) {
            bad.push(format!(
                "replicas of {shard} differ (rows per replica {counts:?})"
            ));
        }
        println!("soak: {shard}: replicas {counts:?}");
    }
    Ok(bad)
}

/// Largest value of `f` over the samples with `lo <= t < hi`.
fn max_in(samples: &[Sample], lo: f64, hi: f64, f: impl Fn(&Sample) -> u64) -> u64 {
    samples
        .iter()
        .filter(|s| s.t >= lo && s.t < hi)
        .map(f)
        .max()
        .unwrap_or(0)
}

/// Prints start/middle/end figures and checks the plateau and the amount of log written.
fn judge(samples: &[Sample], args: &Args) -> Vec<String> {
    let mut bad = Vec::new();
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return vec!["no samples".into()];
    };
    let mid = &samples[samples.len() / 2];
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("soak:            t (s)   stream MiB   SQLite MiB   RSS MiB (all processes)");
    for (label, s) in [("start", first), ("middle", mid), ("end", last)] {
        println!(
            "soak: {label:>7} {:>9.1} {:>12.2} {:>12.2} {:>9.1}",
            s.t,
            mib(s.stream_total()),
            mib(s.sqlite_total()),
            s.rss_total() as f64 / 1024.0
        );
    }
    let end = last.t;
    let (a, b) = (end / 3.0, 2.0 * end / 3.0);
    let checks: [(&str, f64, Measure); 3] = [
        ("stream bytes", args.soak_tolerance, Sample::stream_total),
        ("SQLite bytes", args.soak_tolerance, Sample::sqlite_total),
        (
            "RSS",
            RSS_TOLERANCE.max(args.soak_tolerance),
            Sample::rss_total,
        ),
    ];
    for (what, tolerance, f) in checks {
        let middle = max_in(samples, a, b, f);
        let tail = max_in(samples, b, end + 1.0, f);
        let ok = (tail as f64) <= tolerance * middle as f64;
        println!(
            "soak: plateau of {what}: max of the middle third {middle}, of the last third {tail} (at most {tolerance} x): {}",
            if ok { "ok" } else { "GROWING" }
        );
        if !ok {
            bad.push(format!("{what} still growing: last third max {tail} > {tolerance} x middle third max {middle}"));
        }
    }
    for shard in SHARDS {
        let appended = last.stream_last.get(shard).copied().unwrap_or(0);
        let held = appended + 1 - last.stream_first.get(shard).copied().unwrap_or(1);
        println!(
            "soak: {shard}: {appended} entries appended, {held} held at the end ({} x the margin appended)",
            appended / args.soak_retain.max(1)
        );
        if appended < 20 * args.soak_retain {
            bad.push(format!(
                "{shard}: only {appended} entries appended, less than 20 x the margin ({})",
                args.soak_retain
            ));
        }
    }
    bad
}

fn write_csv(path: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let names = |f: fn(&Sample) -> &BTreeMap<String, u64>| {
        let mut n: Vec<String> = samples.iter().flat_map(|s| f(s).keys().cloned()).collect();
        n.sort();
        n.dedup();
        n
    };
    let shards = names(|s| &s.stream_bytes);
    let dbs = names(|s| &s.sqlite_bytes);
    let procs = names(|s| &s.rss_kib);
    let mut out = String::from("t_s,requests,stream_bytes_total,sqlite_bytes_total,rss_kib_total");
    for s in &shards {
        write!(out, ",stream_bytes_{s},first_seq_{s},last_seq_{s}")?;
    }
    for d in &dbs {
        write!(out, ",sqlite_bytes_{d}")?;
    }
    for p in &procs {
        write!(out, ",rss_kib_{p}")?;
    }
    out.push('\n');
    for s in samples {
        write!(
            out,
            "{:.1},{},{},{},{}",
            s.t,
            s.ops,
            s.stream_total(),
            s.sqlite_total(),
            s.rss_total()
        )?;
        let get =
            |m: &BTreeMap<String, u64>, k: &str| m.get(k).map(u64::to_string).unwrap_or_default();
        for sh in &shards {
            write!(
                out,
                ",{},{},{}",
                get(&s.stream_bytes, sh),
                get(&s.stream_first, sh),
                get(&s.stream_last, sh)
            )?;
        }
        for d in &dbs {
            write!(out, ",{}", get(&s.sqlite_bytes, d))?;
        }
        for p in &procs {
            write!(out, ",{}", get(&s.rss_kib, p))?;
        }
        out.push('\n');
    }
    std::fs::write(path, out)?;
    Ok(())
}

fn draw(dir: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let ts: Vec<f64> = samples.iter().map(|s| s.t).collect();
    let series = |f: fn(&Sample) -> &BTreeMap<String, u64>,
                  scale: f64,
                  total: fn(&Sample) -> u64| {
        let mut names: Vec<String> = samples.iter().flat_map(|s| f(s).keys().cloned()).collect();
        names.sort();
        names.dedup();
        let mut out = vec![(
            "total".to_string(),
            samples
                .iter()
                .map(|s| total(s) as f64 / scale)
                .collect::<Vec<f64>>(),
        )];
        out.extend(names.into_iter().map(|n| {
            let v = samples
                .iter()
                .map(|s| f(s).get(&n).map_or(f64::NAN, |&b| b as f64 / scale))
                .collect();
            (n, v)
        }));
        out
    };
    const MIB: f64 = 1024.0 * 1024.0;
    charts::time_series(
        &dir.join("soak-stream.svg"),
        "WAL stream bytes (JetStream, per shard)",
        "MiB",
        &ts,
        &series(|s| &s.stream_bytes, MIB, Sample::stream_total),
    )?;
    charts::time_series(
        &dir.join("soak-sqlite.svg"),
        "SQLite bytes (db + -wal + -shm, per server)",
        "MiB",
        &ts,
        &series(|s| &s.sqlite_bytes, MIB, Sample::sqlite_total),
    )?;
    charts::time_series(
        &dir.join("soak-rss.svg"),
        "RSS per process",
        "MiB",
        &ts,
        &series(|s| &s.rss_kib, 1024.0, Sample::rss_total),
    )?;
    Ok(())
}
