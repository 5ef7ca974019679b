//! The read levels against a real cluster (nats-server + manager + gateway + shard servers):
//! concurrent clients write unique keys and read at `primary` or `linearizable`, and every read
//! that began after a write was acknowledged must return it — with the cluster healthy, and
//! while a primary is killed (then a read may fail, but only with a 503 that changed nothing,
//! and once the shard has a new primary every acknowledged write is readable again).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use testkit::check::primary_of;
use testkit::{json, wait_until, LocalCluster, Value};

/// Clients at once, and operations (a write, then a read) per client: bounded.
const CLIENTS: usize = 6;
const OPS: usize = 15;
const FAILOVER: Duration = Duration::from_secs(30);

/// Client `id`'s `j`-th key: distinct for every (id, j), spread over the A1 layout's four
/// shards (97 is odd, so `n * 97 mod 16384` takes each value once).
fn key_of(id: usize, j: usize) -> i64 {
    ((id * OPS + j) as i64 * 97) % 16_384
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    writes_ok: usize,
    writes_failed: usize,
    reads_ok: usize,
    reads_failed: usize,
}

/// Every key in the A1 layout, read at `level`; `Ok(keys)` or the failure.
async fn read_all(c: &LocalCluster, level: &str) -> Result<BTreeSet<i64>, (u16, Value)> {
    let (code, body) = c
        .post(
            "/read",
            json!({"Stud_id": {"low": 0, "high": 16_383}, "consistency": level}),
        )
        .await;
    if code != 200 {
        return Err((code, body));
    }
    Ok(body["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|r| r["Stud_id"].as_i64().expect("integer key"))
        .collect())
}

/// One client: `OPS` times, write a new key, then read everything at `level` and check the
/// read holds every key acknowledged (by any client) before it was sent. With `faults`, a
/// failed request is allowed if a read's failure is a 503 that changed nothing.
async fn client(
    c: &LocalCluster,
    id: usize,
    level: &str,
    acked: &Mutex<BTreeSet<i64>>,
    faults: bool,
) -> Tally {
    let mut t = Tally::default();
    for j in 0..OPS {
        let k = key_of(id, j);
        let row = json!({"Stud_id": k, "Stud_name": format!("c{id}"), "Stud_marks": j});
        let (code, body) = c.post("/write", json!({"data": [row]})).await;
        if code == 200 {
            acked.lock().unwrap().insert(k);
            t.writes_ok += 1;
        } else {
            assert!(faults, "client {id}: write of {k}: {code} {body}");
            t.writes_failed += 1;
        }

        let before = acked.lock().unwrap().clone();
        match read_all(c, level).await {
            Ok(seen) => {
                let missing: Vec<_> = before.difference(&seen).collect();
                assert!(
                    missing.is_empty(),
                    "client {id}: a {level} read missed acknowledged keys {missing:?}"
                );
                t.reads_ok += 1;
            }
            Err((code, body)) => {
                assert!(faults, "client {id}: {level} read: {code} {body}");
                assert_eq!(code, 503, "client {id}: {level} read: {body}");
                assert_eq!(body["outcome"], "not_applied", "{body}");
                t.reads_failed += 1;
            }
        }
    }
    t
}

/// Runs `CLIENTS` clients, half reading at `primary` and half at `linearizable`.
async fn clients(c: &LocalCluster, acked: &Mutex<BTreeSet<i64>>, faults: bool) -> Tally {
    let runs = (0..CLIENTS).map(|id| {
        let level = if id % 2 == 0 {
            "linearizable"
        } else {
            "primary"
        };
        client(c, id, level, acked, faults)
    });
    let mut total = Tally::default();
    for t in futures::future::join_all(runs).await {
        total.writes_ok += t.writes_ok;
        total.writes_failed += t.writes_failed;
        total.reads_ok += t.reads_ok;
        total.reads_failed += t.reads_failed;
    }
    total
}

async fn start_a1() -> LocalCluster {
    let c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn primary_and_linearizable_reads_see_every_acknowledged_write() {
    let c = start_a1().await;
    let acked = Mutex::new(BTreeSet::new());
    let t = clients(&c, &acked, false).await;
    println!("healthy: {t:?}");
    assert_eq!(t.writes_ok, CLIENTS * OPS);
    assert_eq!(t.reads_ok, CLIENTS * OPS);

    // Unknown levels are refused, naming the allowed ones.
    let (code, body) = c
        .post(
            "/read",
            json!({"Stud_id": {"low": 0, "high": 1}, "consistency": "majority"}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    for level in ["any", "primary", "linearizable"] {
        assert!(message.contains(level), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_during_a_failover_fail_cleanly_or_see_every_acknowledged_write() {
    let c = start_a1().await;
    let acked = Mutex::new(BTreeSet::new());
    let killer = async {
        // Once the clients are under way, kill -9 the primary of sh1.
        let started = wait_until(FAILOVER, || async { acked.lock().unwrap().len() >= 10 }).await;
        assert!(started, "no writes acknowledged");
        let (_, st) = c.get("/status").await;
        let primary = primary_of(&st, "sh1").expect("sh1 has a primary");
        c.kill_server(&primary);
        let acked_then = acked.lock().unwrap().len();
        (primary, acked_then)
    };
    let (t, (killed, acked_then)) = futures::join!(clients(&c, &acked, true), killer);
    println!("killed {killed} after {acked_then} acknowledged writes: {t:?}");
    assert!(t.reads_ok > 0 && t.writes_ok > 0, "{t:?}");
    // The kill came while the clients were still writing (and reading every shard).
    assert!(acked_then < t.writes_ok, "{acked_then} {t:?}");

    // Once sh1 has another primary, every acknowledged write is readable at both levels.
    for level in ["linearizable", "primary"] {
        let acked = acked.lock().unwrap().clone();
        let ok = wait_until(FAILOVER, || async {
            matches!(read_all(&c, level).await, Ok(seen) if seen.is_superset(&acked))
        })
        .await;
        assert!(
            ok,
            "{level} reads after the failover: {:?}",
            read_all(&c, level).await
        );
    }
}
