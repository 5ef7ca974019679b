//! Staleness: how long ago this replica last confirmed it had applied everything its stream
//! held. A replica learns the stream's last sequence by asking JetStream every
//! [`POLL_INTERVAL`]; an answer counts from the moment the question was *asked*, so a replica
//! that was paused or cut off never counts as fresh on the strength of an old answer: after it
//! resumes, its staleness keeps growing until a question asked after the pause is answered
//! and its applied sequence reaches that answer.
//!
//! Reading the staleness is one atomic load and one clock read (the `any` read path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardline::{wal, Seq};
use tokio::time::Instant;

use super::{lock, Replica};

/// How often a replica asks the stream for its last sequence.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Longest a question may take; a slower answer is useless for staleness anyway.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Freshness {
    base: Instant,
    /// When applied last reached the stream's last sequence, in ms since `base` plus one
    /// (0: never confirmed).
    confirmed: AtomicU64,
    /// The oldest answer not reached yet: the stream's last sequence and when it was asked.
    /// Kept (not replaced by newer answers) so a replica that trails a busy stream still
    /// confirms once it reaches it.
    pending: Mutex<Option<(Seq, u64)>>,
}

impl Freshness {
    pub fn new() -> Freshness {
        Freshness {
            base: Instant::now(),
            confirmed: AtomicU64::new(0),
            pending: Mutex::new(None),
        }
    }

    /// A timestamp to pass to [`Freshness::learned`] (taken before asking).
    pub fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// Milliseconds since the replica last confirmed it had applied everything the stream
    /// held; `None` if it never did.
    pub fn stale_ms(&self) -> Option<u64> {
        match self.confirmed.load(Ordering::Acquire) {
            0 => None,
            at => Some(self.now().saturating_sub(at)),
        }
    }

    /// A question asked at `asked` found the stream's last sequence to be `last`, while this
    /// replica has applied `applied`.
    pub fn learned(&self, last: Seq, asked: u64, applied: Seq) {
        let mut pending = lock(&self.pending);
        if applied >= last {
            self.confirmed.fetch_max(asked, Ordering::AcqRel);
            if pending.is_some_and(|(target, _)| target <= applied) {
                *pending = None;
            }
        } else if pending.is_none() {
            *pending = Some((last, asked));
        }
    }

    /// The applier committed up to `applied`: confirms the pending answer it reached.
    pub fn applied(&self, applied: Seq) {
        let mut pending = lock(&self.pending);
        if let Some((target, asked)) = *pending {
            if applied >= target {
                self.confirmed.fetch_max(asked, Ordering::AcqRel);
                *pending = None;
            }
        }
    }
}

/// Asks the stream for its last sequence every [`POLL_INTERVAL`] until the replica stops.
pub(super) async fn poll_forever(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let name = wal::stream_name(&replica.shard);
    let mut stream = None;
    loop {
        tick.tick().await;
        let asked = replica.fresh.now();
        let last = tokio::time::timeout(POLL_TIMEOUT, async {
            if stream.is_none() {
                stream = Some(replica.js.get_stream(&name).await.ok()?);
            }
            let info = stream.as_ref()?.get_info().await.ok()?;
            Some(Seq(info.state.last_sequence))
        })
        .await;
        match last {
            Ok(Some(last)) => replica
                .fresh
                .learned(last, asked, replica.progress().applied),
            // The stream may have been re-created: look it up again next time.
            _ => stream = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn staleness_counts_from_when_the_stream_was_asked() {
        let f = Freshness::new();
        assert_eq!(f.stale_ms(), None, "never confirmed");
        tokio::time::advance(Duration::from_millis(100)).await;
        let asked = f.now();
        tokio::time::advance(Duration::from_millis(50)).await;
        // Behind the answer: not confirmed until the applier reaches it.
        f.learned(Seq(10), asked, Seq(7));
        assert_eq!(f.stale_ms(), None);
        // A newer answer does not replace the one still pending.
        let later = f.now();
        f.learned(Seq(20), later, Seq(8));
        f.applied(Seq(10));
        assert_eq!(f.stale_ms(), Some(50), "confirmed as of the question");
        // A pause: the answer to a question asked before it confirms only the old moment.
        let before = f.now();
        tokio::time::advance(Duration::from_secs(3)).await;
        f.learned(Seq(10), before, Seq(10));
        assert_eq!(f.stale_ms(), Some(3000));
        // A question asked after the pause, once reached, makes it fresh again.
        let after = f.now();
        f.learned(Seq(12), after, Seq(10));
        assert_eq!(f.stale_ms(), Some(3000));
        tokio::time::advance(Duration::from_millis(5)).await;
        f.applied(Seq(12));
        assert_eq!(f.stale_ms(), Some(5));
    }
}
