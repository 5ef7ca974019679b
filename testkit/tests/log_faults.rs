//! A log that went backwards or away (issue 15): the replicas notice that their shard's
//! stream no longer holds what they applied, the shard stops serving, `/status`, the logs
//! and `/metrics` say so, and the manager recovers one history (README "Log faults").
//!
//! Real nats-server (stopped, its store dir copied and restored; streams purged, deleted and
//! re-created by hand), real shard servers, manager and gateway.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use testkit::{json, wait_until, LocalCluster, Method, Nats, Value};

/// How long detection, freezing and recovery may take.
const WITHIN: Duration = Duration::from_secs(40);
/// The one shard's keys.
const KEYS: (i64, i64) = (0, 4095);

async fn js_of(nats: &Nats) -> jetstream::Context {
    jetstream::new(nats.connect().await)
}

fn wal_config(name: &str, first: Option<u64>) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![format!("{}.x", name.to_lowercase())],
        storage: stream::StorageType::File,
        first_sequence: first,
        ..Default::default()
    }
}

/// What the recovery relies on, checked against the pinned nats-server: a stream's `created`
/// time survives a restart (it identifies the stream), a stream created with `first_seq`
/// starts there (so a re-created log continues after the base replica's position), and a
/// purge up to a sequence past the end moves the first sequence there.
#[tokio::test(flavor = "multi_thread")]
async fn jetstream_identity_and_first_sequence() {
    let mut nats = Nats::start().await;
    let js = js_of(&nats).await;
    let mut s = js.create_stream(wal_config("IDT", None)).await.unwrap();
    for _ in 0..3 {
        js.publish("idt.x", "e".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let created = s.info().await.unwrap().created;
    nats.restart().await;
    let js = js_of(&nats).await;
    let mut s = js.get_stream("IDT").await.unwrap();
    let info = s.info().await.unwrap();
    assert_eq!(info.created, created, "created changed across a restart");
    assert_eq!(info.state.last_sequence, 3);

    // Purge up to (not including) a sequence past the end.
    s.purge().sequence(7).await.unwrap();
    let st = s.info().await.unwrap().state.clone();
    assert_eq!(
        (st.first_sequence, st.last_sequence),
        (7, 6),
        "purge past the end"
    );

    // Deleted and re-created: another `created`, and `first_seq` is honoured.
    js.delete_stream("IDT").await.unwrap();
    let mut s = js.create_stream(wal_config("IDT", Some(42))).await.unwrap();
    let info = s.info().await.unwrap();
    assert_ne!(info.created, created);
    assert_eq!(
        (info.state.first_sequence, info.state.last_sequence),
        (42, 41)
    );
    let ack = js
        .publish("idt.x", "e".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, 42);
    // An expected-last-sequence publish (an election's marker) on an empty stream created
    // with `first_seq`. (A stream of another name: one deleted and at once created again can
    // come back with its old messages, while nats-server removes its files in the background,
    // so the manager checks what it re-created, `WalAdmin::recreate_stream_at`.)
    js.create_stream(wal_config("IDU", Some(42))).await.unwrap();
    let msg = jetstream::message::PublishMessage::build()
        .payload("m".into())
        .expected_last_sequence(41);
    let ack = js.send_publish("idu.x", msg).await.unwrap().await.unwrap();
    assert_eq!(ack.sequence, 42);
}

/// One shard `sh1` on three servers: every server holds a replica.
async fn start_one_shard() -> LocalCluster {
    let c = LocalCluster::start().await;
    c.init(json!({
        "N": 3,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"],
                   "dtypes": ["Number", "String", "Number"]},
        "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 4096}],
        "servers": {"Server0": ["sh1"], "Server1": ["sh1"], "Server2": ["sh1"]}
    }))
    .await;
    c
}

/// Writes each key through the gateway, retrying (bounded) until it is acknowledged.
async fn write_keys(c: &LocalCluster, keys: impl IntoIterator<Item = i64>) {
    for k in keys {
        let row = json!({"data": [{"Stud_id": k, "Stud_name": format!("k{k}"), "Stud_marks": 1}]});
        let last = Mutex::new((0, Value::Null));
        let (row, lastr) = (&row, &last);
        let acked = wait_until(WITHIN, || async move {
            let answer = c.post("/write", row).await;
            let done = answer.0 == 200 || answer.1["code"] == "duplicate_key";
            *lastr.lock().unwrap() = answer;
            done
        })
        .await;
        assert!(
            acked,
            "write of {k} never acknowledged: {:?}",
            last.lock().unwrap()
        );
    }
}

async fn status(c: &LocalCluster) -> Value {
    c.status_within(Duration::from_secs(10)).await
}

fn sh1(st: &Value) -> Value {
    st["shards"][0].clone()
}

/// Waits until `/status` shows sh1 frozen; its `fault`.
async fn wait_frozen(c: &LocalCluster) -> String {
    let fault = Mutex::new(String::new());
    let f = &fault;
    let frozen = wait_until(WITHIN, || async move {
        let now = sh1(&c.get("/status").await.1)["fault"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *f.lock().unwrap() = now.clone();
        !now.is_empty()
    })
    .await;
    assert!(frozen, "sh1 never frozen: {}", status(c).await);
    fault.into_inner().unwrap()
}

/// Waits until sh1 is recovered: not frozen, a primary, and a new write acknowledged.
async fn wait_recovered(c: &LocalCluster, probe: i64) {
    let ok = wait_until(WITHIN, || async {
        let st = c.get("/status").await.1;
        sh1(&st).get("fault").is_none() && !sh1(&st)["primary"].is_null()
    })
    .await;
    assert!(ok, "sh1 never recovered: {}", status(c).await);
    write_keys(c, [probe]).await;
}

/// Keys read through the gateway (primary consistency: the recovered primary's rows).
async fn keys_read(c: &LocalCluster) -> BTreeSet<i64> {
    let body = json!({"Stud_id": {"low": KEYS.0, "high": KEYS.1}, "consistency": "primary"});
    let (code, v) = c.post("/read", &body).await;
    assert_eq!(code, 200, "{v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["Stud_id"].as_i64())
        .collect()
}

/// Every replica holds the same rows (`/read/<server>`), waiting (bounded) for the last
/// writes to be applied everywhere; returns them.
async fn replicas_agree(c: &LocalCluster) -> Value {
    let seen = Mutex::new(Vec::new());
    let sr = &seen;
    let same = wait_until(WITHIN, || async move {
        let mut now = Vec::new();
        for s in ["Server0", "Server1", "Server2"] {
            now.push(c.get(&format!("/read/{s}")).await.1["sh1"].clone());
        }
        let same = now.iter().all(|r| r.is_array() && *r == now[0]);
        *sr.lock().unwrap() = now;
        same
    })
    .await;
    let mut seen = seen.into_inner().unwrap();
    assert!(same, "replicas differ: {seen:?}");
    seen.swap_remove(0)
}

/// The address shard server `name` listens on, from its log.
fn server_addr(c: &LocalCluster, name: &str) -> String {
    c.server_addr_from_log(name)
        .unwrap_or_else(|| panic!("no listening line in {name}'s server.log"))
}

/// A counter or gauge's value in a Prometheus text page (summed over matching lines).
fn metric(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn text(c: &LocalCluster, url: &str) -> String {
    let resp = c.client().get(url).send().await.expect("GET");
    resp.text().await.unwrap_or_default()
}

/// While frozen: the running replica `addr` refuses reads with `log_fault`, the gateway
/// refuses writes with it, and its `/metrics` gauge is 1.
async fn refuses_service(c: &LocalCluster, addr: &str) {
    let read = json!({"shard": "sh1", "Stud_id": {"low": KEYS.0, "high": KEYS.1}});
    for level in ["any", "primary"] {
        let url = format!("http://{addr}/read?consistency={level}");
        let (code, v) = testkit::http::send(c.client(), Method::POST, &url, Some(&read)).await;
        assert_eq!(
            (code, v["code"].as_str()),
            (503, Some("log_fault")),
            "{level} read: {v}"
        );
        assert_eq!(v["outcome"], "not_applied", "{v}");
    }
    let row = json!({"data": [{"Stud_id": 4000, "Stud_name": "no", "Stud_marks": 1}]});
    let (code, v) = c.post("/write", &row).await;
    assert_eq!(
        (code, v["code"].as_str()),
        (503, Some("log_fault")),
        "write: {v}"
    );
    assert_eq!(v["outcome"], "not_applied", "{v}");
    let read = json!({"Stud_id": {"low": KEYS.0, "high": KEYS.1}});
    let (code, v) = c.post("/read", &read).await;
    assert_eq!(
        (code, v["code"].as_str()),
        (503, Some("log_fault")),
        "gateway read: {v}"
    );
    let page = text(c, &format!("http://{addr}/metrics")).await;
    assert_eq!(
        metric(&page, "shardline_server_log_fault{shard=\"sh1\"}"),
        1.0,
        "{page}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Rollback: NATS's store dir is restored from a copy taken before W2 was written (as if
/// NATS lost its un-synced tail). The replica left running notices that the stream ends
/// below what it applied; the shard is frozen (status, refusals, metrics) while only a
/// minority answers; once the others are back the manager recovers one history holding
/// W1 and W2, identical on every replica, and new writes work.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_of_the_nats_store_is_detected_and_recovered() {
    let mut c = start_one_shard().await;
    let w1: Vec<i64> = (0..10).collect();
    write_keys(&c, w1.clone()).await;
    let copy = tempfile::tempdir().unwrap();
    c.nats_mut().stop();
    copy_dir(c.nats().store_dir(), copy.path());
    c.nats_mut().restart().await;
    let w2: Vec<i64> = (100..110).collect();
    write_keys(&c, w2.clone()).await;
    replicas_agree(&c).await;

    // Only the primary keeps running, so the shard stays frozen for a while.
    let primary = sh1(&status(&c).await)["primary"]
        .as_str()
        .unwrap()
        .to_owned();
    let others: Vec<&str> = ["Server0", "Server1", "Server2"]
        .into_iter()
        .filter(|s| *s != primary)
        .collect();
    for s in &others {
        c.stop_server(s);
    }
    c.nats_mut().stop();
    let store = c.nats().store_dir().to_path_buf();
    fs::remove_dir_all(&store).unwrap();
    copy_dir(copy.path(), &store);
    c.nats_mut().restart().await;
    let t = Instant::now();

    let fault = wait_frozen(&c).await;
    println!(
        "rollback: frozen {:?} after NATS came back: {fault}",
        t.elapsed()
    );
    assert!(fault.contains("rolled_back"), "{fault}");
    refuses_service(&c, &server_addr(&c, &primary)).await;

    for s in &others {
        c.cont_server(s);
    }
    let t = Instant::now();
    wait_recovered(&c, 200).await;
    println!(
        "rollback: recovered and writable {:?} after a majority answered",
        t.elapsed()
    );
    let mut want: BTreeSet<i64> = w1.into_iter().chain(w2).collect();
    want.insert(200);
    assert_eq!(keys_read(&c).await, want);
    let rows = replicas_agree(&c).await;
    assert_eq!(rows.as_array().unwrap().len(), want.len(), "{rows}");
    let page = text(&c, &format!("{}/metrics", c.manager_url())).await;
    assert!(
        metric(&page, "shardline_manager_log_recoveries_total") >= 1.0,
        "{page}"
    );
}

async fn wal(c: &LocalCluster) -> stream::Stream {
    js_of(c.nats()).await.get_stream("WAL_sh1").await.unwrap()
}

/// Waits until every replica reports having applied the stream's last sequence.
async fn all_caught_up(c: &LocalCluster) -> u64 {
    let last = wal(c).await.info().await.unwrap().state.last_sequence;
    let ok = wait_until(WITHIN, || async {
        let st = c.get("/status").await.1;
        ["Server0", "Server1", "Server2"]
            .iter()
            .all(|s| st["applied"][s]["sh1"].as_u64() == Some(last))
    })
    .await;
    assert!(ok, "replicas never reached {last}: {}", status(c).await);
    last
}

/// Purge by hand past every replica: entries nobody applied are gone (the stream's first
/// sequence is past every replica's next one). Every answering replica reports
/// `behind_first`; the manager freezes the shard and recovers it on the base, keeping its
/// rows. A replica paused meanwhile comes back on the old log identity and is re-seeded
/// from the primary rather than freezing the shard again.
#[tokio::test(flavor = "multi_thread")]
async fn purge_past_every_replica_is_detected_and_recovered() {
    let c = start_one_shard().await;
    let keys: Vec<i64> = (0..12).collect();
    write_keys(&c, keys.clone()).await;
    let last = all_caught_up(&c).await;
    let primary = sh1(&status(&c).await)["primary"]
        .as_str()
        .unwrap()
        .to_owned();
    let away = ["Server0", "Server1", "Server2"]
        .into_iter()
        .find(|s| *s != primary)
        .unwrap();
    c.stop_server(away);
    let purged = wal(&c).await.purge().sequence(last + 3).await.unwrap();
    assert!(purged.success);
    let t = Instant::now();

    let page_has_fault = wait_until(WITHIN, || async {
        let page = text(&c, &format!("{}/metrics", c.manager_url())).await;
        metric(&page, "shardline_manager_log_faults_total") >= 1.0
    })
    .await;
    assert!(page_has_fault, "the manager never froze sh1");
    wait_recovered(&c, 300).await;
    println!(
        "purge: frozen, recovered and writable {:?} after the purge",
        t.elapsed()
    );
    c.cont_server(away);
    let mut want: BTreeSet<i64> = keys.into_iter().collect();
    want.insert(300);
    assert_eq!(keys_read(&c).await, want);
    write_keys(&c, [301]).await;
    want.insert(301);
    let rows = replicas_agree(&c).await;
    assert_eq!(rows.as_array().unwrap().len(), want.len(), "{rows}");
    let st = status(&c).await;
    assert!(sh1(&st).get("fault").is_none(), "{st}");
    let log = fs::read_to_string(c.servers_dir().join(&primary).join("server.log")).unwrap();
    assert!(
        log.contains("fault=behind_first"),
        "no behind_first report on {primary}"
    );
}

/// The stream deleted and re-created by hand (empty, starting at 1 again, where no replica
/// reads): detected as `recreated` (or `missing` if a replica looks in between), frozen
/// while only one replica answers, then recovered with every row and new writes.
#[tokio::test(flavor = "multi_thread")]
async fn stream_deleted_and_recreated_by_hand_is_detected_and_recovered() {
    let c = start_one_shard().await;
    let keys: Vec<i64> = (0..8).collect();
    write_keys(&c, keys.clone()).await;
    all_caught_up(&c).await;
    let primary = sh1(&status(&c).await)["primary"]
        .as_str()
        .unwrap()
        .to_owned();
    let others: Vec<&str> = ["Server0", "Server1", "Server2"]
        .into_iter()
        .filter(|s| *s != primary)
        .collect();
    for s in &others {
        c.stop_server(s);
    }
    let js = js_of(c.nats()).await;
    let config = wal(&c).await.info().await.unwrap().config.clone();
    js.delete_stream("WAL_sh1").await.unwrap();
    js.create_stream(config).await.unwrap();
    let t = Instant::now();

    let fault = wait_frozen(&c).await;
    println!("re-created: frozen {:?} after: {fault}", t.elapsed());
    assert!(
        fault.contains("recreated") || fault.contains("missing"),
        "{fault}"
    );
    refuses_service(&c, &server_addr(&c, &primary)).await;
    for s in &others {
        c.cont_server(s);
    }
    wait_recovered(&c, 400).await;
    let mut want: BTreeSet<i64> = keys.into_iter().collect();
    want.insert(400);
    assert_eq!(keys_read(&c).await, want);
    let rows = replicas_agree(&c).await;
    assert_eq!(rows.as_array().unwrap().len(), want.len(), "{rows}");
    // The recovered stream continues after the replicas' position, not at 1.
    let first = wal(&c).await.info().await.unwrap().state.first_sequence;
    assert!(first > 8, "first sequence {first}");
}

/// Rolled back and then refilled past every replica's position while the replicas were
/// paused (so no poll saw the stream end below them): the stream's last sequence is fine,
/// but the entry at each replica's applied sequence is not the one it applied. The
/// fingerprint stored with the position catches it (`rewritten`); the shard is recovered
/// with every acknowledged write, and none of the foreign entries.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_then_refilled_log_is_caught_by_the_fingerprint() {
    let mut c = start_one_shard().await;
    let w1: Vec<i64> = (0..5).collect();
    write_keys(&c, w1.clone()).await;
    let copy = tempfile::tempdir().unwrap();
    c.nats_mut().stop();
    copy_dir(c.nats().store_dir(), copy.path());
    c.nats_mut().restart().await;
    let w2: Vec<i64> = (100..110).collect();
    write_keys(&c, w2.clone()).await;
    let applied = all_caught_up(&c).await;

    let servers = ["Server0", "Server1", "Server2"];
    for s in servers {
        c.stop_server(s);
    }
    c.nats_mut().stop();
    let store = c.nats().store_dir().to_path_buf();
    fs::remove_dir_all(&store).unwrap();
    copy_dir(copy.path(), &store);
    c.nats_mut().restart().await;
    let js = js_of(c.nats()).await;
    let last = wal(&c).await.info().await.unwrap().state.last_sequence;
    assert!(last < applied, "the copy ends at {last}, applied {applied}");
    // Someone else's entries, up to past what the replicas applied: each a valid insert of
    // the current term, so a replica that trusted them would apply them.
    let term = sh1(&status(&c).await)["term"].as_u64().unwrap();
    for i in last..applied + 2 {
        let entry = json!({"op": "insert", "rows": [{"Stud_id": 3000 + i as i64, "Stud_name": "foreign", "Stud_marks": 0}],
                           "term": term, "by": "intruder", "ts_ms": 0});
        js.publish("wal.sh1", entry.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // One replica back first: it finds the fault, and the shard stays frozen while it is
    // the only one answering.
    c.cont_server(servers[0]);
    let t = Instant::now();
    let fault = wait_frozen(&c).await;
    println!(
        "refilled: frozen {:?} after a replica resumed: {fault}",
        t.elapsed()
    );
    assert!(fault.contains("Server0: rewritten"), "{fault}");
    refuses_service(&c, &server_addr(&c, servers[0])).await;
    for s in &servers[1..] {
        c.cont_server(s);
    }
    wait_recovered(&c, 500).await;
    let mut want: BTreeSet<i64> = w1.into_iter().chain(w2).collect();
    want.insert(500);
    assert_eq!(keys_read(&c).await, want);
    let rows = replicas_agree(&c).await;
    assert_eq!(rows.as_array().unwrap().len(), want.len(), "{rows}");
}

/// `data/nats` wiped while the servers' directories are kept: the streams are gone (and the
/// metadata with them, so there is nothing to freeze or recover from). Every replica finds
/// its stream `missing` and refuses reads of the shard rather than serving rows no log backs
/// any more, or applying a new log from sequence 1 on top of them.
#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_nats_store_is_detected_by_every_replica() {
    let mut c = start_one_shard().await;
    write_keys(&c, 0..6).await;
    all_caught_up(&c).await;
    let addrs: Vec<(&str, String)> = ["Server0", "Server1", "Server2"]
        .into_iter()
        .map(|s| (s, server_addr(&c, s)))
        .collect();
    c.nats_mut().stop();
    let store = c.nats().store_dir().to_path_buf();
    fs::remove_dir_all(&store).unwrap();
    fs::create_dir_all(&store).unwrap();
    c.nats_mut().restart().await;
    let read = json!({"shard": "sh1", "Stud_id": {"low": KEYS.0, "high": KEYS.1}});
    for (name, addr) in &addrs {
        let url = format!("http://{addr}/read");
        let last = Mutex::new(Value::Null);
        let (url, read, lastr, c) = (&url, &read, &last, &c);
        let refused = wait_until(WITHIN, || async move {
            let (code, v) = testkit::http::send(c.client(), Method::POST, url, Some(read)).await;
            let refused = code == 503 && v["code"] == "log_fault";
            *lastr.lock().unwrap() = v;
            refused
        })
        .await;
        let last = last.into_inner().unwrap();
        assert!(refused, "{name} did not refuse: {last}");
        assert!(
            last["message"]
                .as_str()
                .unwrap_or_default()
                .contains("missing"),
            "{last}"
        );
        let log = fs::read_to_string(c.servers_dir().join(name).join("server.log")).unwrap();
        assert!(
            log.contains("fault=missing"),
            "no missing fault in {name}'s log"
        );
    }
}

/// The operator's override: `POST /recover` on the manager recovers a frozen shard on the
/// base it names at once, though only that replica answers; bad requests are refused with
/// the problem named. The replicas that were away come back on the old log and are re-seeded
/// from the base.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_recovers_a_frozen_shard_on_the_base_it_names() {
    let c = start_one_shard().await;
    let keys: Vec<i64> = (0..7).collect();
    write_keys(&c, keys.clone()).await;
    all_caught_up(&c).await;
    let (code, v) = c
        .manager_post("/recover", json!({"shard": "sh1", "base": "Server0"}))
        .await;
    assert_eq!((code, v["code"].as_str()), (409, Some("conflict")), "{v}");

    let base = "Server1";
    let others = ["Server0", "Server2"];
    for s in others {
        c.stop_server(s);
    }
    let js = js_of(c.nats()).await;
    let config = wal(&c).await.info().await.unwrap().config.clone();
    js.delete_stream("WAL_sh1").await.unwrap();
    js.create_stream(config).await.unwrap();
    wait_frozen(&c).await;

    for (body, status, code) in [
        (json!({"shard": "sh9", "base": base}), 404, "not_found"),
        (
            json!({"shard": "sh1", "base": "Server7"}),
            400,
            "bad_request",
        ),
        (json!({"shard": "sh1"}), 400, "bad_request"),
        (
            json!({"shard": "sh1", "base": "Server0"}),
            503,
            "unavailable",
        ), // paused
    ] {
        let (got, v) = c.manager_post("/recover", &body).await;
        assert_eq!(
            (got, v["code"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
    }
    let (code, v) = c
        .manager_post("/recover", json!({"shard": "sh1", "base": base}))
        .await;
    assert_eq!(code, 200, "{v}");
    let st = status(&c).await;
    assert!(sh1(&st).get("fault").is_none(), "{st}");

    for s in others {
        c.cont_server(s);
    }
    wait_recovered(&c, 600).await;
    let mut want: BTreeSet<i64> = keys.into_iter().collect();
    want.insert(600);
    assert_eq!(keys_read(&c).await, want);
    let rows = replicas_agree(&c).await;
    assert_eq!(rows.as_array().unwrap().len(), want.len(), "{rows}");
}
