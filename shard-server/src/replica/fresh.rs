//! Staleness: how long ago this replica last confirmed it had applied everything its stream
//! held. A replica learns the stream's last sequence by asking JetStream every
//! [`POLL_INTERVAL`]; an answer counts from the moment the question was *asked*, so a replica
//! that was paused or cut off never counts as fresh on the strength of an old answer: after it
//! resumes, its staleness keeps growing until a question asked after the pause is answered
//! and its applied sequence reaches that answer.
//!
//! A pause also shows from inside: a ticker runs every [`TICK`]; a gap of more than
//! [`GAP`] between ticks (the process was stopped, or its thread starved) forgets every
//! confirmation and every answer to a question asked before it, and while the ticker is
//! late the replica counts as unconfirmed. So a primary paused long enough to be deposed
//! (the manager needs several missed heartbeats, far more than `GAP`) refuses reads after
//! it resumes until it has heard from the stream again, whether its ticker or a read runs
//! first, and by then it has applied the new term's marker.
//!
//! Reading the staleness is two atomic loads and one clock read (the `any` read path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardline::{wal, Seq};
use tokio::time::Instant;

use super::{lock, Replica};

/// How often a replica asks the stream for its last sequence.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the pause detector ticks.
pub const TICK: Duration = Duration::from_millis(50);
/// A longer gap between ticks means the replica was paused (or starved): what it confirmed
/// before no longer counts.
pub const GAP: Duration = Duration::from_millis(300);
/// Longest a question may take; a slower answer is useless for staleness anyway.
const POLL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Freshness {
    base: Instant,
    /// When applied last reached the stream's last sequence, in ms since `base` plus one
    /// (0: never confirmed).
    confirmed: AtomicU64,
    /// The oldest answer not reached yet: the stream's last sequence and when it was asked.
    /// Kept (not replaced by newer answers) so a replica that trails a busy stream still
    /// confirms once it reaches it.
    pending: Mutex<Option<(Seq, u64)>>,
    /// When JetStream last answered a question, in the same unit (0: never).
    answered: AtomicU64,
    /// When the pause detector last ticked, in the same unit.
    ticked: AtomicU64,
    /// When a pause was last detected: answers to questions asked before it are ignored.
    reset: AtomicU64,
}

impl Freshness {
    pub fn new() -> Freshness {
        Freshness {
            base: Instant::now(),
            confirmed: AtomicU64::new(0),
            pending: Mutex::new(None),
            answered: AtomicU64::new(0),
            ticked: AtomicU64::new(1),
            reset: AtomicU64::new(0),
        }
    }

    /// A timestamp to pass to [`Freshness::learned`] (taken before asking).
    pub fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// Milliseconds since the replica last confirmed it had applied everything the stream
    /// held; `None` if it never did.
    pub fn stale_ms(&self) -> Option<u64> {
        let now = self.now();
        if now.saturating_sub(self.ticked.load(Ordering::Acquire)) > GAP.as_millis() as u64 {
            // The ticker is late: paused or starved, and it has not yet said so.
            return None;
        }
        match self.confirmed.load(Ordering::Acquire) {
            0 => None,
            at => Some(now.saturating_sub(at)),
        }
    }

    /// The pause detector's tick: after a gap longer than [`GAP`], forgets what was
    /// confirmed and every answer to a question asked before now.
    pub fn tick(&self) {
        let now = self.now();
        let before = self.ticked.swap(now, Ordering::AcqRel);
        if now.saturating_sub(before) > GAP.as_millis() as u64 {
            let mut pending = lock(&self.pending);
            self.reset.store(now, Ordering::Release);
            self.confirmed.store(0, Ordering::Release);
            *pending = None;
        }
    }

    /// Milliseconds since JetStream last answered this replica's question (or since the
    /// replica started, if it never did). The client's connection state alone says
    /// "connected" for as long as its pings have not timed out (minutes) when the network
    /// silently drops packets; this says how long NATS has really been silent.
    pub fn nats_silence_ms(&self) -> u64 {
        let at = self.answered.load(Ordering::Acquire).max(1);
        self.now().saturating_sub(at)
    }

    /// JetStream answered a question (whatever the answer).
    pub fn heard(&self) {
        self.answered.fetch_max(self.now(), Ordering::AcqRel);
    }

    /// A question asked at `asked` found the stream's last sequence to be `last`, while this
    /// replica has applied `applied`.
    pub fn learned(&self, last: Seq, asked: u64, applied: Seq) {
        let mut pending = lock(&self.pending);
        if asked < self.reset.load(Ordering::Acquire) {
            return; // asked before a pause
        }
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

/// Ticks the pause detector every [`TICK`] until the replica stops.
pub(super) async fn tick_forever(replica: Arc<Replica>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        replica.fresh.tick();
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
        // Read before asking: a stream that ends below it lost entries (`logcheck`).
        let applied_before = replica.progress().applied;
        let mut missing = false;
        let answer = tokio::time::timeout(POLL_TIMEOUT, async {
            if stream.is_none() {
                match replica.js.get_stream(&name).await {
                    Ok(s) => stream = Some(s),
                    Err(e) => {
                        missing = super::logcheck::not_found(&e);
                        return None;
                    }
                }
            }
            stream.as_ref()?.get_info().await.ok()
        })
        .await;
        match answer {
            Ok(Some(info)) => {
                replica.fresh.heard();
                replica.check_polled(&info, applied_before);
                replica.fresh.learned(
                    Seq(info.state.last_sequence),
                    asked,
                    replica.progress().applied,
                )
            }
            // The stream may have been re-created: look it up again next time.
            _ => {
                if missing {
                    replica.fresh.heard();
                    replica.stream_missing();
                }
                stream = None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Advances the clock by `ms` with the ticker keeping up (no pause).
    async fn run(f: &Freshness, ms: u64) {
        for _ in 0..ms / 50 {
            tokio::time::advance(Duration::from_millis(50)).await;
            f.tick();
        }
        tokio::time::advance(Duration::from_millis(ms % 50)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn staleness_counts_from_when_the_stream_was_asked() {
        let f = Freshness::new();
        assert_eq!(f.stale_ms(), None, "never confirmed");
        run(&f, 100).await;
        let asked = f.now();
        run(&f, 50).await;
        // Behind the answer: not confirmed until the applier reaches it.
        f.learned(Seq(10), asked, Seq(7));
        assert_eq!(f.stale_ms(), None);
        // A newer answer does not replace the one still pending.
        let later = f.now();
        f.learned(Seq(20), later, Seq(8));
        f.applied(Seq(10));
        assert_eq!(f.stale_ms(), Some(50), "confirmed as of the question");
        run(&f, 400).await;
        assert_eq!(f.stale_ms(), Some(450));
        // A question asked just after is reached at once.
        let again = f.now();
        f.learned(Seq(10), again, Seq(10));
        run(&f, 20).await;
        assert_eq!(f.stale_ms(), Some(20));
    }

    /// A pause (no ticks for 600 ms, less than the 1 s staleness bound): unconfirmed at
    /// once, whether a read comes before the ticker notices or after; an answer to a
    /// question asked before the pause does not count; one asked after it does.
    #[tokio::test(start_paused = true)]
    async fn a_pause_forgets_confirmations() {
        let f = Freshness::new();
        run(&f, 100).await;
        f.learned(Seq(5), f.now(), Seq(5));
        run(&f, 100).await;
        assert_eq!(f.stale_ms(), Some(100));
        let before = f.now();
        tokio::time::advance(Duration::from_millis(600)).await; // paused
        assert_eq!(f.stale_ms(), None, "the ticker is late");
        f.tick();
        assert_eq!(f.stale_ms(), None, "the ticker noticed");
        f.learned(Seq(5), before, Seq(5));
        assert_eq!(f.stale_ms(), None, "asked before the pause");
        run(&f, 50).await;
        let after = f.now();
        f.learned(Seq(9), after, Seq(5));
        assert_eq!(f.stale_ms(), None);
        run(&f, 50).await;
        f.applied(Seq(9));
        assert_eq!(f.stale_ms(), Some(50));
    }

    #[tokio::test(start_paused = true)]
    async fn nats_silence_counts_from_the_last_answer_or_the_start() {
        let f = Freshness::new();
        tokio::time::advance(Duration::from_millis(700)).await;
        assert_eq!(f.nats_silence_ms(), 700);
        f.heard();
        assert_eq!(f.nats_silence_ms(), 0);
        tokio::time::advance(Duration::from_millis(2000)).await;
        assert_eq!(f.nats_silence_ms(), 2000);
    }
}
