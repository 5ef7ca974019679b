//! The manager's handle on cluster metadata: the single writer of the KV document, with
//! compare-and-set on the revision so that two managers (or a stale one) cannot overwrite
//! each other's changes.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use shardline::meta::{ClusterMeta, META_BUCKET, META_KEY};
use shardline::ApiError;
use tokio::sync::Mutex;

use crate::lease::Lease;

pub struct MetaStore {
    kv: kv::Store,
    /// Checked right before every write: only the lease holder writes.
    lease: Arc<Lease>,
    /// The last document read or written, with its revision (0 = absent).
    cached: Mutex<(Option<ClusterMeta>, u64)>,
    /// One read-modify-write at a time within this manager; CAS guards against others.
    writer: Mutex<()>,
}

impl MetaStore {
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        lease: Arc<Lease>,
    ) -> Result<MetaStore, async_nats::Error> {
        let kv = open_bucket(js, replicas).await?;
        let store = MetaStore {
            kv,
            lease,
            cached: Mutex::new((None, 0)),
            writer: Mutex::new(()),
        };
        store.reload(Reload::Any).await?;
        Ok(store)
    }

    async fn reload(&self, how: Reload) -> Result<(), async_nats::Error> {
        let entry = self.kv.entry(META_KEY).await?;
        let fetched = match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                (shardline::watch::decode(&e.value), e.revision)
            }
            Some(e) => (None, e.revision),
            None => (None, 0),
        };
        let mut c = self.cached.lock().await;
        if keeps_cached(c.1, fetched.1, how) {
            return Ok(());
        }
        *c = fetched;
        Ok(())
    }

    pub async fn get(&self) -> Option<ClusterMeta> {
        self.cached.lock().await.0.clone()
    }

    /// The document as the KV bucket holds it now (another manager may have written since
    /// this one last read it).
    pub async fn fresh(&self) -> Result<Option<ClusterMeta>, ApiError> {
        let _one_writer = self.writer.lock().await;
        self.reload(Reload::NotOlder)
            .await
            .map_err(|e| ApiError::Unavailable(format!("metadata store unreachable: {e}")))?;
        Ok(self.get().await)
    }

    /// Applies `f` to the current document and stores the result with compare-and-set,
    /// re-reading and retrying when someone else wrote in between. `f` returning an error
    /// leaves the document unchanged.
    pub async fn update<T>(
        &self,
        mut f: impl FnMut(Option<ClusterMeta>) -> Result<(Option<ClusterMeta>, T), ApiError>,
    ) -> Result<T, ApiError> {
        let _one_writer = self.writer.lock().await;
        for _ in 0..5 {
            let (current, revision) = self.cached.lock().await.clone();
            let (next, out) = f(current)?;
            self.lease.check()?;
            let written = match &next {
                Some(m) => {
                    let bytes = serde_json::to_vec(m)
                        .map_err(|e| ApiError::Internal(format!("encoding metadata: {e}")))?;
                    if revision == 0 {
                        self.kv
                            .create(META_KEY, bytes.into())
                            .await
                            .map_err(|e| e.to_string())
                    } else {
                        self.kv
                            .update(META_KEY, bytes.into(), revision)
                            .await
                            .map_err(|e| e.to_string())
                    }
                }
                None => self
                    .kv
                    .purge(META_KEY)
                    .await
                    .map(|_| 0)
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(rev) => {
                    let rev = if next.is_none() {
                        self.current_revision().await
                    } else {
                        rev
                    };
                    *self.cached.lock().await = (next, rev);
                    return Ok(out);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metadata write conflicted; re-reading");
                    self.reload(Reload::Any).await.map_err(|e| {
                        ApiError::Unavailable(format!("metadata store unreachable: {e}"))
                    })?;
                }
            }
        }
        Err(ApiError::Unavailable(
            "metadata kept changing under the manager; retry".into(),
        ))
    }

    /// The bucket, for the lease (a key of its own beside the document).
    pub fn bucket(&self) -> kv::Store {
        self.kv.clone()
    }

    async fn current_revision(&self) -> u64 {
        match self.kv.entry(META_KEY).await {
            Ok(Some(e)) => e.revision,
            _ => 0,
        }
    }
}

/// Which document a re-read may replace the cached one with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reload {
    /// Whatever the bucket answers (at start, and after a compare-and-set failed: the
    /// bucket's revision is the one the next write must name, even if it went backwards,
    /// as after a NATS store rollback).
    Any,
    /// Not a revision older than the one this manager last read or wrote. The bucket is
    /// created with direct gets (async-nats' default), which any of its NATS replicas may
    /// answer, a follower possibly before it applied the write this manager just made: a
    /// `/init` then failed with "not configured" when its bring-up re-read the metadata
    /// (seen in CI on a 3-node NATS cluster, `docker_nats_cluster_node_loss`).
    NotOlder,
}

/// Whether a re-read that found `fetched` keeps the `cached` revision instead.
fn keeps_cached(cached: u64, fetched: u64, how: Reload) -> bool {
    how == Reload::NotOlder && fetched < cached
}

/// Opens the metadata bucket, creating it when it does not exist yet, replicated on
/// `replicas` NATS nodes. Only the manager creates it (gateways and shard servers wait for it to exist).
async fn open_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, async_nats::Error> {
    match js.get_key_value(META_BUCKET).await {
        Ok(store) => Ok(store),
        Err(_) => Ok(js
            .create_key_value(kv::Config {
                bucket: META_BUCKET.to_string(),
                description: "shardline cluster metadata, written only by the manager".into(),
                history: 10,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lagging_answer_never_takes_a_read_back_but_a_failed_write_does() {
        // A follower that has not applied revision 8 yet answers "absent" (0) or 7.
        assert!(keeps_cached(8, 0, Reload::NotOlder));
        assert!(keeps_cached(8, 7, Reload::NotOlder));
        assert!(!keeps_cached(8, 8, Reload::NotOlder));
        assert!(!keeps_cached(8, 9, Reload::NotOlder));
        assert!(!keeps_cached(0, 0, Reload::NotOlder));
        // After a failed compare-and-set the bucket's answer is taken, lower or not.
        assert!(!keeps_cached(8, 3, Reload::Any));
    }
}
