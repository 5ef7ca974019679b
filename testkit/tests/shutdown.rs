//! Graceful shutdown under load: SIGTERM to the gateway and then to a shard primary while
//! writers keep writing. The gateway drains its requests in flight and exits 0; the shard
//! server stops cleanly (its log says so) and the manager brings it back. Afterwards every
//! write that was answered 200 is there, on identical replicas, and nothing else is.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use testkit::{check, json, pid_alive, signal, LocalCluster};

const WRITERS: i64 = 4;
const PER_WRITER: i64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_loses_no_acknowledged_write() {
    let mut c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let http = c.client().clone();
            let url = format!("{}/write", c.gateway_url());
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut tried = Vec::new();
                // Keys spread over the four shards of A1 ([0, 16384)).
                for i in 0..PER_WRITER {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let k = w * 4096 + i;
                    tried.push(k);
                    let row = json!({"data": [{"Stud_id": k, "Stud_name": format!("w{w}"), "Stud_marks": i}]});
                    match http
                        .post(&url)
                        .json(&row)
                        .timeout(Duration::from_secs(20))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => acked.push(k),
                        Ok(_) => {}
                        // The gateway is restarting: not acknowledged, try the next key later.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                (acked, tried)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = tokio::task::block_in_place(|| c.gateway().term());
    assert!(
        status.is_some_and(|s| s.success()),
        "gateway did not exit cleanly on SIGTERM: {status:?}"
    );
    assert!(
        c.gateway().log().contains("gateway stopped"),
        "{}",
        c.gateway().log()
    );
    c.restart_gateway().await;

    tokio::time::sleep(Duration::from_millis(800)).await;
    let st = check::status(&c).await.expect("status");
    let victim = check::primary_of(&st, "sh1").expect("sh1 primary");
    let pid = c.server_pid(&victim).expect("pid");
    signal(pid, libc::SIGTERM);
    let gone = c
        .wait_until(Duration::from_secs(15), || async { !pid_alive(pid) })
        .await;
    assert!(
        gone,
        "{victim} (pid {pid}) did not stop within 15 s of SIGTERM"
    );
    let log = std::fs::read_to_string(c.servers_dir().join(&victim).join("server.log"))
        .unwrap_or_default();
    assert!(
        log.contains("shard-server stopped"),
        "{victim} did not stop cleanly:\n{log}"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeSet::new();
    let mut tried = BTreeSet::new();
    for w in writers {
        let (a, t) = w.await.expect("writer");
        acked.extend(a);
        tried.extend(t);
    }
    assert!(
        acked.len() > 20,
        "too few writes acknowledged to mean anything: {}",
        acked.len()
    );

    check::wait_converged(&c, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    check::replicas_identical(&c)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = check::all_rows(&c).await.expect("read all");
    let present: BTreeSet<i64> = rows.iter().filter_map(|r| r["Stud_id"].as_i64()).collect();
    let missing: Vec<_> = acked.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes missing: {missing:?}"
    );
    let unknown: Vec<_> = present.difference(&tried).collect();
    assert!(unknown.is_empty(), "rows nobody wrote: {unknown:?}");
    for r in &rows {
        assert!(
            r["Stud_name"].is_string() && r["Stud_marks"].is_i64(),
            "half-written row {r}"
        );
    }
    println!(
        "{} writes tried, {} acknowledged, {} present",
        tried.len(),
        acked.len(),
        present.len()
    );
}
