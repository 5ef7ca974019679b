//! Cluster backup and restore (`GET /backup`, `POST /restore`) with real parts: a cluster
//! backed up while writers keep writing, the archive restored into a fresh cluster (its own
//! nats-server and directories). Every write acknowledged before the backup was asked for
//! must be there with its value, each shard must hold a prefix of its log, the replicas must
//! agree and the restored cluster must take new writes. Bad archives are refused with a 400
//! naming the problem, and the cluster stays unconfigured.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::{check, json, wait_for, ClusterOptions, LocalCluster, Value};

const TOKEN: &str = "backup-test-token";
/// One writer per shard of A1: writer `w` inserts keys `w * 4096 + i`, in order.
const WRITERS: i64 = 4;

/// The name written with key `w * 4096 + i`: long for the bulk rows.
fn name(w: i64, i: i64) -> String {
    if i >= 3000 {
        format!("bulk{w}-{i}-{}", "x".repeat(2000))
    } else {
        format!("w{w}-{i}")
    }
}

fn marks(w: i64, i: i64) -> i64 {
    (i * 7 + w) % 100
}

/// A cluster whose gateway (and manager) require the admin token.
async fn cluster() -> LocalCluster {
    LocalCluster::start_with(ClusterOptions {
        env: vec![("SHARDLINE_ADMIN_TOKEN".into(), TOKEN.into())],
        ..Default::default()
    })
    .await
}

async fn init_a1(c: &LocalCluster) {
    let resp = c
        .client()
        .post(format!("{}/init", c.gateway_url()))
        .bearer_auth(TOKEN)
        .json(&testkit::workload("a1"))
        .send()
        .await
        .expect("POST /init");
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    c.wait_ready(Duration::from_secs(60)).await;
}

/// `GET /backup` with `token`: status and body.
async fn get_backup(c: &LocalCluster, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = c
        .client()
        .get(format!("{}/backup", c.gateway_url()))
        .timeout(Duration::from_secs(120));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("GET /backup");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("backup body").to_vec())
}

/// `POST /restore` of `archive` with the token: status and JSON body.
async fn restore(c: &LocalCluster, archive: Vec<u8>, token: Option<&str>) -> (u16, Value) {
    let mut req = c
        .client()
        .post(format!("{}/restore", c.gateway_url()))
        .timeout(Duration::from_secs(120))
        .header("content-type", "application/x-tar")
        .body(archive);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("POST /restore");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("restore answer");
    (status, testkit::http::parse_body(&body))
}

/// The archive's entries, by path (parsed with the system's view of tar: 512-byte ustar
/// headers, as documented).
fn entries(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut at = 0;
    while at + 512 <= archive.len() && archive[at..at + 512].iter().any(|b| *b != 0) {
        let h = &archive[at..at + 512];
        let name = String::from_utf8(h[..100].split(|b| *b == 0).next().unwrap().to_vec()).unwrap();
        let size_field = std::str::from_utf8(&h[124..136]).unwrap();
        let size = u64::from_str_radix(size_field.trim_matches(['\0', ' ']), 8).unwrap() as usize;
        at += 512;
        out.insert(name, archive[at..at + size].to_vec());
        at += size.div_ceil(512) * 512;
    }
    out
}

fn manifest(archive: &[u8]) -> Value {
    serde_json::from_slice(&entries(archive)["backup.json"]).expect("backup.json is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_under_load_restores_every_acknowledged_write() {
    let src = cluster().await;
    init_a1(&src).await;
    // Bulk first, so that each shard's snapshot is a few MiB and streams in many chunks:
    // keys w * 4096 + 3000.. with 2 KB names (the writers below use w * 4096 + 0..3000).
    let mut bulk = Vec::new();
    for w in 0..WRITERS {
        for part in 0..4 {
            let rows: Vec<Value> = (0..250)
                .map(|j| {
                    let i = 3000 + part * 250 + j;
                    json!({"Stud_id": w * 4096 + i, "Stud_name": name(w, i), "Stud_marks": marks(w, i)})
                })
                .collect();
            let (code, body) = src.post("/write", json!({ "data": rows })).await;
            assert_eq!(code, 200, "bulk write: {body}");
            bulk.extend((0..250).map(|j| w * 4096 + 3000 + part * 250 + j));
        }
    }

    // Writers: (key, value, completion time) of every acknowledged insert, and every key tried.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (http, url) = (src.client().clone(), format!("{}/write", src.gateway_url()));
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(async move {
                let mut tried = Vec::new();
                for i in 0..3000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let k = w * 4096 + i;
                    tried.push(k);
                    let body = json!({"data": [{"Stud_id": k, "Stud_name": name(w, i), "Stud_marks": marks(w, i)}]});
                    if let Ok(r) = http.post(&url).json(&body).send().await {
                        if r.status() == 200 {
                            acked.lock().unwrap().push((k, Instant::now()));
                        }
                    }
                }
                tried
            })
        })
        .collect();

    let count = || acked.lock().unwrap().len();
    wait_for(
        Duration::from_secs(60),
        "800 acknowledged writes before the backup",
        || async { count() >= 800 },
    )
    .await;
    let invoked = Instant::now();
    let at_invoke = count();
    let (code, archive) = get_backup(&src, Some(TOKEN)).await;
    let took = invoked.elapsed();
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&archive));
    let during = count() - at_invoke;
    // Writes go on after the backup; then stop.
    wait_for(
        Duration::from_secs(60),
        "writes after the backup",
        || async { count() >= at_invoke + during + 300 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut tried = BTreeSet::new();
    for w in writers {
        tried.extend(w.await.expect("writer"));
    }
    let acked = acked.lock().unwrap().clone();
    let mut before: Vec<i64> = acked
        .iter()
        .filter(|(_, t)| *t < invoked)
        .map(|a| a.0)
        .collect();
    before.extend(&bulk);
    println!(
        "backup: {} bytes in {took:?}; {} writes acknowledged before it was asked for \
         (+{} bulk rows), {during} while it ran, {} in all",
        archive.len(),
        before.len() - bulk.len(),
        bulk.len(),
        acked.len()
    );

    let m = manifest(&archive);
    assert_eq!(m["format"], "shardline-backup");
    assert_eq!(m["version"], 1);
    assert_eq!(m["servers"].as_object().unwrap().len(), 6);
    let shards = m["shards"].as_array().unwrap().clone();
    assert_eq!(shards.len(), 4);
    for s in &shards {
        assert!(s["seq"].as_u64() >= s["log_last_seq"].as_u64(), "{s}");
        let file = &entries(&archive)[s["file"].as_str().unwrap()];
        assert_eq!(file.len() as u64, s["bytes"].as_u64().unwrap());
        assert!(file.starts_with(b"SQLite format 3\0"));
    }
    drop(src);

    // A fresh cluster: its own nats-server and directories.
    let dst = cluster().await;
    let restoring = Instant::now();
    let (code, body) = restore(&dst, archive.clone(), Some(TOKEN)).await;
    assert_eq!(code, 200, "restore: {body}\n{}", dst.reports());
    println!("restore: answered 200 after {:?}", restoring.elapsed());
    dst.wait_ready(Duration::from_secs(60)).await;

    // The log of each shard continues after its snapshot, in a new term.
    let st = dst.status_within(Duration::from_secs(10)).await;
    for s in &shards {
        let id = s["Shard_id"].as_str().unwrap();
        let now = st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["Shard_id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {st}"));
        assert_eq!(
            now["term"].as_u64(),
            s["term"].as_u64().map(|t| t + 1),
            "{now}"
        );
        assert_eq!(
            now["wal_last_seq"].as_u64(),
            s["seq"].as_u64().map(|q| q + 1),
            "{now}"
        );
    }

    let rows = check::all_rows(&dst).await.expect("read the restored rows");
    let restored: BTreeMap<i64, (String, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["Stud_id"].as_i64().unwrap(),
                (
                    r["Stud_name"].as_str().unwrap().to_owned(),
                    r["Stud_marks"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    // Every write acknowledged before the backup was asked for is there, with its value.
    for k in &before {
        let (w, i) = (k / 4096, k % 4096);
        assert_eq!(
            restored.get(k),
            Some(&(name(w, i), marks(w, i))),
            "key {k}, acknowledged before the backup, was not restored"
        );
    }
    // Nothing that was never written; per shard, a prefix of the log: a writer's keys are
    // written one after another, so a restored key means its earlier acknowledged ones too.
    let acked_keys: BTreeSet<i64> = acked.iter().map(|a| a.0).collect();
    for (k, got) in &restored {
        assert!(
            tried.contains(k) || bulk.contains(k),
            "key {k} was never written"
        );
        let (w, i) = (k / 4096, k % 4096);
        assert_eq!(got, &(name(w, i), marks(w, i)), "key {k}");
        // (The bulk rows were all written before the writers started.)
        for j in 0..if i < 3000 { i } else { 0 } {
            let earlier = w * 4096 + j;
            assert!(
                !acked_keys.contains(&earlier) || restored.contains_key(&earlier),
                "key {k} was restored but the earlier acknowledged key {earlier} was not"
            );
        }
    }
    println!(
        "restored {} rows ({} acknowledged before the backup)",
        restored.len(),
        before.len()
    );
    check::replicas_identical(&dst)
        .await
        .expect("replicas identical");

    // New writes work, on every shard.
    for w in 0..WRITERS {
        let k = w * 4096 + 4095;
        let (code, body) = dst
            .post(
                "/write",
                json!({"data": [{"Stud_id": k, "Stud_name": "after", "Stud_marks": 1}]}),
            )
            .await;
        assert_eq!(code, 200, "write after the restore: {body}");
        let (code, body) = dst
            .post(
                "/read",
                json!({"Stud_id": {"low": k, "high": k}, "consistency": "linearizable"}),
            )
            .await;
        assert_eq!(
            (code, body["data"][0]["Stud_name"].clone()),
            (200, json!("after"))
        );
    }
    check::wait_converged(&dst, Duration::from_secs(10))
        .await
        .expect("replicas converge");
    check::replicas_identical(&dst)
        .await
        .expect("replicas identical after new writes");
}

/// Replaces `from` by `to` (same length) in the archive's `backup.json`.
fn edit_manifest(archive: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut a = archive.to_vec();
    let json = &a[512..];
    let at = json
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from} not in backup.json"));
    a[512 + at..512 + at + to.len()].copy_from_slice(to.as_bytes());
    a
}

/// `archive` unpacked with `tar xf` and packed again with `tar cf` (backup.json first);
/// `None` where there is no tar command.
fn repack_with_tar(archive: &[u8], scratch: &std::path::Path) -> Option<Vec<u8>> {
    let dir = scratch.join("repack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("in.tar"), archive).unwrap();
    let tar = |args: &[&str]| {
        std::process::Command::new("tar")
            .args(args)
            .current_dir(&dir)
            .status()
            .ok()
            .filter(|s| s.success())
    };
    tar(&["xf", "in.tar"])?;
    let mut files = vec!["backup.json".to_string()];
    files.extend(entries(archive).into_keys().filter(|p| p != "backup.json"));
    let mut args = vec!["cf", "out.tar"];
    args.extend(files.iter().map(String::as_str));
    tar(&args).expect("tar cf");
    let out = std::fs::read(dir.join("out.tar")).unwrap();
    assert_ne!(
        out, archive,
        "tar wrote the same bytes: the test would prove nothing"
    );
    Some(out)
}

/// The archive with the first shard file's SQLite header overwritten (sizes unchanged, so the
/// tar structure stays valid).
fn corrupt_first_snapshot(archive: &[u8]) -> Vec<u8> {
    let magic = b"SQLite format 3\0";
    let at = archive
        .windows(magic.len())
        .position(|w| w == magic)
        .expect("a SQLite file in the archive");
    let mut a = archive.to_vec();
    a[at..at + magic.len()].copy_from_slice(b"garbage garbage\0");
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_and_bad_archives_are_refused() {
    let src = cluster().await;
    init_a1(&src).await;
    for k in [1, 5000, 9000, 13000] {
        let (code, body) = src
            .post(
                "/write",
                json!({"data": [{"Stud_id": k, "Stud_name": "x", "Stud_marks": 2}]}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = get_backup(&src, None).await;
    assert_eq!(code, 401, "{}", String::from_utf8_lossy(&body));
    let (code, _) = get_backup(&src, Some("wrong")).await;
    assert_eq!(code, 401);
    let (code, archive) = get_backup(&src, Some(TOKEN)).await;
    assert_eq!(code, 200);
    assert!(archive.len() > 4 * 4096, "{} bytes", archive.len());
    // A configured cluster takes no restore.
    let (code, body) = restore(&src, archive.clone(), Some(TOKEN)).await;
    check::failure(&(code, body), 409, "already configured").unwrap();
    drop(src);

    let dst = cluster().await;
    let (code, _) = restore(&dst, archive.clone(), None).await;
    assert_eq!(code, 401);
    let half = archive[..archive.len() / 2].to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", half, "truncated"),
        (
            "truncated at the end",
            archive[..archive.len() - 1024].to_vec(),
            "truncated",
        ),
        ("not an archive", b"hello".repeat(200), "not a tar archive"),
        (
            "unknown version",
            edit_manifest(&archive, "\"version\": 1", "\"version\": 7"),
            "unknown version 7",
        ),
        (
            "schema mismatch",
            edit_manifest(&archive, "\"Stud_marks\"", "\"Stud_grade\""),
            "not the schema's",
        ),
        (
            "a snapshot at another position",
            edit_manifest(&archive, "\"term\": 1,", "\"term\": 7,"),
            "but backup.json says",
        ),
        (
            "a corrupted snapshot",
            corrupt_first_snapshot(&archive),
            "not a usable SQLite database",
        ),
        (
            "another format",
            edit_manifest(&archive, "shardline-backup", "shardline-bakcup"),
            "not a shardline backup",
        ),
    ];
    for (what, bad, needle) in cases {
        let got = restore(&dst, bad, Some(TOKEN)).await;
        check::failure(&got, 400, needle).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (code, st) = dst.get("/status").await;
        assert_eq!((code, st["N"].clone()), (200, json!(0)), "{what}: {st}");
    }
    // Nothing was left behind: no server directory, no staging directory, no stream.
    let left: Vec<_> = std::fs::read_dir(dst.servers_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let js = async_nats::jetstream::new(dst.nats().connect().await);
    for shard in ["sh1", "sh2", "sh3", "sh4"] {
        assert!(
            js.get_stream(format!("WAL_{shard}")).await.is_err(),
            "{shard} has a stream"
        );
    }

    // The archive unpacked and packed again by the system's tar (as an operator might, e.g.
    // to inspect it) restores as well: the format is plain tar.
    let repacked = repack_with_tar(&archive, dst.data_dir()).unwrap_or(archive.clone());
    let (code, body) = restore(&dst, repacked, Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}\n{}", dst.reports());
    dst.wait_ready(Duration::from_secs(60)).await;
    let rows = check::all_rows(&dst).await.unwrap();
    let keys: Vec<i64> = rows
        .iter()
        .map(|r| r["Stud_id"].as_i64().unwrap())
        .collect();
    assert_eq!(keys, vec![1, 5000, 9000, 13000]);
    let (code, body) = restore(&dst, archive, Some(TOKEN)).await;
    check::failure(&(code, body), 409, "already configured").unwrap();
}
