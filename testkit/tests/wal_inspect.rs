//! The WAL as a NATS user sees it: `tests/python/wal_inspect.py`, written with nats-py (the
//! official Python client, from the project's `.venv`), lists the WAL_* streams, reads one
//! shard's entries in order, checks their JSON fields and Nats-Msg-Id headers, and reads each
//! replica's durable consumer — what `nats stream ls|view` and `nats consumer ls` show. Here
//! its view is compared with the writes this test made.

use std::time::Duration;

use testkit::{check, json, python, workspace_root, LocalCluster, Value};

#[tokio::test(flavor = "multi_thread")]
async fn nats_py_reads_the_log_in_order() {
    let py = python::venv_bin("python");
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;

    // sh1 holds [0, 4096): an insert of three rows, an update, a delete, in that order; a row
    // of sh2 in the same request becomes an entry of WAL_sh2 only.
    let rows = json!({"data": [
        {"Stud_id": 1, "Stud_name": "A", "Stud_marks": 10},
        {"Stud_id": 2, "Stud_name": "B", "Stud_marks": 20},
        {"Stud_id": 3, "Stud_name": "C", "Stud_marks": 30},
        {"Stud_id": 5000, "Stud_name": "D", "Stud_marks": 40}]});
    let steps = [
        ("/write", c.post("/write", &rows).await),
        (
            "/update",
            c.put(
                "/update",
                json!({"Stud_id": 2, "data": {"Stud_id": 2, "Stud_name": "B2", "Stud_marks": 21}}),
            )
            .await,
        ),
        ("/del", c.delete("/del", json!({"Stud_id": 3})).await),
    ];
    for (what, (code, body)) in &steps {
        assert_eq!(*code, 200, "{what}: {body}");
    }
    let st = check::wait_converged(&c, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let replicas = check::replicas_of(&st)["sh1"].join(",");

    let out = tokio::process::Command::new(&py)
        .arg(workspace_root().join("tests/python/wal_inspect.py"))
        .args([
            "--url",
            &c.nats().url(),
            "--shard",
            "sh1",
            "--replicas",
            &replicas,
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("wal_inspect.py did not finish in 60 s")
        .expect("cannot run python");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "wal_inspect.py failed: {stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("wal_inspect.py printed no JSON ({e}): {stderr}"));

    for s in ["WAL_sh1", "WAL_sh2", "WAL_sh3", "WAL_sh4"] {
        assert!(seen["streams"][s].is_u64(), "{s} not listed: {seen}");
    }
    // The data entries of sh1, in log order (term markers are the manager's).
    let data: Vec<&Value> = seen["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["op"] != "term")
        .collect();
    let ops: Vec<(&str, Value)> = data
        .iter()
        .map(|e| {
            let what = match e["op"].as_str() {
                Some("insert") => json!(e["rows"]
                    .as_array()
                    .map(|r| r.iter().map(|r| r["Stud_id"].clone()).collect::<Vec<_>>())),
                _ => e["key"].clone(),
            };
            (e["op"].as_str().unwrap_or("?"), what)
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("insert", json!([1, 2, 3])),
            ("update", json!(2)),
            ("delete", json!(3))
        ],
        "{seen}"
    );
    assert_eq!(data[1]["row"]["Stud_name"], "B2");
    let primary = check::primary_of(&st, "sh1").expect("sh1 primary");
    for e in &data {
        assert_eq!(e["by"], primary.as_str(), "{e}");
        assert!(e["msg_id"].is_string(), "{e}");
    }
    let seqs: Vec<u64> = seen["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // Every replica's consumer acknowledged the whole log, as /status says.
    let last = seen["last_seq"].as_u64().expect("last_seq");
    assert_eq!(Some(last), st["shards"][0]["wal_last_seq"].as_u64());
    for server in replicas.split(',') {
        assert_eq!(
            seen["consumers"][server]["ack_floor"].as_u64(),
            Some(last),
            "{server}: {seen}"
        );
    }
}
