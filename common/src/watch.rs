//! Watching cluster metadata: every gateway and shard server keeps the newest [`ClusterMeta`]
//! from the KV bucket in a `tokio::sync::watch` channel, so a new primary is routed to as soon
//! as the manager writes it, with no polling per request.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::sync::watch;

use crate::meta::{ClusterMeta, META_BUCKET, META_KEY};

/// `None` until the cluster is configured (or after it was torn down).
pub type MetaRx = watch::Receiver<Option<Arc<ClusterMeta>>>;

/// Decodes a stored metadata document; a value that does not decode is treated as absent.
pub fn decode(bytes: &[u8]) -> Option<ClusterMeta> {
    match serde_json::from_slice(bytes) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!(error = %e, "cluster metadata in KV does not decode; ignoring it");
            None
        }
    }
}

/// Starts a task that follows key [`META_KEY`] and publishes each new value. The task
/// re-establishes the watch by itself after NATS errors and ends when every receiver is gone.
pub fn spawn(js: jetstream::Context) -> MetaRx {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            if let Err(e) = follow(&js, &tx).await {
                tracing::warn!(error = %e, "metadata watch interrupted; retrying");
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    });
    rx
}

async fn follow(
    js: &jetstream::Context,
    tx: &watch::Sender<Option<Arc<ClusterMeta>>>,
) -> Result<(), async_nats::Error> {
    // Until the manager has created the bucket this fails and the caller retries.
    let store = js.get_key_value(META_BUCKET).await?;
    // The watch only delivers changes made after it starts when the key has no history, so
    // read the current value first.
    let current = store.entry(META_KEY).await?;
    let mut last_revision = 0;
    if let Some(e) = current {
        last_revision = e.revision;
        publish(tx, &e);
    }
    let mut updates = store.watch_with_history(META_KEY).await?;
    while let Some(entry) = updates.next().await {
        let entry = entry?;
        if entry.revision <= last_revision && entry.operation == kv::Operation::Put {
            continue;
        }
        last_revision = entry.revision;
        publish(tx, &entry);
        if tx.is_closed() {
            return Ok(());
        }
    }
    Err("metadata watch ended".into())
}

fn publish(tx: &watch::Sender<Option<Arc<ClusterMeta>>>, entry: &kv::Entry) {
    let value = match entry.operation {
        kv::Operation::Put => decode(&entry.value).map(Arc::new),
        kv::Operation::Delete | kv::Operation::Purge => None,
    };
    tx.send_replace(value);
}
