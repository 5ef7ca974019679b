//! Re-seeding a replica the log cannot serve (issue 15), with real processes: a replica
//! whose next entry was purged from its shard's stream while it was down installs a healthy
//! peer's snapshot (`GET /snapshot/{shard}`) and follows the log from there; with no healthy
//! peer it stays recovering (no reads, no snapshot of its own) until one comes back.
//!
//! The stream is purged by hand (JetStream's purge up to a sequence), as the manager's
//! retention would. The manager is paused while the replica is down so it is not respawned
//! before the purge.

use std::cell::RefCell;
use std::fs;
use std::time::{Duration, Instant};

use testkit::workload::{primary_of, replicas_of};
use testkit::{json, pid_alive, signal, wait_until, LocalCluster, Method, Value, POLL_INTERVAL};

const UP: Duration = Duration::from_secs(60);

fn row(k: i64, name: &str) -> Value {
    json!({"Stud_id": k, "Stud_name": name, "Stud_marks": k % 100})
}

async fn status(c: &LocalCluster) -> Value {
    c.status_within(Duration::from_secs(10)).await
}

/// Writes keys `keys` of sh1 one request each (one log entry each, more or less).
async fn write_keys(c: &LocalCluster, keys: std::ops::Range<i64>, name: &str) {
    for k in keys {
        let (code, body) = c.post("/write", json!({"data": [row(k, name)]})).await;
        assert_eq!(code, 200, "write of {k}: {body}");
    }
}

/// The address shard server `name` listens on, from the last listening line of its log.
fn server_addr(c: &LocalCluster, name: &str) -> Option<String> {
    c.server_addr_from_log(name)
}

fn server_log(c: &LocalCluster, name: &str) -> String {
    fs::read_to_string(c.servers_dir().join(name).join("server.log")).unwrap_or_default()
}

/// sh1's progress in the heartbeat of the server at `addr` (`Null` if it did not answer).
async fn sh1_progress(c: &LocalCluster, addr: &str) -> Value {
    let url = format!("http://{addr}/heartbeat");
    let (_, beat) = testkit::http::send(c.client(), Method::GET, &url, None).await;
    beat["shards"]["sh1"].clone()
}

/// sh1's rows on `server` (its whole replica, via the gateway's `/read/{server}`).
async fn sh1_rows(c: &LocalCluster, server: &str) -> Value {
    let (code, body) = c.get(&format!("/read/{server}")).await;
    assert_eq!(code, 200, "/read/{server}: {body}");
    body["sh1"].clone()
}

/// The shard's WAL stream.
async fn wal_sh1(c: &LocalCluster) -> async_nats::jetstream::stream::Stream {
    let js = async_nats::jetstream::new(c.nats().connect().await);
    js.get_stream("WAL_sh1").await.expect("stream WAL_sh1")
}

/// A cluster with rows in sh1 and a secondary of sh1 killed while the manager is paused
/// (so nothing respawns it), then more writes to sh1 and the stream purged past what the
/// secondary applied. Returns the cluster, the victim, its old pid, the primary and the
/// other secondary; the manager is still paused.
struct Setup {
    c: LocalCluster,
    victim: String,
    old_pid: i32,
    primary: String,
    other: String,
}

async fn purged_while_down() -> Setup {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    write_keys(&c, 0..30, "BEFORE").await;
    let st = testkit::check::wait_converged(&c, UP).await.unwrap();
    let primary = primary_of(&st, "sh1").expect("sh1 has a primary");
    let replicas = replicas_of(&st, "sh1");
    let secondaries: Vec<String> = replicas.into_iter().filter(|r| *r != primary).collect();
    let (victim, other) = (secondaries[0].clone(), secondaries[1].clone());
    let victim_applied = st["applied"][&victim]["sh1"].as_u64().unwrap();

    assert!(
        signal(c.manager_pid(), libc::SIGSTOP),
        "cannot pause the manager"
    );
    let old_pid = c.kill_server(&victim);
    assert!(
        wait_until(Duration::from_secs(5), || async { !pid_alive(old_pid) }).await,
        "{victim} survived SIGKILL"
    );
    // Committed on the primary and the other secondary (a majority of three).
    write_keys(&c, 100..130, "DOWN").await;
    let (code, body) = c
        .put("/update", json!({"Stud_id": 5, "data": row(5, "UPDATED")}))
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.delete("/del", json!({"Stud_id": 6})).await;
    assert_eq!(code, 200, "{body}");

    let mut stream = wal_sh1(&c).await;
    let last = stream.info().await.unwrap().state.last_sequence;
    // Keep only the last entry: everything from the victim's next one up to it is gone.
    stream.purge().sequence(last).await.expect("purge WAL_sh1");
    let first = stream.info().await.unwrap().state.first_sequence;
    assert_eq!(first, last);
    assert!(
        victim_applied + 1 < first,
        "the purge must remove what {victim} needs next (applied {victim_applied}, first {first})"
    );
    Setup {
        c,
        victim,
        old_pid,
        primary,
        other,
    }
}

/// Waits until `victim` runs again (a new pid) and answers its heartbeat; returns its
/// address.
async fn wait_respawned(c: &LocalCluster, victim: &str, old_pid: i32) -> String {
    let mut addr = None;
    let back = wait_until(UP, || {
        addr = c
            .server_pid(victim)
            .filter(|p| *p != old_pid && pid_alive(*p))
            .and_then(|_| server_addr(c, victim));
        let addr = addr.clone();
        async move {
            match addr {
                Some(a) => !sh1_progress(c, &a).await.is_null(),
                None => false,
            }
        }
    })
    .await;
    assert!(
        back,
        "{victim} was not respawned; /status: {:#}",
        status(c).await
    );
    addr.unwrap()
}

/// Waits until the replica of sh1 at `addr` is caught up (not recovering).
async fn wait_caught_up(c: &LocalCluster, victim: &str, addr: &str) {
    let ok = wait_until(UP, || async {
        sh1_progress(c, addr).await["recovering"] == false
    })
    .await;
    assert!(
        ok,
        "{victim} still recovering sh1: {}\n{}",
        sh1_progress(c, addr).await,
        testkit::pids::tail(&c.servers_dir().join(victim).join("server.log"), 30)
    );
}

/// The replicas of sh1 hold the same rows, and so does `victim`: compares until equal.
async fn wait_same_rows(c: &LocalCluster, victim: &str, peer: &str) -> Value {
    let last = RefCell::new((Value::Null, Value::Null));
    let same = wait_until(UP, || async {
        let (a, b) = (sh1_rows(c, victim).await, sh1_rows(c, peer).await);
        let same = a == b && a.as_array().is_some_and(|r| !r.is_empty());
        *last.borrow_mut() = (a, b);
        same
    })
    .await;
    let (a, b) = last.into_inner();
    assert!(same, "{victim} and {peer} differ on sh1:\n{a:#}\n{b:#}");
    a
}

/// A replica whose next entry was purged while it was down re-seeds from a peer when it
/// comes back: same rows as the others (the writes it missed included), and it follows new
/// writes. Before re-seeding existed it retried "gap in the log" forever.
#[tokio::test(flavor = "multi_thread")]
async fn purged_past_a_stopped_replica_reseeds_from_a_peer() {
    let Setup {
        c,
        victim,
        old_pid,
        primary,
        ..
    } = purged_while_down().await;
    let t = Instant::now();
    assert!(
        signal(c.manager_pid(), libc::SIGCONT),
        "cannot resume the manager"
    );
    let addr = wait_respawned(&c, &victim, old_pid).await;
    wait_caught_up(&c, &victim, &addr).await;
    println!(
        "{victim} respawned and re-seeded {:?} after the manager resumed",
        t.elapsed()
    );

    let rows = wait_same_rows(&c, &victim, &primary).await;
    let rows = rows.as_array().unwrap();
    assert!(rows.iter().any(|r| r["Stud_id"] == 129), "{rows:?}");
    assert!(rows.iter().any(|r| r["Stud_name"] == "UPDATED"), "{rows:?}");
    assert!(!rows.iter().any(|r| r["Stud_id"] == 6), "{rows:?}");
    let log = server_log(&c, &victim);
    assert!(
        log.contains("re-seeded from a peer's snapshot") && log.contains("shard=sh1"),
        "no re-seed in {victim}'s log"
    );

    // It follows the log from there.
    write_keys(&c, 200..205, "AFTER").await;
    let rows = wait_same_rows(&c, &victim, &primary).await;
    assert!(rows.as_array().unwrap().iter().any(|r| r["Stud_id"] == 204));
    let st = testkit::check::wait_converged(&c, UP).await.unwrap();
    assert_eq!(st["health"][&victim], "up", "{st:#}");

    // Its own snapshot now serves others: the SQLite file with the position it holds.
    let resp = c
        .client()
        .get(format!("http://{addr}/snapshot/sh1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let header = |n: &str| resp.headers()[n].to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "application/vnd.sqlite3");
    let seq: u64 = header("shardline-seq").parse().unwrap();
    assert_eq!(Value::from(seq), st["applied"][&victim]["sh1"], "{st:#}");
    let body = resp.bytes().await.unwrap();
    assert!(body.starts_with(b"SQLite format 3\0"), "not a SQLite file");
    let leftovers: Vec<_> = fs::read_dir(c.servers_dir().join(&victim))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".snapshot-") || n.starts_with(".incoming-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// With every other replica of the shard down, the purged replica waits recovering: it
/// refuses reads and snapshots, says so in its heartbeat and in `/status`, and logs the wait
/// once. When a peer comes back it re-seeds from it.
#[tokio::test(flavor = "multi_thread")]
async fn with_no_healthy_peer_it_waits_recovering_then_reseeds() {
    let Setup {
        c,
        victim,
        old_pid,
        primary,
        other,
    } = purged_while_down().await;
    c.stop_server(&primary);
    c.stop_server(&other);
    assert!(
        signal(c.manager_pid(), libc::SIGCONT),
        "cannot resume the manager"
    );
    let addr = wait_respawned(&c, &victim, old_pid).await;

    // Held for a while: recovering all along, refusing reads and snapshots.
    let waiting = "no healthy replica to re-seed from";
    let told = wait_until(UP, || async { server_log(&c, &victim).contains(waiting) }).await;
    assert!(told, "{victim} never said it is waiting for a peer");
    let hold = Instant::now();
    let mut checks = 0;
    while hold.elapsed() < Duration::from_secs(3) {
        let p = sh1_progress(&c, &addr).await;
        assert_eq!(p["recovering"], true, "{victim}: {p}");
        let read = json!({"shard": "sh1", "Stud_id": {"low": 0, "high": 4095}});
        let (code, body) = testkit::http::send(
            c.client(),
            Method::POST,
            &format!("http://{addr}/read"),
            Some(&read),
        )
        .await;
        assert_eq!(
            (code, body["code"].as_str()),
            (503, Some("unavailable")),
            "{body}"
        );
        let (code, body) = testkit::http::send(
            c.client(),
            Method::GET,
            &format!("http://{addr}/snapshot/sh1"),
            None,
        )
        .await;
        assert_eq!(code, 503, "{body}");
        checks += 1;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert!(checks >= 3);
    let shown = wait_until(UP, || async {
        c.get("/status").await.1["health"][&victim] == "recovering"
    })
    .await;
    assert!(shown, "/status: {:#}", status(&c).await);
    assert_eq!(
        server_log(&c, &victim).matches(waiting).count(),
        1,
        "the wait is logged once"
    );

    // A peer comes back: it re-seeds from it.
    c.cont_server(&other);
    wait_caught_up(&c, &victim, &addr).await;
    let rows = wait_same_rows(&c, &victim, &other).await;
    assert!(rows.as_array().unwrap().iter().any(|r| r["Stud_id"] == 129));
    assert!(server_log(&c, &victim).contains("re-seeded from a peer's snapshot"));

    c.cont_server(&primary);
    write_keys(&c, 200..205, "AFTER").await;
    let rows = wait_same_rows(&c, &victim, &primary).await;
    assert!(rows.as_array().unwrap().iter().any(|r| r["Stud_id"] == 204));
}

/// `VmHWM` (peak resident set) of `pid`, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resets `pid`'s `VmHWM` to its current resident set (Linux `clear_refs` 5).
fn reset_peak_rss(pid: i32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Seconds since midnight of a log line's leading RFC 3339 UTC timestamp.
fn log_time(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let mut parts = time.trim_end_matches('Z').split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The first line of `log` containing every one of `needles`.
fn line_with<'a>(log: &'a str, needles: &[&str]) -> Option<&'a str> {
    log.lines().find(|l| needles.iter().all(|n| l.contains(n)))
}

/// The figures of re-seeding one replica of a `rows`-row shard (A1 schema) on three
/// servers: the stream is purged past a killed secondary, which re-seeds from a peer's
/// snapshot when respawned. Prints the time from the start of the re-seed (the applier
/// finding its next entry purged) to the replica following the log, and the peak RSS of
/// the re-seeded server and of the peer that served the snapshot.
async fn reseed_figures(rows: i64) {
    let c = LocalCluster::start().await;
    c.init(json!({
        "N": 3,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"],
                   "dtypes": ["Number", "String", "Number"]},
        "shards": [{"Stud_id_low": 0, "Shard_id": "big", "Shard_size": rows + 100}],
        "servers": {"S0": ["big"], "S1": ["big"], "S2": ["big"]}
    }))
    .await;
    let t = Instant::now();
    let keys: Vec<i64> = (0..rows).collect();
    for chunk in keys.chunks(10_000) {
        let data: Vec<Value> = chunk
            .iter()
            .map(|&k| json!({"Stud_id": k, "Stud_name": format!("pre-{k}"), "Stud_marks": k % 100}))
            .collect();
        let (code, body) = c.post("/write", json!({ "data": data })).await;
        assert_eq!(code, 200, "preload at {}: {body}", chunk[0]);
    }
    println!("preloaded {rows} rows in {:?}", t.elapsed());
    let st = testkit::check::wait_converged(&c, Duration::from_secs(300))
        .await
        .unwrap();
    let primary = primary_of(&st, "big").unwrap();
    let victim = ["S0", "S1", "S2"]
        .into_iter()
        .find(|s| *s != primary)
        .unwrap()
        .to_string();

    assert!(
        signal(c.manager_pid(), libc::SIGSTOP),
        "cannot pause the manager"
    );
    let old_pid = c.kill_server(&victim);
    assert!(wait_until(Duration::from_secs(5), || async { !pid_alive(old_pid) }).await);
    for k in rows..rows + 2 {
        let (code, body) = c.post("/write", json!({"data": [row(k, "DOWN")]})).await;
        assert_eq!(code, 200, "{body}");
    }
    let js = async_nats::jetstream::new(c.nats().connect().await);
    let mut stream = js.get_stream("WAL_big").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    stream.purge().sequence(last).await.unwrap();
    let peers: Vec<(String, i32)> = ["S0", "S1", "S2"]
        .into_iter()
        .filter(|s| *s != victim)
        .map(|s| (s.to_string(), c.server_pid(s).unwrap()))
        .collect();
    for (name, pid) in &peers {
        reset_peak_rss(*pid);
        println!(
            "{name}: {} MiB resident before the copy",
            peak_rss_kib(*pid) / 1024
        );
    }
    let resumed = Instant::now();
    assert!(
        signal(c.manager_pid(), libc::SIGCONT),
        "cannot resume the manager"
    );

    let mut addr = None;
    let cr = &c;
    let caught_up = wait_until(Duration::from_secs(300), || {
        addr = c
            .server_pid(&victim)
            .filter(|p| *p != old_pid && pid_alive(*p))
            .and_then(|_| server_addr(&c, &victim));
        let addr = addr.clone();
        let url = addr.map(|a| format!("http://{a}/heartbeat"));
        async move {
            let Some(url) = url else { return false };
            let (_, beat) = testkit::http::send(cr.client(), Method::GET, &url, None).await;
            beat["shards"]["big"]["recovering"] == false
        }
    })
    .await;
    assert!(
        caught_up,
        "{victim} did not re-seed: {}",
        server_log(&c, &victim)
    );
    let total = resumed.elapsed();
    let log = server_log(&c, &victim);
    // This process's lines only: from the re-seed's start on.
    let log = &log[log
        .rfind("the log no longer holds the next entry")
        .and_then(|i| log[..i].rfind('\n').map(|n| n + 1))
        .unwrap_or_else(|| panic!("no re-seed in {victim}'s log"))..];
    let started = log.lines().next().unwrap();
    let installed = line_with(log, &["snapshot installed"]).unwrap();
    let reseeded = line_with(log, &["re-seeded from a peer's snapshot"]).unwrap();
    let following = line_with(log, &["replica caught up with the log", "shard=big"]).unwrap();
    let secs = |a: &str, b: &str| log_time(b).unwrap() - log_time(a).unwrap();
    let peer = reseeded
        .split_once("peer=")
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let bytes = installed
        .split_once("bytes=")
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap_or("?");
    let victim_pid = c.server_pid(&victim).unwrap();
    println!(
        "re-seed of a {rows}-row shard ({bytes} bytes of SQLite file): {:.2} s from the start \
         of the re-seed to following the log (download + install {:.2} s); {total:?} from \
         the manager resuming (respawn included)",
        secs(started, following),
        secs(started, installed),
    );
    println!(
        "peak RSS: re-seeded {victim} {} MiB; serving peer {peer} {} MiB (since just before the copy)",
        peak_rss_kib(victim_pid) / 1024,
        peers
            .iter()
            .find(|(n, _)| *n == peer)
            .map(|(_, pid)| peak_rss_kib(*pid) / 1024)
            .unwrap()
    );

    // The copy is complete: sample ranges read from it equal the primary's.
    let primary_addr = server_addr(&c, &primary).unwrap();
    let addr = addr.unwrap();
    for low in (0..rows).step_by((rows / 10).max(1) as usize) {
        let body = json!({"shard": "big", "Stud_id": {"low": low, "high": low + 999}});
        let (mine, theirs) = (
            read_from(&c, &addr, &body).await,
            read_from(&c, &primary_addr, &body).await,
        );
        assert_eq!(
            mine["data"].as_array().map(Vec::len),
            Some(1000.min((rows - low) as usize))
        );
        assert_eq!(mine, theirs, "keys {low}..");
    }
}

/// `POST /read` on the server at `addr`, once it serves (within 30 s).
async fn read_from(c: &LocalCluster, addr: &str, body: &Value) -> Value {
    let url = format!("http://{addr}/read?consistency=any");
    let mut last = Value::Null;
    for _ in 0..600 {
        let (code, v) = testkit::http::send(c.client(), Method::POST, &url, Some(body)).await;
        if code == 200 {
            return v;
        }
        last = v;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    panic!("{url} refused reads: {last}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: preloads 100,000 rows (run with --run-ignored; release binaries: SHARDLINE_BIN_DIR)"]
async fn reseed_time_100k_row_shard() {
    reseed_figures(100_000).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: preloads 1,000,000 rows (run with --run-ignored; release binaries: SHARDLINE_BIN_DIR)"]
async fn reseed_time_1m_row_shard() {
    reseed_figures(1_000_000).await;
}
