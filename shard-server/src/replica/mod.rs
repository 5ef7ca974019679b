//! One shard replica: its [`Store`], and four background tasks by role.
//!
//! - `apply`: every replica, the primary included, applies the stream strictly in sequence
//!   order through a durable pull consumer named after the server (so
//!   `nats consumer ls WAL_<shard>` shows each replica's progress), commits each batch in one
//!   SQLite transaction together with the last applied sequence, and acknowledges to
//!   JetStream cumulatively, at most every `apply::ACK_INTERVAL`.
//! - `announce`: each replica announces its applied sequence on a core-NATS subject; the
//!   primary follows those announcements.
//! - `quorum`: what the primary heard, and waiting until a majority applied an entry.
//! - `reseed`: at the applier's (re)start, a replica whose next entry was purged from the
//!   stream is marked recovering and installs a healthy peer's snapshot before following on.
//! - `propose`: the primary's group commit: client requests queued to [`Replica::propose`]
//!   are folded into WAL entries, appended, and answered once applied here and by a majority.
//!
//! The tasks run under one [`CancellationToken`] and are tracked by a [`TaskTracker`], so
//! [`Replica::stop`] ends them and waits until they are gone.

mod announce;
mod apply;
mod fresh;
mod inflight;
pub mod logcheck;
mod propose;
mod quorum;
mod reseed;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use shardline::internal::ReplicaProgress;
use shardline::names::{ServerName, ShardId};
use shardline::watch::MetaRx;
use shardline::{ApiError, Position, Seq, Term};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::propose::Proposal;
use self::quorum::Quorum;
use crate::store::{Outcome, Store};

/// What a replica needs from its server to start.
pub struct ReplicaContext {
    pub server: ServerName,
    pub js: jetstream::Context,
    pub nats: async_nats::Client,
    pub meta: MetaRx,
    pub commit_timeout: Duration,
    /// Most writes queued for the proposer before new ones are refused as overloaded.
    pub max_queued_writes: usize,
    /// The server's HTTP client and data directory, for re-seeding from a peer's snapshot.
    pub http: reqwest::Client,
    pub data_dir: PathBuf,
}

pub struct Replica {
    pub shard: ShardId,
    pub store: Arc<Store>,
    server: ServerName,
    js: jetstream::Context,
    nats: async_nats::Client,
    meta: MetaRx,
    http: reqwest::Client,
    data_dir: PathBuf,
    /// The applied position as last committed by the applier (read by `/heartbeat`, the
    /// primary checks and the announcer without locking the store).
    applied: AtomicU64,
    term: AtomicU64,
    recovering: AtomicBool,
    /// Signalled after each applied batch (read-index waits on it).
    applied_changed: Notify,
    /// Staleness against the stream's last sequence.
    fresh: fresh::Freshness,
    /// A log fault this replica found (`logcheck`).
    fault: Mutex<Option<logcheck::Fault>>,
    /// Since when JetStream has said the stream does not exist (`logcheck`).
    missing_since: Mutex<Option<std::time::Instant>>,
    /// The identity of the stream it follows, as stored (0: not known yet).
    log_id: AtomicU64,
    /// Writes waiting to commit, for `stalled_ms`.
    inflight: inflight::InFlight,
    /// Writes this server appended and is waiting on, by `Nats-Msg-Id`.
    pending: Mutex<HashMap<String, oneshot::Sender<(Seq, Outcome)>>>,
    quorum: Quorum,
    proposals: mpsc::Sender<Proposal>,
    commit_timeout: Duration,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Replica {
    /// Starts the replica's tasks: the applier from the store's position, the announcer,
    /// the ack follower and the proposer.
    pub fn start(shard: ShardId, store: Arc<Store>, cx: ReplicaContext) -> Arc<Replica> {
        let at = store.position();
        let (proposals, proposed) = mpsc::channel(cx.max_queued_writes.max(1));
        let quorum = Quorum::new(shard.clone(), cx.meta.clone());
        let log_id = AtomicU64::new(store.log_identity().log_id.unwrap_or(0));
        let replica = Arc::new(Replica {
            shard,
            store,
            server: cx.server,
            js: cx.js,
            nats: cx.nats,
            meta: cx.meta,
            http: cx.http,
            data_dir: cx.data_dir,
            applied: AtomicU64::new(at.seq.get()),
            term: AtomicU64::new(at.term.get()),
            recovering: AtomicBool::new(true),
            applied_changed: Notify::new(),
            fresh: fresh::Freshness::new(),
            fault: Mutex::new(None),
            missing_since: Mutex::new(None),
            log_id,
            inflight: inflight::InFlight::default(),
            pending: Mutex::new(HashMap::new()),
            quorum,
            proposals,
            commit_timeout: cx.commit_timeout,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        replica.spawn(propose::propose_forever(replica.clone(), proposed));
        replica.spawn(announce::follow_acks(replica.clone()));
        replica.spawn(announce::announce_periodically(replica.clone()));
        replica.spawn(apply::apply_forever(replica.clone()));
        replica.spawn(fresh::poll_forever(replica.clone()));
        replica.spawn(fresh::tick_forever(replica.clone()));
        replica.spawn(crate::store::reclaim_forever(replica.store.clone()));
        replica
    }

    /// Runs `task` on the replica's tracker until it ends or the replica stops.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            cancel.run_until_cancelled(task).await;
        });
    }

    pub fn progress(&self) -> ReplicaProgress {
        ReplicaProgress {
            applied: Seq(self.applied.load(Ordering::Acquire)),
            term: Term(self.term.load(Ordering::Acquire)),
            recovering: self.recovering.load(Ordering::Acquire),
            stale_ms: self.fresh.stale_ms(),
            stalled_ms: self.inflight.oldest_ms(),
            fault: self.fault(),
            log_id: match self.log_id.load(Ordering::Acquire) {
                0 => None,
                id => Some(id),
            },
        }
    }

    /// Milliseconds since this replica last confirmed it had applied everything its stream
    /// held (`None`: never). One atomic load and a clock read.
    pub fn stale_ms(&self) -> Option<u64> {
        self.fresh.stale_ms()
    }

    /// Milliseconds since JetStream last answered this replica (see `fresh`).
    pub fn nats_silence_ms(&self) -> u64 {
        self.fresh.nats_silence_ms()
    }

    /// Publishes a committed position (the applier is the only writer).
    fn set_applied(&self, at: Position) {
        self.applied.store(at.seq.get(), Ordering::Release);
        self.term.store(at.term.get(), Ordering::Release);
        self.fresh.applied(at.seq);
        self.applied_changed.notify_waiters();
    }

    /// Waits until this replica applied `seq`, or `deadline`; returns whether it did.
    pub async fn wait_applied(&self, seq: Seq, deadline: tokio::time::Instant) -> bool {
        loop {
            // Registered before checking, so a batch applied in between wakes us.
            let notified = self.applied_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.progress().applied >= seq {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.progress().applied >= seq;
            }
        }
    }

    /// The stream's last sequence now, asked of JetStream (read-index).
    pub async fn stream_last_seq(&self) -> Result<Seq, ApiError> {
        let name = shardline::wal::stream_name(&self.shard);
        let ask = async {
            let stream = self.js.get_stream(&name).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(Seq(stream.cached_info().state.last_sequence))
        };
        match tokio::time::timeout(self.commit_timeout, ask).await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(self.error(
                ApiError::Unavailable,
                format_args!("cannot read the log's last sequence: {e}"),
            )),
            Err(_) => Err(self.error(
                ApiError::Unavailable,
                "the log did not answer in time for a linearizable read",
            )),
        }
    }

    pub fn is_recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }

    /// Stops every task of the replica and waits until they ended. Writes still waiting for
    /// their entry answer that their outcome is unknown.
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn is_primary(&self) -> bool {
        self.meta.borrow().as_ref().is_some_and(|m| {
            m.shard(self.shard.as_str())
                .is_some_and(|s| s.primary.as_ref() == Some(&self.server))
        })
    }

    /// An error about this shard, of the given kind (`ApiError::Unavailable`, ...).
    fn error(&self, kind: fn(String) -> ApiError, what: impl std::fmt::Display) -> ApiError {
        kind(format!("shard {}: {what}", self.shard))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
