//! The manager lease: only one manager acts at a time. The active manager holds key
//! [`LEASE_KEY`] of the metadata bucket (`{"holder": <id>, "expires_ms": <unix ms>}`, written
//! by compare-and-set on the revision) and renews it every quarter of its time to live; the
//! others stand by, answer admin calls with 503, and take over once the lease has lapsed.
//!
//! A manager acts (monitor rounds, elections, admin operations, every metadata write and
//! marker append) only while [`Lease::check`] passes: it holds the lease by its last
//! successful write, and that write is younger than the time to live by its own monotonic
//! clock, minus a margin. A manager that was paused past the time to live therefore finds its
//! lease expired before its next action, whatever it believed before the pause; the next
//! renewal, a compare-and-set, fails if another manager took over meanwhile.

use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use shardline::wal::now_ms;
use shardline::ApiError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The lease's key in the metadata bucket.
pub const LEASE_KEY: &str = "manager_lease";

/// The lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
    /// When the lease lapses unless renewed, in ms since the Unix epoch (the holder's clock).
    pub expires_ms: u64,
}

/// `active` or `standby`, as `/healthz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Active,
    Standby,
}

/// What a manager does about the lease, given what the bucket holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds it: create the key.
    Create,
    /// It is ours: renew it (compare-and-set on this revision).
    Renew(u64),
    /// Another manager's lease lapsed: take it over (compare-and-set on this revision).
    TakeOver(u64),
    /// Another manager holds it.
    Wait { holder: String },
}

/// The decision, without I/O: `current` is the stored lease and its revision.
pub fn step(current: Option<(&LeaseRecord, u64)>, me: &str, now_ms: u64) -> Step {
    match current {
        None => Step::Create,
        Some((r, rev)) if r.holder == me => Step::Renew(rev),
        Some((r, rev)) if now_ms >= r.expires_ms => Step::TakeOver(rev),
        Some((r, _)) => Step::Wait {
            holder: r.holder.clone(),
        },
    }
}

/// A manager id: the host, the pid and a random part (a restarted manager on the same host
/// with a reused pid is still someone else).
pub fn manager_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

#[derive(Debug)]
struct Held {
    /// This manager may act until then (by its monotonic clock); `None`: not the holder.
    until: Option<Instant>,
    /// The holder last seen in the bucket.
    holder: Option<String>,
}

/// This manager's view of the lease.
#[derive(Debug)]
pub struct Lease {
    id: String,
    ttl: Duration,
    held: Mutex<Held>,
}

impl Lease {
    pub fn new(id: String, ttl: Duration) -> Lease {
        Lease {
            id,
            ttl,
            held: Mutex::new(Held {
                until: None,
                holder: None,
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The part of the time to live this manager gives up, so that it stops acting before
    /// another one may start (their clocks run at about the same rate, not in lockstep).
    fn margin(&self) -> Duration {
        self.ttl / 5
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn role(&self) -> Role {
        let held = self.lock();
        match held.until {
            Some(t) if Instant::now() < t => Role::Active,
            _ => Role::Standby,
        }
    }

    /// The holder last seen (this manager's id while it is active).
    pub fn holder(&self) -> Option<String> {
        self.lock().holder.clone()
    }

    /// Passes while this manager may act; the error is what a standby answers.
    pub fn check(&self) -> Result<(), ApiError> {
        let held = self.lock();
        match held.until {
            Some(t) if Instant::now() < t => Ok(()),
            _ => Err(ApiError::Unavailable(format!(
                "this manager is a standby; the active manager is {}",
                held.holder
                    .as_deref()
                    .unwrap_or("unknown (none holds the lease)")
            ))),
        }
    }

    /// A write of the lease sent at `sent` succeeded.
    pub fn acquired(&self, sent: Instant) {
        let mut held = self.lock();
        let was = held.until.is_some_and(|t| Instant::now() < t);
        held.until = Some(sent + self.ttl - self.margin());
        held.holder = Some(self.id.clone());
        if !was {
            tracing::info!(manager = %self.id, "holding the manager lease: active");
        }
    }

    /// Another manager holds the lease (or took it over).
    pub fn lost(&self, holder: Option<String>) {
        let mut held = self.lock();
        if held.until.take().is_some() {
            tracing::warn!(manager = %self.id, holder = ?holder, "lost the manager lease: standby");
        }
        held.holder = holder;
    }

    /// Keeps the lease (or waits for it) until `stop`: one step every quarter of the time to
    /// live.
    pub async fn keep(&self, kv: kv::Store, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.round(&kv).await {
                // Unreachable bucket: the lease lapses by itself if this goes on.
                tracing::warn!(error = %e, "manager lease round failed");
            }
        }
        // Stopping: let a standby take over at once instead of after the time to live.
        if self.check().is_ok() {
            self.release(&kv).await;
        }
    }

    /// One step: read the lease, then create, renew or take it over, or note its holder.
    pub async fn round(&self, kv: &kv::Store) -> Result<(), async_nats::Error> {
        let entry = kv.entry(LEASE_KEY).await?;
        let current = entry
            .as_ref()
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                Some((
                    serde_json::from_slice::<LeaseRecord>(&e.value).ok()?,
                    e.revision,
                ))
            });
        let sent = Instant::now();
        let record = LeaseRecord {
            holder: self.id.clone(),
            expires_ms: now_ms() + self.ttl.as_millis() as u64,
        };
        let bytes: bytes::Bytes = serde_json::to_vec(&record)?.into();
        let written = match step(
            current.as_ref().map(|(r, rev)| (r, *rev)),
            &self.id,
            now_ms(),
        ) {
            Step::Wait { holder } => {
                self.lost(Some(holder));
                return Ok(());
            }
            Step::Create => kv
                .create(LEASE_KEY, bytes)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Step::Renew(rev) | Step::TakeOver(rev) => kv
                .update(LEASE_KEY, bytes, rev)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => self.acquired(sent),
            Err(e) => {
                tracing::info!(error = %e, "another manager wrote the lease first");
                self.lost(None);
            }
        }
        Ok(())
    }

    async fn release(&self, kv: &kv::Store) {
        let Ok(Some(e)) = kv.entry(LEASE_KEY).await else {
            return;
        };
        let mine =
            serde_json::from_slice::<LeaseRecord>(&e.value).is_ok_and(|r| r.holder == self.id);
        if mine {
            let expired = LeaseRecord {
                holder: self.id.clone(),
                expires_ms: 0,
            };
            if let Ok(bytes) = serde_json::to_vec(&expired) {
                let _ = kv.update(LEASE_KEY, bytes.into(), e.revision).await;
            }
        }
        self.lost(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn rec(holder: &str, expires_ms: u64) -> LeaseRecord {
        LeaseRecord {
            holder: holder.into(),
            expires_ms,
        }
    }

    #[test]
    fn only_a_lapsed_or_own_lease_is_written() {
        assert_eq!(step(None, "a", 10), Step::Create);
        assert_eq!(step(Some((&rec("a", 5), 7)), "a", 10), Step::Renew(7));
        assert_eq!(step(Some((&rec("b", 10), 7)), "a", 10), Step::TakeOver(7));
        assert_eq!(
            step(Some((&rec("b", 11), 7)), "a", 10),
            Step::Wait { holder: "b".into() }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_manager_stops_acting_before_its_lease_can_be_taken_over() {
        let lease = Lease::new("a".into(), Duration::from_millis(2000));
        assert!(lease.check().is_err(), "not active before the first write");
        assert_eq!(lease.role(), Role::Standby);
        lease.acquired(Instant::now());
        assert!(lease.check().is_ok());
        assert_eq!(lease.role(), Role::Active);
        // Paused (no renewal) for most of the time to live: still active just before the
        // margin, not after.
        advance(Duration::from_millis(1599)).await;
        assert!(lease.check().is_ok());
        advance(Duration::from_millis(1)).await;
        let err = lease.check().unwrap_err();
        assert!(matches!(err, ApiError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("standby"), "{err}");
        // A renewal makes it active again; losing the lease ends that at once.
        lease.acquired(Instant::now());
        assert!(lease.check().is_ok());
        lease.lost(Some("b".into()));
        let err = lease.check().unwrap_err().to_string();
        assert!(err.contains("the active manager is b"), "{err}");
    }
}
