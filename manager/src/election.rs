//! Elections: when a shard's primary is gone (or being removed), the live replica that has
//! applied the most of the log takes over. The manager appends a term marker first and then
//! records the new primary and term in the metadata, so a deposed primary that is still
//! running cannot get anything applied (every replica skips its entries from the marker on).

use std::time::Duration;

use shardline::internal::ReplicaProgress;
use shardline::meta::{Health, ShardMeta};
use shardline::names::{ServerName, ShardId};
use shardline::{ApiError, Seq};
use tokio::time::Instant;

use crate::control_plane::{not_configured, ControlPlane};
use crate::runtime::Runtime;

/// How long a candidate has to answer the election's heartbeat.
const CANDIDATE_TIMEOUT: Duration = Duration::from_millis(500);

/// One replica of the shard, as the election sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: ServerName,
    pub health: Health,
    /// Being removed (`/rm`): may not take over.
    pub excluded: bool,
    /// Its heartbeat's progress on the shard; `None` if it did not answer (or was not asked).
    pub progress: Option<ReplicaProgress>,
}

impl Candidate {
    /// Up, not excluded, answered, and not catching up.
    fn eligible(&self) -> Option<Seq> {
        let p = self.progress?;
        (!self.excluded && self.health == Health::Up && !p.recovering).then_some(p.applied)
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

impl<R: Runtime> ControlPlane<R> {
    /// Elects a new primary for `shard` among its live replicas (highest applied sequence,
    /// then name), bumps the term in a marker entry and then in the metadata.
    pub async fn elect(
        &self,
        shard: &ShardId,
        exclude: &[ServerName],
    ) -> Result<Option<ServerName>, ApiError> {
        let _one_at_a_time = self.elections.lock().await;
        let started = Instant::now();
        let meta = self.configured().await?;
        let sm = meta
            .shard(shard.as_str())
            .ok_or_else(|| ApiError::NotFound(format!("unknown shard {shard}")))?
            .clone();
        let mut candidates = Vec::new();
        for name in meta.replicas(shard.as_str()) {
            let sv = &meta.servers[name];
            let excluded = exclude.contains(name);
            // Only a candidate that could win is asked how far it got.
            let progress = if excluded || sv.health != Health::Up {
                None
            } else {
                (self
                    .client
                    .heartbeat(name, &sv.addr, CANDIDATE_TIMEOUT)
                    .await)
                    .and_then(|beat| beat.shards.get(shard).copied())
            };
            candidates.push(Candidate {
                name: name.clone(),
                health: sv.health,
                excluded,
                progress,
            });
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
        let term = sm.term.next();
        let next = ShardMeta {
            primary: Some(winner.clone()),
            term,
            ..sm.clone()
        };
        // Marker first: from its sequence on, entries of the old term are skipped everywhere,
        // so a deposed primary that is still running cannot get anything applied.
        self.wal.append_marker(&next).await?;
        self.meta
            .update(|m| {
                let mut m = m.ok_or_else(not_configured)?;
                if let Some(s) = m.shard_mut(shard.as_str()) {
                    s.primary = Some(winner.clone());
                    s.term = term;
                }
                Ok((Some(m), ()))
            })
            .await?;
        tracing::info!(
            shard = %shard, primary = %winner, term = term.get(), applied = seq.get(),
            elapsed_ms = started.elapsed().as_millis() as u64, "elected primary"
        );
        metrics::counter!(crate::metrics::ELECTIONS, "shard" => shard.to_string()).increment(1);
        Ok(Some(winner))
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
            progress: applied.map(|(seq, recovering)| ReplicaProgress {
                applied: Seq(seq),
                term: Term(1),
                recovering,
                stale_ms: None,
                stalled_ms: None,
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
}
