//! The control plane's operations: `/init`, `/add`, `/rm`, elections, and bringing servers
//! up (spawn → configure → caught up). Admin operations run one at a time.

use std::collections::{BTreeMap, BTreeSet};

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use rand::seq::IndexedRandom;
use serde_json::{json, Value};
use shardline::meta::{
    AddRequest, ClusterMeta, Health, InitRequest, RmRequest, ServerMeta, ShardMeta,
};
use shardline::names::{ServerName, ShardId};
use shardline::wal::{self, now_ms, WalEntry, WalOp};
use shardline::{ApiError, Seq, Term};

use crate::metadata::MetaStore;
use crate::runtime::Runtime;

pub struct Settings {
    /// JetStream replicas of each WAL stream (3 on a 3-node NATS cluster).
    pub stream_replicas: usize,
    /// How long a new server may take to catch up before `/init` or `/add` fails.
    pub catch_up_timeout: Duration,
}

pub struct Cluster<R: Runtime> {
    pub meta: MetaStore,
    pub js: jetstream::Context,
    pub runtime: R,
    pub http: reqwest::Client,
    pub settings: Settings,
    /// Serialises admin operations (`/init`, `/add`, `/rm`).
    pub admin: tokio::sync::Mutex<()>,
    /// Serialises elections; separate from `admin` so that failover never waits for a long
    /// `/add` catch-up.
    pub elections: tokio::sync::Mutex<()>,
}

/// What a server says about itself on `/heartbeat`.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Beat {
    pub server: String,
    pub shards: BTreeMap<String, ShardBeat>,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ShardBeat {
    pub applied: Seq,
    #[allow(dead_code)]
    pub term: Term,
    pub recovering: bool,
}

impl<R: Runtime> Cluster<R> {
    pub async fn heartbeat(
        &self,
        name: &ServerName,
        addr: &str,
        timeout: Duration,
    ) -> Option<Beat> {
        let resp = self
            .http
            .get(format!("http://{addr}/heartbeat"))
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        let beat: Beat = resp.error_for_status().ok()?.json().await.ok()?;
        (beat.server == name.as_str()).then_some(beat)
    }

    pub async fn init(&self, req: InitRequest) -> Result<Value, ApiError> {
        let _admin = self.admin.lock().await;
        if self.meta.get().await.is_some() {
            return Err(ApiError::Conflict(
                "the cluster is already configured; remove it first (DELETE /rm)".into(),
            ));
        }
        let plan = req.validate()?;
        let servers = resolve_names(&plan.servers, &BTreeSet::new());
        let mut shards = plan.shards;
        assign_primaries(&mut shards, &servers, &BTreeMap::new());
        for s in &shards {
            self.reset_stream(&s.id).await?;
            self.append_marker(s).await?;
        }
        let mut meta = ClusterMeta {
            schema: plan.schema,
            shards,
            servers: BTreeMap::new(),
        };
        meta.sort_shards();
        let addrs = self.spawn_all(&servers).await?;
        for (name, shards) in &servers {
            meta.servers.insert(
                name.clone(),
                ServerMeta {
                    addr: addrs[name].clone(),
                    shards: shards.clone(),
                    health: Health::Recovering,
                    applied: BTreeMap::new(),
                },
            );
        }
        let snapshot = meta.clone();
        self.meta
            .update(move |_| Ok((Some(snapshot.clone()), ())))
            .await?;
        self.bring_up(servers.keys().cloned().collect()).await?;
        tracing::info!(
            servers = servers.len(),
            shards = meta.shards.len(),
            "cluster configured"
        );
        Ok(json!({"message": "Configured Database", "status": "success"}))
    }

    pub async fn add(&self, req: AddRequest) -> Result<Value, ApiError> {
        let _admin = self.admin.lock().await;
        let meta = self.configured().await?;
        let plan = req.validate(&meta)?;
        let taken: BTreeSet<ServerName> = meta.servers.keys().cloned().collect();
        let servers = resolve_names(&plan.servers, &taken);
        let mut new_shards = plan.shards;
        let primaries = primaries_per_server(&meta);
        assign_primaries(&mut new_shards, &servers, &primaries);
        for s in &new_shards {
            if s.primary.is_none() {
                return Err(ApiError::BadRequest(format!(
                    "shard {} has no replica",
                    s.id
                )));
            }
            self.reset_stream(&s.id).await?;
            self.append_marker(s).await?;
        }
        let addrs = self.spawn_all(&servers).await?;
        self.meta
            .update(|m| {
                let mut m = m.ok_or_else(not_configured)?;
                m.shards.extend(new_shards.iter().cloned());
                m.sort_shards();
                for (name, shards) in &servers {
                    m.servers.insert(
                        name.clone(),
                        ServerMeta {
                            addr: addrs[name].clone(),
                            shards: shards.clone(),
                            health: Health::Recovering,
                            applied: BTreeMap::new(),
                        },
                    );
                }
                Ok((Some(m), ()))
            })
            .await?;
        self.bring_up(servers.keys().cloned().collect()).await?;
        let total = self.meta.get().await.map(|m| m.servers.len()).unwrap_or(0);
        let names: Vec<String> = servers
            .keys()
            .map(|n| format!("Server:{}", short(n)))
            .collect();
        Ok(json!({
            "N": total,
            "message": format!("Add {}", join_and(&names)),
            "status": "successful"
        }))
    }

    pub async fn rm(&self, req: RmRequest) -> Result<Value, ApiError> {
        let _admin = self.admin.lock().await;
        let meta = self.configured().await?;
        if req.servers.len() as u64 > req.n {
            return Err(ApiError::BadRequest(
                "<Error> Length of server list is more than removable instances".into(),
            ));
        }
        if req.n > meta.servers.len() as u64 {
            return Err(ApiError::BadRequest(format!(
                "n is {} but the cluster has only {} servers",
                req.n,
                meta.servers.len()
            )));
        }
        let mut chosen: Vec<ServerName> = Vec::new();
        for s in &req.servers {
            let name = meta
                .servers
                .keys()
                .find(|n| n.as_str() == s)
                .ok_or_else(|| ApiError::NotFound(format!("unknown server {s:?}")))?;
            if !chosen.contains(name) {
                chosen.push(name.clone());
            }
        }
        let others: Vec<ServerName> = meta
            .servers
            .keys()
            .filter(|n| !chosen.contains(n))
            .cloned()
            .collect();
        let extra = req.n as usize - chosen.len();
        chosen.extend(others.choose_multiple(&mut rand::rng(), extra).cloned());
        for s in &meta.shards {
            let left = meta
                .replicas(s.id.as_str())
                .filter(|r| !chosen.contains(r))
                .count();
            if left == 0 {
                return Err(ApiError::Conflict(format!(
                    "removing {} would leave shard {} with no replica; nothing was removed",
                    chosen
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    s.id
                )));
            }
        }
        // Move primaries away from the servers being removed before they go.
        for s in &meta.shards {
            if s.primary.as_ref().is_some_and(|p| chosen.contains(p)) {
                self.elect(&s.id, &chosen).await?;
            }
        }
        self.meta
            .update(|m| {
                let mut m = m.ok_or_else(not_configured)?;
                for c in &chosen {
                    m.servers.remove(c);
                }
                Ok((Some(m), ()))
            })
            .await?;
        for c in &chosen {
            if let Err(e) = self.runtime.remove(c).await {
                tracing::warn!(server = %c, error = %e, "could not remove server");
            }
            for s in &meta.servers[c].shards {
                if let Ok(stream) = self.js.get_stream(wal::stream_name(s)).await {
                    let _ = stream.delete_consumer(c.as_str()).await;
                }
            }
            tracing::info!(server = %c, "server removed");
        }
        let total = meta.servers.len() - chosen.len();
        Ok(json!({
            "message": {"N": total, "servers": chosen},
            "status": "successful"
        }))
    }

    pub async fn configured(&self) -> Result<ClusterMeta, ApiError> {
        self.meta.get().await.ok_or_else(not_configured)
    }

    /// Elects a new primary for `shard` among its live replicas (highest applied sequence,
    /// then name), bumps the term in a marker entry and then in the metadata.
    pub async fn elect(
        &self,
        shard: &ShardId,
        exclude: &[ServerName],
    ) -> Result<Option<ServerName>, ApiError> {
        let _one_at_a_time = self.elections.lock().await;
        let started = Instant::now();
        let meta = self.configured().await?;
        let sm = meta
            .shard(shard.as_str())
            .ok_or_else(|| ApiError::NotFound(format!("unknown shard {shard}")))?
            .clone();
        let mut best: Option<(Seq, ServerName)> = None;
        for name in meta.replicas(shard.as_str()) {
            if exclude.contains(name) {
                continue;
            }
            let sv = &meta.servers[name];
            if sv.health != Health::Up {
                continue;
            }
            let Some(beat) = self
                .heartbeat(name, &sv.addr, Duration::from_millis(500))
                .await
            else {
                continue;
            };
            let Some(sb) = beat.shards.get(shard.as_str()) else {
                continue;
            };
            if sb.recovering {
                continue;
            }
            // Highest applied sequence wins; ties go to the smallest name (deterministic).
            let better = match &best {
                None => true,
                Some((seq, n)) => sb.applied > *seq || (sb.applied == *seq && name < n),
            };
            if better {
                best = Some((sb.applied, name.clone()));
            }
        }
        let Some((seq, winner)) = best else {
            tracing::warn!(shard = %shard, "no live replica to elect; shard unavailable");
            if sm.primary.is_some() && exclude.iter().any(|e| Some(e) == sm.primary.as_ref()) {
                return Err(ApiError::Unavailable(format!(
                    "shard {shard}: no live replica to take over"
                )));
            }
            return Ok(None);
        };
        let term = sm.term.next();
        let next = ShardMeta {
            primary: Some(winner.clone()),
            term,
            ..sm.clone()
        };
        // Marker first: from its sequence on, entries of the old term are skipped everywhere,
        // so a deposed primary that is still running cannot get anything applied.
        self.append_marker(&next).await?;
        self.meta
            .update(|m| {
                let mut m = m.ok_or_else(not_configured)?;
                if let Some(s) = m.shard_mut(shard.as_str()) {
                    s.primary = Some(winner.clone());
                    s.term = term;
                }
                Ok((Some(m), ()))
            })
            .await?;
        tracing::info!(
            shard = %shard, primary = %winner, term = term.0, applied = seq.0,
            elapsed_ms = started.elapsed().as_millis() as u64, "elected primary"
        );
        metrics::counter!(crate::metrics::ELECTIONS, "shard" => shard.to_string()).increment(1);
        Ok(Some(winner))
    }

    /// Spawns the named servers concurrently; on any failure removes the ones started.
    async fn spawn_all(
        &self,
        servers: &BTreeMap<ServerName, Vec<ShardId>>,
    ) -> Result<BTreeMap<ServerName, String>, ApiError> {
        let results = futures::future::join_all(
            servers
                .keys()
                .map(|n| async move { (n.clone(), self.runtime.spawn(n).await) }),
        )
        .await;
        let mut addrs = BTreeMap::new();
        let mut failure = None;
        for (name, r) in results {
            match r {
                Ok(a) => {
                    addrs.insert(name, a);
                }
                Err(e) => failure = Some(format!("could not start server {name}: {e:#}")),
            }
        }
        if let Some(f) = failure {
            for name in addrs.keys() {
                let _ = self.runtime.remove(name).await;
            }
            return Err(ApiError::Unavailable(f));
        }
        Ok(addrs)
    }

    /// Configures freshly started servers and waits until each has caught up, then marks
    /// them up.
    pub async fn bring_up(&self, names: Vec<ServerName>) -> Result<(), ApiError> {
        let meta = self.configured().await?;
        let results = futures::future::join_all(names.iter().map(|n| {
            let meta = &meta;
            async move { (n.clone(), self.configure_and_wait(meta, n).await) }
        }))
        .await;
        let mut errors = Vec::new();
        let mut up = Vec::new();
        for (n, r) in results {
            match r {
                Ok(()) => up.push(n),
                Err(e) => errors.push(format!("{n}: {e}")),
            }
        }
        self.set_health(&up, Health::Up).await?;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Unavailable(format!(
                "servers did not come up: {}",
                errors.join("; ")
            )))
        }
    }

    async fn configure_and_wait(
        &self,
        meta: &ClusterMeta,
        name: &ServerName,
    ) -> anyhow::Result<()> {
        let sv = meta
            .servers
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("not in the metadata"))?;
        let body = json!({"schema": {
            "columns": meta.schema.columns,
            "dtypes": meta.schema.dtypes,
        }, "shards": sv.shards});
        let resp = self
            .http
            .post(format!("http://{}/config", sv.addr))
            .json(&body)
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!(
                "/config answered {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
        }
        let deadline = Instant::now() + self.settings.catch_up_timeout;
        loop {
            if let Some(beat) = self.heartbeat(name, &sv.addr, Duration::from_secs(1)).await {
                let ready = sv
                    .shards
                    .iter()
                    .all(|s| beat.shards.get(s.as_str()).is_some_and(|b| !b.recovering));
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "did not catch up within {:?}",
                    self.settings.catch_up_timeout
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn set_health(&self, names: &[ServerName], health: Health) -> Result<(), ApiError> {
        if names.is_empty() {
            return Ok(());
        }
        self.meta
            .update(|m| {
                let mut m = m.ok_or_else(not_configured)?;
                for n in names {
                    if let Some(s) = m.servers.get_mut(n) {
                        s.health = health;
                    }
                }
                Ok((Some(m), ()))
            })
            .await
    }

    /// Creates the shard's WAL stream, deleting any left from an earlier cluster.
    async fn reset_stream(&self, shard: &ShardId) -> Result<(), ApiError> {
        let name = wal::stream_name(shard);
        let _ = self.js.delete_stream(&name).await;
        self.js
            .create_stream(stream::Config {
                name: name.clone(),
                description: Some(format!("shardline write-ahead log of shard {shard}")),
                subjects: vec![wal::subject(shard)],
                storage: stream::StorageType::File,
                num_replicas: self.settings.stream_replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!("shard {shard}: cannot create stream {name}: {e}"))
            })?;
        Ok(())
    }

    async fn append_marker(&self, shard: &ShardMeta) -> Result<(), ApiError> {
        let primary = shard
            .primary
            .clone()
            .ok_or_else(|| ApiError::Internal(format!("shard {} has no primary", shard.id)))?;
        let entry = WalEntry {
            op: WalOp::Term { primary },
            term: shard.term,
            by: wal::MANAGER.into(),
            ts_ms: now_ms(),
        };
        let unavailable = |e: String| {
            ApiError::Unavailable(format!(
                "shard {}: cannot append term marker: {e}",
                shard.id
            ))
        };
        self.js
            .publish(wal::subject(&shard.id), entry.encode().into())
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(())
    }
}

pub fn not_configured() -> ApiError {
    ApiError::BadRequest("the cluster is not configured; POST /init first".into())
}

/// Replaces placeholder names (`Server[5]`) by fresh unique ones like `Server58127`.
fn resolve_names(
    requested: &[(String, Vec<ShardId>)],
    taken: &BTreeSet<ServerName>,
) -> BTreeMap<ServerName, Vec<ShardId>> {
    let mut out = BTreeMap::new();
    for (name, shards) in requested {
        if let Ok(n) = ServerName::parse(name) {
            out.insert(n, shards.clone());
        }
    }
    for (name, shards) in requested {
        if !ServerName::is_placeholder(name) {
            continue;
        }
        loop {
            let candidate = format!("Server{}", rand::random_range(10_000..100_000));
            let n = ServerName::parse(&candidate).expect("generated names are valid");
            if !taken.contains(&n) && !out.contains_key(&n) {
                out.insert(n, shards.clone());
                break;
            }
        }
    }
    out
}

fn primaries_per_server(meta: &ClusterMeta) -> BTreeMap<ServerName, usize> {
    let mut m = BTreeMap::new();
    for s in &meta.shards {
        if let Some(p) = &s.primary {
            *m.entry(p.clone()).or_insert(0) += 1;
        }
    }
    m
}

/// Initial primaries (term 1), spread so that no server leads many more shards than another.
fn assign_primaries(
    shards: &mut [ShardMeta],
    servers: &BTreeMap<ServerName, Vec<ShardId>>,
    existing: &BTreeMap<ServerName, usize>,
) {
    let mut load = existing.clone();
    for s in shards.iter_mut() {
        let pick = servers
            .iter()
            .filter(|(_, sh)| sh.contains(&s.id))
            .map(|(n, _)| n)
            .min_by_key(|n| (load.get(*n).copied().unwrap_or(0), (*n).clone()));
        if let Some(p) = pick {
            *load.entry(p.clone()).or_insert(0) += 1;
            s.primary = Some(p.clone());
            s.term = Term(1);
        }
    }
}

/// `Server4` → `4` as in the assignment's messages; other names stay whole.
fn short(n: &ServerName) -> &str {
    n.as_str()
        .strip_prefix("Server")
        .filter(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()))
        .unwrap_or(n.as_str())
}

fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    #[test]
    fn messages_read_like_the_assignment() {
        assert_eq!(short(&name("Server4")), "4");
        assert_eq!(short(&name("Server")), "Server");
        assert_eq!(short(&name("db-1")), "db-1");
        let l = |v: &[&str]| join_and(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(l(&["a"]), "a");
        assert_eq!(l(&["a", "b"]), "a and b");
        assert_eq!(l(&["a", "b", "c"]), "a, b and c");
    }

    #[test]
    fn placeholders_get_fresh_unique_names() {
        let req = vec![
            ("Server[5]".to_string(), vec![]),
            ("Server[6]".to_string(), vec![]),
            ("Server1".to_string(), vec![]),
        ];
        let taken: BTreeSet<_> = [name("Server2")].into();
        let out = resolve_names(&req, &taken);
        assert_eq!(out.len(), 3);
        assert!(out.contains_key(&name("Server1")));
        assert!(out.keys().all(|n| !n.as_str().contains('[')));
    }

    #[test]
    fn primaries_are_spread() {
        let sh = |s: &str| ShardId::parse(s).unwrap();
        let mut shards: Vec<ShardMeta> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, id)| ShardMeta {
                id: sh(id),
                low: i as i64 * 10,
                size: 10,
                primary: None,
                term: Term(0),
            })
            .collect();
        let all = vec![sh("a"), sh("b"), sh("c"), sh("d")];
        let servers: BTreeMap<_, _> = [(name("S0"), all.clone()), (name("S1"), all)].into();
        assign_primaries(&mut shards, &servers, &BTreeMap::new());
        let on_s0 = shards
            .iter()
            .filter(|s| s.primary == Some(name("S0")))
            .count();
        assert_eq!(on_s0, 2);
        assert!(shards.iter().all(|s| s.term == Term(1)));
    }
}
