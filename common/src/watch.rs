//! Watching cluster metadata: every gateway and shard server keeps the newest [`ClusterMeta`]
//! from the KV bucket in a `tokio::sync::watch` channel, so a new primary is routed to as soon
//! as the manager writes it, with no polling per request.
//!
//! [`follow`] does the watching once for everyone: it opens the bucket (retrying until the
//! manager has created it), reads the key, then follows its changes, and hands each new
//! revision to the caller, who turns it into the value its channel carries (the shard server
//! keeps the metadata as it is, [`spawn`]; the gateway builds its routing snapshot from it).
//! Nobody but the manager writes the key.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::meta::{ClusterMeta, META_BUCKET, META_KEY};

/// `None` until the cluster is configured (or after it was torn down).
pub type MetaRx = watch::Receiver<Option<Arc<ClusterMeta>>>;

/// What the metadata key holds at one revision.
#[derive(Debug)]
pub enum Stored {
    /// The bucket exists but the key holds nothing: nobody has called /init yet, or the
    /// cluster was torn down.
    Absent,
    Meta(ClusterMeta),
    /// A value that does not decode (the watcher has logged why).
    Undecodable,
}

/// One state of the metadata key, in revision order.
#[derive(Debug)]
pub struct Update {
    /// The KV revision of the entry; 0 when the key had no entry when first read.
    pub revision: u64,
    pub stored: Stored,
}

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

/// Follows the metadata with the channel carrying it unchanged: a value that does not decode
/// counts as absent.
pub fn spawn(js: jetstream::Context) -> MetaRx {
    follow(js, None, as_stored)
}

/// The value [`spawn`]'s channel carries after `update`.
fn as_stored(
    update: Update,
    current: &Option<Arc<ClusterMeta>>,
) -> Option<Option<Arc<ClusterMeta>>> {
    match update.stored {
        Stored::Meta(meta) => Some(Some(Arc::new(meta))),
        // Wake no receiver for "still nothing".
        Stored::Absent | Stored::Undecodable => current.is_some().then_some(None),
    }
}

/// Starts a task that follows key [`META_KEY`] and, for each revision newer than the last one
/// seen, publishes `apply(update, current value)` on the returned channel (`None` keeps the
/// current value). The first update is the key as first read, `Absent` included, so a caller
/// learns that the cluster is not configured. The task re-establishes the watch by itself
/// after NATS errors and ends when every receiver is gone.
pub fn follow<T, F>(js: jetstream::Context, initial: T, mut apply: F) -> watch::Receiver<T>
where
    T: Send + Sync + 'static,
    F: FnMut(Update, &T) -> Option<T> + Send + 'static,
{
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        let mut backoff = MIN_BACKOFF;
        // Failures are expected while NATS or the manager start up: warn at most every 30 s.
        let mut last_warning: Option<Instant> = None;
        loop {
            let err = match follow_once(&js, &tx, &mut apply, &mut backoff).await {
                Ok(()) => return,
                Err(e) => e,
            };
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                last_warning = Some(Instant::now());
                tracing::warn!(error = %err, "cluster metadata not available; retrying");
            } else {
                tracing::debug!(error = %err, "cluster metadata not available");
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

const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// Follows the key until the watch fails (an error) or every receiver is gone (`Ok`).
async fn follow_once<T, F>(
    js: &jetstream::Context,
    tx: &watch::Sender<T>,
    apply: &mut F,
    backoff: &mut Duration,
) -> Result<(), async_nats::Error>
where
    F: FnMut(Update, &T) -> Option<T>,
{
    // Until the manager has created the bucket this fails and the caller retries.
    let store = js.get_key_value(META_BUCKET).await?;
    // A watch "with history" first delivers the key's current value, so no change is missed
    // between this read and the watch (one may be seen twice: the revision check drops it).
    // The read is still needed: for a key with no value the watch says nothing at all, and
    // the caller must learn that the cluster is not configured.
    let mut last_revision = 0;
    let update = match store.entry(META_KEY).await? {
        Some(entry) => {
            last_revision = entry.revision;
            update_of(&entry)
        }
        None => Update {
            revision: 0,
            stored: Stored::Absent,
        },
    };
    publish(tx, apply, update);
    let mut updates = store.watch_with_history(META_KEY).await?;
    // Opened and read: a later failure starts again from the shortest wait.
    *backoff = MIN_BACKOFF;
    while let Some(entry) = updates.next().await {
        let entry = entry?;
        if entry.revision <= last_revision {
            continue;
        }
        last_revision = entry.revision;
        publish(tx, apply, update_of(&entry));
        if tx.is_closed() {
            return Ok(());
        }
    }
    Err("metadata watch ended".into())
}

fn update_of(entry: &kv::Entry) -> Update {
    let stored = match entry.operation {
        kv::Operation::Put => match decode(&entry.value) {
            Some(meta) => Stored::Meta(meta),
            None => Stored::Undecodable,
        },
        kv::Operation::Delete | kv::Operation::Purge => Stored::Absent,
    };
    Update {
        revision: entry.revision,
        stored,
    }
}

fn publish<T, F>(tx: &watch::Sender<T>, apply: &mut F, update: Update)
where
    F: FnMut(Update, &T) -> Option<T>,
{
    let next = apply(update, &tx.borrow());
    if let Some(next) = next {
        tx.send_replace(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;

    fn meta() -> ClusterMeta {
        ClusterMeta {
            schema: Schema::parse(&crate::schema::SchemaSpec {
                columns: vec!["k".into()],
                dtypes: vec!["Number".into()],
            })
            .unwrap(),
            shards: Vec::new(),
            servers: Default::default(),
        }
    }

    fn update(stored: Stored) -> Update {
        Update {
            revision: 1,
            stored,
        }
    }

    #[test]
    fn the_plain_channel_carries_the_metadata_or_nothing() {
        // Nothing before and nothing now: no wake-up.
        assert!(as_stored(update(Stored::Absent), &None).is_none());
        assert!(as_stored(update(Stored::Undecodable), &None).is_none());
        let now = as_stored(update(Stored::Meta(meta())), &None).unwrap();
        assert_eq!(now.as_ref().unwrap().schema.key(), "k");
        // Torn down, or replaced by something unreadable: absent.
        assert_eq!(as_stored(update(Stored::Absent), &now), Some(None));
        assert_eq!(as_stored(update(Stored::Undecodable), &now), Some(None));
    }
}
