//! Log faults (README "Log faults"): a replica checks that its shard's stream still holds
//! what it applied, at every applier (re)start and on every stream poll of `fresh` (reusing
//! that answer), against what it stored with its rows: the stream's identity (its `created`
//! time) and the fingerprint of the entry at its applied sequence.
//!
//! - the stream is gone (for [`MISSING_GRACE`]): `missing`;
//! - another stream of the same name (deleted and re-created): `recreated`;
//! - the stream's last sequence is below the applied one (a rolled-back store): `rolled_back`;
//! - the entry at the applied sequence is another one (rolled back, then refilled):
//!   `rewritten` (checked at the applier's start, which every redelivery at or below the
//!   applied sequence causes);
//! - the first sequence is past the next one needed: `behind_first`. Only this one is not
//!   latched: a re-seed from a peer that still has the entries clears it.
//!
//! A replica with a fault logs it at error once, reports it in its heartbeat and sets
//! `shardline_server_log_fault{shard}`; a latched fault also stops its applier and makes the
//! replica refuse reads and writes of the shard (`log_fault`), as every replica does once the
//! manager froze the shard. The manager freezes the shard and recovers it
//! (`manager/src/log_recovery.rs`); `/adopt_log` then starts a new replica on the agreed log.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream;
use async_nats::jetstream::ErrorCode;
use shardline::internal::LogFaultKind;
use shardline::{ApiError, Seq};

use super::{lock, Replica};
use crate::store::{fingerprint, LogIdentity};

/// How long a stream must keep being "not found" before it is reported `missing`.
pub const MISSING_GRACE: Duration = Duration::from_secs(1);

/// A fault found: its kind and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: LogFaultKind,
    pub detail: String,
}

/// The stream's identity as a number: its `created` time in ns since the epoch.
pub fn log_id(info: &stream::Info) -> u64 {
    info.created.unix_timestamp_nanos().max(0) as u64
}

/// What the stream's state says about a replica that stored `stored`. `applied_before` is
/// the applied sequence read before the question was asked (a rolled-back stream ends below
/// it), `applied_after` the one read after the answer came (a replica behind the first
/// sequence had not applied the entries before it even then).
pub fn judge(
    stored: LogIdentity,
    applied_before: Seq,
    applied_after: Seq,
    created: u64,
    first: u64,
    last: u64,
) -> Option<Fault> {
    let fault = |kind, detail: String| Some(Fault { kind, detail });
    if let Some(id) = stored.log_id {
        if id != created {
            return fault(
                LogFaultKind::Recreated,
                format!("the stream was re-created: created {created} ns, the replica applied from the one created {id} ns"),
            );
        }
    }
    if last < applied_before.get() {
        return fault(
            LogFaultKind::RolledBack,
            format!(
                "the stream ends at {last}, below the applied sequence {applied_before}: it lost entries this replica applied"
            ),
        );
    }
    if first > applied_after.get() + 1 {
        return fault(
            LogFaultKind::BehindFirst,
            format!(
                "the stream starts at {first}, past the next sequence {} this replica needs",
                applied_after.next()
            ),
        );
    }
    None
}

/// Whether a `get_stream` error says the stream does not exist.
pub fn not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

impl Replica {
    /// The fault this replica found, if any.
    pub fn fault(&self) -> Option<LogFaultKind> {
        lock(&self.fault).as_ref().map(|f| f.kind)
    }

    /// Whether a fault stops the applier for good (every kind but `behind_first`).
    pub(super) fn latched(&self) -> bool {
        self.fault().is_some_and(|k| k != LogFaultKind::BehindFirst)
    }

    /// Records a fault: logged at error and counted once per kind; a latched fault is never
    /// replaced by a later one.
    pub(super) fn report_fault(&self, fault: Fault) {
        let mut current = lock(&self.fault);
        match current.as_ref() {
            Some(f) if f.kind == fault.kind => return,
            Some(f) if f.kind != LogFaultKind::BehindFirst => return,
            _ => {}
        }
        tracing::error!(
            shard = %self.shard, server = %self.server, fault = %fault.kind,
            applied = self.applied.load(Ordering::Acquire), detail = %fault.detail,
            "log fault: the shard's stream no longer holds what this replica applied; not serving the shard"
        );
        crate::metrics::log_fault(self.shard.as_str(), true);
        *current = Some(fault);
    }

    /// A check found nothing wrong: clears a `behind_first` fault (a re-seed caught up).
    pub(super) fn log_ok(&self) {
        let mut current = lock(&self.fault);
        if current
            .as_ref()
            .is_some_and(|f| f.kind == LogFaultKind::BehindFirst)
        {
            tracing::info!(shard = %self.shard, server = %self.server, "no longer behind the stream's first sequence");
            crate::metrics::log_fault(self.shard.as_str(), false);
            *current = None;
        }
    }

    /// Refuses service when this replica found a log fault or the manager froze the shard.
    /// (`behind_first` alone is the re-seed's business: the replica is recovering, and
    /// refuses as such, until it re-seeded or the manager froze the shard.)
    pub fn check_log_serving(&self) -> Result<(), ApiError> {
        let fault = lock(&self.fault);
        if let Some(f) = fault
            .as_ref()
            .filter(|f| f.kind != LogFaultKind::BehindFirst)
        {
            return Err(ApiError::LogFault(format!(
                "shard {}: server {} found a log fault ({}): {}; the shard serves nothing until it is recovered",
                self.shard, self.server, f.kind, f.detail
            )));
        }
        drop(fault);
        let frozen = self
            .meta
            .borrow()
            .as_ref()
            .and_then(|m| m.shard(self.shard.as_str()).and_then(|s| s.fault.clone()));
        if let Some(why) = frozen {
            return Err(ApiError::LogFault(format!(
                "shard {} is frozen after a log fault ({why}); it serves nothing until it is recovered",
                self.shard
            )));
        }
        Ok(())
    }

    /// The applier's start: checks `info` (just asked) against what the store holds, and the
    /// entry at the applied sequence against its fingerprint; a replica that never looked
    /// takes this stream as its log. `Err` when a fault was found (reported).
    pub(super) async fn check_at_start(
        &self,
        stream: &stream::Stream,
        info: &stream::Info,
    ) -> anyhow::Result<()> {
        self.stream_found();
        let stored = self.store.log_identity();
        let applied = self.store.position().seq;
        let created = log_id(info);
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        if let Some(f) = judge(stored, applied, applied, created, first, last) {
            let what = f.kind;
            self.report_fault(f);
            anyhow::bail!("log fault: {what}");
        }
        if let Some(want) = stored.last_hash {
            if applied.get() >= first.max(1) && applied.get() <= last {
                if let Ok(m) = stream.get_raw_message(applied.get()).await {
                    let got = fingerprint(&m.payload);
                    if got != want {
                        self.report_fault(Fault {
                            kind: LogFaultKind::Rewritten,
                            detail: format!(
                                "the entry at the applied sequence {applied} is not the one this replica applied (fingerprint {got:016x}, applied {want:016x})"
                            ),
                        });
                        anyhow::bail!("log fault: rewritten");
                    }
                }
            }
        }
        if stored.log_id.is_none() {
            self.store.set_log_id(created)?;
            tracing::info!(shard = %self.shard, server = %self.server, log_id = created, "following the shard's stream");
        }
        self.log_id.store(created, Ordering::Release);
        self.log_ok();
        Ok(())
    }

    /// The stream poll's answer (see `fresh`): `applied_before` read before asking.
    pub(super) fn check_polled(&self, info: &stream::Info, applied_before: Seq) {
        self.stream_found();
        let stored = self.store.log_identity();
        if stored.log_id.is_none() {
            return; // the applier has not looked yet
        }
        let applied_after = self.progress().applied;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        match judge(
            stored,
            applied_before,
            applied_after,
            log_id(info),
            first,
            last,
        ) {
            Some(f) => self.report_fault(f),
            None => self.log_ok(),
        }
    }

    /// The stream was found (any answer about it): a later "not found" starts a new grace.
    pub(super) fn stream_found(&self) {
        *lock(&self.missing_since) = None;
    }

    /// JetStream says the stream does not exist. Reported once that has lasted
    /// [`MISSING_GRACE`] (asked again by the poll and the applier's restarts meanwhile), so
    /// a "not found" answered while a NATS server is still recovering its streams after a
    /// restart is not taken for a lost log.
    pub(super) fn stream_missing(&self) {
        let since = *lock(&self.missing_since).get_or_insert_with(Instant::now);
        if since.elapsed() < MISSING_GRACE {
            return;
        }
        self.report_fault(Fault {
            kind: LogFaultKind::Missing,
            detail: format!(
                "stream {} does not exist",
                shardline::wal::stream_name(&self.shard)
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(log_id: u64) -> LogIdentity {
        LogIdentity {
            log_id: Some(log_id),
            last_hash: None,
        }
    }

    fn kind(f: Option<Fault>) -> Option<LogFaultKind> {
        f.map(|f| f.kind)
    }

    #[test]
    fn each_fault_is_judged_from_the_stream_state() {
        // Healthy: same stream, the applied sequence inside it (or just before its start).
        assert_eq!(judge(id(5), Seq(10), Seq(10), 5, 1, 12), None);
        assert_eq!(judge(id(5), Seq(10), Seq(10), 5, 11, 10), None);
        // A replica that never looked has nothing to compare the identity with.
        assert_eq!(judge(LogIdentity::default(), Seq(0), Seq(0), 9, 1, 0), None);
        assert_eq!(
            kind(judge(id(5), Seq(10), Seq(10), 6, 1, 12)),
            Some(LogFaultKind::Recreated)
        );
        assert_eq!(
            kind(judge(id(5), Seq(10), Seq(10), 5, 1, 9)),
            Some(LogFaultKind::RolledBack)
        );
        assert_eq!(
            kind(judge(id(5), Seq(10), Seq(10), 5, 12, 20)),
            Some(LogFaultKind::BehindFirst)
        );
        // The applier moved on between the question and the poll's reading: no fault.
        assert_eq!(judge(id(5), Seq(10), Seq(12), 5, 12, 12), None);
        // Re-created and empty reads as re-created, not as rolled back.
        assert_eq!(
            kind(judge(id(5), Seq(10), Seq(10), 7, 1, 0)),
            Some(LogFaultKind::Recreated)
        );
    }

    #[test]
    fn fingerprints_are_fnv1a() {
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
