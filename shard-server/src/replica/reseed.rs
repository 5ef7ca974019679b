//! Re-seeding a replica the log cannot serve: when the entry after its applied sequence is
//! no longer in the stream (purged by the manager's retention or by hand; an empty replica
//! of a stream whose first sequence is past 1 likewise), replaying is impossible and
//! applying what remains would skip entries. The applier checks this at every (re)start,
//! before it creates its consumer; a replica that needs it is marked recovering (no reads,
//! never elected), installs a snapshot of a healthy peer (`catchup::copy_with`) and follows
//! the log from there. With no healthy peer it stays recovering and tries again with a
//! backoff of at most a second; it never applies from a sequence the stream does not hold.
//!
//! A healthy peer: a replica of the shard on a server the metadata has up, whose own
//! heartbeat says it is not recovering and has applied at least up to the entry before the
//! stream's first one. The primary first, then the highest applied.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline::internal::{Heartbeat, ReplicaProgress};
use shardline::meta::{ClusterMeta, Health};
use shardline::names::ServerName;
use shardline::{wal, Position, Seq};

use super::Replica;

/// Retry pace while no peer can give a snapshot: from the first value, doubling, at most
/// the second.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Longest wait for the cluster metadata naming the shard (to find the peers).
const META_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for a peer's heartbeat.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a replica that applied `applied` cannot follow a stream whose first sequence is
/// `first`: the entry it needs next was purged.
pub(crate) fn needs_reseed(applied: Seq, first: Seq) -> bool {
    applied.get() + 1 < first.get()
}

/// A replica of the shard on another server, as the metadata and its heartbeat show it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub name: ServerName,
    pub addr: String,
    pub primary: bool,
    /// Its heartbeat's progress for the shard (`None`: no answer, or it does not hold it).
    pub progress: Option<ReplicaProgress>,
}

/// The candidates that can give a snapshot the log can be followed from, best first: not
/// recovering, without a log fault (README "Log faults"), applied at least `first - 1`; the primary first, then by applied, highest
/// first.
pub(crate) fn rank(mut candidates: Vec<Candidate>, first: Seq) -> Vec<Candidate> {
    candidates.retain(|c| {
        c.progress
            .as_ref()
            .is_some_and(|p| !p.recovering && p.fault.is_none() && !needs_reseed(p.applied, first))
    });
    candidates.sort_by_key(|c| {
        let applied = c.progress.as_ref().map_or(0, |p| p.applied.get());
        (!c.primary, std::cmp::Reverse(applied))
    });
    candidates
}

impl Replica {
    /// At the applier's (re)start: if the stream no longer holds the entry after this
    /// replica's applied sequence, re-seeds it from a healthy peer (waiting, recovering,
    /// until there is one) and returns once the log can be followed from the stored
    /// position. An error (the stream cannot be asked) ends it: the applier restarts.
    pub(super) async fn reseed_if_purged(&self) -> anyhow::Result<()> {
        let name = wal::stream_name(&self.shard);
        let started = Instant::now();
        let mut backoff = RETRY_FIRST;
        let mut told_no_peer = false;
        let mut told_purged = false;
        loop {
            let mut stream = self.js.get_stream(&name).await?;
            let first = Seq(stream.info().await?.state.first_sequence);
            let applied = self.store.position().seq;
            if !needs_reseed(applied, first) {
                return Ok(());
            }
            self.recovering.store(true, Ordering::Release);
            if !told_purged {
                told_purged = true;
                tracing::warn!(
                    shard = %self.shard, server = %self.server, applied = %applied, first = %first,
                    "the log no longer holds the next entry (purged); recovering until re-seeded from a peer"
                );
            }
            let peers = self.healthy_peers(first).await;
            if peers.is_empty() && !told_no_peer {
                told_no_peer = true;
                tracing::warn!(
                    shard = %self.shard, server = %self.server, applied = %applied, first = %first,
                    "no healthy replica to re-seed from; staying recovering and retrying"
                );
            }
            for peer in peers {
                match crate::catchup::copy_with(
                    &self.http,
                    &self.data_dir,
                    &self.shard,
                    &peer.addr,
                    &self.store,
                )
                .await
                {
                    Ok(at) => {
                        self.installed(at);
                        tracing::info!(
                            shard = %self.shard, server = %self.server, peer = %peer.name,
                            seq = %at.seq, first = %first,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "re-seeded from a peer's snapshot; following the log from the next sequence"
                        );
                        break;
                    }
                    Err(e) => tracing::warn!(
                        shard = %self.shard, server = %self.server, peer = %peer.name, error = %e,
                        "re-seed from this peer failed"
                    ),
                }
            }
            if needs_reseed(self.store.position().seq, first) {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            // Otherwise asks the stream again: it may have been purged further meanwhile.
        }
    }

    /// Publishes a position installed from a snapshot (the applier is not running).
    fn installed(&self, at: Position) {
        self.set_applied(at);
        self.quorum.record(self.server.clone(), at.seq);
    }

    /// The replicas of this shard that can give a snapshot the log can be followed from
    /// (first sequence `first`), best first.
    async fn healthy_peers(&self, first: Seq) -> Vec<Candidate> {
        // A server just started may not have its first metadata document yet.
        let mut rx = self.meta.clone();
        let names_shard = |m: &Option<Arc<ClusterMeta>>| {
            m.as_ref()
                .is_some_and(|m| m.shard(self.shard.as_str()).is_some())
        };
        let meta = match tokio::time::timeout(META_WAIT, rx.wait_for(names_shard)).await {
            Ok(Ok(m)) => m.clone(),
            _ => None,
        };
        let Some(meta) = meta else {
            return Vec::new();
        };
        let primary = meta
            .shard(self.shard.as_str())
            .and_then(|s| s.primary.clone());
        let up: Vec<(ServerName, String)> = meta
            .replicas(self.shard.as_str())
            .filter(|n| **n != self.server)
            .filter_map(|n| {
                let m = meta.servers.get(n)?;
                (m.health == Health::Up).then(|| (n.clone(), m.addr.clone()))
            })
            .collect();
        let beats = futures::future::join_all(up.into_iter().map(|(name, addr)| async {
            let progress = self.progress_of(&addr).await;
            Candidate {
                primary: primary.as_ref() == Some(&name),
                name,
                addr,
                progress,
            }
        }))
        .await;
        rank(beats, first)
    }

    /// This shard's progress on the server at `addr`, from its heartbeat.
    async fn progress_of(&self, addr: &str) -> Option<ReplicaProgress> {
        let beat: Heartbeat = self
            .http
            .get(format!("http://{addr}/heartbeat"))
            .timeout(HEARTBEAT_TIMEOUT)
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()?;
        beat.shards.get(&self.shard).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(name: &str, primary: bool, applied: Option<(u64, bool)>) -> Candidate {
        Candidate {
            name: ServerName::parse(name).unwrap(),
            addr: format!("{name}:1"),
            primary,
            progress: applied.map(|(seq, recovering)| ReplicaProgress {
                applied: Seq(seq),
                term: shardline::Term(1),
                recovering,
                stale_ms: None,
                stalled_ms: None,
                fault: None,
                log_id: None,
            }),
        }
    }

    #[test]
    fn a_replica_needs_a_snapshot_only_when_its_next_entry_was_purged() {
        // Nothing ever purged (first is 1, or 0 for an empty stream): replay.
        assert!(!needs_reseed(Seq(0), Seq(0)));
        assert!(!needs_reseed(Seq(0), Seq(1)));
        // Next entry is the first one held.
        assert!(!needs_reseed(Seq(9), Seq(10)));
        // Everything purged up to the last (first = last + 1) but this replica had it all.
        assert!(!needs_reseed(Seq(10), Seq(11)));
        // Ahead of the first (purged below what it applied): follows on.
        assert!(!needs_reseed(Seq(50), Seq(10)));
        // The next entry is gone.
        assert!(needs_reseed(Seq(8), Seq(10)));
        assert!(needs_reseed(Seq(0), Seq(2)));
    }

    #[test]
    fn peers_are_ranked_primary_first_then_by_applied() {
        let first = Seq(10);
        let ranked = rank(
            vec![
                candidate("behind", false, Some((8, false))),
                candidate("silent", false, None),
                candidate("busy", false, Some((500, true))),
                candidate("low", false, Some((9, false))),
                candidate("high", false, Some((40, false))),
                candidate("prim", true, Some((30, false))),
            ],
            first,
        );
        let names: Vec<&str> = ranked.iter().map(|c| c.name.as_str()).collect();
        // "behind" needs a snapshot itself, "busy" is recovering, "silent" did not answer.
        assert_eq!(names, ["prim", "high", "low"]);
        assert!(rank(vec![candidate("behind", true, Some((3, false)))], first).is_empty());
    }
}
