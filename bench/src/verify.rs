//! After the load: every acknowledged write must be readable, and all replicas of a shard
//! must hold the same rows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::seq::SliceRandom as _;
use serde_json::{json, Value};

pub struct Verify {
    pub ok: bool,
    pub report: Value,
    pub problems: Vec<String>,
}

/// Waits until every replica of every shard has applied its shard's whole log (as `/status`
/// reports) and returns how long that took, or who still lags at the deadline.
pub async fn settle(
    http: &reqwest::Client,
    gateway: &str,
    timeout: Duration,
) -> Result<(Duration, Value), String> {
    let started = Instant::now();
    loop {
        let st: Result<Value, String> = async {
            let r = http.get(format!("{gateway}/status")).send().await;
            r.map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        let lag = st.and_then(|st| testkit::check::converged(&st).map(|()| st));
        match lag {
            Ok(st) => return Ok((started.elapsed(), st)),
            Err(e) if started.elapsed() > timeout => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// The log entries of every shard together (`wal_last_seq` in a `/status` body; it counts
/// each shard's first term marker too).
pub fn log_entries(status: &Value) -> u64 {
    status["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["wal_last_seq"].as_u64())
        .sum()
}

/// `acked`: key → marks of every row acknowledged with 200. `key_col`: the shard key column.
pub async fn verify(
    http: &reqwest::Client,
    gateway: &str,
    key_col: &str,
    acked: &HashMap<i64, i64>,
    sample: usize,
    clients: usize,
) -> anyhow::Result<Verify> {
    let mut problems = Vec::new();

    // 1. A random sample of acknowledged keys through the public /read (ring replica).
    let mut keys: Vec<i64> = acked.keys().copied().collect();
    keys.shuffle(&mut rand::rng());
    keys.truncate(sample.max(1000));
    let sample_n = keys.len();
    let started = Instant::now();
    let mut pending = keys;
    let mut first_missing = None;
    loop {
        let missing = read_missing(http, gateway, key_col, acked, &pending, clients).await;
        if first_missing.is_none() {
            first_missing = Some(missing.len());
        }
        pending = missing;
        if pending.is_empty() || started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !pending.is_empty() {
        problems.push(format!(
            "{} of {sample_n} sampled acknowledged keys unreadable (e.g. {:?})",
            pending.len(),
            &pending[..pending.len().min(5)]
        ));
    }

    // 2. Every replica of every shard, through GET /read/<server>: equal row counts and
    //    every acknowledged key present. Replicas may lag a moment: poll up to 15 s.
    let status: Value = http
        .get(format!("{gateway}/status"))
        .send()
        .await?
        .json()
        .await
        .context("GET /status")?;
    let servers = status["servers"]
        .as_object()
        .context("/status has no servers")?
        .clone();
    let mut ranges: Vec<(String, i64, i64)> = Vec::new();
    for s in status["shards"]
        .as_array()
        .context("/status has no shards")?
    {
        let lo = s["Stud_id_low"].as_i64().unwrap_or(0);
        let size = s["Shard_size"].as_i64().unwrap_or(0);
        ranges.push((
            s["Shard_id"].as_str().unwrap_or("").to_owned(),
            lo,
            lo + size,
        ));
    }
    let shard_of = |k: i64| {
        ranges
            .iter()
            .find(|(_, lo, hi)| k >= *lo && k < *hi)
            .map(|r| r.0.clone())
    };
    let mut acked_per_shard: BTreeMap<String, HashSet<i64>> = BTreeMap::new();
    for k in acked.keys() {
        if let Some(s) = shard_of(*k) {
            acked_per_shard.entry(s).or_default().insert(*k);
        }
    }

    let started = Instant::now();
    let (per_shard, replica_problems) = loop {
        // shard → server → keys
        let mut held: BTreeMap<String, BTreeMap<String, HashSet<i64>>> = BTreeMap::new();
        for (server, _) in &servers {
            let r = http
                .get(format!("{gateway}/read/{server}"))
                .timeout(Duration::from_secs(120))
                .send()
                .await?;
            if r.status() != 200 {
                bail!("GET /read/{server} answered {}", r.status());
            }
            let body: Value = r.json().await?;
            for (shard, rows) in body.as_object().into_iter().flatten() {
                let Some(rows) = rows.as_array() else {
                    continue;
                };
                let set = rows.iter().filter_map(|r| r[key_col].as_i64()).collect();
                held.entry(shard.clone())
                    .or_default()
                    .insert(server.clone(), set);
            }
        }
        let mut per_shard = serde_json::Map::new();
        let mut bad = Vec::new();
        for (shard, reps) in &held {
            let counts: BTreeMap<&String, usize> = reps.iter().map(|(s, k)| (s, k.len())).collect();
            let first = reps.values().next();
            let agree = reps.values().all(|k| Some(k) == first);
            let want = acked_per_shard.get(shard);
            let mut missing_acked = 0;
            for (server, keys) in reps {
                let miss = want.map_or(0, |w| w.iter().filter(|k| !keys.contains(k)).count());
                if miss > 0 {
                    bad.push(format!("{server}:{shard} lacks {miss} acknowledged keys"));
                }
                missing_acked += miss;
            }
            if !agree {
                bad.push(format!("replicas of {shard} differ: {counts:?}"));
            }
            per_shard.insert(
                shard.clone(),
                json!({"rows_by_replica": counts, "acknowledged": want.map_or(0, |w| w.len()),
                       "replicas_identical": agree, "acknowledged_missing": missing_acked}),
            );
        }
        if bad.is_empty() || started.elapsed() > Duration::from_secs(15) {
            break (per_shard, bad);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    problems.extend(replica_problems);

    let report = json!({
        "sample_checked": sample_n,
        "sample_missing_on_first_read": first_missing.unwrap_or(0),
        "sample_unreadable": pending.len(),
        "acknowledged_rows": acked.len(),
        "shards": per_shard,
        "ok": problems.is_empty(),
        "problems": problems,
    });
    Ok(Verify {
        ok: problems.is_empty(),
        report,
        problems,
    })
}

/// Reads each key alone; returns the keys not found with the acknowledged value.
async fn read_missing(
    http: &reqwest::Client,
    gateway: &str,
    key_col: &str,
    acked: &HashMap<i64, i64>,
    keys: &[i64],
    clients: usize,
) -> Vec<i64> {
    let keys = Arc::new(keys.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.clamp(1, 32) {
        let (keys, next, http) = (keys.clone(), next.clone(), http.clone());
        let url = format!("{gateway}/read");
        let key_col = key_col.to_owned();
        let want: Arc<HashMap<i64, i64>> = Arc::new(
            keys.iter()
                .filter_map(|k| acked.get(k).map(|m| (*k, *m)))
                .collect(),
        );
        tasks.push(tokio::spawn(async move {
            let mut missing = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&k) = keys.get(i) else { break };
                let body = json!({ key_col.as_str(): {"low": k, "high": k} });
                let found = match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == 200 => r.json::<Value>().await.ok().is_some_and(|v| {
                        v["data"].as_array().is_some_and(|rows| {
                            rows.iter().any(|row| {
                                row[key_col.as_str()].as_i64() == Some(k)
                                    && row_marks(row, &key_col) == want.get(&k).copied()
                            })
                        })
                    }),
                    _ => false,
                };
                if !found {
                    missing.push(k);
                }
            }
            missing
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await.unwrap_or_default());
    }
    out
}

/// The first Number column other than the key (the marks), as written by the bench.
fn row_marks(row: &Value, key_col: &str) -> Option<i64> {
    row.as_object()?
        .iter()
        .find(|(c, v)| c.as_str() != key_col && v.is_i64())
        .and_then(|(_, v)| v.as_i64())
}
