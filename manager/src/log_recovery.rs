//! Log faults (README "Log faults"): a shard whose stream lost entries its replicas applied
//! (rolled back, purged past every replica, deleted or re-created) is frozen, then
//! recovered to one history.
//!
//! Each monitor round [`decide`]s per shard from the round's heartbeats:
//! - **freeze** as soon as one replica reports `missing`, `recreated`, `rolled_back` or
//!   `rewritten`, or when every answering replica (a majority) is `behind_first` (nobody
//!   can continue from the stream): the metadata's `fault` is set, and then no server
//!   serves reads or writes of the shard and no election runs for it;
//! - **recover** a frozen shard once a majority of its replicas answer: the base is the
//!   answering replica with the highest applied sequence (ties: the current primary, then
//!   the smallest name). Every acknowledged write was applied by a majority, which shares a
//!   replica with the answering majority, so the base has applied it. The stream is deleted
//!   and created again empty with its first sequence right after the base's position; the
//!   base adopts it as it is, every other answering replica copies the base's snapshot and
//!   adopts it too (`/adopt_log`); the metadata records the new stream's identity
//!   (`log_id`) and drops the fault and the primary, and an election appends the new term's
//!   marker;
//! - an operator may recover a frozen shard on a base of their choice at once, majority or
//!   not: `POST /recover {"shard", "base"}` on the manager;
//! - **re-seed** a replica that reports `recreated` with an identity older than the one a
//!   recovery recorded (it was away during the recovery): it copies the primary's snapshot.
//!   Such a replica is never a base, nor counted in the majority, of a later recovery.

use std::collections::BTreeMap;

use std::time::Duration;

use serde::Deserialize;
use shardline::internal::{AdoptLogRequest, Done, Heartbeat, LogFaultKind, ReplicaProgress};
use shardline::meta::{ClusterMeta, ShardMeta};
use shardline::names::{ServerName, ShardId};
use shardline::{ApiError, Seq};

use crate::control_plane::{not_configured, ControlPlane};
use crate::runtime::Runtime;

/// How long each replica has to answer the heartbeat of an operator's `/recover`.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(1);

/// `POST /recover` on the manager: recover frozen `shard` on replica `base`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoverRequest {
    pub shard: ShardId,
    pub base: ServerName,
}

/// What to do about one shard this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Freeze the shard, for this reason.
    Freeze(String),
    /// Recover the frozen shard on this base (its applied sequence).
    Recover {
        base: ServerName,
        applied: Seq,
    },
    /// Re-seed these replicas (from an earlier log) from the primary.
    Reseed(Vec<ServerName>),
}

/// The decision for shard `sm`, given each of its replicas' progress on it (`None`: did not
/// answer).
pub fn decide(sm: &ShardMeta, replicas: &[(ServerName, Option<ReplicaProgress>)]) -> Decision {
    let majority = replicas.len() / 2 + 1;
    let answering: Vec<(&ServerName, &ReplicaProgress)> = replicas
        .iter()
        .filter_map(|(n, p)| Some((n, p.as_ref()?)))
        .collect();
    // A replica still on a stream older than the one a recovery agreed on (it was away):
    // its rows are not the agreed history. (Identities are creation times, so a stream a
    // recovery in progress created is newer, not older.)
    let stale = |p: &ReplicaProgress| match (p.log_id, sm.log_id) {
        (Some(has), Some(agreed)) => has < agreed,
        _ => false,
    };
    if sm.fault.is_some() {
        let answering: Vec<_> = answering.into_iter().filter(|(_, p)| !stale(p)).collect();
        if answering.len() < majority {
            return Decision::Nothing;
        }
        let Some((base, p)) = answering.iter().max_by(|(a, pa), (b, pb)| {
            pa.applied
                .cmp(&pb.applied)
                .then_with(|| {
                    (Some(*a) == sm.primary.as_ref()).cmp(&(Some(*b) == sm.primary.as_ref()))
                })
                .then_with(|| b.cmp(a))
        }) else {
            return Decision::Nothing;
        };
        return Decision::Recover {
            base: (*base).clone(),
            applied: p.applied,
        };
    }
    // A replica that was away while a recovery replaced the stream: not a fault of the log.
    let stale = |p: &ReplicaProgress| p.fault == Some(LogFaultKind::Recreated) && stale(p);
    let hard: Vec<String> = answering
        .iter()
        .filter(|(_, p)| !stale(p))
        .filter_map(|(n, p)| match p.fault? {
            LogFaultKind::BehindFirst => None,
            kind => Some(format!("{n}: {kind} at applied {}", p.applied)),
        })
        .collect();
    if !hard.is_empty() {
        return Decision::Freeze(hard.join("; "));
    }
    if answering.len() >= majority
        && answering
            .iter()
            .all(|(_, p)| p.fault == Some(LogFaultKind::BehindFirst))
    {
        let at: Vec<String> = answering
            .iter()
            .map(|(n, p)| format!("{n} at {}", p.applied))
            .collect();
        return Decision::Freeze(format!(
            "no replica can continue from the stream: its first sequence is past every replica's next ({})",
            at.join(", ")
        ));
    }
    let stale: Vec<ServerName> = answering
        .iter()
        .filter(|(_, p)| stale(p))
        .map(|(n, _)| (*n).clone())
        .collect();
    if stale.is_empty() {
        Decision::Nothing
    } else {
        Decision::Reseed(stale)
    }
}

impl<R: Runtime> ControlPlane<R> {
    /// One monitor round's log-fault handling for every shard, given the round's heartbeats.
    pub async fn log_faults(&self, meta: &ClusterMeta, beats: &BTreeMap<ServerName, Heartbeat>) {
        for sm in &meta.shards {
            let replicas: Vec<(ServerName, Option<ReplicaProgress>)> = meta
                .replicas(sm.id.as_str())
                .map(|n| {
                    let p = beats.get(n).and_then(|b| b.shards.get(&sm.id)).copied();
                    (n.clone(), p)
                })
                .collect();
            let done = match decide(sm, &replicas) {
                Decision::Nothing => Ok(()),
                Decision::Freeze(why) => self.freeze(&sm.id, why).await,
                Decision::Recover { base, applied } => {
                    self.recover(meta, sm, &replicas, &base, applied).await
                }
                Decision::Reseed(stale) => self.reseed(meta, sm, &stale).await,
            };
            if let Err(e) = done {
                tracing::warn!(shard = %sm.id, error = %e, "log fault handling failed; retrying next round");
            }
        }
    }

    async fn freeze(&self, shard: &ShardId, why: String) -> Result<(), ApiError> {
        tracing::error!(shard = %shard, fault = %why, "log fault: the shard's stream lost entries its replicas applied; shard frozen (no reads, writes or elections) until recovered");
        metrics::counter!(crate::metrics::LOG_FAULTS, "shard" => shard.to_string()).increment(1);
        let _one_at_a_time = self.elections.lock().await;
        self.meta
            .update(|m| {
                let mut m = m.ok_or_else(not_configured)?;
                if let Some(s) = m.shard_mut(shard.as_str()) {
                    s.fault.get_or_insert_with(|| why.clone());
                }
                Ok((Some(m), ()))
            })
            .await
    }

    async fn recover(
        &self,
        meta: &ClusterMeta,
        sm: &ShardMeta,
        replicas: &[(ServerName, Option<ReplicaProgress>)],
        base: &ServerName,
        applied: Seq,
    ) -> Result<(), ApiError> {
        let shard = &sm.id;
        let addr = |n: &ServerName| {
            meta.servers
                .get(n)
                .map(|s| s.addr.clone())
                .ok_or_else(|| ApiError::Internal(format!("server {n} has no address")))
        };
        let base_addr = addr(base)?;
        tracing::warn!(shard = %shard, base = %base, applied = applied.get(), "recovering the shard's log: re-creating its stream after the base replica's position");
        {
            let _one_at_a_time = self.elections.lock().await;
            let log_id = self.wal.recreate_stream_at(shard, applied.next()).await?;
            let adopt = |from: Option<String>| AdoptLogRequest {
                shard: shard.clone(),
                from,
            };
            self.client
                .adopt_log(&base_addr, &adopt(None))
                .await
                .map_err(|e| {
                    ApiError::Unavailable(format!("base {base} did not adopt the new log: {e}"))
                })?;
            for (n, p) in replicas {
                if n == base || p.is_none() {
                    continue; // the base, or away: re-seeded when it reports back
                }
                // One that fails keeps the old log's identity: re-seeded from the primary
                // once the shard is unfrozen, like a replica that was away.
                let seeded = self
                    .client
                    .adopt_log(&addr(n)?, &adopt(Some(base_addr.clone())))
                    .await;
                if let Err(e) = seeded {
                    tracing::warn!(shard = %shard, server = %n, base = %base, error = %e, "replica did not re-seed from the base; it will be re-seeded later");
                }
            }
            self.meta
                .update(|m| {
                    let mut m = m.ok_or_else(not_configured)?;
                    if let Some(s) = m.shard_mut(shard.as_str()) {
                        s.fault = None;
                        s.log_id = Some(log_id);
                        s.primary = None;
                    }
                    Ok((Some(m), ()))
                })
                .await?;
        }
        metrics::counter!(crate::metrics::LOG_RECOVERIES, "shard" => shard.to_string())
            .increment(1);
        tracing::warn!(shard = %shard, base = %base, applied = applied.get(), "log recovered: every answering replica follows the new stream from the base's position");
        // The new term's marker; if this fails the monitor elects in its next round.
        self.elect(shard, &[]).await?;
        Ok(())
    }

    /// `POST /recover` (README "Log faults"): the operator recovers frozen `shard` on
    /// `base` now, whether or not a majority answers (its choice of base wins over the
    /// rule's). The replicas that do not answer are re-seeded when they report back.
    pub async fn recover_on(&self, req: RecoverRequest) -> Result<Done, ApiError> {
        let meta = self.meta.fresh().await?.ok_or_else(not_configured)?;
        let sm = meta
            .shard(req.shard.as_str())
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("unknown shard {}", req.shard)))?;
        if sm.fault.is_none() {
            return Err(ApiError::Conflict(format!(
                "shard {} is not frozen after a log fault: nothing to recover",
                sm.id
            )));
        }
        if !meta.replicas(sm.id.as_str()).any(|r| *r == req.base) {
            return Err(ApiError::BadRequest(format!(
                "`base`: {} holds no replica of shard {}",
                req.base, sm.id
            )));
        }
        let mut replicas = Vec::new();
        for n in meta.replicas(sm.id.as_str()) {
            let sv = &meta.servers[n];
            let beat = self.client.heartbeat(n, &sv.addr, OPERATOR_TIMEOUT).await;
            let p = beat.and_then(|b| b.shards.get(&sm.id).copied());
            replicas.push((n.clone(), p));
        }
        let applied = replicas
            .iter()
            .find(|(n, _)| *n == req.base)
            .and_then(|(_, p)| p.as_ref())
            .map(|p| p.applied)
            .ok_or_else(|| {
                ApiError::Unavailable(format!(
                    "base {} does not answer for shard {}",
                    req.base, sm.id
                ))
            })?;
        tracing::warn!(shard = %sm.id, base = %req.base, "log recovery asked by the operator");
        self.recover(&meta, &sm, &replicas, &req.base, applied)
            .await?;
        Ok(Done::new(format!(
            "shard {} recovered on {}: its log continues from sequence {}",
            sm.id,
            req.base,
            applied.next()
        )))
    }

    async fn reseed(
        &self,
        meta: &ClusterMeta,
        sm: &ShardMeta,
        stale: &[ServerName],
    ) -> Result<(), ApiError> {
        let primary = sm
            .primary
            .as_ref()
            .and_then(|p| meta.servers.get(p))
            .map(|s| s.addr.clone())
            .ok_or_else(|| {
                ApiError::NoPrimary(format!("shard {}: no primary to copy from", sm.id))
            })?;
        for n in stale {
            let Some(sv) = meta.servers.get(n) else {
                continue;
            };
            tracing::warn!(shard = %sm.id, server = %n, "replica follows a log from before a recovery; re-seeding it from the primary");
            let request = AdoptLogRequest {
                shard: sm.id.clone(),
                from: Some(primary.clone()),
            };
            self.client
                .adopt_log(&sv.addr, &request)
                .await
                .map_err(|e| ApiError::Unavailable(format!("{n} did not re-seed: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline::Term;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    fn shard(fault: Option<&str>, primary: &str, log_id: Option<u64>) -> ShardMeta {
        ShardMeta {
            id: ShardId::parse("sh1").unwrap(),
            low: 0,
            size: 10,
            primary: Some(name(primary)),
            term: Term(3),
            fault: fault.map(str::to_owned),
            log_id,
        }
    }

    fn at(applied: u64, fault: Option<LogFaultKind>, log_id: u64) -> Option<ReplicaProgress> {
        Some(ReplicaProgress {
            applied: Seq(applied),
            term: Term(3),
            recovering: false,
            stale_ms: None,
            stalled_ms: None,
            fault,
            log_id: Some(log_id),
        })
    }

    use LogFaultKind::*;

    #[test]
    fn one_replica_with_a_lost_log_freezes_the_shard() {
        let sm = shard(None, "S1", None);
        let r = [
            (name("S1"), at(9, None, 1)),
            (name("S2"), at(12, Some(RolledBack), 1)),
            (name("S3"), None),
        ];
        match decide(&sm, &r) {
            Decision::Freeze(why) => {
                assert!(why.contains("S2: rolled_back at applied 12"), "{why}")
            }
            d => panic!("{d:?}"),
        }
        let healthy = [(name("S1"), at(9, None, 1)), (name("S2"), at(9, None, 1))];
        assert_eq!(decide(&sm, &healthy), Decision::Nothing);
    }

    #[test]
    fn behind_the_first_sequence_freezes_only_when_nobody_can_continue() {
        let sm = shard(None, "S1", None);
        // A peer still has the entries: the behind replica re-seeds from it by itself.
        let one = [
            (name("S1"), at(9, None, 1)),
            (name("S2"), at(3, Some(BehindFirst), 1)),
            (name("S3"), at(3, Some(BehindFirst), 1)),
        ];
        assert_eq!(decide(&sm, &one), Decision::Nothing);
        let all = [
            (name("S1"), at(9, Some(BehindFirst), 1)),
            (name("S2"), at(3, Some(BehindFirst), 1)),
            (name("S3"), None),
        ];
        assert!(matches!(decide(&sm, &all), Decision::Freeze(_)));
        // Only a minority answered: cannot tell.
        assert_eq!(
            decide(
                &sm,
                &all[..1]
                    .iter()
                    .cloned()
                    .chain([(name("S9"), None), (name("S8"), None)])
                    .collect::<Vec<_>>()
            ),
            Decision::Nothing
        );
    }

    #[test]
    fn the_base_is_the_most_advanced_answering_replica_of_a_majority() {
        let sm = shard(Some("x"), "S3", None);
        let r = [
            (name("S1"), at(12, Some(RolledBack), 1)),
            (name("S2"), at(9, None, 1)),
            (name("S3"), None),
        ];
        assert_eq!(
            decide(&sm, &r),
            Decision::Recover {
                base: name("S1"),
                applied: Seq(12)
            }
        );
        // Ties: the primary, then the smallest name.
        let tie = [
            (name("S1"), at(12, None, 1)),
            (name("S2"), at(12, None, 1)),
            (name("S3"), at(12, None, 1)),
        ];
        assert_eq!(
            decide(&sm, &tie),
            Decision::Recover {
                base: name("S3"),
                applied: Seq(12)
            }
        );
        let sm = shard(Some("x"), "S9", None);
        assert_eq!(
            decide(&sm, &tie),
            Decision::Recover {
                base: name("S1"),
                applied: Seq(12)
            }
        );
        // A minority answering: wait.
        assert_eq!(
            decide(
                &sm,
                &r[1..]
                    .iter()
                    .cloned()
                    .chain([(name("S4"), None)])
                    .collect::<Vec<_>>()
            ),
            Decision::Nothing
        );
    }

    #[test]
    fn a_replica_from_before_a_recovery_is_reseeded_not_a_fault() {
        let sm = shard(None, "S1", Some(7));
        let r = [
            (name("S1"), at(20, None, 7)),
            (name("S2"), at(15, Some(Recreated), 5)),
            (name("S3"), at(20, None, 7)),
        ];
        assert_eq!(decide(&sm, &r), Decision::Reseed(vec![name("S2")]));
        // Frozen again before it was re-seeded: it is neither the base nor counted.
        let frozen = shard(Some("x"), "S1", Some(7));
        let r3 = [
            (name("S1"), at(20, Some(Recreated), 7)),
            (name("S2"), at(99, Some(Recreated), 5)),
            (name("S3"), at(20, None, 9)), // adopted a newer stream: counted
        ];
        assert_eq!(
            decide(&frozen, &r3),
            Decision::Recover {
                base: name("S1"),
                applied: Seq(20)
            }
        );
        assert_eq!(decide(&frozen, &r3[..2]), Decision::Nothing);
        // The recovered stream itself re-created again: a fault.
        let r = [
            (name("S1"), at(20, Some(Recreated), 7)),
            (name("S2"), at(20, None, 7)),
        ];
        assert!(matches!(decide(&sm, &r), Decision::Freeze(_)));
    }
}
