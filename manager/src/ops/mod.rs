//! The admin operations, `/init`, `/add` and `/rm`, one at a time (the `admin` lock). Each
//! prepares the WAL streams, starts the servers, records them in the metadata and brings them
//! up; their answers are the assignment's, as [`shardline::internal`] types.

pub mod placement;

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::IndexedRandom;
use shardline::internal::{AddResponse, Done, Removed, RmResponse, Status};
use shardline::meta::{AddRequest, ClusterMeta, Health, InitRequest, RmRequest, ServerMeta};
use shardline::names::{ServerName, ShardId};
use shardline::ApiError;

use crate::control_plane::{not_configured, ControlPlane};
use crate::messages;
use crate::runtime::Runtime;
use placement::{assign_primaries, primaries_per_server, resolve_names};

impl<R: Runtime> ControlPlane<R> {
    pub async fn init(&self, req: InitRequest) -> Result<Done, ApiError> {
        let _admin = self.admin.lock().await;
        if self.meta.fresh().await?.is_some() {
            return Err(ApiError::Conflict(
                "the cluster is already configured; remove it first (DELETE /rm)".into(),
            ));
        }
        let plan = req.validate()?;
        let servers = resolve_names(&plan.servers, &BTreeSet::new());
        let mut shards = plan.shards;
        assign_primaries(&mut shards, &servers, &BTreeMap::new());
        for s in &shards {
            self.wal.reset_stream(&s.id).await?;
            self.wal.append_marker(s).await?;
        }
        let mut meta = ClusterMeta {
            schema: plan.schema,
            shards,
            servers: BTreeMap::new(),
        };
        meta.sort_shards();
        let addrs = self.spawn_all(&servers).await?;
        self.configure_new_cluster(&mut meta, &servers, &addrs)
            .await?;
        tracing::info!(
            servers = servers.len(),
            shards = meta.shards.len(),
            "cluster configured"
        );
        Ok(Done::new("Configured Database"))
    }

    /// Records a new cluster's metadata (its spawned servers recovering) unless another
    /// manager configured one meanwhile, then brings the servers up (`/init`, `/restore`).
    pub(crate) async fn configure_new_cluster(
        &self,
        meta: &mut ClusterMeta,
        servers: &BTreeMap<ServerName, Vec<ShardId>>,
        addrs: &BTreeMap<ServerName, String>,
    ) -> Result<(), ApiError> {
        add_recovering(meta, servers, addrs);
        let snapshot = meta.clone();
        self.meta
            .update(move |current| match current {
                // Another manager configured the cluster meanwhile: keep its document.
                Some(_) => Err(ApiError::Conflict(
                    "the cluster was configured meanwhile by another manager".into(),
                )),
                None => Ok((Some(snapshot.clone()), ())),
            })
            .await?;
        self.bring_up(servers.keys().cloned().collect()).await
    }

    pub async fn add(&self, req: AddRequest) -> Result<AddResponse, ApiError> {
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
            self.wal.reset_stream(&s.id).await?;
            self.wal.append_marker(s).await?;
        }
        let addrs = self.spawn_all(&servers).await?;
        self.meta
            .update(|m| {
                let mut m = m.ok_or_else(not_configured)?;
                m.shards.extend(new_shards.iter().cloned());
                m.sort_shards();
                add_recovering(&mut m, &servers, &addrs);
                Ok((Some(m), ()))
            })
            .await?;
        self.bring_up(servers.keys().cloned().collect()).await?;
        let total = self.meta.get().await.map(|m| m.servers.len()).unwrap_or(0);
        Ok(AddResponse {
            n: total,
            message: messages::added(servers.keys()),
            status: Status::Successful,
        })
    }

    pub async fn rm(&self, req: RmRequest) -> Result<RmResponse, ApiError> {
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
                    messages::comma_list(&chosen),
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
                self.wal.forget_consumer(s, c).await;
            }
            tracing::info!(server = %c, "server removed");
        }
        let total = meta.servers.len() - chosen.len();
        Ok(RmResponse {
            message: Removed {
                n: total,
                servers: chosen,
            },
            status: Status::Successful,
        })
    }
}

/// Records freshly spawned servers in `meta`, recovering until they have caught up.
pub(crate) fn add_recovering(
    meta: &mut ClusterMeta,
    servers: &BTreeMap<ServerName, Vec<ShardId>>,
    addrs: &BTreeMap<ServerName, String>,
) {
    for (name, shards) in servers {
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
}
