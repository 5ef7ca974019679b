//! Cluster metadata (schema, shards and their ranges, placement, primary and term per shard,
//! server addresses and health), stored as one JSON document under key [`META_KEY`] of the
//! JetStream KV bucket [`META_BUCKET`]. Only the manager writes it (compare-and-set on the
//! revision); gateways and shard servers watch it.
//!
//! Also the admin request bodies (`/init`, `/add`, `/rm`) and their validation.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::names::{ServerName, ShardId};
use crate::schema::{Schema, SchemaSpec};
use crate::{ApiError, Seq, Term};

pub const META_BUCKET: &str = "shardline_meta";
pub const META_KEY: &str = "cluster";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Up,
    Recovering,
    Down,
    /// Kept dying after respawns; no longer restarted automatically.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    pub id: ShardId,
    pub low: i64,
    pub size: i64,
    pub primary: Option<ServerName>,
    pub term: Term,
    /// Set when the shard's log lost entries its replicas applied (README "Log faults"):
    /// the shard is frozen (no reads, no writes, no elections) until the manager recovers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// The identity (`created` time in ns) of the stream a log recovery agreed on; replicas
    /// reporting another identity after that are re-seeded, not a reason to freeze.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_id: Option<u64>,
}

impl ShardMeta {
    /// Exclusive upper bound of the key range (validated not to overflow).
    pub fn end(&self) -> i64 {
        self.low + self.size
    }
    pub fn contains(&self, key: i64) -> bool {
        key >= self.low && key < self.end()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMeta {
    /// `host:port` of the server's HTTP API.
    pub addr: String,
    pub shards: Vec<ShardId>,
    pub health: Health,
    /// Last applied WAL sequence per shard, as last reported to the manager.
    #[serde(default)]
    pub applied: BTreeMap<ShardId, Seq>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub schema: Schema,
    /// Sorted by `low`; ranges never overlap.
    pub shards: Vec<ShardMeta>,
    pub servers: BTreeMap<ServerName, ServerMeta>,
}

impl ClusterMeta {
    pub fn shard(&self, id: &str) -> Option<&ShardMeta> {
        self.shards.iter().find(|s| s.id.as_str() == id)
    }

    pub fn shard_mut(&mut self, id: &str) -> Option<&mut ShardMeta> {
        self.shards.iter_mut().find(|s| s.id.as_str() == id)
    }

    /// The shard owning `key`, by binary search over the sorted ranges.
    pub fn shard_of(&self, key: i64) -> Option<&ShardMeta> {
        let i = self.shards.partition_point(|s| s.low <= key);
        let s = self.shards.get(i.checked_sub(1)?)?;
        s.contains(key).then_some(s)
    }

    /// Shards whose range meets the inclusive range `[low, high]`, in key order.
    pub fn overlapping(&self, low: i64, high: i64) -> impl Iterator<Item = &ShardMeta> {
        self.shards
            .iter()
            .filter(move |s| s.low <= high && low < s.end())
    }

    /// Servers holding a replica of `shard`, in name order.
    pub fn replicas<'a>(&'a self, shard: &'a str) -> impl Iterator<Item = &'a ServerName> + 'a {
        self.servers
            .iter()
            .filter(move |(_, m)| m.shards.iter().any(|s| s.as_str() == shard))
            .map(|(n, _)| n)
    }

    pub fn sort_shards(&mut self) {
        self.shards.sort_by_key(|s| s.low);
    }
}

/// Smallest number of replicas that is a majority of `n`.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// A shard as written in `/init` and `/add` bodies (the assignment's field names).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSpec {
    #[serde(rename = "Stud_id_low")]
    pub low: i64,
    #[serde(rename = "Shard_id")]
    pub id: ShardId,
    #[serde(rename = "Shard_size")]
    pub size: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    #[serde(rename = "N")]
    pub n: u64,
    pub schema: SchemaSpec,
    pub shards: Vec<ShardSpec>,
    pub servers: BTreeMap<String, Vec<ShardId>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub n: u64,
    #[serde(default)]
    pub new_shards: Vec<ShardSpec>,
    pub servers: BTreeMap<String, Vec<ShardId>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RmRequest {
    pub n: u64,
    #[serde(default)]
    pub servers: Vec<String>,
}

/// A validated `/init`: the schema, the shards (term 0, no primary yet) and the requested
/// servers, whose names may still be placeholders such as `Server[5]`.
#[derive(Debug, Clone)]
pub struct InitPlan {
    pub schema: Schema,
    pub shards: Vec<ShardMeta>,
    pub servers: Vec<(String, Vec<ShardId>)>,
}

impl InitRequest {
    pub fn validate(&self) -> Result<InitPlan, ApiError> {
        let bad = ApiError::BadRequest;
        let schema = Schema::parse(&self.schema).map_err(bad)?;
        if self.servers.is_empty() {
            return Err(bad("servers: at least one server is required".into()));
        }
        if self.n != self.servers.len() as u64 {
            return Err(bad(format!(
                "N is {} but servers lists {} servers",
                self.n,
                self.servers.len()
            )));
        }
        if self.shards.is_empty() {
            return Err(bad("shards: at least one shard is required".into()));
        }
        let shards = validate_new_shards(&self.shards, &[])?;
        let servers = validate_placement(&self.servers, &shards, &[])?;
        Ok(InitPlan {
            schema,
            shards,
            servers,
        })
    }
}

/// A validated `/add`: new shards and new servers (names possibly placeholders).
#[derive(Debug, Clone)]
pub struct AddPlan {
    pub shards: Vec<ShardMeta>,
    pub servers: Vec<(String, Vec<ShardId>)>,
}

impl AddRequest {
    pub fn validate(&self, meta: &ClusterMeta) -> Result<AddPlan, ApiError> {
        let bad = ApiError::BadRequest;
        if self.n > self.servers.len() as u64 {
            return Err(bad(
                "<Error> Number of new servers (n) is greater than newly added instances".into(),
            ));
        }
        if self.n < self.servers.len() as u64 {
            return Err(bad(format!(
                "n is {} but servers lists {} new servers",
                self.n,
                self.servers.len()
            )));
        }
        if self.servers.is_empty() && self.new_shards.is_empty() {
            return Err(bad("nothing to add: n is 0 and no new shards".into()));
        }
        for name in self.servers.keys() {
            if meta.servers.keys().any(|s| s.as_str() == name) {
                return Err(ApiError::Conflict(format!("server {name} already exists")));
            }
        }
        let shards = validate_new_shards(&self.new_shards, &meta.shards)?;
        let servers = validate_placement(&self.servers, &shards, &meta.shards)?;
        Ok(AddPlan { shards, servers })
    }
}

fn validate_new_shards(
    new: &[ShardSpec],
    existing: &[ShardMeta],
) -> Result<Vec<ShardMeta>, ApiError> {
    let bad = ApiError::BadRequest;
    let mut out: Vec<ShardMeta> = Vec::with_capacity(new.len());
    for s in new {
        if s.size <= 0 {
            return Err(bad(format!(
                "shard {}: Shard_size must be > 0, got {}",
                s.id, s.size
            )));
        }
        if s.low.checked_add(s.size).is_none() {
            return Err(bad(format!(
                "shard {}: Stud_id_low + Shard_size overflows a signed 64-bit integer",
                s.id
            )));
        }
        if existing.iter().chain(&out).any(|o| o.id == s.id) {
            return Err(bad(format!("shard {} is defined twice", s.id)));
        }
        out.push(ShardMeta {
            id: s.id.clone(),
            low: s.low,
            size: s.size,
            primary: None,
            term: Term::ZERO,
            fault: None,
            log_id: None,
        });
    }
    let mut all: Vec<&ShardMeta> = existing.iter().chain(&out).collect();
    all.sort_by_key(|s| s.low);
    for w in all.windows(2) {
        if w[0].end() > w[1].low {
            return Err(bad(format!(
                "shards {} [{}, {}) and {} [{}, {}) overlap",
                w[0].id,
                w[0].low,
                w[0].end(),
                w[1].id,
                w[1].low,
                w[1].end()
            )));
        }
    }
    Ok(out)
}

fn validate_placement(
    servers: &BTreeMap<String, Vec<ShardId>>,
    new: &[ShardMeta],
    existing: &[ShardMeta],
) -> Result<Vec<(String, Vec<ShardId>)>, ApiError> {
    let bad = ApiError::BadRequest;
    let mut out = Vec::with_capacity(servers.len());
    let mut placed = BTreeSet::new();
    for (name, shards) in servers {
        if !ServerName::is_placeholder(name) {
            ServerName::parse(name).map_err(|e| bad(format!("servers: {e}")))?;
        } else if name.len() > 64 {
            return Err(bad(format!(
                "servers: placeholder name {name:?} is too long"
            )));
        }
        if shards.is_empty() {
            return Err(bad(format!("server {name} must hold at least one shard")));
        }
        let mut seen = BTreeSet::new();
        for s in shards {
            if !new.iter().chain(existing).any(|m| &m.id == s) {
                return Err(bad(format!("server {name} names unknown shard {s}")));
            }
            if !seen.insert(s) {
                return Err(bad(format!("server {name} lists shard {s} twice")));
            }
            placed.insert(s.clone());
        }
        out.push((name.clone(), shards.clone()));
    }
    if let Some(s) = new.iter().find(|s| !placed.contains(&s.id)) {
        return Err(bad(format!(
            "shard {} has no replica: no server holds it",
            s.id
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn init(v: serde_json::Value) -> Result<InitPlan, ApiError> {
        serde_json::from_value::<InitRequest>(v).unwrap().validate()
    }

    fn a1() -> serde_json::Value {
        serde_json::from_str(include_str!("../../workloads/a1.init.json")).unwrap()
    }

    #[test]
    fn a1_is_valid_and_routes() {
        let plan = init(a1()).unwrap();
        let mut meta = ClusterMeta {
            schema: plan.schema,
            shards: plan.shards,
            servers: BTreeMap::new(),
        };
        meta.sort_shards();
        assert_eq!(meta.shard_of(0).unwrap().id.as_str(), "sh1");
        assert_eq!(meta.shard_of(4095).unwrap().id.as_str(), "sh1");
        assert_eq!(meta.shard_of(4096).unwrap().id.as_str(), "sh2");
        assert_eq!(meta.shard_of(16383).unwrap().id.as_str(), "sh4");
        assert!(meta.shard_of(16384).is_none());
        assert!(meta.shard_of(-1).is_none());
        assert!(meta.shard_of(i64::MIN).is_none());
        let ids: Vec<_> = meta
            .overlapping(4000, 8200)
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(ids, ["sh1", "sh2", "sh3"]);
    }

    #[test]
    fn init_rejects_bad_layouts() {
        let msg = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = a1();
            f(&mut v);
            init(v).unwrap_err().message()
        };
        assert!(msg(&|v| v["N"] = json!(5)).contains("N is 5"));
        assert!(msg(&|v| v["shards"][1]["Stud_id_low"] = json!(100)).contains("overlap"));
        assert!(msg(&|v| v["shards"][0]["Shard_size"] = json!(0)).contains("> 0"));
        assert!(msg(&|v| v["shards"][0]["Stud_id_low"] = json!(i64::MAX)).contains("overflow"));
        assert!(msg(&|v| v["servers"]["Server0"] = json!(["sh9"])).contains("unknown shard sh9"));
        assert!(msg(&|v| v["servers"]["Server0"] = json!(["sh1", "sh1"])).contains("twice"));
        assert!(msg(&|v| {
            let s = v["servers"].as_object_mut().unwrap();
            let shards = s.remove("Server0").unwrap();
            s.insert("a b".into(), shards);
        })
        .contains("server name"));
        assert!(msg(&|v| {
            v["servers"] = json!({"S0": ["sh1"]});
            v["N"] = json!(1);
        })
        .contains("no replica"));
    }

    #[test]
    fn majority_sizes() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(6), 4);
    }
}
