//! Bringing servers up: spawn them through the runtime, send each its `/config`, wait until
//! it reports every shard caught up, then mark it up. Used by `/init`, `/add` and the
//! monitor's respawns.

use std::collections::BTreeMap;
use std::time::Duration;

use shardline::internal::ConfigRequest;
use shardline::meta::{ClusterMeta, Health};
use shardline::names::{ServerName, ShardId};
use shardline::ApiError;
use tokio::time::Instant;

use crate::control_plane::ControlPlane;
use crate::runtime::Runtime;
use crate::shard_client::ConfigError;

/// Why one server did not come up.
#[derive(Debug, thiserror::Error)]
pub enum BringUpError {
    #[error("not in the metadata")]
    NotInMetadata,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("did not catch up within {0:?}")]
    CatchUpTimeout(Duration),
}

impl<R: Runtime> ControlPlane<R> {
    /// Spawns the named servers concurrently; on any failure removes the ones started.
    pub async fn spawn_all(
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
            // Nothing is in the metadata yet: the operation can be retried as it was.
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
            // The servers are in the metadata, recovering: they may still come up, and the
            // monitor marks them up when they do.
            Err(ApiError::OutcomeUnknown(format!(
                "servers did not come up: {}",
                errors.join("; ")
            )))
        }
    }

    async fn configure_and_wait(
        &self,
        meta: &ClusterMeta,
        name: &ServerName,
    ) -> Result<(), BringUpError> {
        let sv = meta.servers.get(name).ok_or(BringUpError::NotInMetadata)?;
        let config = ConfigRequest {
            schema: meta.schema.spec(),
            shards: sv.shards.clone(),
        };
        self.client.configure(&sv.addr, &config).await?;
        let timeout = self.settings.catch_up_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(beat) = (self.client)
                .heartbeat(name, &sv.addr, Duration::from_secs(1))
                .await
            {
                let ready = sv
                    .shards
                    .iter()
                    .all(|s| beat.shards.get(s).is_some_and(|b| !b.recovering));
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(BringUpError::CatchUpTimeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
