//! WAL retention with real processes: the manager purges each shard's stream below what every
//! replica applied, keeping `--wal-retain-entries` (here 100); a replica that is down holds
//! that floor up to `--wal-hold-max-entries` behind the stream's end, then is released and
//! re-seeds when it returns.
//!
//! Stream state is read from JetStream directly; a replica's applied position from its
//! `/heartbeat`, or, for a paused replica, from `/status` (its durable consumer's ack floor,
//! which it advances only after committing, at most 50 ms behind).

use std::collections::BTreeMap;
use std::fs;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use testkit::workload::{check, History, Workload, WorkloadConfig};
use testkit::{pid_alive, wait_until, ClusterOptions, LocalCluster, Value};

const RETAIN: u64 = 100;

/// Shard → (first, last) sequence of its stream.
type Streams = BTreeMap<&'static str, (u64, u64)>;
const SETTLE: Duration = Duration::from_secs(120);
const KEYS: (i64, i64) = (0, 16_384);

async fn start(hold_max: u64) -> LocalCluster {
    start_with(hold_max, RETAIN, &[]).await
}

async fn start_with(hold_max: u64, retain: u64, extra: &[&str]) -> LocalCluster {
    let mut manager_args: Vec<String> = [
        "--wal-trim-interval-ms",
        "200",
        "--wal-retain-entries",
        &retain.to_string(),
        "--wal-hold-max-entries",
        &hold_max.to_string(),
    ]
    .map(String::from)
    .to_vec();
    manager_args.extend(extra.iter().map(|a| a.to_string()));
    let c = LocalCluster::start_with(ClusterOptions {
        manager_args,
        ..Default::default()
    })
    .await;
    c.init(testkit::workload("a1")).await;
    c
}

async fn js(c: &LocalCluster) -> jetstream::Context {
    jetstream::new(c.nats().connect().await)
}

/// `(first, last)` sequence of `shard`'s stream.
async fn stream_state(js: &jetstream::Context, shard: &str) -> (u64, u64) {
    let mut s = js
        .get_stream(format!("WAL_{shard}"))
        .await
        .unwrap_or_else(|e| panic!("stream of {shard}: {e}"));
    let st = &s.info().await.expect("stream info").state;
    (st.first_sequence, st.last_sequence)
}

async fn status(c: &LocalCluster) -> Value {
    c.status_within(Duration::from_secs(5)).await
}

/// A server that is primary of no shard.
fn pure_secondary(st: &Value) -> String {
    let primaries: Vec<&str> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["primary"].as_str())
        .collect();
    st["servers"]
        .as_object()
        .unwrap()
        .keys()
        .find(|n| !primaries.contains(&n.as_str()))
        .cloned()
        .expect("some server leads no shard")
}

fn shards_of(st: &Value, server: &str) -> Vec<String> {
    st["servers"][server]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn workload(keys_per_client: usize) -> WorkloadConfig {
    WorkloadConfig {
        clients: 6,
        keys_per_client,
        pause: Duration::from_millis(2),
        max_duration: Duration::from_secs(150),
        request_timeout: Duration::from_secs(20),
        ..WorkloadConfig::default()
    }
}

async fn manager_metrics(c: &LocalCluster) -> String {
    let r = c
        .client()
        .get(format!("{}/metrics", c.manager_url()))
        .send()
        .await
        .expect("manager /metrics");
    r.text().await.unwrap()
}

fn manager_log(c: &LocalCluster) -> String {
    fs::read_to_string(c.logs_dir().join("manager.log")).unwrap_or_default()
}

fn server_log(c: &LocalCluster, name: &str) -> String {
    fs::read_to_string(c.servers_dir().join(name).join("server.log")).unwrap_or_default()
}

/// Shard → (server, applied) of every replica, from each server's own `/heartbeat` (what it
/// committed; its consumer's ack floor in `/status` trails that by up to 50 ms). Addresses
/// come from the metadata in KV.
async fn heartbeat_applied(
    c: &LocalCluster,
    js: &jetstream::Context,
) -> BTreeMap<String, Vec<(String, u64)>> {
    let kv = js
        .get_key_value("shardline_meta")
        .await
        .expect("metadata bucket");
    let doc = kv
        .get("cluster")
        .await
        .expect("metadata")
        .expect("configured");
    let meta: Value = serde_json::from_slice(&doc).expect("metadata JSON");
    let mut out: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (server, sv) in meta["servers"].as_object().expect("servers") {
        let addr = sv["addr"].as_str().expect("addr");
        let beat: Value = c
            .client()
            .get(format!("http://{addr}/heartbeat"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{server} heartbeat: {e}"))
            .json()
            .await
            .expect("heartbeat JSON");
        for (shard, p) in beat["shards"].as_object().expect("shards") {
            out.entry(shard.clone())
                .or_default()
                .push((server.clone(), p["applied"].as_u64().expect("applied")));
        }
    }
    out
}

/// Every shard's stream: the first sequence never passes what the slowest replica applied,
/// minus the margin. The stream is read before the heartbeats, so the applied positions are
/// at least what the trimmer saw when it purged.
async fn assert_floor_respected(c: &LocalCluster, js: &jetstream::Context) -> Streams {
    let mut streams = BTreeMap::new();
    for shard in ["sh1", "sh2", "sh3", "sh4"] {
        streams.insert(shard, stream_state(js, shard).await);
    }
    for (shard, replicas) in heartbeat_applied(c, js).await {
        let (first, last) = streams[shard.as_str()];
        let min = replicas.iter().map(|r| r.1).min().unwrap();
        assert!(
            first <= 1.max((min + 1).saturating_sub(RETAIN)),
            "{shard}: stream starts at {first} (last {last}) but its slowest replica applied \
             {min} (keeping {RETAIN}); replicas {replicas:?}"
        );
    }
    streams
}

#[tokio::test(flavor = "multi_thread")]
async fn trimming_keeps_the_margin_below_what_every_replica_applied() {
    let c = start(1_000_000).await;
    let js = js(&c).await;
    let w = Workload::start(&c, workload(200));
    // While writing: the purge never passes the floor.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut samples = 0;
    while !w.finished() && Instant::now() < deadline {
        assert_floor_respected(&c, &js).await;
        samples += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let history = w.finish().await;
    println!(
        "workload: {} ({samples} samples of the floor)",
        history.summary()
    );
    // Once every replica applied everything, each stream keeps exactly the margin.
    let last_seen = Mutex::new(BTreeMap::new());
    let trimmed = wait_until(Duration::from_secs(30), || async {
        let streams = assert_floor_respected(&c, &js).await;
        let done = streams
            .values()
            .all(|&(first, last)| last > RETAIN && first > 1 && first == last + 1 - RETAIN);
        *last_seen.lock().unwrap() = streams;
        done
    })
    .await;
    let last_seen = last_seen.into_inner().unwrap();
    assert!(
        trimmed,
        "streams not trimmed to the last {RETAIN} entries: {last_seen:?}\n{}",
        testkit::pids::tail(&c.logs_dir().join("manager.log"), 40)
    );
    println!("streams (first, last): {last_seen:?}");
    let report = check(&c, &history, KEYS.0, KEYS.1, SETTLE).await;
    println!("check: {report:?}");
    let metrics = manager_metrics(&c).await;
    for shard in ["sh1", "sh2", "sh3", "sh4"] {
        let purged = metrics
            .lines()
            .find(|l| l.starts_with(&format!("shardline_wal_purged_total{{shard=\"{shard}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no shardline_wal_purged_total for {shard}:\n{metrics}"));
        let (first, _) = last_seen[shard];
        assert_eq!(
            purged as u64,
            first - 1,
            "{shard}: purged count vs first sequence"
        );
    }
}

/// Pauses `victim` (SIGSTOP: silent, but its process is alive, so it is not respawned) and
/// waits until `shard`'s stream is `ahead` entries past what it had acknowledged; returns
/// that ack floor, taken right after the pause.
async fn pause_until_behind(c: &LocalCluster, victim: &str, shard: &str, ahead: u64) -> u64 {
    // Far enough into the log that the margin below it is trimmed.
    let started = wait_until(Duration::from_secs(60), || async {
        status(c).await["applied"][victim][shard]
            .as_u64()
            .unwrap_or(0)
            > 3 * RETAIN
    })
    .await;
    assert!(
        started,
        "{victim} did not apply {} entries of {shard}",
        3 * RETAIN
    );
    c.stop_server(victim);
    // Anything it had in flight lands (or not) within a moment; it cannot ack while stopped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = status(c).await["applied"][victim][shard]
        .as_u64()
        .unwrap_or(0);
    let js = js(c).await;
    let behind = wait_until(Duration::from_secs(120), || async {
        stream_state(&js, shard).await.1 > a + ahead
    })
    .await;
    assert!(
        behind,
        "{shard}'s stream did not move {ahead} past {victim}'s {a}"
    );
    a
}

/// A pure secondary, one of its shards and that shard's key range `[low, high)`.
async fn victim(c: &LocalCluster) -> (String, String, (i64, i64)) {
    let st = status(c).await;
    let victim = pure_secondary(&st);
    let shard = shards_of(&st, &victim).remove(0);
    let s = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Shard_id"] == shard.as_str())
        .unwrap();
    let low = s["Stud_id_low"].as_i64().unwrap();
    let range = (low, low + s["Shard_size"].as_i64().unwrap());
    (victim, shard, range)
}

/// The workload on one shard's keys only (so that its stream moves fast).
fn on_shard((low, high): (i64, i64)) -> WorkloadConfig {
    WorkloadConfig {
        key_low: low,
        key_high: high,
        ..workload(500)
    }
}

/// SIGKILLs the paused `victim` and waits for the manager to respawn it (a new pid).
async fn kill_and_wait_respawn(c: &LocalCluster, victim: &str) {
    let old = c.server_pid(victim).unwrap();
    c.kill_server(victim);
    let ok = wait_until(Duration::from_secs(60), || async {
        !pid_alive(old)
            && c.server_pid(victim)
                .is_some_and(|p| p != old && pid_alive(p))
    })
    .await;
    assert!(
        ok,
        "{victim} was not respawned\n{}",
        testkit::pids::tail(&c.logs_dir().join("manager.log"), 40)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn short_outage_holds_the_floor_and_catches_up_from_the_log() {
    let c = start(1_000_000).await;
    let js = js(&c).await;
    let (victim, shard, range) = victim(&c).await;
    let w = Workload::start(&c, on_shard(range));
    assert!(w.wait_done(100, Duration::from_secs(60)).await);
    let a = pause_until_behind(&c, &victim, &shard, 4 * RETAIN).await;
    // Several trimming rounds while it is silent and behind.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (first, last) = stream_state(&js, &shard).await;
    println!("{shard}: {victim} paused at {a}; stream {first}..={last}");
    assert!(
        first <= a + 1,
        "{shard}: purged up to {first} past paused {victim}'s applied {a} (last {last})"
    );
    // Trimmed below it nonetheless (up to the margin below the last applied sequence the
    // manager heard from it, at most one trimming round before the pause).
    assert!(
        first > 1,
        "{shard}: stream {first}..={last} not trimmed while {victim} holds it at {a}"
    );
    assert!(last > a + 4 * RETAIN);
    // Restarted (killed while paused, respawned by the manager): resumes after its stored
    // position, which the stream still holds.
    kill_and_wait_respawn(&c, &victim).await;
    let history: History = w.stop_and_finish().await;
    println!("workload: {}", history.summary());
    let report = check(&c, &history, range.0, range.1, SETTLE).await;
    println!("check: {report:?}");
    // The respawned process's lines only: the first one may have caught up from a peer's
    // snapshot when /init configured it after its peers (a legitimate start, not this test's
    // subject); the file is appended to across restarts.
    let log = server_log(&c, &victim);
    let respawned = log
        .rfind("starting shard-server")
        .map_or(log.as_str(), |at| &log[at..]);
    assert!(
        !respawned.contains("restored snapshot") && !respawned.contains("gap in the log"),
        "{victim} did not simply catch up from the log after its respawn:\n{log}"
    );
    // And once it is back, trimming moves on past where it was.
    let moved = wait_until(Duration::from_secs(30), || async {
        stream_state(&js, &shard).await.0 > a + 1
    })
    .await;
    assert!(moved, "trimming did not resume after {victim} came back");
}

#[tokio::test(flavor = "multi_thread")]
async fn long_outage_releases_the_replica_which_reseeds_when_back() {
    const HOLD_MAX: u64 = 150;
    let c = start(HOLD_MAX).await;
    let js = js(&c).await;
    let (victim, shard, range) = victim(&c).await;
    let w = Workload::start(&c, on_shard(range));
    assert!(w.wait_done(100, Duration::from_secs(60)).await);
    let a = pause_until_behind(&c, &victim, &shard, HOLD_MAX + 2 * RETAIN).await;
    // Released: the stream is purged well past what it applied.
    let released = wait_until(Duration::from_secs(30), || async {
        stream_state(&js, &shard).await.0 > a + RETAIN
    })
    .await;
    let (first, last) = stream_state(&js, &shard).await;
    assert!(
        released,
        "{shard}: stream {first}..={last} not purged past paused {victim}'s {a}"
    );
    assert!(
        manager_log(&c).contains("released from the WAL floor"),
        "the manager did not log the release"
    );
    println!("{shard}: {victim} paused at {a}; stream now {first}..={last}");
    // Back: its next entry is gone from the stream, so it must re-seed from a peer.
    kill_and_wait_respawn(&c, &victim).await;
    let history: History = w.stop_and_finish().await;
    println!("workload: {}", history.summary());
    let report = check(&c, &history, range.0, range.1, Duration::from_secs(60)).await;
    println!("check: {report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_age_limit_keeps_entries_younger_than_it() {
    const AGE: Duration = Duration::from_secs(3);
    const KEEP: u64 = 10;
    let c = start_with(1_000_000, KEEP, &["--wal-retain-ms", "3000"]).await;
    let js = js(&c).await;
    let w = Workload::start(&c, workload(300));
    let t0 = Instant::now();
    let mut seen: Vec<(Duration, Streams)> = Vec::new();
    let mut trimmed_during_load = false;
    let deadline = Duration::from_secs(150);
    while !w.finished() && t0.elapsed() < deadline {
        let mut now = BTreeMap::new();
        for shard in ["sh1", "sh2", "sh3", "sh4"] {
            now.insert(shard, stream_state(&js, shard).await);
        }
        let t = t0.elapsed();
        // Entries appended after a read at least 1 s younger than the age limit are younger
        // than it still (1 s for the entry's timestamp preceding its append).
        if let Some((at, old)) = seen
            .iter()
            .find(|(s, _)| *s + AGE >= t + Duration::from_secs(1))
        {
            for (shard, &(first, last)) in &now {
                let before = old[shard].1;
                assert!(
                    first <= before + 1,
                    "{shard}: stream starts at {first} (last {last}) at {t:?}, but entries after \
                     {before} were appended after {at:?}, less than {AGE:?} ago"
                );
            }
        }
        trimmed_during_load |= now.values().any(|&(first, _)| first > 1);
        seen.push((t, now));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let history = w.finish().await;
    println!("workload: {} in {:?}", history.summary(), t0.elapsed());
    assert!(
        trimmed_during_load,
        "nothing older than {AGE:?} was purged during the load"
    );
    // Once everything is older than the limit, only the margin is left.
    let trimmed = wait_until(Duration::from_secs(30), || async {
        let mut all = true;
        for shard in ["sh1", "sh2", "sh3", "sh4"] {
            let (first, last) = stream_state(&js, shard).await;
            all &= first == last + 1 - KEEP;
        }
        all
    })
    .await;
    assert!(
        trimmed,
        "streams not trimmed to the last {KEEP} entries once old"
    );
    check(&c, &history, KEYS.0, KEYS.1, SETTLE).await;
}
