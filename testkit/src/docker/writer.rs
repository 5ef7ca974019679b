//! Single-row writes through a [`DockerCluster`]'s gateway that remember what was
//! acknowledged, and the check of the rows left against them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::DockerCluster;

/// The row written for `key` (so reads can be checked value by value).
pub fn row(key: u64) -> Value {
    json!({"Stud_id": key, "Stud_name": format!("n{key}"), "Stud_marks": key % 100})
}

/// Single-row writes through the gateway, remembering which were acknowledged (200) and
/// which have an unknown outcome (anything else: they may or may not be applied).
#[derive(Default)]
pub struct Writer {
    next: u64,
    pub acked: BTreeSet<u64>,
    pub unknown: BTreeSet<u64>,
    /// Longest time between two acknowledged writes.
    pub longest_gap: Duration,
    last_ack: Option<Instant>,
}

impl Writer {
    /// Keys spread over `shards` shards of `shard_size` keys each (the a1 layout: 4 × 4096).
    pub fn key(&self, n: u64) -> u64 {
        let shard = n % 4;
        shard * 4096 + (n / 4) % 4096
    }

    /// Writes one new row; returns the HTTP status.
    pub async fn write_one(&mut self, c: &DockerCluster) -> u16 {
        let key = self.key(self.next);
        self.next += 1;
        let (code, _) = c.post("/write", &json!({"data": [row(key)]})).await;
        if code == 200 {
            self.acked.insert(key);
            let now = Instant::now();
            if let Some(t) = self.last_ack {
                self.longest_gap = self.longest_gap.max(now - t);
            }
            self.last_ack = Some(now);
        } else {
            self.unknown.insert(key);
        }
        code
    }

    /// Writes `n` rows, returning how many were acknowledged.
    pub async fn write_n(&mut self, c: &DockerCluster, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            if self.write_one(c).await == 200 {
                ok += 1;
            }
        }
        ok
    }

    /// Checks the rows (all shards, from one replica each) against what was written:
    /// every acknowledged key is there with its value, nothing else but unknown-outcome keys.
    pub fn check(&self, rows: &BTreeMap<String, Vec<Value>>) {
        let mut seen = BTreeSet::new();
        for r in rows.values().flatten() {
            let key = r["Stud_id"].as_u64().expect("Stud_id");
            assert_eq!(*r, row(key), "row {key} has a wrong value");
            assert!(
                self.acked.contains(&key) || self.unknown.contains(&key),
                "row {key} was never written (from a deposed primary?)"
            );
            seen.insert(key);
        }
        let lost: Vec<&u64> = self.acked.difference(&seen).collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    }
}
