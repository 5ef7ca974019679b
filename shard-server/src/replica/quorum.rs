//! Commit tracking for a primary: the latest applied sequence each replica announced, and
//! waiting until a majority of the shard's current replicas applied an entry.
//!
//! [`Quorum`] is fed by [`Quorum::record`] (this replica's own progress and the announcements
//! the primary receives) and reads the replica set from the watched cluster metadata, so it
//! needs no NATS and its timing can be tested with tokio's paused clock.

use std::collections::HashMap;
use std::sync::Mutex;

use shardline::meta::majority;
use shardline::names::{ServerName, ShardId};
use shardline::watch::MetaRx;
use shardline::{ApiError, Seq};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::lock;

/// How many replicas applied an entry, against how many a majority needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub have: usize,
    pub need: usize,
}

impl Tally {
    pub fn reached(self) -> bool {
        self.have >= self.need
    }
}

/// Counts the `replicas` (the shard's replica set in the current metadata) whose latest
/// announced sequence is at least `target`. Announcements from servers outside the set do
/// not count; an empty set still needs one.
pub fn tally<'a>(
    replicas: impl IntoIterator<Item = &'a ServerName>,
    acks: &HashMap<ServerName, Seq>,
    target: Seq,
) -> Tally {
    let (mut members, mut have) = (0, 0);
    for r in replicas {
        members += 1;
        if acks.get(r).is_some_and(|s| *s >= target) {
            have += 1;
        }
    }
    Tally {
        have,
        need: majority(members.max(1)),
    }
}

/// The acks of one shard's replicas, as seen by this server.
pub struct Quorum {
    shard: ShardId,
    meta: MetaRx,
    /// Highest applied sequence announced by each replica of the shard.
    acks: Mutex<HashMap<ServerName, Seq>>,
    acked: Notify,
}

impl Quorum {
    pub fn new(shard: ShardId, meta: MetaRx) -> Quorum {
        Quorum {
            shard,
            meta,
            acks: Mutex::new(HashMap::new()),
            acked: Notify::new(),
        }
    }

    /// Records the latest sequence a replica announced. Announcements of one replica arrive
    /// in order, so the latest is the truth even if it went down (a replica that lost its
    /// disk must not keep counting for entries it no longer holds).
    pub fn record(&self, server: ServerName, seq: Seq) {
        let previous = lock(&self.acks).insert(server, seq).unwrap_or_default();
        if seq > previous {
            self.acked.notify_waiters();
        }
    }

    /// Who applied `target` among the shard's replicas in the current metadata.
    pub fn tally(&self, target: Seq) -> Tally {
        let meta = self.meta.borrow().clone();
        let Some(meta) = meta else {
            return Tally { have: 0, need: 1 };
        };
        tally(
            meta.replicas(self.shard.as_str()),
            &lock(&self.acks),
            target,
        )
    }

    /// Returns once a majority of the shard's replicas applied `seq`, or `NoQuorum` at
    /// `deadline`. (The entry is in the log either way: the error's outcome is unknown.)
    pub async fn wait_for_majority(&self, seq: Seq, deadline: Instant) -> Result<(), ApiError> {
        loop {
            // Registered before counting, so an ack between the count and the wait wakes us.
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let t = self.tally(seq);
            if t.reached() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ApiError::NoQuorum(format!(
                    "shard {}: no quorum: entry {seq} applied by {} of the {} replicas required",
                    self.shard, t.have, t.need
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;
    use shardline::meta::{ClusterMeta, Health, ServerMeta, ShardMeta};
    use shardline::schema::{Schema, SchemaSpec};
    use shardline::Term;
    use tokio::sync::watch;

    use super::*;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    /// Metadata where `sh1` lives on `holders`; Server9 exists but holds another shard.
    fn meta(holders: &[&str]) -> ClusterMeta {
        let sh1 = ShardId::parse("sh1").unwrap();
        let sh2 = ShardId::parse("sh2").unwrap();
        let mut servers = BTreeMap::new();
        for h in holders {
            servers.insert(name(h), server(vec![sh1.clone()]));
        }
        servers.insert(name("Server9"), server(vec![sh2]));
        ClusterMeta {
            schema: Schema::parse(&SchemaSpec {
                columns: vec!["Stud_id".into()],
                dtypes: vec!["Number".into()],
            })
            .unwrap(),
            shards: vec![ShardMeta {
                id: sh1,
                low: 0,
                size: 10,
                primary: Some(name(holders[0])),
                term: Term(1),
                fault: None,
                log_id: None,
            }],
            servers,
        }
    }

    fn server(shards: Vec<ShardId>) -> ServerMeta {
        ServerMeta {
            addr: "127.0.0.1:1".into(),
            shards,
            health: Health::Up,
            applied: BTreeMap::new(),
        }
    }

    fn quorum(holders: &[&str]) -> (Arc<Quorum>, watch::Sender<Option<Arc<ClusterMeta>>>) {
        let (tx, rx) = watch::channel(Some(Arc::new(meta(holders))));
        (
            Arc::new(Quorum::new(ShardId::parse("sh1").unwrap(), rx)),
            tx,
        )
    }

    #[test]
    fn only_current_replicas_at_or_past_the_target_count() {
        let (q, tx) = quorum(&["Server0", "Server1", "Server2"]);
        q.record(name("Server0"), Seq(5));
        q.record(name("Server9"), Seq(9)); // not a replica of sh1
        q.record(name("Server1"), Seq(4));
        assert_eq!(q.tally(Seq(5)), Tally { have: 1, need: 2 });
        q.record(name("Server1"), Seq(5));
        assert!(q.tally(Seq(5)).reached());
        // A replica that restarted empty announces a lower sequence: it stops counting.
        q.record(name("Server1"), Seq(0));
        assert!(!q.tally(Seq(5)).reached());
        // Server1 removed from the metadata: a majority of two is two.
        tx.send_replace(Some(Arc::new(meta(&["Server0", "Server2"]))));
        q.record(name("Server1"), Seq(5));
        assert_eq!(q.tally(Seq(5)), Tally { have: 1, need: 2 });
        tx.send_replace(None);
        assert_eq!(q.tally(Seq(1)), Tally { have: 0, need: 1 });
    }

    /// Returns as soon as the second of three replicas acks, not at the deadline.
    #[tokio::test(start_paused = true)]
    async fn majority_wait_returns_when_a_majority_acked() {
        let (q, _tx) = quorum(&["Server0", "Server1", "Server2"]);
        q.record(name("Server0"), Seq(7));
        let acker = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            acker.record(name("Server2"), Seq(6)); // behind: does not count
            tokio::time::sleep(Duration::from_millis(200)).await;
            acker.record(name("Server2"), Seq(8));
        });
        let start = Instant::now();
        q.wait_for_majority(Seq(7), start + Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    /// Without a majority the wait answers NoQuorum exactly at the deadline.
    #[tokio::test(start_paused = true)]
    async fn majority_wait_gives_up_at_the_deadline() {
        let (q, _tx) = quorum(&["Server0", "Server1", "Server2"]);
        q.record(name("Server0"), Seq(7));
        q.record(name("Server9"), Seq(7));
        let start = Instant::now();
        let e = q
            .wait_for_majority(Seq(7), start + Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(matches!(e, ApiError::NoQuorum(_)), "{e:?}");
        assert!(e.message().contains("no quorum"), "{}", e.message());
        assert!(
            e.message().contains("applied by 1 of the 2"),
            "{}",
            e.message()
        );
    }

    /// A replica set that shrinks while waiting can complete the wait.
    #[tokio::test(start_paused = true)]
    async fn majority_wait_follows_the_metadata() {
        let (q, tx) = quorum(&["Server0", "Server1", "Server2", "Server3"]);
        q.record(name("Server0"), Seq(3));
        q.record(name("Server1"), Seq(3));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move {
                q.wait_for_majority(Seq(3), Instant::now() + Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        tx.send_replace(Some(Arc::new(meta(&["Server0", "Server1", "Server2"]))));
        // Metadata changes do not notify by themselves; the next ack re-counts.
        q.record(name("Server2"), Seq(1));
        waiter.await.unwrap().unwrap();
    }

    proptest! {
        /// The count is exactly the members at or past the target; the need is a majority.
        #[test]
        fn tally_counts_members_at_or_past_the_target(
            members in proptest::collection::btree_set(0u8..12, 0..7),
            acks in proptest::collection::btree_map(0u8..16, 0u64..20, 0..16),
            target in 0u64..20,
        ) {
            let members: Vec<ServerName> =
                members.iter().map(|i| name(&format!("Server{i}"))).collect();
            let acks: HashMap<ServerName, Seq> = acks
                .iter()
                .map(|(i, s)| (name(&format!("Server{i}")), Seq(*s)))
                .collect();
            let t = tally(&members, &acks, Seq(target));
            let expected = members
                .iter()
                .filter(|m| acks.get(*m).is_some_and(|s| s.get() >= target))
                .count();
            prop_assert_eq!(t.have, expected);
            prop_assert!(t.have <= members.len());
            prop_assert_eq!(t.need, members.len().max(1) / 2 + 1);
            // Two disjoint sets cannot both reach it.
            prop_assert!(2 * t.need > members.len());
        }
    }
}
