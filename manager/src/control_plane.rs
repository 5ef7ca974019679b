//! [`ControlPlane`]: everything the manager's operations share (the metadata store, the
//! runtime that runs the servers, the client to them, the WAL streams) and the locks that keep
//! operations from interleaving. The operations themselves live in their own modules:
//! [`crate::ops`] (`/init`, `/add`, `/rm`), [`crate::election`], [`crate::bring_up`], and
//! [`crate::monitor`] drives failover and respawns.

use std::sync::Arc;
use std::time::Duration;

use shardline::meta::{ClusterMeta, Health};
use shardline::names::ServerName;
use shardline::ApiError;

use crate::lease::Lease;
use crate::metadata::MetaStore;
use crate::runtime::Runtime;
use crate::shard_client::ShardClient;
use crate::wal_admin::WalAdmin;

pub struct Settings {
    /// How long a new server may take to catch up before `/init` or `/add` fails.
    pub catch_up_timeout: Duration,
    /// Where `/restore` stages an archive's files while it checks them.
    pub staging_dir: std::path::PathBuf,
}

/// The manager's state and its handles on NATS, the servers and their runtime.
pub struct ControlPlane<R: Runtime> {
    pub meta: MetaStore,
    pub wal: WalAdmin,
    pub runtime: R,
    pub client: ShardClient,
    pub settings: Settings,
    /// Whether this manager is the active one.
    pub lease: Arc<Lease>,
    /// Serialises admin operations (`/init`, `/add`, `/rm`).
    pub admin: tokio::sync::Mutex<()>,
    /// Serialises elections; separate from `admin` so that failover never waits for a long
    /// `/add` catch-up.
    pub elections: tokio::sync::Mutex<()>,
}

impl<R: Runtime> ControlPlane<R> {
    pub fn new(
        meta: MetaStore,
        wal: WalAdmin,
        runtime: R,
        client: ShardClient,
        settings: Settings,
        lease: Arc<Lease>,
    ) -> ControlPlane<R> {
        ControlPlane {
            meta,
            wal,
            runtime,
            client,
            settings,
            lease,
            admin: tokio::sync::Mutex::new(()),
            elections: tokio::sync::Mutex::new(()),
        }
    }

    /// The metadata as stored now (a manager that just took over may not have seen the last
    /// writes of the previous one), or the error every operation answers before `/init`.
    pub async fn configured(&self) -> Result<ClusterMeta, ApiError> {
        self.meta.fresh().await?.ok_or_else(not_configured)
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
}

pub fn not_configured() -> ApiError {
    ApiError::BadRequest("the cluster is not configured; POST /init first".into())
}
