//! Replica-level faults with real processes (issue 12, items 4 and 7): what a paused replica
//! and a deposed-but-running primary answer to reads at each consistency level.
//!
//! The shard servers are asked directly (their addresses from their logs),
//! not through the gateway, so what is checked is the server's own refusal.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::workload::{primary_of, replicas_of};
use testkit::{json, wait_until, LocalCluster, Method, Value};

const FAILOVER: Duration = Duration::from_secs(30);
/// sh1 of workload a1 holds keys [0, 4096).
const SH1: (i64, i64) = (0, 4095);

async fn start_a1() -> LocalCluster {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    c
}

async fn status(c: &LocalCluster) -> Value {
    c.status_within(Duration::from_secs(10)).await
}

/// The address shard server `name` listens on, from the last "shard-server listening" line
/// of its log.
fn server_addr(c: &LocalCluster, name: &str) -> String {
    c.server_addr_from_log(name)
        .unwrap_or_else(|| panic!("no listening line in {name}'s server.log"))
}

/// Reads all of sh1 from the server at `addr` at `level`; the status and the keys read.
async fn read_sh1(c: &LocalCluster, addr: &str, level: &str) -> (u16, Value, BTreeSet<i64>) {
    let body = json!({"shard": "sh1", "Stud_id": {"low": SH1.0, "high": SH1.1}});
    let url = format!("http://{addr}/read?consistency={level}");
    let (code, v) = testkit::http::send(c.client(), Method::POST, &url, Some(&body)).await;
    let keys = v["data"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|r| r["Stud_id"].as_i64()).collect())
        .unwrap_or_default();
    (code, v, keys)
}

/// Inserts keys of sh1 one after another through the gateway until stopped; the keys
/// acknowledged so far.
struct Writer {
    acked: Arc<Mutex<BTreeSet<i64>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(c: &LocalCluster) -> Writer {
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (http, url) = (c.client().clone(), format!("{}/write", c.gateway_url()));
        let task = tokio::spawn({
            let (acked, stop) = (acked.clone(), stop.clone());
            async move {
                for k in SH1.0..=SH1.1 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let row = json!({"data": [{"Stud_id": k, "Stud_name": "w", "Stud_marks": 1}]});
                    let (code, _) =
                        testkit::http::send(&http, Method::POST, &url, Some(&row)).await;
                    if code == 200 {
                        acked.lock().unwrap().insert(k);
                    }
                }
            }
        });
        Writer { acked, stop, task }
    }

    fn acked(&self) -> BTreeSet<i64> {
        self.acked.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
    }
}

/// A secondary paused for 3 s while writes continue refuses `any` reads after it resumes
/// until it has caught up: every read it answers holds every write acknowledged before it
/// resumed, and the first answers are refusals naming the shard, the server and its staleness.
#[tokio::test(flavor = "multi_thread")]
async fn paused_replica_refuses_reads_until_caught_up() {
    let c = start_a1().await;
    let st = status(&c).await;
    let primary = primary_of(&st, "sh1").expect("sh1 has a primary");
    let victim = replicas_of(&st, "sh1")
        .into_iter()
        .find(|r| *r != primary)
        .expect("sh1 has a secondary");
    let addr = server_addr(&c, &victim);
    let writer = Writer::start(&c);
    let fresh = wait_until(Duration::from_secs(20), || async {
        writer.acked().len() >= 20 && read_sh1(&c, &addr, "any").await.0 == 200
    })
    .await;
    assert!(fresh, "{victim} never served an `any` read");

    c.stop_server(&victim);
    let before = writer.acked().len();
    let moved = wait_until(Duration::from_secs(20), || async {
        writer.acked().len() >= before + 30
    })
    .await;
    assert!(moved, "writes stalled while a secondary was paused");
    tokio::time::sleep(Duration::from_secs(3)).await; // the fault: a 3 s pause
    let acked_before_resume = writer.acked();
    c.cont_server(&victim);

    let mut refusals = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let served = loop {
        let (code, body, keys) = read_sh1(&c, &addr, "any").await;
        if code == 200 {
            break keys;
        }
        assert_eq!(code, 503, "{body}");
        assert_eq!(body["code"], "unavailable", "{body}");
        refusals.push(body["message"].as_str().unwrap_or_default().to_owned());
        assert!(
            Instant::now() < deadline,
            "{victim} still refuses after 20 s: {refusals:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    writer.stop().await;
    let missing: Vec<_> = acked_before_resume.difference(&served).take(10).collect();
    println!(
        "{victim} refused {} reads after resuming, e.g. {:?}",
        refusals.len(),
        refusals.first()
    );
    assert!(
        missing.is_empty(),
        "{victim} served an `any` read missing acknowledged writes {missing:?} \
         ({} acked before it resumed, {} read)",
        acked_before_resume.len(),
        served.len()
    );
    if let Some(m) = refusals.first() {
        assert!(
            m.contains("sh1") && m.contains(&victim),
            "refusal must name the shard and server: {m}"
        );
    }
}

/// A primary paused past the failure timeout is replaced; once resumed it refuses
/// `primary` and `linearizable` reads (the new primary serves them).
#[tokio::test(flavor = "multi_thread")]
async fn deposed_primary_refuses_primary_and_linearizable_reads() {
    let c = start_a1().await;
    let st = status(&c).await;
    let old = primary_of(&st, "sh1").expect("sh1 has a primary");
    let old_addr = server_addr(&c, &old);
    let writer = Writer::start(&c);
    for level in ["primary", "linearizable"] {
        let ok = wait_until(Duration::from_secs(20), || async {
            read_sh1(&c, &old_addr, level).await.0 == 200
        })
        .await;
        assert!(ok, "the primary {old} never served a `{level}` read");
    }
    let secondary = replicas_of(&st, "sh1")
        .into_iter()
        .find(|r| *r != old)
        .expect("sh1 has a secondary");
    let (code, body, _) = read_sh1(&c, &server_addr(&c, &secondary), "primary").await;
    assert_eq!(code, 421, "a secondary refuses `primary` reads: {body}");

    c.stop_server(&old);
    let deadline = Instant::now() + FAILOVER;
    let new = loop {
        let st = status(&c).await;
        if let Some(p) = primary_of(&st, "sh1").filter(|p| *p != old) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no new primary within {FAILOVER:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    c.cont_server(&old);
    // From the moment it resumes, for two seconds, it never answers such a read.
    let until = Instant::now() + Duration::from_secs(2);
    let mut answers = 0;
    while Instant::now() < until {
        for level in ["primary", "linearizable"] {
            let (code, body, _) = read_sh1(&c, &old_addr, level).await;
            assert!(
                code == 421 || code == 503,
                "deposed primary {old} answered a `{level}` read with {code}: {body}"
            );
            answers += 1;
        }
    }
    assert!(answers > 2, "too few reads tried ({answers})");
    let new_addr = server_addr(&c, &new);
    let ok = wait_until(Duration::from_secs(20), || async {
        read_sh1(&c, &new_addr, "linearizable").await.0 == 200
    })
    .await;
    assert!(
        ok,
        "the new primary {new} never served a `linearizable` read"
    );
    writer.stop().await;
}

/// A replica replaying a long backlog (here ~12 MB of log: 4,000 rows of 3 KB inserted and
/// 2,000 of them updated while it was paused) still answers `/heartbeat` within the
/// manager's timeout (250 ms): big batches are applied off the runtime's thread.
#[tokio::test(flavor = "multi_thread")]
async fn catching_up_replica_keeps_answering_heartbeats() {
    const ROWS: i64 = 4000;
    const PER_WRITE: i64 = 50;
    const UPDATES: i64 = 2000;
    const CONCURRENCY: i64 = 16;
    let c = start_a1().await;
    let st = status(&c).await;
    let primary = primary_of(&st, "sh1").expect("sh1 has a primary");
    let victim = replicas_of(&st, "sh1")
        .into_iter()
        .find(|r| *r != primary)
        .expect("sh1 has a secondary");
    let addr = server_addr(&c, &victim);
    let name = "x".repeat(3000);
    let row =
        move |k: i64, marks: i64| json!({"Stud_id": k, "Stud_name": name, "Stud_marks": marks});
    let ok = wait_until(Duration::from_secs(20), || async {
        read_sh1(&c, &addr, "any").await.0 == 200
    })
    .await;
    assert!(ok, "{victim} never served a read");
    c.stop_server(&victim);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let base = c.gateway_url();
        let http = c.client().clone();
        let row = row.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in (w..ROWS / PER_WRITE).step_by(CONCURRENCY as usize) {
                let data: Vec<Value> = (chunk * PER_WRITE..(chunk + 1) * PER_WRITE)
                    .map(|k| row(k, 0))
                    .collect();
                let url = format!("{base}/write");
                let body = json!({ "data": data });
                // Failures are not this test's subject (a busy machine may see one).
                let _ = testkit::http::send(&http, Method::POST, &url, Some(&body)).await;
            }
            for i in (w..UPDATES).step_by(CONCURRENCY as usize) {
                let url = format!("{base}/update");
                let body = json!({"Stud_id": i, "data": row(i, i)});
                let _ = testkit::http::send(&http, Method::PUT, &url, Some(&body)).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    println!("writes while {victim} was paused took {:?}", t.elapsed());
    let heartbeat = |http: reqwest::Client, addr: String| async move {
        let url = format!("http://{addr}/heartbeat");
        let (code, v) = testkit::http::send(&http, Method::GET, &url, None).await;
        assert_eq!(code, 200, "{v}");
        v["shards"]["sh1"]["applied"].as_u64().unwrap_or(0)
    };
    let target = heartbeat(c.client().clone(), server_addr(&c, &primary)).await;
    assert!(
        target > 100,
        "too little was written while {victim} was paused ({target})"
    );
    c.cont_server(&victim);
    let resumed = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut polls = 0;
    loop {
        let asked = Instant::now();
        let applied = heartbeat(c.client().clone(), addr.clone()).await;
        let took = asked.elapsed();
        slowest = slowest.max(took);
        polls += 1;
        if applied >= target {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(120),
            "{victim} did not catch up to {target} within 120 s (at {applied})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{victim} replayed up to {target} in {:?}; slowest of {polls} heartbeats: {slowest:?}",
        resumed.elapsed()
    );
    assert!(
        slowest < Duration::from_millis(250),
        "a heartbeat took {slowest:?} while {victim} caught up"
    );
    // Caught up and connected: it says so within a few polls of the stream.
    let url = format!("http://{addr}/heartbeat");
    let ok = wait_until(Duration::from_secs(10), || async {
        let (_, v) = testkit::http::send(c.client(), Method::GET, &url, None).await;
        v["nats_connected"] == true
            && v["shards"]["sh1"]["stale_ms"]
                .as_u64()
                .is_some_and(|ms| ms < 1000)
    })
    .await;
    assert!(ok, "{victim} never reported itself connected and fresh");
}

/// A primary that cannot commit (both its secondaries paused) says for how long in its
/// heartbeat (`stalled_ms`), and stops saying so once the write is answered.
#[tokio::test(flavor = "multi_thread")]
async fn primary_reports_how_long_writes_have_waited() {
    let c = start_a1().await;
    let st = status(&c).await;
    let primary = primary_of(&st, "sh1").expect("sh1 has a primary");
    let addr = server_addr(&c, &primary);
    let secondaries: Vec<String> = replicas_of(&st, "sh1")
        .into_iter()
        .filter(|r| *r != primary)
        .collect();
    let stalled = |http: reqwest::Client, addr: String| async move {
        let url = format!("http://{addr}/heartbeat");
        let (_, v) = testkit::http::send(&http, Method::GET, &url, None).await;
        v["shards"]["sh1"]["stalled_ms"].as_u64()
    };
    assert_eq!(stalled(c.client().clone(), addr.clone()).await, None);
    for s in &secondaries {
        c.stop_server(s);
    }
    // Straight to the primary, so the gateway's failover plays no part.
    let write = {
        let (http, url) = (c.client().clone(), format!("http://{addr}/write"));
        tokio::spawn(async move {
            let row = json!({"shard": "sh1", "data": [{"Stud_id": 7, "Stud_name": "s", "Stud_marks": 1}]});
            testkit::http::send(&http, Method::POST, &url, Some(&row)).await
        })
    };
    let seen = wait_until(Duration::from_secs(4), || async {
        stalled(c.client().clone(), addr.clone())
            .await
            .is_some_and(|ms| ms >= 500)
    })
    .await;
    for s in &secondaries {
        c.cont_server(s);
    }
    assert!(seen, "{primary} never reported a write waiting 500 ms");
    let (code, body) = write.await.expect("write task");
    println!("the stalled write was answered {code}: {body}");
    let cleared = wait_until(Duration::from_secs(10), || async {
        stalled(c.client().clone(), addr.clone()).await.is_none()
    })
    .await;
    assert!(cleared, "{primary} still reports a stalled write");
}

/// A shard server that is paused when its manager dies outlives the manager: the kernel sends
/// the server's orphaned process group SIGHUP (and SIGCONT), which used to kill it, so every
/// paused replica was lost whenever the manager crashed or was restarted.
#[tokio::test(flavor = "multi_thread")]
async fn paused_server_outlives_its_manager() {
    let mut c = start_a1().await;
    let name = "Server1";
    let addr = server_addr(&c, name);
    let pid = c.stop_server(name);
    c.manager().kill();
    c.cont_server(name);
    let url = format!("http://{addr}/heartbeat");
    let answered = wait_until(Duration::from_secs(10), || async {
        testkit::http::send(c.client(), Method::GET, &url, None)
            .await
            .0
            == 200
    })
    .await;
    assert!(
        answered && testkit::pids::pid_alive(pid),
        "server {name} (pid {pid}) did not survive its manager's death while paused"
    );
}
