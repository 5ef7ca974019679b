//! Prometheus metrics: the gateway, the manager and a shard server each serve `GET /metrics`
//! in the text format, and their counters move with the traffic and the failures that drive
//! them (requests per route template and status, per-shard write latency, heartbeat failures,
//! elections, respawns, replica progress, applied entries, commit latency).

use std::time::Duration;

use testkit::{json, ClusterOptions, LocalCluster, Value};

/// The value of the first sample whose line starts with `name{` and contains every label
/// (`key="value"`), or of `name` without labels; 0 when absent.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(c: &LocalCluster, url: &str) -> String {
    let resp = c
        .client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status(), 200, "GET {url}");
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        ctype.starts_with("text/plain"),
        "{url}: content-type {ctype}"
    );
    resp.text().await.expect("metrics body")
}

/// `host:port` of a shard server, from the cluster metadata in NATS KV.
async fn server_addr(c: &LocalCluster, server: &str) -> String {
    let nats = async_nats::connect(c.nats().url()).await.expect("nats");
    let js = async_nats::jetstream::new(nats);
    let kv = js.get_key_value("shardline_meta").await.expect("bucket");
    let entry = kv.get("cluster").await.expect("kv get").expect("metadata");
    let meta: Value = serde_json::from_slice(&entry).expect("metadata JSON");
    meta["servers"][server]["addr"]
        .as_str()
        .unwrap_or_else(|| panic!("no addr for {server} in {meta}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_move() {
    let c = LocalCluster::start_with(ClusterOptions {
        manager_args: vec!["--heartbeat-ms".into(), "200".into()],
        ..Default::default()
    })
    .await;
    c.init(testkit::workload("a1")).await;
    let gw = format!("{}/metrics", c.gateway_url());

    let before = scrape(&c, &gw).await;
    let writes = |from: i64| {
        let rows: Vec<Value> = (from..from + 5)
            .map(|k| json!({"Stud_id": k, "Stud_name": "M", "Stud_marks": 1}))
            .collect();
        json!({ "data": rows })
    };
    for i in 0..4 {
        let (code, body) = c.post("/write", writes(i * 10)).await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, _) = c
        .post("/read", json!({"Stud_id": {"low": 0, "high": 100}}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(c.post("/write", json!({"data": []})).await.0, 400);
    assert_eq!(c.get("/read/Server0").await.0, 200);
    assert_eq!(c.get("/no/such/route").await.0, 404);

    let after = scrape(&c, &gw).await;
    let write_ok = [
        ("endpoint", "/write"),
        ("method", "POST"),
        ("status", "200"),
    ];
    let req = "shardline_gateway_requests_total";
    assert_eq!(
        sample(&after, req, &write_ok) - sample(&before, req, &write_ok),
        4.0,
        "{after}"
    );
    let bad = [("endpoint", "/write"), ("status", "400")];
    assert!(sample(&after, req, &bad) >= 1.0, "{after}");
    // The route template labels the series, never the raw path.
    assert!(sample(&after, req, &[("endpoint", "/read/{server}")]) >= 1.0);
    assert!(!after.contains("endpoint=\"/read/Server0\""), "{after}");
    assert!(sample(&after, req, &[("endpoint", "unmatched"), ("status", "404")]) >= 1.0);
    let lat = "shardline_gateway_request_duration_seconds_count";
    assert!(sample(&after, lat, &[("endpoint", "/read"), ("status", "200")]) >= 1.0);
    assert!(after.contains("shardline_gateway_request_duration_seconds_bucket{"));
    let shard_write = "shardline_gateway_shard_write_duration_seconds_count";
    assert!(
        sample(
            &after,
            shard_write,
            &[("shard", "sh1"), ("op", "write"), ("outcome", "committed")]
        ) >= 4.0,
        "{after}"
    );

    // A shard server: entries applied and, on sh1's primary, commit latency.
    let addr = server_addr(&c, "Server0").await;
    let srv = scrape(&c, &format!("http://{addr}/metrics")).await;
    assert!(
        sample(
            &srv,
            "shardline_server_applied_entries_total",
            &[("shard", "sh1")]
        ) >= 4.0,
        "{srv}"
    );
    assert!(srv.contains("shardline_server_apply_batch_entries_bucket{"));
    let st = testkit::check::status(&c).await.expect("status");
    let primary = testkit::check::primary_of(&st, "sh1").expect("sh1 primary");
    let paddr = server_addr(&c, &primary).await;
    let psrv = scrape(&c, &format!("http://{paddr}/metrics")).await;
    assert!(
        sample(
            &psrv,
            "shardline_server_commit_duration_seconds_count",
            &[("shard", "sh1"), ("outcome", "applied")]
        ) >= 4.0,
        "{psrv}"
    );

    // The manager: a killed server misses heartbeats, is respawned, and its shards get new
    // primaries when it led them.
    let mg = format!("{}/metrics", c.manager_url());
    // The lag gauges appear with the first heartbeat round that reports applied sequences.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let m0 = loop {
        let m = scrape(&c, &mg).await;
        if m.contains("shardline_manager_replica_lag{") || std::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(m0.contains("shardline_manager_replica_lag{"), "{m0}");
    // /init names the first primaries without an election; failover elects.
    let elections0 = sample(&m0, "shardline_manager_elections_total", &[]);
    c.kill_server(&primary);
    let moved = c
        .wait_until(Duration::from_secs(30), || async {
            let m = scrape(&c, &mg).await;
            sample(
                &m,
                "shardline_manager_heartbeat_failures_total",
                &[("server", &primary)],
            ) >= 1.0
                && sample(
                    &m,
                    "shardline_manager_respawns_total",
                    &[("server", &primary)],
                ) >= 1.0
                && sample(&m, "shardline_manager_elections_total", &[]) > elections0
        })
        .await;
    assert!(
        moved,
        "manager counters did not move after killing {primary}:\n{}",
        scrape(&c, &mg).await
    );
}
