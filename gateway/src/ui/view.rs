//! `GET /ui/api/cluster`: what the dashboard draws, in one document — the key space split into
//! shards, every (shard, server) replica with its role, applied sequence and lag, the WAL
//! length of each shard, whether NATS answers, and the events since the page's last poll.
//!
//! Progress comes from JetStream as for `/status` (same queries, `crate::status`): each
//! shard's stream length and each replica's durable-consumer ack floor, falling back to what
//! the manager last recorded in the metadata (`servers[..].applied`) when NATS does not tell.
//! The ack floor trails the replica's applied sequence by at most its ack interval (50 ms).

use serde::Serialize;
use shardline::meta::{ClusterMeta, Health};
use shardline::Seq;

use super::events::Event;

/// Shown when nobody has called `/init` yet.
pub const INIT_HINT: &str = "The cluster is not configured yet. Configure it with POST /init, \
e.g. three servers holding two shards (or --data @workloads/a1.init.json for the assignment's A1):";
/// `<gateway>` is replaced by the page's own origin.
pub const INIT_EXAMPLE: &str = r#"curl -X POST <gateway>/init -H 'Content-Type: application/json' -d '{
  "N": 3,
  "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "Number"]},
  "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 4096},
             {"Stud_id_low": 4096, "Shard_id": "sh2", "Shard_size": 4096}],
  "servers": {"Server0": ["sh1", "sh2"], "Server1": ["sh1", "sh2"], "Server2": ["sh1", "sh2"]}}'"#;

#[derive(Debug, Serialize)]
pub struct ClusterView {
    /// `loading` (metadata not read yet), `unconfigured` or `configured`.
    pub state: &'static str,
    /// The gateway's NATS connection: `connected`, `disconnected` or `pending`.
    pub nats: &'static str,
    /// What to tell the reader when the cluster cannot be shown (not configured, NATS away).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<&'static str>,
    /// KV revision of the metadata shown.
    pub revision: u64,
    pub now_ms: u64,
    pub shards: Vec<ShardView>,
    pub servers: Vec<ServerView>,
    /// `[low, high)` over all shards.
    pub key_space: Option<(i64, i64)>,
    /// Events after the page's `since`, oldest first.
    pub events: Vec<Event>,
    /// `events` is the whole kept list: the page must replace, not append.
    pub events_reset: bool,
    /// Pass as `since` next time.
    pub last_event: u64,
}

#[derive(Debug, Serialize)]
pub struct ShardView {
    pub id: String,
    pub low: i64,
    pub size: i64,
    pub primary: Option<String>,
    pub term: u64,
    /// Last sequence of `WAL_<shard>`: the WAL's length (`null` when JetStream did not answer).
    pub wal_last_seq: Option<Seq>,
    pub replicas: Vec<ReplicaView>,
}

#[derive(Debug, Serialize)]
pub struct ReplicaView {
    pub server: String,
    /// `primary`, `secondary`, `recovering`, `down` or `failed`: the server's health decides
    /// unless it is up, then its role for this shard.
    pub role: &'static str,
    pub primary: bool,
    /// Last WAL sequence the replica applied (its consumer's ack floor).
    pub applied: Option<Seq>,
    /// `wal_last_seq - applied`, when both are known.
    pub lag: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ServerView {
    pub name: String,
    pub addr: String,
    pub health: Health,
    pub shards: Vec<String>,
    /// How many shards it leads.
    pub primaries: usize,
}

/// The configured part of the view, given each shard's last WAL sequence in `meta.shards`
/// order and the applied sequence of a (server, shard) replica where NATS told it.
pub fn render(
    meta: &ClusterMeta,
    last: &[Option<Seq>],
    acked: impl Fn(&str, &str) -> Option<Seq>,
) -> (Vec<ShardView>, Vec<ServerView>) {
    let shards = meta
        .shards
        .iter()
        .zip(last.iter().copied().chain(std::iter::repeat(None)))
        .map(|(s, wal_last_seq)| {
            let primary = s.primary.as_ref().map(|p| p.as_str());
            let replicas = meta
                .replicas(s.id.as_str())
                .filter_map(|name| {
                    let m = meta.servers.get(name.as_str())?;
                    let is_primary = primary == Some(name.as_str());
                    let applied = acked(name.as_str(), s.id.as_str())
                        .or_else(|| m.applied.get(s.id.as_str()).copied());
                    Some(ReplicaView {
                        server: name.to_string(),
                        role: role(m.health, is_primary),
                        primary: is_primary,
                        applied,
                        lag: wal_last_seq
                            .zip(applied)
                            .map(|(last, a)| last.0.saturating_sub(a.0)),
                    })
                })
                .collect();
            ShardView {
                id: s.id.to_string(),
                low: s.low,
                size: s.size,
                primary: primary.map(str::to_owned),
                term: s.term.0,
                wal_last_seq,
                replicas,
            }
        })
        .collect();
    let servers = meta
        .servers
        .iter()
        .map(|(name, m)| ServerView {
            name: name.to_string(),
            addr: m.addr.clone(),
            health: m.health,
            shards: m.shards.iter().map(|s| s.to_string()).collect(),
            primaries: meta
                .shards
                .iter()
                .filter(|s| s.primary.as_ref() == Some(name))
                .count(),
        })
        .collect();
    (shards, servers)
}

pub fn key_space(meta: &ClusterMeta) -> Option<(i64, i64)> {
    let low = meta.shards.iter().map(|s| s.low).min()?;
    let high = meta.shards.iter().map(|s| s.end()).max()?;
    Some((low, high))
}

fn role(health: Health, primary: bool) -> &'static str {
    match health {
        Health::Up if primary => "primary",
        Health::Up => "secondary",
        Health::Recovering => "recovering",
        Health::Down => "down",
        Health::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline::meta::ServerMeta;
    use shardline::names::{ServerName, ShardId};

    #[test]
    fn replicas_carry_role_applied_and_lag() {
        let mut meta = super::super::tests::a1();
        let sh = |s: &str| ShardId::parse(s).unwrap();
        for (name, health, applied) in [
            ("Server0", Health::Up, Some(7)),
            ("Server2", Health::Down, Some(3)),
            ("Server4", Health::Up, None),
        ] {
            meta.servers.insert(
                ServerName::parse(name).unwrap(),
                ServerMeta {
                    addr: "127.0.0.1:1".into(),
                    shards: vec![sh("sh1")],
                    health,
                    applied: applied.map(|a| (sh("sh1"), Seq(a))).into_iter().collect(),
                },
            );
        }
        meta.shards[0].primary = Some(ServerName::parse("Server2").unwrap());
        // NATS tells Server4's progress; the others fall back to the metadata's.
        let acked = |srv: &str, sh: &str| ((srv, sh) == ("Server4", "sh1")).then_some(Seq(8));
        let (shards, servers) = render(&meta, &[Some(Seq(9))], acked);
        let sh1 = &shards[0];
        assert_eq!(sh1.wal_last_seq, Some(Seq(9)));
        let cells: Vec<_> = sh1
            .replicas
            .iter()
            .map(|r| (r.server.as_str(), r.role, r.primary, r.lag))
            .collect();
        assert_eq!(
            cells,
            [
                ("Server0", "secondary", false, Some(2)),
                ("Server2", "down", true, Some(6)),
                ("Server4", "secondary", false, Some(1)),
            ]
        );
        // No stream length known: no lag.
        assert_eq!(shards[1].wal_last_seq, None);
        assert_eq!(servers.len(), 3);
        assert_eq!(servers[1].primaries, 1);
        assert_eq!(key_space(&meta), Some((0, 16384)));
    }

    /// The hint's example is a valid /init body.
    #[test]
    fn the_init_example_is_valid() {
        let body = INIT_EXAMPLE
            .split_once("-d '")
            .unwrap()
            .1
            .trim_end_matches('\'');
        let req: shardline::meta::InitRequest = serde_json::from_str(body).unwrap();
        req.validate().unwrap();
    }
}
