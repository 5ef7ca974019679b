//! Failure tests with real processes (nats-server, manager, gateway, shard servers).
//!
//! Each scenario runs a [`Workload`] — several concurrent clients doing a bounded number of
//! unique-key writes plus some updates and deletes, every outcome recorded — while the fault
//! happens, then [`check`]s after the cluster settles: acknowledged writes are readable with
//! their last acknowledged value (from the primaries and from every replica), all replicas of
//! every shard hold identical rows and the same applied sequence, and no row exists that
//! only a rejected request (e.g. a deposed primary's) could have written.
//!
//! The measurements (failover time, catch-up time) are printed; run with `--nocapture`
//! (nextest: `--no-capture`) to see them.

use std::fs;
use std::time::{Duration, Instant};

use testkit::workload::{self, check, primary_of, replicas_of, History, Outcome, Workload};
use testkit::workload::{OpKind, OpRecord, WorkloadConfig};
use testkit::{json, pid_alive, signal, wait_until, LocalCluster, Value};

/// Settling after a fault (respawn + catch-up) on a busy 2-core machine.
const SETTLE: Duration = Duration::from_secs(120);
/// A failover (detection + election) should take seconds; this is the bound for waiting on it.
const FAILOVER: Duration = Duration::from_secs(30);
const KEYS: (i64, i64) = (0, 16_384);

async fn start_a1() -> LocalCluster {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    c
}

async fn status(c: &LocalCluster) -> Value {
    c.status_within(Duration::from_secs(5)).await
}

/// A server that is primary of no shard (a pure secondary).
fn pure_secondary(st: &Value) -> String {
    let primaries: Vec<String> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["primary"].as_str().map(str::to_owned))
        .collect();
    st["servers"]
        .as_object()
        .unwrap()
        .keys()
        .find(|n| !primaries.contains(n))
        .cloned()
        .expect("some server leads no shard")
}

/// The shard owning `key` per `/status`.
fn shard_of(st: &Value, key: i64) -> String {
    st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            let low = s["Stud_id_low"].as_i64().unwrap();
            key >= low && key < low + s["Shard_size"].as_i64().unwrap()
        })
        .and_then(|s| s["Shard_id"].as_str())
        .unwrap()
        .to_string()
}

/// `[low, high)` of `shard` per `/status`.
fn range_of(st: &Value, shard: &str) -> (i64, i64) {
    let s = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Shard_id"] == shard)
        .unwrap();
    let low = s["Stud_id_low"].as_i64().unwrap();
    (low, low + s["Shard_size"].as_i64().unwrap())
}

/// Waits until `/status` names a primary for `shard` other than `old`; returns it.
async fn wait_new_primary(c: &LocalCluster, shard: &str, old: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (s, st) = c.get("/status").await;
        if let Some(p) = (s == 200)
            .then(|| primary_of(&st, shard))
            .flatten()
            .filter(|p| p != old)
        {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "no new primary for {shard} (old {old}) within {timeout:?}; /status: {st:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times the manager has logged respawning `name` and seeing it caught up.
fn respawns(c: &LocalCluster, name: &str) -> usize {
    let log = fs::read_to_string(c.logs_dir().join("manager.log")).unwrap_or_default();
    let needle = format!("server={name} ");
    log.lines()
        .filter(|l| l.contains("respawned and caught up") && l.contains(&needle))
        .count()
}

/// Kills `name` (SIGKILL); returns its pid and the respawn count before the kill.
fn kill(c: &LocalCluster, name: &str) -> (i32, usize) {
    let before = respawns(c, name);
    (c.kill_server(name), before)
}

/// Waits until the manager has respawned `name` (one more "respawned and caught up" than
/// `before`), it runs as a new process and `/status` says it is up; returns the new pid.
async fn wait_respawned(
    c: &LocalCluster,
    name: &str,
    killed: (i32, usize),
    timeout: Duration,
) -> i32 {
    let (old_pid, before) = killed;
    let ok = wait_until(timeout, || async {
        respawns(c, name) > before
            && c.server_pid(name)
                .is_some_and(|p| p != old_pid && pid_alive(p))
            && c.get("/status").await.1["health"][name] == "up"
    })
    .await;
    assert!(
        ok,
        "{name} was not respawned and up within {timeout:?}; /status: {:#}",
        status(c).await
    );
    c.server_pid(name).unwrap()
}

async fn wait_health(c: &LocalCluster, name: &str, want: &str, timeout: Duration) {
    let ok = wait_until(timeout, || async {
        c.get("/status").await.1["health"][name] == want
    })
    .await;
    assert!(
        ok,
        "{name} not {want} within {timeout:?}; /status: {:#}",
        status(c).await
    );
}

/// Waits until the workload has `n` more acknowledged requests sent after `since`.
async fn wait_acked_since(w: &Workload, since: Duration, n: usize, timeout: Duration) {
    let ok = wait_until(timeout, || async { w.acked_since(since) >= n }).await;
    assert!(
        ok,
        "fewer than {n} writes acknowledged after {since:?} within {timeout:?} \
         (acked {}, done {})",
        w.acked(),
        w.done()
    );
}

async fn finish_and_check(c: &LocalCluster, w: Workload) -> History {
    let history = w.stop_and_finish().await;
    println!("workload: {}", history.summary());
    assert!(
        history.count(Outcome::Acked) > 0,
        "nothing was acknowledged"
    );
    let report = check(c, &history, KEYS.0, KEYS.1, SETTLE).await;
    println!("check: {report:?}");
    history
}

fn small_workload() -> WorkloadConfig {
    WorkloadConfig {
        clients: 6,
        keys_per_client: 120,
        ..WorkloadConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_secondary() {
    let c = start_a1().await;
    let w = Workload::start(&c, small_workload());
    assert!(w.wait_done(100, Duration::from_secs(60)).await);
    let victim = pure_secondary(&status(&c).await);
    let killed = kill(&c, &victim);
    let pid = killed.0;
    let killed_at = w.started.elapsed();
    println!("killed secondary {victim} (pid {pid}) at {killed_at:?}");
    wait_acked_since(&w, killed_at, 50, FAILOVER).await;
    let new_pid = wait_respawned(&c, &victim, killed, SETTLE).await;
    println!("{victim} respawned as pid {new_pid}");
    finish_and_check(&c, w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_primary() {
    let c = start_a1().await;
    let w = Workload::start(&c, small_workload());
    assert!(w.wait_done(100, Duration::from_secs(60)).await);
    let old = primary_of(&status(&c).await, "sh1").unwrap();
    let pid = kill(&c, &old);
    let killed_at = w.started.elapsed();
    let t = Instant::now();
    let new = wait_new_primary(&c, "sh1", &old, FAILOVER).await;
    println!(
        "killed primary {old} of sh1; {new} elected after {:?}",
        t.elapsed()
    );
    wait_acked_since(&w, killed_at, 50, FAILOVER).await;
    wait_respawned(&c, &old, pid, SETTLE).await;
    finish_and_check(&c, w).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_primary_during_write_burst() {
    let c = start_a1().await;
    let w = Workload::start(
        &c,
        WorkloadConfig {
            clients: 16,
            keys_per_client: 100,
            pause: Duration::ZERO,
            ..WorkloadConfig::default()
        },
    );
    assert!(w.wait_done(200, Duration::from_secs(60)).await);
    let old = primary_of(&status(&c).await, "sh2").unwrap();
    let pid = kill(&c, &old);
    let killed_at = w.started.elapsed();
    println!(
        "killed primary {old} of sh2 mid-burst at {killed_at:?} ({} requests done)",
        w.done()
    );
    let new = wait_new_primary(&c, "sh2", &old, FAILOVER).await;
    println!("{new} elected for sh2");
    wait_acked_since(&w, killed_at, 100, FAILOVER).await;
    wait_respawned(&c, &old, pid, SETTLE).await;
    let h = finish_and_check(&c, w).await;
    let sh2 = range_of(&status(&c).await, "sh2");
    let in_flight = h
        .ops
        .iter()
        .filter(|o| o.key >= sh2.0 && o.key < sh2.1 && o.outcome == Outcome::Unknown)
        .count();
    println!("sh2 requests with an unknown outcome around the kill: {in_flight}");
}

/// Probes writes to `shard` (fresh keys from `next_key`) until one gets a 503 naming the
/// shard; returns that answer's message. Every probe is recorded in `history`.
async fn expect_unavailable(
    c: &LocalCluster,
    shard: &str,
    next_key: &mut impl FnMut() -> i64,
    history: &mut History,
    timeout: Duration,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let op = probe(c, next_key(), history).await;
        if op.status == 503 && op.message.contains(shard) {
            return Some(op.message);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// One single-row insert through the gateway, recorded in `history`.
async fn probe(c: &LocalCluster, key: i64, history: &mut History) -> OpRecord {
    let op = workload::perform(
        c.client(),
        &c.gateway_url(),
        99,
        key,
        OpKind::Insert,
        Some((format!("probe-{key}"), 7)),
        Instant::now(),
    )
    .await;
    history.ops.push(op.clone());
    op
}

/// Probes until a write to a fresh key succeeds; returns the time taken.
async fn probe_until_ok(
    c: &LocalCluster,
    next_key: &mut impl FnMut() -> i64,
    history: &mut History,
    timeout: Duration,
) -> Duration {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if probe(c, next_key(), history).await.outcome == Outcome::Acked {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no write succeeded within {timeout:?}");
}

/// Keys of `shard` counting down from its top, so they never meet the workload's keys
/// (which the caller keeps below `range.1 - 1000`).
fn key_source(range: (i64, i64)) -> impl FnMut() -> i64 {
    let mut next = range.1;
    move || {
        next -= 1;
        assert!(next >= range.1 - 1000, "probe keys exhausted");
        next
    }
}

/// Skips keys in `taken` (the workload's), so probes never touch a workload key.
fn disjoint(mut src: impl FnMut() -> i64, taken: Vec<i64>) -> impl FnMut() -> i64 {
    move || loop {
        let k = src();
        if !taken.contains(&k) {
            return k;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_two_replicas_of_a_shard() {
    let c = start_a1().await;
    let cfg = small_workload();
    let w = Workload::start(&c, cfg.clone());
    assert!(w.wait_done(100, Duration::from_secs(60)).await);
    let st = status(&c).await;
    let primary = primary_of(&st, "sh1").unwrap();
    let secondary = replicas_of(&st, "sh1")
        .into_iter()
        .find(|s| *s != primary)
        .unwrap();
    let mut history = History::default();
    let mut keys = disjoint(key_source(range_of(&st, "sh1")), cfg.keys());
    let p1 = kill(&c, &primary);
    let p2 = kill(&c, &secondary);
    let killed_at = w.started.elapsed();
    println!("killed {primary} (primary) and {secondary} of sh1 at {killed_at:?}");
    // The window before the manager's respawns finish is short; report whether a 503
    // naming the shard was seen in it (the SIGSTOP variant below asserts it).
    match expect_unavailable(&c, "sh1", &mut keys, &mut history, Duration::from_secs(5)).await {
        Some(m) => println!("sh1 unavailable while two replicas were dead: {m}"),
        None => println!("no 503 for sh1 seen before the respawns completed"),
    }
    wait_respawned(&c, &primary, p1, SETTLE).await;
    wait_respawned(&c, &secondary, p2, SETTLE).await;
    let t = probe_until_ok(&c, &mut keys, &mut history, FAILOVER).await;
    println!("sh1 writable again {t:?} after both respawned");
    wait_acked_since(&w, killed_at, 50, FAILOVER).await;
    let mut h = w.stop_and_finish().await;
    h.extend(history);
    println!("workload + probes: {}", h.summary());
    let report = check(&c, &h, KEYS.0, KEYS.1, SETTLE).await;
    println!("check: {report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_two_replicas_of_a_shard_makes_it_unavailable_not_inconsistent() {
    let c = start_a1().await;
    let cfg = small_workload();
    let w = Workload::start(&c, cfg.clone());
    assert!(w.wait_done(100, Duration::from_secs(60)).await);
    let st = status(&c).await;
    let primary = primary_of(&st, "sh1").unwrap();
    let secondary = replicas_of(&st, "sh1")
        .into_iter()
        .find(|s| *s != primary)
        .unwrap();
    let mut history = History::default();
    let mut keys = disjoint(key_source(range_of(&st, "sh1")), cfg.keys());
    c.stop_server(&primary);
    c.stop_server(&secondary);
    println!("SIGSTOPped {primary} (primary) and {secondary} of sh1");
    let msg = expect_unavailable(&c, "sh1", &mut keys, &mut history, Duration::from_secs(60))
        .await
        .expect("sh1 must answer 503 naming the shard while two of its three replicas are stopped");
    println!("sh1 unavailable: {msg}");
    // Other shards keep working: sh4 lost no replica. (The workload itself mostly stalls:
    // each client soon waits on a sh1 write, which takes seconds to fail.)
    let mut sh4_keys = disjoint(key_source(range_of(&st, "sh4")), cfg.keys());
    let t = probe_until_ok(&c, &mut sh4_keys, &mut history, FAILOVER).await;
    println!("sh4 writable while sh1 is unavailable ({t:?})");
    // One replica back: a majority again, writes to sh1 succeed.
    c.cont_server(&secondary);
    let t = probe_until_ok(&c, &mut keys, &mut history, Duration::from_secs(60)).await;
    println!("sh1 writable {t:?} after SIGCONT of {secondary}");
    c.cont_server(&primary);
    wait_health(&c, &primary, "up", SETTLE).await;
    let st = status(&c).await;
    println!(
        "after SIGCONT: sh1 primary {:?}, {primary} is {}",
        primary_of(&st, "sh1"),
        st["health"][primary.as_str()]
    );
    let mut h = w.stop_and_finish().await;
    h.extend(history);
    println!("workload + probes: {}", h.summary());
    let report = check(&c, &h, KEYS.0, KEYS.1, SETTLE).await;
    println!("check: {report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigstop_primary_past_timeout_then_sigcont() {
    let c = start_a1().await;
    let w = Workload::start(&c, small_workload());
    assert!(w.wait_done(100, Duration::from_secs(60)).await);
    let old = primary_of(&status(&c).await, "sh1").unwrap();
    let pid = c.stop_server(&old);
    let stopped_at = w.started.elapsed();
    let t = Instant::now();
    let new = wait_new_primary(&c, "sh1", &old, FAILOVER).await;
    println!(
        "SIGSTOPped primary {old} of sh1; {new} elected after {:?}",
        t.elapsed()
    );
    // Resume it soon, while the gateway still waits on the requests it sent there (its
    // upstream timeout is 10 s), so they reach the deposed primary.
    wait_until(Duration::from_secs(3), || async {
        w.acked_since(stopped_at) >= 10
    })
    .await;
    c.cont_server(&old);
    println!("SIGCONT {old} after {:?}", t.elapsed());
    wait_acked_since(&w, stopped_at, 30, FAILOVER).await;
    wait_health(&c, &old, "up", SETTLE).await;
    assert_eq!(
        c.server_pid(&old),
        Some(pid),
        "a paused server must not be respawned"
    );
    let st = status(&c).await;
    assert_ne!(
        primary_of(&st, "sh1").as_deref(),
        Some(old.as_str()),
        "the deposed primary must come back as a secondary"
    );
    assert!(replicas_of(&st, "sh1").contains(&old));
    let h = finish_and_check(&c, w).await;
    let deposed: Vec<&OpRecord> = h
        .ops
        .iter()
        .filter(|o| o.message.contains("deposed"))
        .collect();
    println!(
        "requests answered 'deposed' (their entries skipped everywhere): {}; \
         errors: {}; unknown outcomes: {}",
        deposed.len(),
        h.count(Outcome::Rejected),
        h.count(Outcome::Unknown)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_nats_during_writes() {
    let mut c = start_a1().await;
    let w = Workload::start(
        &c,
        WorkloadConfig {
            pause: Duration::from_millis(30),
            ..small_workload()
        },
    );
    assert!(w.wait_done(100, Duration::from_secs(60)).await);
    c.nats_mut().stop();
    let down_at = w.started.elapsed();
    println!("nats-server stopped at {down_at:?}");
    // Hold it down until the writers have seen failures.
    let saw_failures = wait_until(Duration::from_secs(30), || async {
        w.snapshot()
            .iter()
            .filter(|o| o.at >= down_at && o.status != 200)
            .count()
            >= 5
    })
    .await;
    let up_at = w.started.elapsed();
    c.nats_mut().restart().await;
    println!("nats-server restarted at {:?}", w.started.elapsed());
    assert!(saw_failures, "no write failed while nats-server was down");
    // Requests sent and answered while NATS was down failed with 503 (not 200, not 500).
    let bad: Vec<OpRecord> = w
        .snapshot()
        .into_iter()
        .filter(|o| o.at >= down_at && o.at + o.took <= up_at)
        .filter(|o| o.status != 503)
        .collect();
    assert!(
        bad.is_empty(),
        "writes while NATS was down must fail with 503: {bad:#?}"
    );
    // Everything reconnects by itself: writes succeed again.
    wait_acked_since(&w, w.started.elapsed(), 50, Duration::from_secs(90)).await;
    finish_and_check(&c, w).await;
    // The manager reconnected too: a failover still works.
    let old = primary_of(&status(&c).await, "sh3").unwrap();
    c.kill_server(&old);
    let new = wait_new_primary(&c, "sh3", &old, FAILOVER).await;
    println!("after the NATS restart, killing {old} elected {new} for sh3");
}

#[tokio::test(flavor = "multi_thread")]
async fn manager_down_then_restarted() {
    let mut c = start_a1().await;
    let w = Workload::start(&c, small_workload());
    assert!(w.wait_done(100, Duration::from_secs(60)).await);
    c.manager().kill();
    let down_at = w.started.elapsed();
    println!("manager killed at {down_at:?}");
    // The data path does not need the manager.
    wait_acked_since(&w, down_at, 60, Duration::from_secs(60)).await;
    let (s, body) = c
        .post("/read", json!({"Stud_id": {"low": 0, "high": 16383}}))
        .await;
    assert_eq!(s, 200, "reads while the manager is down: {body}");
    assert_eq!(c.get("/status").await.0, 200);
    c.restart_manager().await;
    println!("manager restarted at {:?}", w.started.elapsed());
    // Failover resumes: kill a primary, see an election.
    let old = primary_of(&status(&c).await, "sh4").unwrap();
    let pid = kill(&c, &old);
    let t = Instant::now();
    let new = wait_new_primary(&c, "sh4", &old, FAILOVER).await;
    println!(
        "killed {old} after the restart: {new} elected for sh4 in {:?}",
        t.elapsed()
    );
    wait_respawned(&c, &old, pid, SETTLE).await;
    finish_and_check(&c, w).await;
}

/// Writes rows `keys` in batches through the gateway (each batch must get 200); returns
/// them as acknowledged inserts.
async fn preload(c: &LocalCluster, keys: std::ops::Range<i64>, batch: usize) -> History {
    let mut history = History::default();
    let all: Vec<i64> = keys.collect();
    for chunk in all.chunks(batch) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|k| json!({"Stud_id": k, "Stud_name": format!("pre-{k}"), "Stud_marks": k % 100}))
            .collect();
        let body = json!({ "data": rows });
        // A batch certainly not applied (e.g. its primary was deposed under load) is retried.
        let mut answer = c.post("/write", &body).await;
        for _ in 0..10 {
            if workload::classify(answer.0, &answer.1) != Outcome::Rejected || answer.0 < 500 {
                break;
            }
            println!("preload batch at {} retried: {}", chunk[0], answer.1);
            tokio::time::sleep(Duration::from_millis(500)).await;
            answer = c.post("/write", &body).await;
        }
        assert_eq!(answer.0, 200, "preload batch at {}: {}", chunk[0], answer.1);
        history.ops.extend(chunk.iter().map(|&k| OpRecord {
            client: 100,
            key: k,
            kind: OpKind::Insert,
            value: Some((format!("pre-{k}"), k % 100)),
            status: 200,
            message: String::new(),
            outcome: Outcome::Acked,
            at: Duration::ZERO,
            took: Duration::ZERO,
        }));
    }
    history
}

/// Kills `name`, empties its data dir, waits for the manager to respawn it and for it to
/// catch up; returns (kill → up, the catch-up lines of its log).
async fn respawn_empty(c: &LocalCluster, name: &str) -> (Duration, Vec<String>) {
    // The manager respawns a server whose process is gone within a heartbeat; pause it so
    // the disk is lost while the server is down, not under the respawned one.
    let manager = c.manager_pid();
    assert!(signal(manager, libc::SIGSTOP), "cannot pause the manager");
    let killed = kill(c, name);
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || async { !pid_alive(killed.0) }).await,
        "{name} did not die"
    );
    let dir = c.servers_dir().join(name);
    for e in fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    assert!(signal(manager, libc::SIGCONT), "cannot resume the manager");
    wait_respawned(c, name, killed, Duration::from_secs(280)).await;
    let took = t.elapsed();
    let log = fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let lines: Vec<String> = log
        .lines()
        .filter(|l| l.contains("restored snapshot") || l.contains("caught up with the log"))
        .map(str::to_owned)
        .collect();
    (took, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn respawn_with_empty_data_dir_catches_up_by_snapshot() {
    let c = start_a1().await;
    // 10,000 rows: sh1 and sh2 full (4,096 each), sh3 partly.
    let t = Instant::now();
    let mut history = preload(&c, 0..10_000, 500).await;
    println!("preloaded 10,000 rows in {:?}", t.elapsed());
    // Keep writing (to sh3/sh4) while the replica catches up.
    let w = Workload::start(
        &c,
        WorkloadConfig {
            key_low: 10_000,
            key_high: 16_384,
            ..small_workload()
        },
    );
    assert!(w.wait_done(50, Duration::from_secs(60)).await);
    // Server2 holds sh1 (4,096 rows) and sh3.
    let st = status(&c).await;
    let victim = "Server2";
    assert!(replicas_of(&st, "sh1").contains(&victim.to_string()));
    let (took, lines) = respawn_empty(&c, victim).await;
    println!("{victim} (empty data dir) respawned and caught up {took:?} after the kill");
    for l in &lines {
        println!("  {l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored snapshot") && l.contains("sh1")),
        "{victim} did not restore sh1 from a snapshot: {lines:#?}"
    );
    history.extend(w.stop_and_finish().await);
    println!("workload + preload: {}", history.summary());
    let report = check(&c, &history, KEYS.0, KEYS.1, SETTLE).await;
    println!("check: {report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_time_median_of_5() {
    let c = start_a1().await;
    let mut history = History::default();
    let mut times = Vec::new();
    for run in 0..5 {
        // Each run starts from a settled cluster (replicas ack their progress within 50 ms).
        let st = workload::settle(&c, SETTLE).await;
        let shard = format!("sh{}", run % 4 + 1);
        let (low, _) = range_of(&st, &shard);
        let mut next = low + run as i64 * 800;
        let mut keys = move || {
            next += 1;
            next
        };
        // Warm the path: one write before the kill.
        assert_eq!(probe(&c, keys(), &mut history).await.status, 200);
        let old = primary_of(&st, &shard).unwrap();
        let pid = kill(&c, &old);
        let took = probe_until_ok(&c, &mut keys, &mut history, FAILOVER).await;
        let new = primary_of(&status(&c).await, &shard).unwrap_or_default();
        println!("failover run {}: killed {old} (primary of {shard}); first successful write after {took:?}; new primary {new}", run + 1);
        assert_eq!(shard_of(&st, keys() - 1), shard);
        times.push(took);
        wait_respawned(&c, &old, pid, SETTLE).await;
        workload::settle(&c, SETTLE).await;
    }
    let mut sorted = times.clone();
    sorted.sort();
    let median = sorted[2];
    println!(
        "failover times: {:?}; median {median:?} (target < 2 s: {})",
        times,
        if median < Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        }
    );
    let report = check(&c, &history, KEYS.0, KEYS.1, SETTLE).await;
    println!("check: {report:?}");
    assert!(
        median < Duration::from_secs(5),
        "median failover {median:?} is far over the 2 s target"
    );
}

/// One big shard on three servers, `rows` rows in it; a secondary respawned empty.
async fn big_shard_catch_up(rows: i64) {
    let c = LocalCluster::start().await;
    c.init(json!({
        "N": 3,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"],
                   "dtypes": ["Number", "String", "Number"]},
        "shards": [{"Stud_id_low": 0, "Shard_id": "big", "Shard_size": 1_000_000}],
        "servers": {"S0": ["big"], "S1": ["big"], "S2": ["big"]}
    }))
    .await;
    let t = Instant::now();
    let history = preload(&c, 0..rows, 2_000).await;
    println!("preloaded {rows} rows in {:?}", t.elapsed());
    let st = status(&c).await;
    let primary = primary_of(&st, "big").unwrap();
    let victim = ["S0", "S1", "S2"]
        .into_iter()
        .find(|s| *s != primary)
        .unwrap();
    let (took, lines) = respawn_empty(&c, victim).await;
    println!("catch-up of an empty replica of a {rows}-row shard: {took:?} from kill to up");
    for l in &lines {
        println!("  {l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("restored snapshot")),
        "no snapshot restore: {lines:#?}"
    );
    let report = check(&c, &history, 0, 1_000_000, SETTLE).await;
    println!("check: {report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn catch_up_time_4096_row_shard() {
    big_shard_catch_up(4_096).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "slow: preloads 100,000 rows (run with --run-ignored)"]
async fn catch_up_time_100k_row_shard() {
    big_shard_catch_up(100_000).await;
}

/// `/rm` of a server the manager is respawning at that moment: whichever comes first, no
/// process of the removed server may be left running.
#[tokio::test(flavor = "multi_thread")]
async fn rm_during_respawn_leaves_no_process() {
    let c = start_a1().await;
    let victim = pure_secondary(&status(&c).await);
    let manager = c.manager_pid();
    assert!(signal(manager, libc::SIGSTOP), "cannot pause the manager");
    let (pid, _) = kill(&c, &victim);
    assert!(
        wait_until(Duration::from_secs(5), || async { !pid_alive(pid) }).await,
        "{victim} did not die"
    );
    // Resumed, the manager finds the process gone at its next heartbeat and respawns it;
    // the /rm is sent as soon as the respawn has begun, while the new process starts.
    assert!(signal(manager, libc::SIGCONT), "cannot resume the manager");
    let respawning = || {
        fs::read_to_string(c.logs_dir().join("manager.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("respawning") && l.contains(&format!("server={victim}")))
    };
    assert!(
        wait_until(Duration::from_secs(10), || async { respawning() }).await,
        "the manager did not start respawning {victim}"
    );
    let (code, body) = c
        .delete("/rm", json!({"n": 1, "servers": [victim.clone()]}))
        .await;
    assert_eq!(code, 200, "{body}");
    let gone = || c.server_pid(&victim).is_none_or(|p| !pid_alive(p));
    assert!(
        wait_until(Duration::from_secs(10), || async { gone() }).await,
        "removed {victim} still runs as pid {:?}",
        c.server_pid(&victim)
    );
    // And it stays gone through several heartbeat rounds.
    let back = wait_until(Duration::from_secs(2), || async { !gone() }).await;
    assert!(!back, "a process of removed {victim} came back");
    let st = status(&c).await;
    assert!(st["health"].get(&victim).is_none(), "{st:#}");
}
