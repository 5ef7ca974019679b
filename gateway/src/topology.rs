//! The gateway's view of the cluster, one snapshot per metadata revision: the [`ClusterMeta`]
//! stored under key `cluster` of the KV bucket `shardline_meta`, plus what routing needs
//! prepared once rather than per request (a read ring per shard, each server's parsed
//! address and its reads in flight). [`shardline::watch::follow`] delivers the revisions;
//! handlers read the latest snapshot from the `tokio::sync::watch` channel without locking,
//! and a write waiting for a failover waits for the next change on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_nats::jetstream;
use hyper::http::uri::Authority;
use hyper::Uri;
use shardline::meta::{ClusterMeta, Health, META_BUCKET};
use shardline::names::ServerName;
use shardline::ring::{HashRing, RingHash};
use shardline::watch::{Stored, Update};
use shardline::ApiError;
use tokio::sync::watch;

/// What the gateway knows about the cluster right now.
#[derive(Debug)]
pub enum Topology {
    /// The metadata has not been read yet (NATS or the bucket is not reachable yet).
    Loading,
    /// The bucket exists but holds no `cluster` key: nobody has called /init.
    Unconfigured,
    Configured(Box<Routing>),
}

impl Topology {
    /// The configured cluster's routing view, or the 503 a data endpoint answers without one.
    pub fn routing(&self) -> Result<&Routing, ApiError> {
        match self {
            Topology::Configured(c) => Ok(c),
            Topology::Unconfigured => Err(ApiError::Unavailable(
                "cluster is not configured; POST /init first".into(),
            )),
            Topology::Loading => Err(ApiError::Unavailable(format!(
                "cluster metadata not loaded yet (waiting for NATS KV bucket {META_BUCKET})"
            ))),
        }
    }
}

/// How to route requests at one metadata revision: the metadata, a read ring per shard over
/// its replicas, and each server's parsed address.
#[derive(Debug)]
pub struct Routing {
    pub meta: ClusterMeta,
    /// KV revision this snapshot was read at.
    pub revision: u64,
    rings: HashMap<String, HashRing>,
    /// Each server with a usable address, built once per metadata revision.
    upstreams: HashMap<String, Upstream>,
}

#[derive(Debug)]
struct Upstream {
    /// Its name and parsed `host:port` (not parsed again per request).
    target: Target,
    /// Reads this gateway has in flight there (for the read policy's overflow).
    reads: Arc<AtomicUsize>,
}

/// Counts one read in flight at a server until dropped.
pub struct InFlight(Option<Arc<AtomicUsize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = &self.0 {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Where to send a request: a server and its `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: ServerName,
    pub authority: Authority,
}

impl Target {
    /// `http://<host:port><path>`; `path` is one of the servers' fixed routes.
    pub fn uri(&self, path: &str) -> Uri {
        Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .expect("a parsed authority and a fixed path make a valid URI")
    }
}

impl Routing {
    /// Refuses a shard frozen after a log fault (README "Log faults"): it serves nothing, so
    /// the gateway answers `log_fault` without calling any server.
    pub fn check_not_frozen(&self, shard: &str) -> Result<(), ApiError> {
        match self.meta.shard(shard).and_then(|s| s.fault.as_ref()) {
            Some(why) => Err(ApiError::LogFault(format!(
                "shard {shard} is frozen after a log fault ({why}); it serves nothing until it is recovered"
            ))),
            None => Ok(()),
        }
    }

    pub fn new(meta: ClusterMeta, revision: u64, hash: RingHash) -> Routing {
        let rings = meta
            .shards
            .iter()
            .map(|s| {
                let replicas = meta.replicas(s.id.as_str()).cloned().collect();
                (s.id.as_str().to_owned(), HashRing::new(hash, replicas))
            })
            .collect();
        let upstreams = meta
            .servers
            .iter()
            .filter_map(|(name, m)| match m.addr.parse::<Authority>() {
                Ok(authority) => Some((
                    name.as_str().to_owned(),
                    Upstream {
                        target: Target {
                            name: name.clone(),
                            authority,
                        },
                        reads: Arc::default(),
                    },
                )),
                Err(e) => {
                    tracing::warn!(server = %name, addr = %m.addr, error = %e, "unusable server address");
                    None
                }
            })
            .collect();
        Routing {
            meta,
            revision,
            rings,
            upstreams,
        }
    }

    pub fn ring(&self, shard: &str) -> Option<&HashRing> {
        self.rings.get(shard)
    }

    pub fn target(&self, server: &str) -> Option<Target> {
        self.upstreams.get(server).map(|u| u.target.clone())
    }

    /// Reads this gateway has in flight at `server`.
    pub fn reads_in_flight(&self, server: &str) -> usize {
        self.upstreams
            .get(server)
            .map_or(0, |u| u.reads.load(Ordering::Relaxed))
    }

    /// Counts a read at `server` as in flight until the returned guard is dropped.
    pub fn start_read(&self, server: &str) -> InFlight {
        let n = self.upstreams.get(server).map(|u| u.reads.clone());
        if let Some(n) = &n {
            n.fetch_add(1, Ordering::Relaxed);
        }
        InFlight(n)
    }

    /// Whether `server` may serve reads: up and not catching up.
    pub fn is_up(&self, server: &str) -> bool {
        self.meta
            .servers
            .get(server)
            .is_some_and(|m| m.health == Health::Up)
    }

    /// The shard's primary, if it has one and the primary is a known server.
    pub fn primary(&self, shard: &str) -> Option<Target> {
        let name = self.meta.shard(shard)?.primary.as_ref()?;
        self.target(name.as_str())
    }

    /// Every shard has a primary that is a known server marked up.
    pub fn ready(&self) -> Result<(), ApiError> {
        for s in &self.meta.shards {
            match self.primary(s.id.as_str()) {
                None => {
                    return Err(ApiError::NoPrimary(format!(
                        "shard {} has no primary",
                        s.id
                    )))
                }
                Some(p) if !self.is_up(p.name.as_str()) => {
                    return Err(ApiError::Unavailable(format!(
                        "shard {}: primary {} is not up",
                        s.id, p.name
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

pub type TopologyRx = watch::Receiver<Arc<Topology>>;

/// Starts following the metadata key; the receiver always holds the latest snapshot.
pub fn spawn(js: jetstream::Context, hash: RingHash) -> TopologyRx {
    shardline::watch::follow(js, Arc::new(Topology::Loading), move |update, current| {
        next(update, hash, current).map(Arc::new)
    })
}

/// The snapshot after `update`, or `None` to keep routing with `current`.
fn next(update: Update, hash: RingHash, current: &Topology) -> Option<Topology> {
    let revision = update.revision;
    match update.stored {
        Stored::Absent => {
            tracing::info!(revision, "cluster is not configured");
            Some(Topology::Unconfigured)
        }
        // Keep routing with the last good snapshot rather than dropping the cluster.
        Stored::Undecodable => {
            tracing::error!(revision, "keeping the previous cluster metadata snapshot");
            None
        }
        // `Schema::key()` indexes the first column: never accept a document without one.
        Stored::Meta(meta) if meta.schema.columns.is_empty() => {
            tracing::error!(
                revision,
                "cluster metadata has an empty schema; keeping the previous snapshot"
            );
            None
        }
        Stored::Meta(mut meta) => {
            meta.sort_shards();
            match current {
                // The manager rewrites the key for progress reports too; log only what
                // changes routing.
                Topology::Configured(old) if same_routing(&meta, &old.meta) => {
                    tracing::debug!(revision, "cluster metadata updated")
                }
                _ => tracing::info!(
                    revision,
                    shards = meta.shards.len(),
                    servers = meta.servers.len(),
                    primaries = %primaries(&meta),
                    "cluster metadata updated"
                ),
            }
            Some(Topology::Configured(Box::new(Routing::new(
                meta, revision, hash,
            ))))
        }
    }
}

/// Same shards, primaries, terms, servers, addresses and health.
fn same_routing(a: &ClusterMeta, b: &ClusterMeta) -> bool {
    a.shards == b.shards
        && a.servers.len() == b.servers.len()
        && a.servers.iter().zip(&b.servers).all(|((na, a), (nb, b))| {
            na == nb && a.addr == b.addr && a.health == b.health && a.shards == b.shards
        })
}

fn primaries(meta: &ClusterMeta) -> String {
    meta.shards
        .iter()
        .map(|s| match &s.primary {
            Some(p) => format!("{}={p}", s.id),
            None => format!("{}=none", s.id),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::tests::a1;

    fn update(revision: u64, stored: Stored) -> Update {
        Update { revision, stored }
    }

    #[test]
    fn each_revision_becomes_a_snapshot_or_keeps_the_last_good_one() {
        let hash = RingHash::Mixed;
        let t = next(update(0, Stored::Absent), hash, &Topology::Loading).unwrap();
        assert!(matches!(t, Topology::Unconfigured));
        assert!(t.routing().unwrap_err().message().contains("POST /init"));

        let mut meta = a1();
        meta.shards.reverse();
        let t = next(update(7, Stored::Meta(meta)), hash, &t).unwrap();
        let routing = t.routing().unwrap();
        assert_eq!(routing.revision, 7);
        // Shards sorted by range, a ring for each.
        assert_eq!(routing.meta.shards[0].id.as_str(), "sh1");
        assert!(routing.ring("sh4").is_some());
        let e = routing.ready().unwrap_err();
        assert_eq!(e.code(), shardline::ErrorCode::NoPrimary);
        assert_eq!(e.message(), "shard sh1 has no primary");

        // A value that does not decode, or a schema without columns: routing goes on.
        assert!(next(update(8, Stored::Undecodable), hash, &t).is_none());
        let mut empty = a1();
        empty.schema.columns.clear();
        assert!(next(update(9, Stored::Meta(empty)), hash, &t).is_none());

        // Torn down.
        let gone = next(update(10, Stored::Absent), hash, &t).unwrap();
        assert!(matches!(gone, Topology::Unconfigured));
    }
}
