//! Elections under manager faults, with real processes: a manager that crashes between an
//! election's marker and its metadata write (the `election.after_marker` failpoint), and two
//! managers on one NATS, of which only the lease holder acts.
//!
//! Every scenario ends with the same checks: writes to the shard succeed again within a
//! bound, and the term markers of every stream have strictly increasing terms (no two
//! markers of one term, none lower than one before it).

use std::time::{Duration, Instant};

use testkit::workload::primary_of;
use testkit::{bin, json, wait_until, ClusterOptions, LocalCluster, Proc, Value};

/// Heartbeats every 100 ms, dead after 3 misses, a 1 s lease: failover in about a second.
const LEASE_TTL_MS: u64 = 1000;
/// The bound for a shard to take writes again after the fault is healed.
const RECOVER: Duration = Duration::from_secs(20);

fn manager_args() -> Vec<String> {
    [
        "--heartbeat-interval-ms",
        "100",
        "--heartbeat-timeout-ms",
        "200",
        "--dead-after",
        "3",
        "--lease-ttl-ms",
        &LEASE_TTL_MS.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

async fn start(failpoints: Option<&str>) -> LocalCluster {
    let c = LocalCluster::start_with(ClusterOptions {
        manager_args: manager_args(),
        env: failpoints
            .map(|f| ("SHARDLINE_FAILPOINTS".to_string(), f.to_string()))
            .into_iter()
            .collect(),
        ..ClusterOptions::default()
    })
    .await;
    c.init(testkit::workload("a1")).await;
    c
}

/// Another manager of the cluster `c` (same NATS, same servers dir), with no failpoint,
/// listening on `listen`; returns it once it answers `/healthz`, with its URL.
async fn another_manager(c: &LocalCluster, name: &str, listen: &str) -> (Proc, String) {
    let mut args = vec![
        "--listen".to_string(),
        listen.to_string(),
        "--nats-url".into(),
        c.nats().url(),
        "--data-dir".into(),
        c.servers_dir().display().to_string(),
        "--server-bin".into(),
        bin("shard-server").display().to_string(),
    ];
    args.extend(manager_args());
    let mut p = Proc::builder(name, bin("manager"))
        .args(args)
        .env("RUST_LOG", "info")
        .log_dir(c.logs_dir())
        .spawn();
    let addr = p.listening(testkit::LISTEN_TIMEOUT).await;
    let url = format!("http://{addr}");
    let ok = wait_until(testkit::READY_TIMEOUT, || async {
        healthz(c, &url).await.is_some()
    })
    .await;
    assert!(ok, "{name} did not answer /healthz\n{}", p.report());
    (p, url)
}

/// The manager's `/healthz` body, if it answers 200.
async fn healthz(c: &LocalCluster, manager: &str) -> Option<Value> {
    let (s, body) = c
        .request(testkit::Method::GET, &format!("{manager}/healthz"), None)
        .await;
    (s == 200).then_some(body)
}

async fn role(c: &LocalCluster, manager: &str) -> String {
    healthz(c, manager)
        .await
        .and_then(|b| b["role"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn status(c: &LocalCluster) -> Value {
    c.status_within(Duration::from_secs(5)).await
}

/// One single-row insert of key `key` through the gateway; true if acknowledged.
async fn write(c: &LocalCluster, key: i64) -> bool {
    let row = json!({"Stud_id": key, "Stud_name": format!("k{key}"), "Stud_marks": 1});
    c.post("/write", json!({"data": [row]})).await.0 == 200
}

/// Writes fresh keys from `keys` to the shard until one is acknowledged; returns the time
/// taken, or panics after `timeout`.
async fn wait_writable(
    c: &LocalCluster,
    keys: &mut impl Iterator<Item = i64>,
    timeout: Duration,
) -> Duration {
    let t = Instant::now();
    while t.elapsed() < timeout {
        let key = keys.next().expect("probe keys exhausted");
        if write(c, key).await {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no write succeeded within {timeout:?}; /status: {:#}",
        status(c).await
    );
}

/// Waits until `/status` names a primary for `shard` other than `old`; returns it.
async fn wait_new_primary(c: &LocalCluster, shard: &str, old: &str, timeout: Duration) -> String {
    let t = Instant::now();
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
            t.elapsed() < timeout,
            "no new primary for {shard} (old {old}) within {timeout:?}; /status: {st:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `p` to exit by itself; returns its exit code.
async fn exit_code(p: &mut Proc, timeout: Duration) -> Option<i32> {
    let t = Instant::now();
    while p.is_running() {
        if t.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.exit_status().and_then(|s| s.code())
}

/// The `(term, primary)` of every term marker in `shard`'s stream, in stream order.
async fn markers(c: &LocalCluster, shard: &str) -> Vec<(u64, String)> {
    let client = async_nats::connect(c.nats().url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(format!("WAL_{shard}"))
        .await
        .expect("WAL stream");
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let msg = stream
            .get_raw_message(seq)
            .await
            .unwrap_or_else(|e| panic!("WAL_{shard} message {seq}: {e}"));
        let v: Value = serde_json::from_slice(&msg.payload).expect("a JSON entry");
        if v["op"] == "term" {
            let term = v["term"].as_u64().expect("a term");
            out.push((term, v["primary"].as_str().unwrap_or_default().to_owned()));
        }
    }
    out
}

/// Every stream's markers have strictly increasing terms.
async fn assert_markers_increase(c: &LocalCluster) {
    for shard in ["sh1", "sh2", "sh3", "sh4"] {
        let m = markers(c, shard).await;
        assert!(
            m.windows(2).all(|w| w[0].0 < w[1].0),
            "{shard}: markers must have strictly increasing terms: {m:?}"
        );
    }
}

/// sh1's keys from the top down (the tests write nothing else to sh1).
fn sh1_keys() -> impl Iterator<Item = i64> {
    (0..4096).rev()
}

/// The manager crashes after the marker that deposes a live primary (`/rm` moves the
/// primary away before removing its server), before the metadata names the new one; the old
/// primary keeps answering heartbeats. The next manager must bring the metadata up to the
/// marker (before the fix: the metadata kept the old primary, which refused every write at
/// its newer applied term, and no election ever came).
#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_marker_while_the_old_primary_lives() {
    let mut c = start(Some("election.after_marker")).await;
    let mut keys = sh1_keys();
    assert!(write(&c, keys.next().unwrap()).await);
    let old = primary_of(&status(&c).await, "sh1").unwrap();
    let (s, body) = c.delete("/rm", json!({"n": 1, "servers": [old]})).await;
    assert_ne!(s, 200, "the manager stops mid-/rm: {body}");
    let code = exit_code(c.manager(), RECOVER).await;
    assert_eq!(code, Some(86), "the manager must stop at the failpoint");
    assert!(c
        .manager()
        .log()
        .contains("failpoint election.after_marker reached; exiting"));
    let addr = c.manager_url().trim_start_matches("http://").to_string();
    let (_manager, _) = another_manager(&c, "manager-2", &addr).await;
    let took = wait_writable(&c, &mut keys, RECOVER).await;
    println!("sh1 writable again {took:?} after the manager restart");
    assert_markers_increase(&c).await;
}

/// The manager crashes at `failpoint` of the election that replaces sh1's killed primary;
/// a manager without the failpoint takes over and sh1 takes writes again.
async fn crash_at_then_restart(failpoint: &str) {
    let mut c = start(Some(failpoint)).await;
    let mut keys = sh1_keys();
    assert!(write(&c, keys.next().unwrap()).await);
    let old = primary_of(&status(&c).await, "sh1").unwrap();
    c.kill_server(&old);
    let code = exit_code(c.manager(), RECOVER).await;
    assert_eq!(code, Some(86), "the manager must stop at {failpoint}");
    let addr = c.manager_url().trim_start_matches("http://").to_string();
    let (_manager, _) = another_manager(&c, "manager-2", &addr).await;
    let took = wait_writable(&c, &mut keys, RECOVER).await;
    println!("{failpoint}: sh1 writable again {took:?} after the manager restart");
    assert_markers_increase(&c).await;
}

/// The crash after the marker with the old primary killed: the next manager must not append
/// a second marker of the interrupted election's term (before the fix it did: it chose its
/// term from the metadata alone).
#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_marker_then_the_old_primary_is_dead() {
    crash_at_then_restart("election.after_marker").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_before_the_marker() {
    crash_at_then_restart("election.before_marker").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_metadata() {
    crash_at_then_restart("election.after_metadata").await;
}

/// Two managers on one NATS: one active, one standby (which refuses admin calls). The active
/// one is paused past the lease: the standby takes over and fails over a primary killed at
/// the same moment. The paused one resumes, finds its lease gone and stays standby.
#[tokio::test(flavor = "multi_thread")]
async fn one_manager_acts_at_a_time() {
    let mut c = start(None).await;
    let a = c.manager_url();
    let (_b_proc, b) = another_manager(&c, "manager-b", "127.0.0.1:0").await;
    assert_eq!(role(&c, &a).await, "active");
    assert_eq!(role(&c, &b).await, "standby");
    let (s, body) = c
        .request(
            testkit::Method::POST,
            &format!("{b}/add"),
            Some(&json!({"n": 1, "servers": {"Server9": ["sh1"]}})),
        )
        .await;
    assert_eq!(s, 503, "a standby refuses admin calls: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("standby"),
        "{body}"
    );

    let mut keys = sh1_keys();
    assert!(write(&c, keys.next().unwrap()).await);
    let old = primary_of(&status(&c).await, "sh1").unwrap();
    // The active manager freezes and, at the same moment, sh1's primary dies.
    c.manager().stop();
    let t = Instant::now();
    c.kill_server(&old);
    let ok = wait_until(Duration::from_secs(10), || async {
        role(&c, &b).await == "active"
    })
    .await;
    assert!(ok, "the standby did not take over");
    let takeover = t.elapsed();
    let new = wait_new_primary(&c, "sh1", &old, RECOVER).await;
    let elected = t.elapsed();
    let writable = wait_writable(&c, &mut keys, RECOVER).await + elected;
    println!(
        "manager failover: lease ttl {LEASE_TTL_MS} ms; standby active after {takeover:?}; \
         first election ({new} for sh1) after {elected:?}; sh1 writable after {writable:?}"
    );

    // The old manager resumes: its lease expired by its own clock, and the standby holds it.
    c.manager().cont();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(3 * LEASE_TTL_MS) {
        assert_ne!(
            role(&c, &a).await,
            "active",
            "the resumed manager must not act"
        );
        assert_eq!(role(&c, &b).await, "active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(c
        .manager()
        .log()
        .contains("lost the manager lease: standby"));
    assert!(write(&c, keys.next().unwrap()).await);
    assert_markers_increase(&c).await;
}
