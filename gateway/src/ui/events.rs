//! The dashboard's event list: what changed in the cluster, as this gateway saw it happen.
//!
//! The manager keeps no history, so the gateway derives one: a task follows the topology
//! snapshots ([`TopologyRx`]) and diffs each against the previous one — a new primary or term
//! is an election, a server's health moving down → recovering → up is a failure, a respawn and
//! a catch-up, a server or shard appearing or vanishing is an /add or /rm. Each event is
//! stamped with the time the gateway saw it and kept in a bounded ring (the last
//! [`CAPACITY`]). The watch channel keeps only the latest snapshot, so two changes closer than
//! the task's wake-up can show as one step (e.g. down → up): that is still the truth about what
//! the gateway saw.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use shardline::meta::{ClusterMeta, Health};
use tokio::sync::watch;

use crate::topology::{Topology, TopologyRx};

/// Events kept.
pub const CAPACITY: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The gateway read the metadata for the first time.
    Connected,
    /// `/init` wrote the metadata.
    Configured,
    /// The metadata key was deleted.
    Unconfigured,
    /// A shard got a (new) primary or a new term.
    Election,
    /// A shard's primary was removed and none elected yet.
    NoPrimary,
    /// A server stopped answering heartbeats.
    Down,
    /// A down server was started again and is catching up.
    Respawned,
    /// A server finished catching up and serves again.
    CaughtUp,
    /// A server is catching up (lagging, or new).
    Recovering,
    /// A down server answers again without a respawn.
    Up,
    /// A server kept dying and is no longer restarted.
    Failed,
    ServerAdded,
    ServerRemoved,
    ShardAdded,
    ShardRemoved,
}

/// One thing that happened, with the names it concerns (for the page to style and filter).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Increasing from 1 in this gateway process.
    pub id: u64,
    /// When the gateway saw it, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: Kind,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// For an election: the previous primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

/// An event before it is numbered and stamped.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: Kind,
    pub text: String,
    pub shard: Option<String>,
    pub server: Option<String>,
    pub from: Option<String>,
    pub term: Option<u64>,
}

impl Change {
    fn new(kind: Kind, text: String) -> Change {
        Change {
            kind,
            text,
            shard: None,
            server: None,
            from: None,
            term: None,
        }
    }
    fn server(kind: Kind, server: &str, text: String) -> Change {
        Change {
            server: Some(server.to_owned()),
            ..Change::new(kind, text)
        }
    }
}

/// The ring and a counter the page's long poll waits on.
pub struct Events {
    ring: Mutex<VecDeque<Event>>,
    /// The id of the newest event (0: none yet).
    last: watch::Sender<u64>,
}

impl Events {
    fn new() -> Events {
        Events {
            ring: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            last: watch::Sender::new(0),
        }
    }

    fn push(&self, changes: Vec<Change>, at_ms: u64) {
        if changes.is_empty() {
            return;
        }
        let mut id = *self.last.borrow();
        {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            for c in changes {
                id += 1;
                if ring.len() == CAPACITY {
                    ring.pop_front();
                }
                ring.push_back(Event {
                    id,
                    at_ms,
                    kind: c.kind,
                    text: c.text,
                    shard: c.shard,
                    server: c.server,
                    from: c.from,
                    term: c.term,
                });
            }
        }
        self.last.send_replace(id);
    }

    /// The id of the newest event.
    pub fn last_id(&self) -> u64 {
        *self.last.borrow()
    }

    /// Events newer than `since`, oldest first; all kept events when `since` is not an id this
    /// process handed out (e.g. from before a gateway restart). The flag says which.
    pub fn since(&self, since: Option<u64>) -> (Vec<Event>, bool) {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        match since {
            Some(n) if n <= self.last_id() && ring.front().is_none_or(|e| e.id <= n + 1) => {
                (ring.iter().filter(|e| e.id > n).cloned().collect(), false)
            }
            _ => (ring.iter().cloned().collect(), true),
        }
    }

    /// Waits until an event newer than `since` exists, at most `timeout`.
    pub async fn wait_newer(&self, since: u64, timeout: Duration) {
        let mut rx = self.last.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|&last| last != since)).await;
    }
}

/// Starts deriving events from the topology snapshots.
pub fn spawn(mut topology: TopologyRx) -> Arc<Events> {
    let events = Arc::new(Events::new());
    let out = events.clone();
    tokio::spawn(async move {
        let mut previous: Option<Arc<Topology>> = None;
        loop {
            let current = topology.borrow_and_update().clone();
            out.push(
                changes(previous.as_deref(), &current),
                shardline::wal::now_ms(),
            );
            previous = Some(current);
            if topology.changed().await.is_err() {
                return;
            }
        }
    });
    events
}

/// What changed from `old` (`None`: nothing seen yet) to `new`.
pub fn changes(old: Option<&Topology>, new: &Topology) -> Vec<Change> {
    match (old, new) {
        (Some(Topology::Configured(a)), Topology::Configured(b)) => diff(&a.meta, &b.meta),
        (Some(Topology::Configured(_)), Topology::Unconfigured) => vec![Change::new(
            Kind::Unconfigured,
            "cluster metadata deleted: the cluster is not configured".into(),
        )],
        (Some(Topology::Unconfigured), Topology::Configured(c)) => vec![Change::new(
            Kind::Configured,
            format!("cluster configured: {}", size(&c.meta)),
        )],
        (_, Topology::Configured(c)) => vec![Change::new(
            Kind::Connected,
            format!(
                "gateway read the cluster metadata (revision {}): {}",
                c.revision,
                size(&c.meta)
            ),
        )],
        _ => Vec::new(),
    }
}

/// "6 servers, 4 shards; primaries sh1=Server0, …": the state a first snapshot starts from.
fn size(meta: &ClusterMeta) -> String {
    let primaries: Vec<String> = meta
        .shards
        .iter()
        .map(|s| match &s.primary {
            Some(p) => format!("{}={p}", s.id),
            None => format!("{}=none", s.id),
        })
        .collect();
    format!(
        "{} servers, {} shards; primaries {}",
        meta.servers.len(),
        meta.shards.len(),
        primaries.join(", ")
    )
}

/// The events between two metadata documents: servers first (a death explains the election
/// that follows it), then shards.
pub fn diff(old: &ClusterMeta, new: &ClusterMeta) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, s) in &new.servers {
        let name = name.as_str();
        let Some(before) = old.servers.get(name) else {
            out.push(Change::server(
                Kind::ServerAdded,
                name,
                format!(
                    "{name} added with {} ({})",
                    list(&s.shards),
                    health(s.health)
                ),
            ));
            continue;
        };
        let change = match (before.health, s.health) {
            (a, b) if a == b => None,
            (_, Health::Down) => Some((Kind::Down, format!("{name} is down (missed heartbeats)"))),
            (_, Health::Failed) => Some((
                Kind::Failed,
                format!("{name} failed: it kept dying and is no longer respawned"),
            )),
            (Health::Down | Health::Failed, Health::Recovering) => {
                Some((Kind::Respawned, format!("{name} respawned, catching up")))
            }
            (Health::Recovering, Health::Up) => {
                Some((Kind::CaughtUp, format!("{name} caught up and serves again")))
            }
            (_, Health::Recovering) => Some((Kind::Recovering, format!("{name} is catching up"))),
            (_, Health::Up) => Some((Kind::Up, format!("{name} is up again"))),
        };
        if let Some((kind, text)) = change {
            out.push(Change::server(kind, name, text));
        }
    }
    for name in old.servers.keys() {
        if !new.servers.contains_key(name.as_str()) {
            out.push(Change::server(
                Kind::ServerRemoved,
                name.as_str(),
                format!("{name} removed"),
            ));
        }
    }
    for s in &new.shards {
        let id = s.id.as_str();
        let Some(before) = old.shard(id) else {
            out.push(Change {
                shard: Some(id.to_owned()),
                ..Change::new(
                    Kind::ShardAdded,
                    format!("shard {id} added: keys [{}, {})", s.low, s.end()),
                )
            });
            continue;
        };
        if before.primary == s.primary && before.term == s.term {
            continue;
        }
        let was = before.primary.as_ref().map(|p| p.to_string());
        let change = match (&was, &s.primary) {
            (_, None) => Change::new(
                Kind::NoPrimary,
                match &was {
                    Some(p) => format!("{id} has no primary (was {p})"),
                    None => format!("{id} has no primary"),
                },
            ),
            (Some(a), Some(b)) if a == b.as_str() => Change::new(
                Kind::Election,
                format!("{id}: {b} re-elected, term {}", s.term),
            ),
            (Some(a), Some(b)) => {
                Change::new(Kind::Election, format!("{id}: {a} → {b}, term {}", s.term))
            }
            (None, Some(b)) => Change::new(
                Kind::Election,
                format!("{id}: {b} elected primary, term {}", s.term),
            ),
        };
        out.push(Change {
            shard: Some(id.to_owned()),
            server: s.primary.as_ref().map(|p| p.to_string()),
            from: was,
            term: Some(s.term.0),
            ..change
        });
    }
    for s in &old.shards {
        if new.shard(s.id.as_str()).is_none() {
            out.push(Change {
                shard: Some(s.id.to_string()),
                ..Change::new(Kind::ShardRemoved, format!("shard {} removed", s.id))
            });
        }
    }
    out
}

fn list(shards: &[shardline::names::ShardId]) -> String {
    let names: Vec<&str> = shards.iter().map(|s| s.as_str()).collect();
    names.join(", ")
}

fn health(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Recovering => "recovering",
        Health::Down => "down",
        Health::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::tests::a1;
    use shardline::meta::ServerMeta;
    use shardline::names::{ServerName, ShardId};
    use shardline::Term;

    fn server(meta: &mut ClusterMeta, name: &str, shards: &[&str], health: Health) {
        meta.servers.insert(
            ServerName::parse(name).unwrap(),
            ServerMeta {
                addr: "127.0.0.1:1".into(),
                shards: shards.iter().map(|s| ShardId::parse(s).unwrap()).collect(),
                health,
                applied: Default::default(),
            },
        );
    }

    fn lead(meta: &mut ClusterMeta, shard: &str, primary: &str, term: u64) {
        let s = meta.shard_mut(shard).unwrap();
        s.primary = Some(ServerName::parse(primary).unwrap());
        s.term = Term(term);
    }

    fn kinds(changes: &[Change]) -> Vec<(Kind, &str)> {
        changes.iter().map(|c| (c.kind, c.text.as_str())).collect()
    }

    #[test]
    fn a_failover_is_a_death_then_an_election() {
        let mut old = a1();
        server(&mut old, "Server0", &["sh1"], Health::Up);
        server(&mut old, "Server2", &["sh1"], Health::Up);
        lead(&mut old, "sh1", "Server0", 1);
        let mut new = old.clone();
        new.servers.get_mut("Server0").unwrap().health = Health::Down;
        lead(&mut new, "sh1", "Server2", 2);
        let c = diff(&old, &new);
        assert_eq!(
            kinds(&c),
            [
                (Kind::Down, "Server0 is down (missed heartbeats)"),
                (Kind::Election, "sh1: Server0 → Server2, term 2"),
            ]
        );
        assert_eq!(c[1].from.as_deref(), Some("Server0"));
        assert_eq!(c[1].server.as_deref(), Some("Server2"));
        assert_eq!(c[1].term, Some(2));

        let mut respawned = new.clone();
        respawned.servers.get_mut("Server0").unwrap().health = Health::Recovering;
        let mut up = respawned.clone();
        up.servers.get_mut("Server0").unwrap().health = Health::Up;
        assert_eq!(diff(&new, &respawned)[0].kind, Kind::Respawned);
        assert_eq!(diff(&respawned, &up)[0].kind, Kind::CaughtUp);
        // Progress reports rewrite the key without changing anything shown as an event.
        up.servers
            .get_mut("Server0")
            .unwrap()
            .applied
            .insert(ShardId::parse("sh1").unwrap(), shardline::Seq(9));
        assert!(diff(&respawned, &respawned).is_empty());
        assert_eq!(diff(&respawned, &up).len(), 1);
    }

    #[test]
    fn add_and_rm_show_as_servers_and_shards_coming_and_going() {
        let mut old = a1();
        server(&mut old, "Server0", &["sh1"], Health::Up);
        let mut new = old.clone();
        new.servers.clear();
        server(&mut new, "Server9", &["sh1", "sh2"], Health::Recovering);
        new.shards.truncate(1);
        lead(&mut new, "sh1", "Server9", 3);
        let c = diff(&old, &new);
        let k: Vec<Kind> = c.iter().map(|c| c.kind).collect();
        assert_eq!(
            k,
            [
                Kind::ServerAdded,
                Kind::ServerRemoved,
                Kind::Election,
                Kind::ShardRemoved,
                Kind::ShardRemoved,
                Kind::ShardRemoved
            ]
        );
        assert_eq!(c[0].text, "Server9 added with sh1, sh2 (recovering)");
        assert_eq!(c[2].text, "sh1: Server9 elected primary, term 3");
    }

    #[test]
    fn configuring_and_first_sight_are_events_loading_is_not() {
        let configured = |primary: &str| {
            let mut meta = a1();
            server(&mut meta, primary, &["sh1"], Health::Up);
            lead(&mut meta, "sh1", primary, 1);
            Topology::Configured(Box::new(crate::topology::Routing::new(
                meta,
                7,
                shardline::ring::RingHash::Mixed,
            )))
        };
        let (a, b) = (configured("Server0"), configured("Server2"));
        let one = |old: Option<&Topology>, new: &Topology| {
            let c = changes(old, new);
            assert!(c.len() <= 1, "{c:?}");
            c.first().map(|c| (c.kind, c.text.clone()))
        };
        assert_eq!(one(None, &Topology::Loading), None);
        assert_eq!(one(Some(&Topology::Loading), &Topology::Unconfigured), None);
        let (kind, text) = one(Some(&Topology::Loading), &a).unwrap();
        assert_eq!(kind, Kind::Connected);
        assert!(
            text.contains("revision 7") && text.contains("sh1=Server0, sh2=none"),
            "{text}"
        );
        assert_eq!(
            one(Some(&Topology::Unconfigured), &a).unwrap().0,
            Kind::Configured
        );
        assert_eq!(
            one(Some(&a), &Topology::Unconfigured).unwrap().0,
            Kind::Unconfigured
        );
        let failover = changes(Some(&a), &b);
        assert!(
            failover.iter().any(|c| c.kind == Kind::Election),
            "{failover:?}"
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_and_answers_since() {
        let events = Events::new();
        assert_eq!(events.since(Some(0)), (vec![], false));
        for i in 0..CAPACITY + 5 {
            events.push(vec![Change::new(Kind::Up, format!("e{i}"))], i as u64);
        }
        let last = events.last_id();
        assert_eq!(last, CAPACITY as u64 + 5);
        let (all, reset) = events.since(None);
        assert!(reset);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].id, 6);
        let (tail, reset) = events.since(Some(last - 2));
        assert!(!reset);
        assert_eq!(
            tail.iter().map(|e| e.id).collect::<Vec<_>>(),
            [last - 1, last]
        );
        // An id from another process, or one that fell out of the ring: everything.
        assert!(events.since(Some(last + 7)).1);
        assert!(events.since(Some(2)).1);
    }
}
