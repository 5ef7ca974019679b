//! The workloads the bench runs (A1/A2/A3 `/init` bodies from `workloads/`): their key
//! space, topology, the rows written, and the keys each write phase uses.

use std::path::Path;

use anyhow::{bail, Context as _};
use rand::seq::SliceRandom as _;
use rand::Rng as _;
use serde_json::{json, Value};

#[derive(Clone)]
pub struct Workload {
    pub name: String,
    pub init: Value,
    /// (column, dtype) in schema order; the first is the shard key.
    pub columns: Vec<(String, String)>,
    pub lo: i64,
    pub hi: i64,
}

impl Workload {
    pub fn load(dir: &Path, name: &str) -> anyhow::Result<Workload> {
        let path = dir.join(format!("{name}.init.json"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Workload::from_init(name, serde_json::from_str(&text)?)
    }

    pub fn from_init(name: &str, init: Value) -> anyhow::Result<Workload> {
        let cols = init["schema"]["columns"]
            .as_array()
            .context("schema.columns")?;
        let types = init["schema"]["dtypes"]
            .as_array()
            .context("schema.dtypes")?;
        let columns = cols
            .iter()
            .zip(types)
            .map(|(c, t)| {
                (
                    c.as_str().unwrap_or_default().to_owned(),
                    t.as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect::<Vec<_>>();
        let shards = init["shards"].as_array().context("shards")?;
        let lo = shards
            .iter()
            .filter_map(|s| s["Stud_id_low"].as_i64())
            .min()
            .context("no shards")?;
        let hi = shards
            .iter()
            .filter_map(|s| Some(s["Stud_id_low"].as_i64()? + s["Shard_size"].as_i64()?))
            .max()
            .context("no shards")?;
        Ok(Workload {
            name: name.to_owned(),
            init,
            columns,
            lo,
            hi,
        })
    }

    pub fn key_col(&self) -> &str {
        &self.columns[0].0
    }

    pub fn keyspace(&self) -> usize {
        (self.hi - self.lo) as usize
    }

    /// The same topology with every shard `factor` times wider (sweeps need more keys).
    pub fn scaled(&self, factor: i64) -> anyhow::Result<Workload> {
        let mut init = self.init.clone();
        for s in init["shards"].as_array_mut().context("shards")? {
            let low = s["Stud_id_low"].as_i64().unwrap_or(0);
            let size = s["Shard_size"].as_i64().unwrap_or(0);
            s["Stud_id_low"] = json!(low * factor);
            s["Shard_size"] = json!(size * factor);
        }
        Workload::from_init(&self.name, init)
    }

    pub fn topology(&self) -> Value {
        let servers = self.init["servers"].as_object();
        let shards = self.init["shards"].as_array().map_or(0, |s| s.len());
        let placements: usize = servers.map_or(0, |m| {
            m.values()
                .map(|v| v.as_array().map_or(0, |a| a.len()))
                .sum()
        });
        json!({
            "servers": servers.map_or(0, |m| m.len()),
            "shards": shards,
            "replicas_per_shard": placements.checked_div(shards).unwrap_or(0),
            "key_space": [self.lo, self.hi],
        })
    }

    /// `{"data":[rows]}` for the given keys, built as text (cheap for the client).
    pub fn write_body(&self, keys: &[i64]) -> String {
        let mut s = String::with_capacity(16 + keys.len() * 64);
        s.push_str("{\"data\":[");
        for (i, &k) in keys.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('{');
            for (j, (c, t)) in self.columns.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                let v = if j == 0 {
                    k.to_string()
                } else if t == "Number" {
                    marks(k).to_string()
                } else {
                    "\"GHI\"".to_owned()
                };
                s.push_str(&format!("\"{c}\":{v}"));
            }
            s.push('}');
        }
        s.push_str("]}");
        s
    }
}

/// The value written in the Number columns of row `k` (0..=100), checked on read-back.
pub fn marks(k: i64) -> i64 {
    (k.wrapping_mul(7919)).rem_euclid(101)
}

pub fn keys_for(wl: &Workload, needed: usize, random: bool) -> anyhow::Result<Vec<i64>> {
    let mut rng = rand::rng();
    if random {
        return Ok((0..needed)
            .map(|_| rng.random_range(wl.lo..wl.hi))
            .collect());
    }
    if needed > wl.keyspace() {
        bail!(
            "{} needs {needed} unique keys but its key space holds {}; lower --writes or --rows-per-write",
            wl.name,
            wl.keyspace()
        );
    }
    let mut all: Vec<i64> = (wl.lo..wl.hi).collect();
    all.shuffle(&mut rng);
    all.truncate(needed);
    Ok(all)
}
