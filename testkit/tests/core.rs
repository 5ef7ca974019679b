//! Core behaviour against a real cluster (nats-server + manager + gateway + shard servers):
//! /init with the A1 workload, writes and reads across shard boundaries, replica agreement,
//! update/delete, duplicate keys, /add, /rm, the WAL in JetStream, and a killed shard server
//! resuming from its stored sequence.

use std::collections::BTreeSet;
use std::time::Duration;

use testkit::check::{self, failure, primary_of, replicas_of};
use testkit::{json, pid_alive, LocalCluster, Value};

const CONVERGE: Duration = Duration::from_secs(60);

fn row(k: i64, name: &str, marks: i64) -> Value {
    json!({"Stud_id": k, "Stud_name": name, "Stud_marks": marks})
}

async fn read(c: &LocalCluster, low: i64, high: i64) -> (Vec<i64>, Value) {
    let (code, body) = c
        .post(
            "/read",
            json!({"Stud_id": {"low": low, "high": high}, "consistency": "primary"}),
        )
        .await;
    assert_eq!(code, 200, "/read [{low}, {high}]: {body}");
    let keys = body["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|r| r["Stud_id"].as_i64().expect("integer key"))
        .collect();
    (keys, body)
}

async fn converged_and_identical(
    c: &LocalCluster,
) -> (Value, std::collections::BTreeMap<String, Vec<Value>>) {
    let st = check::wait_converged(c, CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = check::replicas_identical(c)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (st, rows)
}

#[tokio::test(flavor = "multi_thread")]
async fn write_read_update_delete_across_shards() {
    let c = LocalCluster::start().await;
    let init = c.init(testkit::workload("a1")).await;
    assert_eq!(
        init,
        json!({"message": "Configured Database", "status": "success"})
    );
    let st = check::status(&c).await.unwrap();
    assert_eq!(st["N"], 6);
    assert_eq!(st["schema"]["columns"][0], "Stud_id");
    assert_eq!(st["shards"].as_array().unwrap().len(), 4);
    for s in st["shards"].as_array().unwrap() {
        let p = s["primary"].as_str().expect("every shard has a primary");
        assert!(st["servers"][p]
            .as_array()
            .unwrap()
            .contains(&s["Shard_id"]));
    }

    // Keys on both sides of every shard boundary, plus a spread, in one request.
    let mut keys: Vec<i64> = vec![0, 1, 4095, 4096, 8191, 8192, 12287, 12288, 16383];
    keys.extend((0..40).map(|i| 37 + i * 401));
    keys.sort_unstable();
    keys.dedup();
    let rows: Vec<Value> = keys.iter().map(|&k| row(k, "ABC", k % 100)).collect();
    let (code, body) = c.post("/write", json!({"data": rows})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({"message": format!("{} Data entries added", keys.len()), "status": "success"})
    );

    // Read across boundaries: ordered by key, the right shards queried.
    let (got, body) = read(&c, 4000, 8200).await;
    let want: Vec<i64> = keys
        .iter()
        .copied()
        .filter(|k| (4000..=8200).contains(k))
        .collect();
    assert_eq!(got, want);
    assert_eq!(body["shards_queried"], json!(["sh1", "sh2", "sh3"]));
    assert_eq!(body["status"], "success");
    let (got, _) = read(&c, i64::MIN, i64::MAX).await;
    assert_eq!(got, keys);
    // The default (ring-chosen replica) read agrees once replicas converged.
    converged_and_identical(&c).await;
    let (code, body) = c
        .get_json("/read", json!({"Stud_id": {"low": 0, "high": 16383}}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), keys.len());
    assert_eq!(body["data"][0], row(0, "ABC", 0));

    // Duplicate key: an existing key in a batch → 409 naming it; no row of the batch is written.
    let (_, before) = read(&c, i64::MIN, i64::MAX).await;
    let r = c
        .post(
            "/write",
            json!({"data": [row(2, "NEW", 1), row(4095, "DUP", 1), row(3, "NEW", 1)]}),
        )
        .await;
    failure(&r, 409, "4095").unwrap();
    // Duplicate inside one request, across shards: 409, nothing written anywhere.
    let r = c
        .post(
            "/write",
            json!({"data": [row(5000, "X", 1), row(9000, "X", 1), row(5000, "Y", 2)]}),
        )
        .await;
    failure(&r, 409, "5000").unwrap();
    let (_, after) = read(&c, i64::MIN, i64::MAX).await;
    assert_eq!(
        before["data"], after["data"],
        "a rejected write changed data"
    );

    // Update.
    let r = c
        .put(
            "/update",
            json!({"Stud_id": 4096, "data": row(4096, "GHI", 28)}),
        )
        .await;
    assert_eq!(
        r,
        (
            200,
            json!({"message": "Data entry for Stud_id:4096 updated", "status": "success"})
        )
    );
    let (_, body) = read(&c, 4096, 4096).await;
    assert_eq!(body["data"], json!([row(4096, "GHI", 28)]));

    // Delete.
    let r = c.delete("/del", json!({"Stud_id": 8191})).await;
    assert_eq!(
        r,
        (
            200,
            json!({"message": "Data entry with Stud_id:8191 removed from all replicas", "status": "success"})
        )
    );
    let (got, _) = read(&c, 8000, 8300).await;
    assert!(!got.contains(&8191), "{got:?}");
    assert!(got.contains(&8192));

    // Unknown keys.
    failure(
        &c.delete("/del", json!({"Stud_id": 8191})).await,
        404,
        "8191",
    )
    .unwrap();
    failure(
        &c.put("/update", json!({"Stud_id": 2, "data": row(2, "Z", 1)}))
            .await,
        404,
        "2",
    )
    .unwrap();
    let (got, _) = read(&c, 2, 2).await;
    assert!(got.is_empty(), "update of a missing key created it");

    // Every replica of every shard holds the same rows, and they are the expected ones.
    let (_, shards) = converged_and_identical(&c).await;
    let mut all: Vec<i64> = shards
        .values()
        .flatten()
        .map(|r| r["Stud_id"].as_i64().unwrap())
        .collect();
    all.sort_unstable();
    let want: Vec<i64> = keys.iter().copied().filter(|&k| k != 8191).collect();
    assert_eq!(all, want);
    let sh2 = &shards["sh2"];
    assert!(
        sh2.contains(&row(4096, "GHI", 28)),
        "update not on replicas"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_stream_is_readable_and_consumers_exist() {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    for k in [1_i64, 2, 3] {
        let (code, body) = c.post("/write", json!({"data": [row(k, "W", 1)]})).await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = c
        .put("/update", json!({"Stud_id": 2, "data": row(2, "U", 2)}))
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = c.delete("/del", json!({"Stud_id": 3})).await;
    assert_eq!(code, 200, "{body}");
    let st = converged_and_identical(&c).await.0;

    let client = async_nats::connect(c.nats().url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("WAL_sh1").await.expect("stream WAL_sh1");
    let info = stream.info().await.expect("stream info").clone();
    assert_eq!(info.config.subjects, vec!["wal.sh1".to_string()]);
    let last = info.state.last_sequence;
    assert_eq!(
        st["shards"][0]["wal_last_seq"],
        json!(last),
        "/status disagrees with JetStream"
    );
    assert!(
        last >= 6,
        "expected a term marker and 5 writes, last seq {last}"
    );
    let mut ops = Vec::new();
    for seq in 1..=last {
        let msg = stream
            .get_raw_message(seq)
            .await
            .unwrap_or_else(|e| panic!("WAL_sh1 message {seq}: {e}"));
        assert_eq!(msg.sequence, seq);
        let v: Value = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
            panic!(
                "WAL_sh1 #{seq} is not JSON ({e}): {}",
                String::from_utf8_lossy(&msg.payload)
            )
        });
        for f in ["op", "term", "by", "ts_ms"] {
            assert!(v.get(f).is_some(), "WAL_sh1 #{seq} lacks `{f}`: {v}");
        }
        assert!(v["term"].is_u64() && v["ts_ms"].is_u64(), "#{seq}: {v}");
        let by = v["by"].as_str().expect("by is a string");
        let has_id = msg.headers.get("Nats-Msg-Id").is_some();
        if by == "manager" {
            assert_eq!(
                v["op"], "term",
                "#{seq}: the manager writes only term markers: {v}"
            );
        } else {
            assert!(
                has_id,
                "WAL_sh1 #{seq} by {by} has no Nats-Msg-Id header: {v}"
            );
        }
        ops.push(v["op"].as_str().unwrap().to_string());
    }
    assert_eq!(ops[0], "term", "the log starts with a term marker: {ops:?}");
    let tail: Vec<&str> = ops.iter().rev().take(5).rev().map(String::as_str).collect();
    assert_eq!(tail, ["insert", "insert", "insert", "update", "delete"]);

    // One durable consumer per replica, named after the server, fully acked.
    for server in &replicas_of(&st)["sh1"] {
        let ci = stream
            .consumer_info(server)
            .await
            .unwrap_or_else(|e| panic!("consumer {server} on WAL_sh1: {e}"));
        assert_eq!(ci.name, *server);
        assert_eq!(ci.ack_floor.stream_sequence, last, "consumer {server}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn add_new_shard_and_new_replica() {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    let old: Vec<Value> = (0..30).map(|i| row(i * 300, "OLD", i)).collect();
    let (code, body) = c.post("/write", json!({"data": old})).await;
    assert_eq!(code, 200, "{body}");

    let (code, body) = c
        .post(
            "/add",
            json!({"n": 2,
                   "new_shards": [{"Stud_id_low": 16384, "Shard_id": "sh5", "Shard_size": 4096}],
                   "servers": {"Server6": ["sh1", "sh5"], "Server[7]": ["sh5", "sh2"]}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["N"], 8, "{body}");
    assert_eq!(body["status"], "successful");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.starts_with("Add ") && msg.contains("Server:6"), "{msg}");

    c.wait_ready(Duration::from_secs(60)).await;
    let st = check::status(&c).await.unwrap();
    assert_eq!(st["N"], 8);
    let reps = replicas_of(&st);
    assert!(reps["sh1"].contains(&"Server6".to_string()), "{st}");
    assert_eq!(reps["sh5"].len(), 2, "{st}");
    let placeholder = reps["sh5"]
        .iter()
        .find(|s| s.as_str() != "Server6")
        .unwrap()
        .clone();
    assert!(
        !placeholder.contains('['),
        "placeholder not resolved: {placeholder}"
    );
    assert!(reps["sh2"].contains(&placeholder));

    // The new shard takes writes and reads.
    let (code, body) = c
        .post(
            "/write",
            json!({"data": [row(16384, "N5", 1), row(20479, "N5", 2)]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (got, body) = read(&c, 16000, 30000).await;
    assert_eq!(got, [16384, 20479]);
    assert_eq!(body["shards_queried"], json!(["sh4", "sh5"]));
    let r = c
        .post("/write", json!({"data": [row(20480, "X", 1)]}))
        .await;
    failure(&r, 400, "outside every shard").unwrap();

    // The new replicas serve the old rows of their existing shards.
    let (_, shards) = converged_and_identical(&c).await;
    let s6 = check::server_rows(&c, "Server6").await.unwrap();
    let want_sh1: Vec<Value> = (0..30)
        .map(|i| row(i * 300, "OLD", i))
        .filter(|r| r["Stud_id"].as_i64().unwrap() < 4096)
        .collect();
    assert_eq!(s6["sh1"], json!(want_sh1));
    assert_eq!(shards["sh1"], want_sh1);
    let sp = check::server_rows(&c, &placeholder).await.unwrap();
    assert_eq!(sp["sh2"], json!(shards["sh2"]));
    assert!(!shards["sh2"].is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn rm_primary_elects_and_guards_hold() {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    let (code, body) = c
        .post(
            "/write",
            json!({"data": [row(10, "A", 1), row(5000, "B", 2)]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let st0 = check::wait_converged(&c, CONVERGE).await.unwrap();
    let reps = replicas_of(&st0);

    // Guards: each leaves the cluster exactly as it was.
    let sh1: Vec<String> = reps["sh1"].clone();
    let r = c.delete("/rm", json!({"n": 3, "servers": sh1})).await;
    failure(&r, 409, "no replica").unwrap();
    failure(&r, 409, "sh1").unwrap();
    let r = c
        .delete("/rm", json!({"n": 1, "servers": ["Server0", "Server1"]}))
        .await;
    failure(
        &r,
        400,
        "<Error> Length of server list is more than removable instances",
    )
    .unwrap();
    let r = c
        .delete("/rm", json!({"n": 1, "servers": ["Server99"]}))
        .await;
    failure(&r, 404, "Server99").unwrap();
    let st = check::status(&c).await.unwrap();
    assert_eq!(st["N"], 6);
    assert_eq!(st["servers"], st0["servers"]);
    assert!(c
        .server_names()
        .iter()
        .all(|n| pid_alive(c.server_pid(n).unwrap())));

    // Remove sh1's primary: a new primary is elected before the call returns.
    let old = primary_of(&st0, "sh1").unwrap();
    let gone = c.server_pid(&old).expect("pid of sh1's primary");
    let r = c.delete("/rm", json!({"n": 1, "servers": [old]})).await;
    assert_eq!(
        r,
        (
            200,
            json!({"message": {"N": 5, "servers": [old]}, "status": "successful"})
        )
    );
    let st = check::status(&c).await.unwrap();
    assert_eq!(st["N"], 5);
    assert!(st["servers"].get(&old).is_none(), "{st}");
    let new = primary_of(&st, "sh1").expect("sh1 has a primary after /rm");
    assert_ne!(new, old);
    assert!(reps["sh1"].contains(&new));
    assert!(
        testkit::wait_until(Duration::from_secs(15), || async { !pid_alive(gone) }).await,
        "removed server {old} still runs"
    );

    // Writes to sh1 continue; the remaining replicas agree.
    c.wait_ready(Duration::from_secs(30)).await;
    let (code, body) = c.post("/write", json!({"data": [row(11, "C", 3)]})).await;
    assert_eq!(code, 200, "{body}");
    let (got, _) = read(&c, 0, 4095).await;
    assert_eq!(got, [10, 11]);
    let (st, shards) = converged_and_identical(&c).await;
    assert_eq!(replicas_of(&st)["sh1"].len(), 2);
    assert_eq!(shards["sh1"].len(), 2);

    // /rm with only n: random servers, still never the last replica of a shard.
    let r = c.delete("/rm", json!({"n": 1})).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["message"]["N"], 4);
    let st = check::status(&c).await.unwrap();
    assert!(replicas_of(&st).values().all(|s| !s.is_empty()), "{st}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_server_resumes_from_its_stored_sequence() {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    let first: Vec<Value> = (0..20).map(|i| row(i * 800, "PRE", i)).collect();
    let (code, body) = c.post("/write", json!({"data": first})).await;
    assert_eq!(code, 200, "{body}");
    let st = check::wait_converged(&c, CONVERGE).await.unwrap();

    // A secondary: a server that is primary of no shard.
    let primaries: BTreeSet<String> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["primary"].as_str().unwrap().to_string())
        .collect();
    let victim = st["servers"]
        .as_object()
        .unwrap()
        .keys()
        .find(|s| !primaries.contains(*s))
        .expect("a server that is no primary")
        .clone();
    let victim_shards: Vec<String> = st["servers"][&victim]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let log_path = c.servers_dir().join(&victim).join("server.log");
    let snapshots = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches("restored snapshot")
            .count()
    };
    let snapshots_before = snapshots();
    let old_pid = c.kill_server(&victim);
    assert!(
        testkit::wait_until(Duration::from_secs(5), || async { !pid_alive(old_pid) }).await,
        "{victim} survived SIGKILL"
    );

    // While it is down, writes to its shards still commit on the other two replicas.
    let mut down_keys = Vec::new();
    for sh in &victim_shards {
        let low = st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Shard_id"] == sh.as_str())
            .unwrap()["Stud_id_low"]
            .as_i64()
            .unwrap();
        for k in [low + 1, low + 2] {
            let (code, body) = c.post("/write", json!({"data": [row(k, "DOWN", 7)]})).await;
            assert_eq!(code, 200, "write of {k} while {victim} was down: {body}");
            down_keys.push(k);
        }
        let (code, body) = c
            .put(
                "/update",
                json!({"Stud_id": low + 1, "data": row(low + 1, "UPD", 8)}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        let (code, body) = c.delete("/del", json!({"Stud_id": low + 2})).await;
        assert_eq!(code, 200, "{body}");
    }

    // The manager respawns it (same data dir); it comes back up and catches up.
    let respawned = testkit::wait_until(Duration::from_secs(60), || async {
        c.server_pid(&victim)
            .is_some_and(|p| p != old_pid && pid_alive(p))
    })
    .await;
    assert!(respawned, "{victim} was not respawned");
    let up = testkit::wait_until(Duration::from_secs(60), || async {
        check::status(&c)
            .await
            .is_ok_and(|s| s["health"][&victim] == "up")
    })
    .await;
    assert!(up, "{victim} not up again: {:?}", check::status(&c).await);
    let (st, shards) = converged_and_identical(&c).await;
    for sh in &victim_shards {
        let last = st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Shard_id"] == sh.as_str())
            .unwrap()["wal_last_seq"]
            .clone();
        assert_eq!(st["applied"][&victim][sh], last, "{victim}/{sh}");
    }
    // It resumed from its own stored sequence: no snapshot copy after the restart (the log
    // shows both starts, so the check is not vacuous).
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.matches("replica configured").count() >= 2 * victim_shards.len(),
        "{} does not show the restart",
        log_path.display()
    );
    assert_eq!(
        snapshots(),
        snapshots_before,
        "{victim} restored a snapshot instead of resuming from its stored sequence"
    );
    let mine = check::server_rows(&c, &victim).await.unwrap();
    for sh in &victim_shards {
        assert_eq!(mine[sh], json!(shards[sh]), "{victim}/{sh}");
        let rows = shards[sh].as_slice();
        assert!(
            rows.iter().any(|r| r["Stud_name"] == "UPD"),
            "{sh}: {rows:?}"
        );
        assert!(
            rows.iter().all(|r| r["Stud_name"] != "DOWN"),
            "{sh}: {rows:?}"
        );
    }
    let total: usize = shards.values().map(Vec::len).sum();
    assert_eq!(total, 20 + victim_shards.len(), "rows lost or duplicated");

    // And it keeps applying new writes.
    let k = down_keys[0] + 10;
    let (code, body) = c
        .post("/write", json!({"data": [row(k, "AFTER", 1)]}))
        .await;
    assert_eq!(code, 200, "{body}");
    converged_and_identical(&c).await;
    let mine = check::server_rows(&c, &victim).await.unwrap();
    assert!(
        mine.values()
            .flat_map(|v| v.as_array().unwrap())
            .any(|r| r["Stud_id"] == k),
        "{victim} did not apply a write after its restart"
    );
}

/// Concurrent writes that each fit in a NATS message but not together: the primary's group
/// commit must split the group rather than fail it (nats-server here takes 1 MiB).
#[tokio::test(flavor = "multi_thread")]
async fn large_concurrent_writes_are_split_across_entries() {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    let wide = "w".repeat(3_500);
    let writes = (0..12i64).map(|w| {
        let rows: Vec<Value> = (0..170).map(|i| row(w * 200 + i, &wide, w)).collect();
        let c = &c;
        async move { c.post("/write", json!({ "data": rows })).await }
    });
    for (w, (code, body)) in futures::future::join_all(writes)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(code, 200, "write {w}: {}", body["message"]);
    }
    let (keys, _) = read(&c, 0, 4095).await;
    assert_eq!(keys.len(), 12 * 170);
    converged_and_identical(&c).await;
}

/// Durable mode (`--sqlite-sync full`: every replica fsyncs each commit): 20 concurrent
/// writers; every acknowledged row is readable, the replicas agree, and the writes went into
/// fewer WAL entries than there were writes (group commit).
#[tokio::test(flavor = "multi_thread")]
async fn durable_mode_groups_concurrent_writes_and_keeps_them() {
    let c = LocalCluster::start_with(testkit::ClusterOptions {
        manager_args: vec!["--sqlite-sync".into(), "full".into()],
        ..Default::default()
    })
    .await;
    c.init(testkit::workload("a1")).await;
    const WRITERS: i64 = 20;
    const PER_WRITER: i64 = 20;
    let writers = (0..WRITERS).map(|w| {
        let c = &c;
        async move {
            for i in 0..PER_WRITER {
                // Spread over the four shards of A1 (4096 keys each).
                let k = (w % 4) * 4096 + w * PER_WRITER + i;
                let got = c.post("/write", json!({"data": [row(k, "d", w)]})).await;
                assert_eq!(got.0, 200, "write of key {k}: {}", got.1);
            }
        }
    });
    futures::future::join_all(writers).await;
    let (st, _) = converged_and_identical(&c).await;
    let (keys, _) = read(&c, 0, 4 * 4096 - 1).await;
    assert_eq!(keys.len() as i64, WRITERS * PER_WRITER);
    // Each shard's log: its term marker(s) plus the data entries.
    let entries: u64 = st["shards"]
        .as_array()
        .expect("shards in /status")
        .iter()
        .map(|s| s["wal_last_seq"].as_u64().expect("wal_last_seq"))
        .sum();
    assert!(
        entries < (WRITERS * PER_WRITER) as u64,
        "{entries} WAL entries for {} writes: concurrent writes were not grouped",
        WRITERS * PER_WRITER
    );
}

/// Many concurrent single-row writes to one shard: the gateway sends the ones that queue
/// behind its write in flight as `/write_batch` requests (counted in its metrics), and each
/// write still gets its own answer: 409 for the keys that exist, 200 for the others, which
/// are all readable afterwards while the existing rows keep their values. Then many
/// concurrent reads: they share `/read_batch` requests and each gets exactly its own rows.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_share_batches_and_keep_their_own_answers() {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    let existing: Vec<Value> = (0..20).map(|k| row(k, "old", 1)).collect();
    let (code, body) = c.post("/write", json!({ "data": existing })).await;
    assert_eq!(code, 200, "{body}");
    const WRITES: i64 = 120;
    let writes = (0..WRITES).map(|k| {
        let c = &c;
        async move {
            (
                k,
                c.post("/write", json!({"data": [row(k, "new", 2)]})).await,
            )
        }
    });
    for (k, (code, body)) in futures::future::join_all(writes).await {
        if k < 20 {
            assert_eq!(code, 409, "key {k} exists: {body}");
            assert_eq!(body["code"], "duplicate_key", "key {k}: {body}");
            assert!(
                body["message"].as_str().unwrap().contains(&k.to_string()),
                "{body}"
            );
        } else {
            assert_eq!(code, 200, "key {k}: {body}");
            assert_eq!(body["message"], "1 Data entries added", "key {k}");
        }
    }
    let (_, body) = read(&c, 0, WRITES - 1).await;
    let rows = body["data"].as_array().unwrap();
    assert_eq!(rows.len() as i64, WRITES);
    for r in rows {
        let k = r["Stud_id"].as_i64().unwrap();
        let want = if k < 20 { "old" } else { "new" };
        assert_eq!(r["Stud_name"], want, "{r}");
    }
    let page = gateway_metrics(&c).await;
    let count = |name: &str| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(&format!("{name}{{shard=\"sh1\"}}")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (batches, batched) = (
        count("shardline_gateway_write_batches_total"),
        count("shardline_gateway_batched_writes_total"),
    );
    assert!(
        batches >= 1.0 && batched >= 2.0 * batches,
        "{WRITES} concurrent writes to sh1 went in {batches} batches of {batched} writes"
    );
    converged_and_identical(&c).await;

    // Reads: each range's own keys, whatever batch it travelled in.
    const READS: i64 = 200;
    let reads = (0..READS).map(|i| {
        let c = &c;
        let (low, high) = (i % 100, i % 100 + i % 7);
        async move {
            let got = c
                .post("/read", json!({"Stud_id": {"low": low, "high": high}}))
                .await;
            (low, high, got)
        }
    });
    for (low, high, (code, body)) in futures::future::join_all(reads).await {
        assert_eq!(code, 200, "[{low}, {high}]: {body}");
        let keys: Vec<i64> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["Stud_id"].as_i64().unwrap())
            .collect();
        let want: Vec<i64> = (low..=high.min(WRITES - 1)).collect();
        assert_eq!(keys, want, "[{low}, {high}]");
    }
    let page = gateway_metrics(&c).await;
    let batches: f64 = page
        .lines()
        .filter(|l| l.starts_with("shardline_gateway_read_batches_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(batches >= 1.0, "{READS} concurrent reads went in no batch");
}

/// `/read_batch` on a shard server: one frame per read, in order, each what `/read` would
/// have answered; a malformed batch is a 400.
#[tokio::test(flavor = "multi_thread")]
async fn read_batch_answers_each_read_in_its_own_frame() {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    let rows: Vec<Value> = (0..10).map(|k| row(k, "r", k)).collect();
    assert_eq!(c.post("/write", json!({ "data": rows })).await.0, 200);
    let st = check::wait_converged(&c, CONVERGE).await.unwrap();
    let server = primary_of(&st, "sh1").expect("sh1 has a primary");
    let held = |s: &str| replicas_of(&st)[s].contains(&server);
    let other = ["sh2", "sh3", "sh4"].into_iter().find(|s| !held(s));
    let addr = c.server_addr_from_log(&server).expect("listening line");
    let url = format!("http://{addr}/read_batch");
    let mut reads = vec![
        json!({"shard": "sh1", "Stud_id": {"low": 2, "high": 4}}),
        json!({"shard": "sh1", "Stud_id": {"low": 5, "high": 1}}),
        json!({"shard": "sh1", "Stud_id": {"low": 100, "high": 200}}),
        json!({"shard": "sh1", "Other": {"low": 1, "high": 2}}),
    ];
    if let Some(sh) = other {
        reads.push(json!({"shard": sh, "Stud_id": {"low": 1, "high": 2}}));
    }
    let resp = c
        .client()
        .post(&url)
        .json(&json!({ "reads": reads }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/x-shardline-frames"
    );
    let all = resp.bytes().await.unwrap();
    let frames = shardline::internal::frames::split(&all).expect("well framed");
    assert_eq!(frames.len(), reads.len());
    let body = |i: usize| -> Value { serde_json::from_slice(&frames[i].1).unwrap() };
    assert_eq!(frames[0].0, 200);
    assert_eq!(
        body(0),
        json!({"data": [row(2, "r", 2), row(3, "r", 3), row(4, "r", 4)], "status": "success"})
    );
    assert_eq!(frames[1].0, 400);
    assert!(body(1)["message"]
        .as_str()
        .unwrap()
        .contains("greater than"));
    assert_eq!((frames[2].0, body(2)["data"].clone()), (200, json!([])));
    assert_eq!(frames[3].0, 400);
    assert!(body(3)["message"].as_str().unwrap().contains("`Other`"));
    if other.is_some() {
        assert_eq!(frames[4].0, 404, "{}", body(4));
        assert_eq!(body(4)["code"], "not_found");
    }
    for (bad, why) in [
        (json!({"reads": []}), "empty"),
        (json!({"reads": vec![reads[0].clone(); 129]}), "at most 128"),
        (json!({"reads": [reads[0]], "x": 1}), "unknown field"),
        (
            json!({"reads": [{"shard": "sh1"}]}),
            "missing the key column",
        ),
    ] {
        let resp = c.client().post(&url).json(&bad).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{why}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(why),
            "{why}: {body}"
        );
    }
}

/// The gateway's `/metrics` page.
async fn gateway_metrics(c: &LocalCluster) -> String {
    let resp = c
        .client()
        .get(format!("{}/metrics", c.gateway_url()))
        .send()
        .await
        .expect("GET /metrics");
    resp.text().await.expect("metrics text")
}

/// `/write_batch` on a shard server: each write checked and answered on its own; a server
/// that does not lead the shard refuses the whole batch with 421 and writes nothing; a
/// malformed batch is a 400.
#[tokio::test(flavor = "multi_thread")]
async fn write_batch_answers_each_write_and_only_the_primary_takes_it() {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    let st = check::status(&c).await.unwrap();
    let primary = primary_of(&st, "sh1").expect("sh1 has a primary");
    let follower = replicas_of(&st)
        .remove("sh1")
        .expect("sh1 has replicas")
        .into_iter()
        .find(|s| *s != primary)
        .expect("sh1 has a follower");
    let url = |name: &str| {
        let addr = c
            .server_addr_from_log(name)
            .unwrap_or_else(|| panic!("no listening line in {name}'s server.log"));
        format!("http://{addr}/write_batch")
    };
    let send = |url: String, body: Value| {
        let http = c.client().clone();
        async move {
            let resp = http.post(url).json(&body).send().await.expect("sent");
            let code = resp.status().as_u16();
            (code, resp.json::<Value>().await.expect("JSON answer"))
        }
    };
    let batch = json!({"shard": "sh1", "writes": [
        [row(1, "a", 1), row(2, "a", 1)],
        [{"Stud_id": "3", "Stud_name": "b", "Stud_marks": 1}],
        [],
        [row(5000, "c", 1)],
        [row(1, "d", 1)],
        [row(4, "e", 1)],
    ]});
    let (code, body) = send(url(&follower), batch.clone()).await;
    assert_eq!(code, 421, "{body}");
    assert_eq!(body["code"], "not_primary");
    let (keys, _) = read(&c, 0, 4095).await;
    assert!(keys.is_empty(), "a refused batch wrote {keys:?}");

    let (code, body) = send(url(&primary), batch).await;
    assert_eq!(code, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    let got: Vec<u64> = results
        .iter()
        .map(|r| r["http"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [200, 400, 400, 400, 409, 200], "{body}");
    assert!(results[0].get("error").is_none(), "{body}");
    assert_eq!(results[1]["error"]["code"], "bad_request");
    assert!(results[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("data[0]"));
    assert!(results[2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("empty"));
    assert!(results[3]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("outside shard sh1"));
    assert_eq!(results[4]["error"]["code"], "duplicate_key");
    let (keys, _) = read(&c, 0, 4095).await;
    assert_eq!(keys, [1, 2, 4]);

    for (bad, why) in [
        (json!({"shard": "sh1", "writes": []}), "empty"),
        (
            json!({"shard": "sh1", "writes": [[row(9, "x", 1)]], "x": 1}),
            "unknown field",
        ),
        (
            json!({"shard": "sh1", "writes": vec![vec![row(9, "x", 1)]; 129]}),
            "at most 128",
        ),
        (json!({"shard": "sh1"}), "writes"),
    ] {
        let (code, body) = send(url(&primary), bad).await;
        assert_eq!(code, 400, "{why}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(why),
            "{why}: {body}"
        );
    }
    let (keys, _) = read(&c, 0, 4095).await;
    assert_eq!(keys, [1, 2, 4], "a malformed batch wrote something");
}

/// Writes that each fit the shard server's body limit but not together: the batch the
/// gateway forms is refused whole (413, nothing applied) and each write is then sent alone,
/// so every one commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_the_body_limit_is_sent_one_write_at_a_time() {
    let c = LocalCluster::start_with(testkit::ClusterOptions {
        env: vec![("SHARDLINE_BODY_LIMIT".into(), "65536".into())],
        ..Default::default()
    })
    .await;
    c.init(testkit::workload("a1")).await;
    let name = "n".repeat(1_000);
    const WRITES: i64 = 24;
    const ROWS: i64 = 40;
    let writes = (0..WRITES).map(|w| {
        let rows: Vec<Value> = (0..ROWS).map(|i| row(w * ROWS + i, &name, w)).collect();
        let c = &c;
        async move { (w, c.post("/write", json!({ "data": rows })).await) }
    });
    for (w, (code, body)) in futures::future::join_all(writes).await {
        assert_eq!(code, 200, "write {w}: {}", body["message"]);
    }
    let (keys, _) = read(&c, 0, 4095).await;
    assert_eq!(keys.len() as i64, WRITES * ROWS);
    converged_and_identical(&c).await;
}
