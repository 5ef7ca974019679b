//! The gateway's view of the cluster: a snapshot of the [`ClusterMeta`] stored under key
//! `cluster` of the KV bucket `shardline_meta`, plus one read ring per shard. A background
//! task follows the key with a KV watch and publishes each new snapshot on a
//! `tokio::sync::watch` channel, so handlers read it without locking and a write waiting for a
//! failover can wait for the next change. The gateway never creates the bucket or writes the
//! key: only the manager does; until the bucket exists the task keeps retrying.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::kv::{Entry, Operation};
use futures::StreamExt;
use hyper::http::uri::Authority;
use hyper::Uri;
use shardline::meta::{ClusterMeta, Health, META_BUCKET, META_KEY};
use shardline::names::ServerName;
use shardline::ring::{HashRing, RingHash};
use shardline::ApiError;
use tokio::sync::watch;

/// What the gateway knows about the cluster right now.
#[derive(Debug)]
pub enum Topology {
    /// The metadata has not been read yet (NATS or the bucket is not reachable yet).
    Loading,
    /// The bucket exists but holds no `cluster` key: nobody has called /init.
    Unconfigured,
    Configured(Box<Cluster>),
}

impl Topology {
    /// The configured cluster, or the 503 a data endpoint answers without one.
    pub fn cluster(&self) -> Result<&Cluster, ApiError> {
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

/// A configured cluster: its metadata and a read ring per shard over the shard's replicas.
#[derive(Debug)]
pub struct Cluster {
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

impl Cluster {
    pub fn new(meta: ClusterMeta, revision: u64, hash: RingHash) -> Cluster {
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
        Cluster {
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
    pub fn ready(&self) -> Result<(), String> {
        for s in &self.meta.shards {
            match self.primary(s.id.as_str()) {
                None => return Err(format!("shard {} has no primary", s.id)),
                Some(p) if !self.is_up(p.name.as_str()) => {
                    return Err(format!("shard {}: primary {} is not up", s.id, p.name))
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
    let (tx, rx) = watch::channel(Arc::new(Topology::Loading));
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        // Failures are expected while NATS or the manager start up: warn at most every 30 s.
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            match follow(&js, hash, &tx, &mut backoff).await {
                Ok(()) => tracing::warn!("metadata watch ended; restarting it"),
                Err(e) => {
                    let loud = last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(30));
                    if loud {
                        last_warning = Some(tokio::time::Instant::now());
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "cluster metadata not available; retrying"
                        );
                    } else {
                        tracing::debug!(error = format!("{e:#}"), "cluster metadata not available");
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// Follows the key until the watch fails. Returns `Ok` when the watch stream ends.
async fn follow(
    js: &jetstream::Context,
    hash: RingHash,
    tx: &watch::Sender<Arc<Topology>>,
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let kv = js
        .get_key_value(META_BUCKET)
        .await
        .with_context(|| format!("opening KV bucket {META_BUCKET}"))?;
    // Watch first, then read: an update between the two is seen twice, never missed.
    let mut updates = kv
        .watch_with_history(META_KEY)
        .await
        .with_context(|| format!("watching key {META_KEY}"))?;
    let mut revision = 0;
    match kv
        .entry(META_KEY)
        .await
        .with_context(|| format!("reading key {META_KEY}"))?
    {
        Some(entry) => apply(entry, hash, tx, &mut revision),
        None => publish(tx, Topology::Unconfigured, &mut revision, 0),
    }
    *backoff = Duration::from_millis(200);
    while let Some(entry) = updates.next().await {
        let entry = entry.context("metadata watch failed")?;
        apply(entry, hash, tx, &mut revision);
    }
    Ok(())
}

fn apply(entry: Entry, hash: RingHash, tx: &watch::Sender<Arc<Topology>>, revision: &mut u64) {
    if entry.revision <= *revision {
        return;
    }
    match entry.operation {
        Operation::Delete | Operation::Purge => {
            publish(tx, Topology::Unconfigured, revision, entry.revision)
        }
        Operation::Put => match serde_json::from_slice::<ClusterMeta>(&entry.value) {
            // `Schema::key()` indexes the first column: never accept a document without one.
            Ok(meta) if meta.schema.columns.is_empty() => tracing::error!(
                revision = entry.revision,
                "cluster metadata has an empty schema; keeping the previous snapshot"
            ),
            Ok(mut meta) => {
                meta.sort_shards();
                let cluster = Cluster::new(meta, entry.revision, hash);
                publish(
                    tx,
                    Topology::Configured(Box::new(cluster)),
                    revision,
                    entry.revision,
                )
            }
            // Keep routing with the last good snapshot rather than dropping the cluster.
            Err(e) => tracing::error!(
                revision = entry.revision,
                error = %e,
                "cluster metadata does not decode; keeping the previous snapshot"
            ),
        },
    }
}

fn publish(tx: &watch::Sender<Arc<Topology>>, t: Topology, revision: &mut u64, new: u64) {
    match (&t, &**tx.borrow()) {
        // The manager rewrites the key for progress reports too; log only what changes routing.
        (Topology::Configured(c), Topology::Configured(old))
            if same_routing(&c.meta, &old.meta) =>
        {
            tracing::debug!(revision = new, "cluster metadata updated")
        }
        (Topology::Configured(c), _) => tracing::info!(
            revision = new,
            shards = c.meta.shards.len(),
            servers = c.meta.servers.len(),
            primaries = %primaries(&c.meta),
            "cluster metadata updated"
        ),
        (Topology::Unconfigured, _) => tracing::info!(revision = new, "cluster is not configured"),
        (Topology::Loading, _) => {}
    }
    *revision = new;
    tx.send_replace(Arc::new(t));
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
