//! Elections: when a shard's primary is gone (or being removed, or cannot commit), the live
//! replica that has applied the most of the log takes over. The manager appends a term marker
//! first and then records the new primary and term in the metadata, so a deposed primary that
//! is still running cannot get anything applied (every replica skips its entries from the
//! marker on).
//!
//! Those are two steps, and the manager may die (or lose its lease) between them. So an
//! election re-reads the metadata and the stream's latest marker before choosing its term
//! (one above both), appends its marker only if the stream has not moved since it looked, and
//! [`ControlPlane::reconcile`] brings the metadata up to a marker it does not know yet.

use std::collections::BTreeMap;
use std::time::Duration;

use shardline::internal::{Heartbeat, ReplicaProgress};
use shardline::meta::{ClusterMeta, Health, ShardMeta};
use shardline::names::{ServerName, ShardId};
use shardline::{ApiError, Seq, Term};
use tokio::time::Instant;

use crate::control_plane::{not_configured, ControlPlane};
use crate::failpoint;
use crate::runtime::Runtime;
use crate::wal_admin::{AppendError, MARKER_SCAN};

/// How long a candidate has to answer the election's heartbeat.
const CANDIDATE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often an election looks at the stream's end again when entries keep arriving between
/// its look and its marker.
const APPEND_ATTEMPTS: usize = 5;

/// One replica of the shard, as the election sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: ServerName,
    pub health: Health,
    /// Being removed (`/rm`), or the primary being replaced: may not take over.
    pub excluded: bool,
    /// Its heartbeat's progress on the shard; `None` if it did not answer (or was not asked).
    pub progress: Option<ReplicaProgress>,
    /// Its heartbeat said its NATS connection is up (false when it did not answer).
    pub nats_connected: bool,
}

impl Candidate {
    /// From a heartbeat (or its absence).
    pub fn heard(
        name: ServerName,
        health: Health,
        excluded: bool,
        shard: &ShardId,
        beat: Option<&Heartbeat>,
    ) -> Candidate {
        Candidate {
            name,
            health,
            excluded,
            progress: beat.and_then(|b| b.shards.get(shard).copied()),
            nats_connected: beat.is_some_and(|b| b.nats_connected),
        }
    }

    /// Up, not excluded, answered, connected to NATS (a server that cannot reach NATS can
    /// neither follow the log nor commit), not catching up, and without a log fault.
    pub fn eligible(&self) -> Option<Seq> {
        let p = self.progress?;
        (!self.excluded
            && self.health == Health::Up
            && self.nats_connected
            && !p.recovering
            && p.fault.is_none())
        .then_some(p.applied)
    }
}

/// The winner among `candidates`: the highest applied sequence; ties go to the smallest name,
/// so that every manager would pick the same one.
pub fn choose_primary(candidates: &[Candidate]) -> Option<(&ServerName, Seq)> {
    candidates
        .iter()
        .filter_map(|c| Some((&c.name, c.eligible()?)))
        .min_by(|(a, sa), (b, sb)| sb.cmp(sa).then_with(|| a.cmp(b)))
}

/// The term of the next election: above the metadata's and above every marker in the stream.
pub fn next_term(meta: Term, latest_marker: Option<Term>) -> Term {
    meta.max(latest_marker.unwrap_or(Term::ZERO)).next()
}

fn shard_meta(meta: &ClusterMeta, shard: &ShardId) -> Result<ShardMeta, ApiError> {
    meta.shard(shard.as_str())
        .cloned()
        .ok_or_else(|| ApiError::NotFound(format!("unknown shard {shard}")))
}

impl<R: Runtime> ControlPlane<R> {
    /// Elects a new primary for `shard` among its live replicas (highest applied sequence,
    /// then name), with a term above the metadata's and the stream's latest marker: the
    /// marker first, then the metadata.
    pub async fn elect(
        &self,
        shard: &ShardId,
        exclude: &[ServerName],
    ) -> Result<Option<ServerName>, ApiError> {
        let _one_at_a_time = self.elections.lock().await;
        self.elect_locked(shard, exclude).await
    }

    async fn elect_locked(
        &self,
        shard: &ShardId,
        exclude: &[ServerName],
    ) -> Result<Option<ServerName>, ApiError> {
        let started = Instant::now();
        // Another manager (or this one before a restart) may have moved on: re-read.
        let meta = self.meta.fresh().await?.ok_or_else(not_configured)?;
        let sm = shard_meta(&meta, shard)?;
        if let Some(why) = &sm.fault {
            tracing::warn!(shard = %shard, fault = %why, "no election on a shard frozen after a log fault");
            return Ok(None);
        }
        let mut candidates = Vec::new();
        for name in meta.replicas(shard.as_str()) {
            let sv = &meta.servers[name];
            let excluded = exclude.contains(name);
            // Only a candidate that could win is asked how far it got.
            let beat = if excluded || sv.health != Health::Up {
                None
            } else {
                (self.client)
                    .heartbeat(name, &sv.addr, CANDIDATE_TIMEOUT)
                    .await
            };
            candidates.push(Candidate::heard(
                name.clone(),
                sv.health,
                excluded,
                shard,
                beat.as_ref(),
            ));
        }
        let Some((winner, seq)) = choose_primary(&candidates) else {
            tracing::warn!(shard = %shard, "no live replica to elect; shard unavailable");
            if sm.primary.is_some() && exclude.iter().any(|e| Some(e) == sm.primary.as_ref()) {
                return Err(ApiError::NoPrimary(format!(
                    "shard {shard}: no live replica to take over"
                )));
            }
            return Ok(None);
        };
        let winner = winner.clone();
        let mut attempt = 0;
        let term = loop {
            attempt += 1;
            let tail = self.wal.tail(shard, MARKER_SCAN).await?;
            let term = next_term(sm.term, tail.marker.as_ref().map(|m| m.term));
            let next = ShardMeta {
                primary: Some(winner.clone()),
                term,
                ..sm.clone()
            };
            failpoint::hit(failpoint::ELECTION_BEFORE_MARKER);
            // Marker first: from its sequence on, entries of older terms are skipped
            // everywhere, so a deposed primary that is still running cannot get anything
            // applied. Appended only if nothing came after what `tail` saw, so no marker of
            // this term or a higher one can be before it.
            match self.wal.append_marker_after(&next, tail.last_seq).await {
                Ok(_) => break term,
                Err(AppendError::Moved(_)) if attempt < APPEND_ATTEMPTS => continue,
                Err(e) => return Err(e.into()),
            }
        };
        failpoint::hit(failpoint::ELECTION_AFTER_MARKER);
        self.record_primary(shard, &winner, term).await?;
        failpoint::hit(failpoint::ELECTION_AFTER_METADATA);
        tracing::info!(
            shard = %shard, primary = %winner, term = term.get(), applied = seq.get(),
            elapsed_ms = started.elapsed().as_millis() as u64, "elected primary"
        );
        metrics::counter!(crate::metrics::ELECTIONS, "shard" => shard.to_string()).increment(1);
        Ok(Some(winner))
    }

    /// Records `primary` as `shard`'s primary for `term`, unless the metadata is at that term
    /// or beyond already.
    async fn record_primary(
        &self,
        shard: &ShardId,
        primary: &ServerName,
        term: Term,
    ) -> Result<(), ApiError> {
        self.meta
            .update(|m| {
                let mut m = m.ok_or_else(not_configured)?;
                let s = (m.shard_mut(shard.as_str()))
                    .ok_or_else(|| ApiError::NotFound(format!("unknown shard {shard}")))?;
                if s.term >= term {
                    return Err(ApiError::Conflict(format!(
                        "shard {shard}: the metadata is at term {} already, not recording term {term}",
                        s.term
                    )));
                }
                s.primary = Some(primary.clone());
                s.term = term;
                Ok((Some(m), ()))
            })
            .await
    }

    /// Brings the metadata of `shard` up to the latest marker of its stream, if that is of a
    /// higher term (an election stopped between its marker and its metadata write): the
    /// marker's primary is recorded if `beats` (this round's heartbeats) show it up, connected
    /// and caught up; otherwise a new election with a higher term replaces it. Returns whether
    /// anything had to be done.
    pub async fn reconcile(
        &self,
        shard: &ShardId,
        beats: &BTreeMap<ServerName, Heartbeat>,
    ) -> Result<bool, ApiError> {
        let _one_at_a_time = self.elections.lock().await;
        let meta = self.meta.fresh().await?.ok_or_else(not_configured)?;
        let sm = shard_meta(&meta, shard)?;
        if sm.fault.is_some() {
            return Ok(false); // frozen: the log recovery elects
        }
        let tail = self.wal.tail(shard, MARKER_SCAN).await?;
        let Some(marker) = tail.marker.filter(|m| m.term > sm.term) else {
            return Ok(false);
        };
        let named = Candidate::heard(
            marker.primary.clone(),
            (meta.servers.get(&marker.primary)).map_or(Health::Down, |s| s.health),
            !meta.replicas(shard.as_str()).any(|r| *r == marker.primary),
            shard,
            beats.get(&marker.primary),
        );
        tracing::warn!(
            shard = %shard, marker_term = marker.term.get(), metadata_term = sm.term.get(),
            marker_primary = %marker.primary, "the stream has a marker the metadata lacks"
        );
        if named.eligible().is_some() {
            self.record_primary(shard, &marker.primary, marker.term)
                .await?;
            tracing::info!(
                shard = %shard, primary = %marker.primary, term = marker.term.get(),
                "recorded the primary of the stream's latest marker"
            );
        } else {
            self.elect_locked(shard, &[]).await?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline::Term;

    fn candidate(name: &str, health: Health, applied: Option<(u64, bool)>) -> Candidate {
        Candidate {
            name: ServerName::parse(name).unwrap(),
            health,
            excluded: false,
            nats_connected: true,
            progress: applied.map(|(seq, recovering)| ReplicaProgress {
                applied: Seq(seq),
                term: Term(1),
                recovering,
                stale_ms: None,
                stalled_ms: None,
                fault: None,
                log_id: None,
            }),
        }
    }

    fn winner(c: &[Candidate]) -> Option<(String, u64)> {
        choose_primary(c).map(|(n, s)| (n.to_string(), s.get()))
    }

    #[test]
    fn the_most_advanced_live_replica_wins() {
        let c = [
            candidate("S1", Health::Up, Some((7, false))),
            candidate("S2", Health::Up, Some((9, false))),
            candidate("S3", Health::Up, Some((8, false))),
        ];
        assert_eq!(winner(&c), Some(("S2".into(), 9)));
    }

    #[test]
    fn ties_go_to_the_smallest_name_whatever_the_order() {
        let mut c = vec![
            candidate("S3", Health::Up, Some((9, false))),
            candidate("S1", Health::Up, Some((9, false))),
            candidate("S2", Health::Up, Some((4, false))),
        ];
        assert_eq!(winner(&c), Some(("S1".into(), 9)));
        c.reverse();
        assert_eq!(winner(&c), Some(("S1".into(), 9)));
    }

    #[test]
    fn recovering_down_silent_and_excluded_replicas_are_skipped() {
        let mut excluded = candidate("S0", Health::Up, Some((50, false)));
        excluded.excluded = true;
        let c = [
            excluded,
            candidate("S1", Health::Up, Some((40, true))), // still catching up
            candidate("S2", Health::Down, Some((30, false))),
            candidate("S3", Health::Recovering, Some((30, false))),
            candidate("S4", Health::Failed, Some((30, false))),
            candidate("S5", Health::Up, None), // did not answer
            candidate("S6", Health::Up, Some((3, false))),
        ];
        assert_eq!(winner(&c), Some(("S6".into(), 3)));
        assert_eq!(winner(&c[..6]), None);
        assert_eq!(winner(&[]), None);
    }

    #[test]
    fn a_replica_that_found_a_log_fault_is_never_elected() {
        let mut faulty = candidate("S1", Health::Up, Some((90, false)));
        if let Some(p) = faulty.progress.as_mut() {
            p.fault = Some(shardline::internal::LogFaultKind::RolledBack);
        }
        let c = [faulty, candidate("S2", Health::Up, Some((10, false)))];
        assert_eq!(winner(&c), Some(("S2".into(), 10)));
    }

    #[test]
    fn a_replica_cut_off_from_nats_is_never_elected() {
        let mut cut = candidate("S1", Health::Up, Some((90, false)));
        cut.nats_connected = false;
        let c = [cut, candidate("S2", Health::Up, Some((10, false)))];
        assert_eq!(winner(&c), Some(("S2".into(), 10)));
        assert_eq!(winner(&c[..1]), None);
        // A server that did not answer is not taken as connected.
        let silent = Candidate::heard(
            ServerName::parse("S3").unwrap(),
            Health::Up,
            false,
            &ShardId::parse("sh1").unwrap(),
            None,
        );
        assert!(!silent.nats_connected && silent.eligible().is_none());
    }

    #[test]
    fn the_new_term_is_above_the_metadata_and_every_marker() {
        assert_eq!(next_term(Term(3), None), Term(4));
        // An election interrupted after its marker: the stream is ahead of the metadata.
        assert_eq!(next_term(Term(3), Some(Term(4))), Term(5));
        assert_eq!(next_term(Term(5), Some(Term(4))), Term(6));
    }
}
