//! The checker of a finished [`Workload`](super::Workload): the states each key may be in,
//! and [`check`], which settles the cluster and compares every replica with them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{History, OpKind, OpRecord, Outcome, RowValue};
use crate::LocalCluster;

pub use crate::check::primary_of;

/// The states a key may be in after `ops` (its operations, in the order one client sent
/// them): one state when its last operation was acknowledged, more after unknown outcomes.
pub fn possible_states(ops: &[&OpRecord]) -> BTreeSet<Option<RowValue>> {
    let mut states: BTreeSet<Option<RowValue>> = [None].into();
    for op in ops {
        let apply = |s: &Option<RowValue>| -> Option<RowValue> {
            match (op.kind, s) {
                (OpKind::Insert, None) => op.value.clone(),
                (OpKind::Insert, Some(x)) => Some(x.clone()),
                (OpKind::Update, Some(_)) => op.value.clone(),
                (OpKind::Update, None) => None,
                (OpKind::Delete, _) => None,
            }
        };
        match op.outcome {
            Outcome::Acked => {
                states = [match op.kind {
                    OpKind::Insert | OpKind::Update => op.value.clone(),
                    OpKind::Delete => None,
                }]
                .into()
            }
            Outcome::Rejected => {}
            Outcome::Unknown => {
                let next: Vec<_> = states.iter().map(apply).collect();
                states.extend(next);
            }
        }
    }
    states
}

/// What [`check`] found (it panics on any violation).
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub keys: usize,
    pub rows_present: usize,
    pub replicas_compared: usize,
    pub settle_time: Duration,
}

/// Waits (up to `settle`) until every server is up and every replica of every shard has
/// applied its shard's whole log; returns the last `/status`.
pub async fn settle(c: &LocalCluster, settle: Duration) -> Value {
    let deadline = Instant::now() + settle;
    let (ok, last) = loop {
        let (s, st) = c.get("/status").await;
        if s == 200 && settled(&st) {
            break (true, st);
        }
        if Instant::now() >= deadline {
            break (false, st);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        ok,
        "cluster did not settle within {settle:?}; last /status: {last:#}"
    );
    last
}

/// Every server up, every shard has a primary, every replica applied == wal_last_seq.
pub fn settled(st: &Value) -> bool {
    let Some(health) = st["health"].as_object() else {
        return false;
    };
    if !health.values().all(|h| h == "up") {
        return false;
    }
    let Some(shards) = st["shards"].as_array() else {
        return false;
    };
    shards.iter().all(|sh| {
        let id = sh["Shard_id"].as_str().unwrap_or_default();
        let last = sh["wal_last_seq"].as_u64();
        !sh["primary"].is_null()
            && last.is_some()
            && replicas_of(st, id)
                .iter()
                .all(|srv| st["applied"][srv.as_str()][id].as_u64() == last)
    })
}

/// Servers holding `shard` per `/status`.
pub fn replicas_of(st: &Value, shard: &str) -> Vec<String> {
    crate::check::replicas_of(st)
        .remove(shard)
        .unwrap_or_default()
}

/// `[low, high)` of `shard` per `/status`.
pub fn shard_range(st: &Value, shard: &str) -> Option<(i64, i64)> {
    let s = st["shards"]
        .as_array()?
        .iter()
        .find(|s| s["Shard_id"] == shard)?;
    let low = s["Stud_id_low"].as_i64()?;
    Some((low, low + s["Shard_size"].as_i64()?))
}

/// A replica's rows by key.
type Rows = BTreeMap<i64, RowValue>;

fn parse_rows(rows: &Value) -> Result<Rows, String> {
    let mut out = BTreeMap::new();
    for r in rows.as_array().ok_or("rows are not an array")? {
        let k = r["Stud_id"]
            .as_i64()
            .ok_or_else(|| format!("bad row {r}"))?;
        let name = r["Stud_name"].as_str().unwrap_or_default().to_string();
        let marks = r["Stud_marks"].as_i64().unwrap_or(i64::MIN);
        if out.insert(k, (name, marks)).is_some() {
            return Err(format!("key {k} appears twice"));
        }
    }
    Ok(out)
}

/// Settles the cluster, then checks (panicking with every problem found):
/// 1. each key of `history` read with `consistency: primary` and from every replica
///    (`/read/<server>`) is in one of its possible states: acknowledged writes are there
///    with their last acknowledged value, deleted rows stay deleted;
/// 2. all replicas of every shard hold identical rows and the same applied sequence;
/// 3. no row exists that the history cannot explain (a rejected request's row, a key never
///    written) — within `[key_low, key_high)`.
pub async fn check(
    c: &LocalCluster,
    history: &History,
    key_low: i64,
    key_high: i64,
    settle_timeout: Duration,
) -> CheckReport {
    let t = Instant::now();
    let st = settle(c, settle_timeout).await;
    let settle_time = t.elapsed();
    let mut problems: Vec<String> = Vec::new();

    // Possible states per key.
    let mut by_key: BTreeMap<i64, Vec<&OpRecord>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.key).or_default().push(op);
    }
    let possible: BTreeMap<i64, BTreeSet<Option<RowValue>>> = by_key
        .iter()
        .map(|(k, ops)| (*k, possible_states(ops)))
        .collect();
    // Judges the keys in `[low, high)` (a shard's range, or the whole read).
    let judge = |where_: &str, rows: &Rows, (low, high): (i64, i64), problems: &mut Vec<String>| {
        for (k, states) in possible.range(low..high) {
            let got = rows.get(k).cloned();
            if !states.contains(&got) {
                let ops: Vec<String> = by_key[k]
                    .iter()
                    .map(|o| {
                        format!(
                            "{:?} {:?} -> {} {:?} ({}) at {:?}",
                            o.kind, o.value, o.status, o.outcome, o.message, o.at
                        )
                    })
                    .collect();
                problems.push(format!(
                    "{where_}: key {k} is {got:?}, expected one of {states:?}; ops: {ops:?}"
                ));
            }
        }
        for (k, v) in rows.range(key_low.max(low)..key_high.min(high)) {
            if !possible.contains_key(k) {
                problems.push(format!(
                    "{where_}: key {k} = {v:?} was never written by anyone"
                ));
            }
        }
    };

    // 1a. Through the primaries.
    let (s, body) = c
        .post(
            "/read",
            json!({"Stud_id": {"low": key_low, "high": key_high - 1}, "consistency": "primary"}),
        )
        .await;
    let mut rows_present = 0;
    if s != 200 {
        problems.push(format!("primary read answered {s}: {body}"));
    } else {
        match parse_rows(&body["data"]) {
            Ok(rows) => {
                rows_present = rows.len();
                judge("primary read", &rows, (key_low, key_high), &mut problems);
            }
            Err(e) => problems.push(format!("primary read: {e}")),
        }
    }

    // 1b + 2. Every replica, shard by shard.
    let mut replicas_compared = 0;
    let servers: Vec<String> = st["servers"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut per_shard: BTreeMap<String, Vec<(String, Rows)>> = BTreeMap::new();
    for srv in &servers {
        let (s, body) = c.get(&format!("/read/{srv}")).await;
        if s != 200 {
            problems.push(format!("/read/{srv} answered {s}: {body}"));
            continue;
        }
        for shard in st["servers"][srv.as_str()]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            match parse_rows(&body[shard]) {
                Ok(rows) => {
                    let Some(range) = shard_range(&st, shard) else {
                        problems.push(format!("shard {shard} of {srv} is not in /status"));
                        continue;
                    };
                    judge(&format!("{srv}/{shard}"), &rows, range, &mut problems);
                    per_shard
                        .entry(shard.to_string())
                        .or_default()
                        .push((srv.clone(), rows));
                }
                Err(e) => problems.push(format!("/read/{srv} shard {shard}: {e}")),
            }
        }
    }
    for (shard, copies) in &per_shard {
        let applied: BTreeSet<Option<u64>> = copies
            .iter()
            .map(|(srv, _)| st["applied"][srv.as_str()][shard.as_str()].as_u64())
            .collect();
        if applied.len() != 1 {
            problems.push(format!(
                "shard {shard}: replicas applied differ: {applied:?}"
            ));
        }
        let (first_srv, first) = &copies[0];
        for (srv, rows) in &copies[1..] {
            replicas_compared += 1;
            if rows != first {
                let diff: Vec<i64> = first
                    .keys()
                    .chain(rows.keys())
                    .filter(|k| first.get(k) != rows.get(k))
                    .copied()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .take(20)
                    .collect();
                problems.push(format!(
                    "shard {shard}: {srv} ({} rows) differs from {first_srv} ({} rows); keys {diff:?}",
                    rows.len(),
                    first.len()
                ));
            }
        }
    }

    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(30);
        panic!(
            "check failed ({n} problems; {}):\n{}\n/status: {st:#}",
            history.summary(),
            problems.join("\n")
        );
    }
    CheckReport {
        keys: possible.len(),
        rows_present,
        replicas_compared,
        settle_time,
    }
}
