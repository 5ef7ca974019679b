//! The server's shared state: its name, its replicas by shard, the watched cluster metadata,
//! and the checks every write makes before it reaches the log.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use shardline::meta::ClusterMeta;
use shardline::names::{ServerName, ShardId};
use shardline::schema::Schema;
use shardline::watch::MetaRx;
use shardline::{ApiError, Seq, SyncMode, Term};

use crate::replica::{Replica, ReplicaContext};
use crate::store::Store;

pub struct Server {
    pub name: ServerName,
    pub data_dir: PathBuf,
    pub js: jetstream::Context,
    pub nats: async_nats::Client,
    pub meta: MetaRx,
    pub http: reqwest::Client,
    pub sync: SyncMode,
    pub commit_timeout: Duration,
    pub max_string_bytes: usize,
    /// Most writes queued per shard before new ones are refused as overloaded.
    pub max_queued_writes: usize,
    /// A replica staler than this refuses `any` reads.
    pub max_staleness: Duration,
    schema: RwLock<Option<Arc<Schema>>>,
    replicas: RwLock<HashMap<ShardId, Arc<Replica>>>,
    /// Serialises `/config` so two concurrent calls cannot open one database twice.
    configuring: tokio::sync::Mutex<()>,
}

/// What a write needs once the primary checks passed.
pub struct Leader {
    pub replica: Arc<Replica>,
    pub term: Term,
}

impl Server {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: ServerName,
        data_dir: PathBuf,
        js: jetstream::Context,
        nats: async_nats::Client,
        meta: MetaRx,
        sync: SyncMode,
        commit_timeout: Duration,
        max_string_bytes: usize,
        max_queued_writes: usize,
        max_staleness: Duration,
    ) -> Server {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .expect("a plain HTTP client always builds");
        Server {
            name,
            data_dir,
            js,
            nats,
            meta,
            http,
            sync,
            commit_timeout,
            max_string_bytes,
            max_queued_writes,
            max_staleness,
            schema: RwLock::new(None),
            replicas: RwLock::new(HashMap::new()),
            configuring: tokio::sync::Mutex::new(()),
        }
    }

    pub fn schema(&self) -> Option<Arc<Schema>> {
        read(&self.schema).clone()
    }

    pub fn replica(&self, shard: &str) -> Result<Arc<Replica>, ApiError> {
        read(&self.replicas).get(shard).cloned().ok_or_else(|| {
            ApiError::NotFound(format!("server {} holds no shard {shard:?}", self.name))
        })
    }

    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        let mut v: Vec<_> = read(&self.replicas).values().cloned().collect();
        v.sort_by(|a, b| a.shard.cmp(&b.shard));
        v
    }

    pub fn current_meta(&self) -> Option<Arc<ClusterMeta>> {
        self.meta.borrow().clone()
    }

    /// Opens the given shards (idempotent) and starts applying their logs.
    pub async fn configure(&self, schema: Schema, shards: &[ShardId]) -> Result<(), ApiError> {
        let _guard = self.configuring.lock().await;
        {
            let mut current = self.schema.write().unwrap_or_else(|p| p.into_inner());
            match current.as_ref() {
                Some(s) if **s != schema => {
                    return Err(ApiError::Conflict(format!(
                        "server {} is already configured with a different schema",
                        self.name
                    )))
                }
                _ => *current = Some(Arc::new(schema.clone())),
            }
        }
        std::fs::create_dir_all(&self.data_dir).map_err(|e| {
            ApiError::Internal(format!("cannot create {}: {e}", self.data_dir.display()))
        })?;
        for shard in shards {
            if read(&self.replicas).contains_key(shard) {
                continue;
            }
            let path = self.data_dir.join(format!("{shard}.db"));
            let store = Store::open(&path, &schema, self.sync)
                .map(Arc::new)
                .map_err(|e| ApiError::Internal(format!("cannot open {}: {e}", path.display())))?;
            crate::restore::install_pending(self, shard, &store).await?;
            let fresh = store.position().seq == Seq::ZERO;
            if fresh {
                crate::catchup::restore_from_peer(self, shard, &store).await;
            }
            let replica = self.start_replica(shard, store);
            self.replicas
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(shard.clone(), replica);
            tracing::info!(server = %self.name, shard = %shard, "replica configured");
        }
        Ok(())
    }

    fn start_replica(&self, shard: &ShardId, store: Arc<Store>) -> Arc<Replica> {
        Replica::start(
            shard.clone(),
            store,
            ReplicaContext {
                server: self.name.clone(),
                js: self.js.clone(),
                nats: self.nats.clone(),
                meta: self.meta.clone(),
                commit_timeout: self.commit_timeout,
                max_queued_writes: self.max_queued_writes,
                http: self.http.clone(),
                data_dir: self.data_dir.clone(),
            },
        )
    }

    /// The manager's log recovery (README "Log faults"): stops the replica of `shard`,
    /// replaces its rows with a snapshot from the server at `from` if given, takes the
    /// shard's stream as it is now as its log, provided the stream continues right after the
    /// replica's position, and starts a new replica (without the old one's fault).
    pub async fn adopt_log(&self, shard: &ShardId, from: Option<&str>) -> Result<Seq, ApiError> {
        let _guard = self.configuring.lock().await;
        let old = self.replica(shard.as_str())?;
        old.stop().await;
        let store = old.store.clone();
        let outcome = self.adopt_into(shard, from, &store).await;
        // Started again whatever happened: if the log is still wrong it reports so again.
        let replica = self.start_replica(shard, store);
        self.replicas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard.clone(), replica.clone());
        if outcome.is_ok() {
            // Answer once caught up with the adopted stream (at once: it continues right
            // after the replica's position), so a peer's `/copy` from it is served.
            let deadline = tokio::time::Instant::now() + self.commit_timeout;
            while replica.is_recovering() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        outcome
    }

    async fn adopt_into(
        &self,
        shard: &ShardId,
        from: Option<&str>,
        store: &Arc<Store>,
    ) -> Result<Seq, ApiError> {
        if let Some(addr) = from {
            crate::catchup::copy_from(self, shard, addr, store)
                .await
                .map_err(|e| {
                    ApiError::Unavailable(format!(
                        "shard {shard}: cannot copy a snapshot from {addr}: {e}"
                    ))
                })?;
        }
        let name = shardline::wal::stream_name(shard);
        let unavailable = |e: String| {
            ApiError::Unavailable(format!("shard {shard}: cannot read stream {name}: {e}"))
        };
        let mut stream =
            (self.js.get_stream(&name).await).map_err(|e| unavailable(e.to_string()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let at = store.position().seq;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        if first > at.get() + 1 || last < at.get() {
            return Err(ApiError::Conflict(format!(
                "shard {shard}: stream {name} holds [{first}, {last}], which does not continue right after this replica's position {at}"
            )));
        }
        let id = crate::replica::logcheck::log_id(info);
        store
            .set_log_id(id)
            .map_err(|e| ApiError::Internal(format!("shard {shard}: {e}")))?;
        crate::metrics::log_fault(shard.as_str(), false);
        tracing::warn!(
            server = %self.name, shard = %shard, seq = %at, log_id = id, copied_from = from.unwrap_or("-"),
            "adopted the shard's stream as its log (log recovery)"
        );
        Ok(at)
    }

    /// Checks that this server is the primary of `shard` for the current term and has
    /// applied that term's marker, so its entries will not be skipped.
    pub fn leader(&self, shard: &str) -> Result<Leader, ApiError> {
        let meta = self.current_meta().ok_or_else(|| {
            ApiError::Unavailable("the cluster is not configured (no metadata)".into())
        })?;
        let sm = meta
            .shard(shard)
            .ok_or_else(|| ApiError::NotFound(format!("unknown shard {shard:?}")))?;
        if sm.primary.as_ref() != Some(&self.name) {
            return Err(ApiError::NotPrimary {
                message: format!(
                    "server {} is not the primary of shard {shard}; the primary is {}",
                    self.name,
                    sm.primary
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "not elected yet".into())
                ),
                primary: sm.primary.as_ref().map(|p| p.to_string()),
            });
        }
        if let Some(why) = &sm.fault {
            return Err(ApiError::LogFault(format!(
                "shard {shard} is frozen after a log fault ({why}); it serves nothing until it is recovered"
            )));
        }
        let replica = self.replica(shard)?;
        replica.check_log_serving()?;
        let applied_term = replica.progress().term;
        if applied_term != sm.term {
            return Err(ApiError::Unavailable(format!(
                "shard {shard}: primary {} has not yet applied the marker of term {} (at term {applied_term})",
                self.name, sm.term
            )));
        }
        Ok(Leader {
            replica,
            term: sm.term,
        })
    }

    /// Stops every replica's tasks, then closes their idle read connections.
    pub async fn shutdown(&self) {
        for r in self.replicas() {
            r.stop().await;
            r.store.close();
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
