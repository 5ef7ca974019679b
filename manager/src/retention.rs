//! WAL retention: the active manager trims each shard's stream `WAL_<shard>` below a safe
//! floor, so that the log does not grow forever.
//!
//! Every `--wal-trim-interval-ms` the trimmer asks every server for its heartbeat and, per
//! shard, computes the **floor**: the lowest applied sequence among the shard's replicas in the
//! metadata. A replica's applied sequence is committed to SQLite in the same transaction as its
//! rows, so it is what survives a process crash (and, with `--sqlite-sync full`, a power loss):
//! no replica ever needs an entry at or below it again. The stream is then purged (JetStream
//! purge by sequence, which never renumbers) below `floor + 1 - retain`: the `retain` entries
//! at and below the floor stay, so a replica that was down for a short while catches up from
//! the log, not from a snapshot. With `--wal-retain-ms`, entries younger than that are kept
//! too.
//!
//! A replica that does not answer its heartbeat (down, paused, failed) counts with the last
//! applied sequence known for it: heard by this trimmer earlier, else recorded in the metadata
//! (`ServerMeta.applied`), else its durable consumer's ack floor (a replica acknowledges only
//! what it committed). It **holds** the floor while it is at most `--wal-hold-max-entries`
//! behind the stream's end; beyond that it is **released** (left out of the floor, logged once
//! at warn) and, when it comes back, finds its next entry purged and re-seeds from a peer's
//! snapshot. A shard is not trimmed at all when no replica answers, when a replica's applied
//! sequence is unknown, or when a replica claims more than the stream holds (a log that went
//! backwards is not made worse).
//!
//! [`plan`] makes the decision (a pure function, unit-tested); [`run`] does the I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use shardline::internal::Heartbeat;
use shardline::meta::ClusterMeta;
use shardline::names::{ServerName, ShardId};
use shardline::wal::{self, now_ms, WalEntry};
use shardline::Seq;
use tokio_util::sync::CancellationToken;

use crate::control_plane::ControlPlane;
use crate::runtime::Runtime;

/// How the trimmer runs (the manager's `--wal-*` flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between two trimming rounds; zero disables trimming.
    pub interval: Duration,
    /// Entries kept at and below the floor.
    pub retain_entries: u64,
    /// Entries younger than this are never purged (zero: no age limit).
    pub retain_age: Duration,
    /// A silent replica holds the floor while it is at most this many entries behind the end
    /// of the stream.
    pub hold_max: u64,
    /// How long a server may take to answer the trimmer's heartbeat.
    pub heartbeat_timeout: Duration,
}

/// What the trimmer knows about one replica of a shard this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaView {
    pub server: ServerName,
    /// Its applied sequence: reported just now, or the last one known (`None`: unknown).
    pub applied: Option<Seq>,
    /// Whether it answered this round's heartbeat (for this shard).
    pub answering: bool,
}

/// The decision for one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Trim nothing this round, and why.
    Keep(&'static str),
    /// The floor and the first sequence to keep (purge everything below it, if anything);
    /// `released` are the silent replicas left out of the floor.
    Trim {
        floor: Seq,
        keep_from: Seq,
        released: Vec<ServerName>,
    },
}

/// The trimming decision for a stream holding `first..=last` (`first == last + 1` when
/// empty) and the shard's replicas.
pub fn plan(first: u64, last: u64, replicas: &[ReplicaView], retain: u64, hold_max: u64) -> Plan {
    if replicas.is_empty() {
        return Plan::Keep("the shard has no replicas");
    }
    if !replicas.iter().any(|r| r.answering) {
        return Plan::Keep("no replica answers");
    }
    let mut floor: Option<Seq> = None;
    let mut released = Vec::new();
    for r in replicas {
        let Some(applied) = r.applied else {
            return Plan::Keep("a replica's applied sequence is unknown");
        };
        if applied.get() > last {
            return Plan::Keep("a replica applied more than the stream holds");
        }
        if !r.answering && last - applied.get() > hold_max {
            released.push(r.server.clone());
            continue;
        }
        floor = Some(floor.map_or(applied, |f| f.min(applied)));
    }
    let Some(floor) = floor else {
        return Plan::Keep("every replica is released");
    };
    let keep_from = Seq((floor.get() + 1).saturating_sub(retain).max(first));
    Plan::Trim {
        floor,
        keep_from,
        released,
    }
}

/// What the trimmer remembers between rounds.
#[derive(Default)]
struct Memory {
    /// The last applied sequence each replica reported (server, shard).
    heard: BTreeMap<(ServerName, ShardId), Seq>,
    /// Replicas currently released, so that the release is logged once.
    released: BTreeSet<(ServerName, ShardId)>,
    /// Shards whose last round kept everything, and why (logged when it changes).
    kept: BTreeMap<ShardId, &'static str>,
}

/// Trims the streams every `settings.interval` while this manager holds the lease, until
/// `stop`. Returns at once when trimming is disabled (interval zero).
pub async fn run<R: Runtime>(
    control: Arc<ControlPlane<R>>,
    js: jetstream::Context,
    settings: Settings,
    stop: CancellationToken,
) {
    if settings.interval.is_zero() {
        tracing::info!("WAL trimming disabled (--wal-trim-interval-ms 0)");
        return;
    }
    let mut memory = Memory::default();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if control.lease.check().is_err() {
            // A standby: whatever it heard may be stale by the time it becomes active.
            memory = Memory::default();
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            result = round(&control, &js, &settings, &mut memory) => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "WAL trimming round failed");
                }
            }
        }
    }
}

async fn round<R: Runtime>(
    control: &ControlPlane<R>,
    js: &jetstream::Context,
    settings: &Settings,
    memory: &mut Memory,
) -> anyhow::Result<()> {
    let Some(meta) = control.meta.fresh().await? else {
        return Ok(());
    };
    let beats: BTreeMap<ServerName, Heartbeat> =
        futures::future::join_all(meta.servers.iter().map(|(name, sv)| async move {
            let beat = (control.client)
                .heartbeat(name, &sv.addr, settings.heartbeat_timeout)
                .await;
            (name.clone(), beat)
        }))
        .await
        .into_iter()
        .filter_map(|(n, b)| Some((n, b?)))
        .collect();
    // Forget servers and shards the metadata no longer has.
    memory.heard.retain(|(server, shard), _| {
        meta.servers
            .get(server)
            .is_some_and(|s| s.shards.contains(shard))
    });
    memory.released.retain(|(server, shard)| {
        meta.servers
            .get(server)
            .is_some_and(|s| s.shards.contains(shard))
    });
    for s in &meta.shards {
        // A frozen shard (its log lost entries: README "Log faults") is left alone until
        // `log_recovery` has rebuilt it; its replicas' positions refer to the old stream.
        if s.fault.is_some() {
            continue;
        }
        if let Err(e) = trim_shard(control, js, settings, memory, &meta, &beats, &s.id).await {
            tracing::warn!(shard = %s.id, error = %e, "trimming the shard's stream failed");
        }
    }
    Ok(())
}

async fn trim_shard<R: Runtime>(
    control: &ControlPlane<R>,
    js: &jetstream::Context,
    settings: &Settings,
    memory: &mut Memory,
    meta: &ClusterMeta,
    beats: &BTreeMap<ServerName, Heartbeat>,
    shard: &ShardId,
) -> anyhow::Result<()> {
    let mut stream = js.get_stream(wal::stream_name(shard)).await?;
    let state = stream.info().await?.state.clone();
    let (first, last) = (state.first_sequence, state.last_sequence);
    let labels = [("shard", shard.to_string())];
    metrics::gauge!(crate::metrics::WAL_FIRST_SEQ, &labels).set(first as f64);
    metrics::gauge!(crate::metrics::WAL_LAST_SEQ, &labels).set(last as f64);
    metrics::gauge!(crate::metrics::WAL_BYTES, &labels).set(state.bytes as f64);

    let faulted = meta.replicas(shard.as_str()).any(|server| {
        (beats.get(server).and_then(|b| b.shards.get(shard))).is_some_and(|p| p.fault.is_some())
    });
    if faulted {
        return Ok(()); // the manager freezes it next round
    }
    let mut views = Vec::new();
    for server in meta.replicas(shard.as_str()) {
        let key = (server.clone(), shard.clone());
        let fresh = beats
            .get(server)
            .and_then(|b| b.shards.get(shard))
            .map(|p| p.applied);
        let applied = match fresh {
            Some(a) => {
                memory.heard.insert(key.clone(), a);
                if memory.released.remove(&key) {
                    tracing::info!(shard = %shard, server = %server, applied = a.get(), "released replica answers again; it holds the WAL floor again");
                }
                Some(a)
            }
            None => match memory.heard.get(&key) {
                Some(a) => Some(*a),
                None => match meta.servers[server].applied.get(shard) {
                    Some(a) => Some(*a),
                    None => ack_floor(&stream, server).await,
                },
            },
        };
        views.push(ReplicaView {
            server: server.clone(),
            applied,
            answering: fresh.is_some(),
        });
    }

    let (floor, keep_from, released) = match plan(
        first,
        last,
        &views,
        settings.retain_entries,
        settings.hold_max,
    ) {
        Plan::Keep(why) => {
            if memory.kept.insert(shard.clone(), why) != Some(why) {
                tracing::info!(shard = %shard, reason = why, "not trimming the shard's stream");
            }
            return Ok(());
        }
        Plan::Trim {
            floor,
            keep_from,
            released,
        } => (floor, keep_from, released),
    };
    memory.kept.remove(shard);
    metrics::gauge!(crate::metrics::WAL_FLOOR, &labels).set(floor.get() as f64);
    metrics::gauge!(crate::metrics::WAL_RELEASED, &labels).set(released.len() as f64);
    for server in released {
        let view = views.iter().find(|v| v.server == server);
        let applied = view.and_then(|v| v.applied).unwrap_or(Seq::ZERO);
        if memory.released.insert((server.clone(), shard.clone())) {
            tracing::warn!(
                shard = %shard, server = %server, applied = applied.get(), last = last,
                hold_max = settings.hold_max,
                "replica silent and too far behind: released from the WAL floor; it re-seeds from a snapshot when it returns"
            );
        }
    }

    let mut keep_from = keep_from;
    if !settings.retain_age.is_zero() && keep_from.get() > first {
        keep_from = younger_than(&stream, first, keep_from, settings.retain_age).await;
    }
    if keep_from.get() <= first {
        return Ok(());
    }
    // Only the lease holder purges (the lease may have lapsed during this round).
    control.lease.check()?;
    let purged = stream.purge().sequence(keep_from.get()).await?;
    metrics::counter!(crate::metrics::WAL_PURGED, &labels).increment(purged.purged);
    metrics::gauge!(crate::metrics::WAL_FIRST_SEQ, &labels).set(keep_from.get() as f64);
    tracing::debug!(
        shard = %shard, floor = floor.get(), first_kept = keep_from.get(), purged = purged.purged,
        "purged the shard's stream below the floor"
    );
    Ok(())
}

/// The stream sequence a replica's durable consumer (named after its server) acknowledged.
async fn ack_floor(stream: &Stream, server: &ServerName) -> Option<Seq> {
    let info = stream.consumer_info(server.as_str()).await.ok()?;
    Some(Seq(info.ack_floor.stream_sequence))
}

/// The first sequence in `first..keep_from` whose entry is younger than `age` (by the
/// timestamp its writer put in it), or `keep_from` if none is: a binary search, as entries
/// are appended in time order. An entry that cannot be read counts as young.
async fn younger_than(stream: &Stream, first: u64, keep_from: Seq, age: Duration) -> Seq {
    let cutoff = now_ms().saturating_sub(age.as_millis() as u64);
    let young = |seq: u64| async move {
        match stream.get_raw_message(seq).await {
            Ok(m) => WalEntry::decode(&m.payload).map_or(true, |e| e.ts_ms > cutoff),
            Err(_) => true,
        }
    };
    // Invariant: everything below `low` is old; `high` is young or `keep_from`.
    let (mut low, mut high) = (first, keep_from.get());
    // Bounded: the range halves every step.
    while low < high {
        let mid = low + (high - low) / 2;
        if young(mid).await {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    Seq(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, applied: Option<u64>, answering: bool) -> ReplicaView {
        ReplicaView {
            server: ServerName::parse(name).unwrap(),
            applied: applied.map(Seq),
            answering,
        }
    }

    fn trim(floor: u64, keep_from: u64, released: &[&str]) -> Plan {
        Plan::Trim {
            floor: Seq(floor),
            keep_from: Seq(keep_from),
            released: released
                .iter()
                .map(|n| ServerName::parse(n).unwrap())
                .collect(),
        }
    }

    #[test]
    fn floor_is_the_lowest_applied_minus_the_margin() {
        let r = [
            view("Server0", Some(5000), true),
            view("Server1", Some(4200), true),
            view("Server2", Some(4990), true),
        ];
        // Keeps 4200 - 1000 + 1 ..= 4200 below and at the floor.
        assert_eq!(plan(1, 5000, &r, 1000, 1_000_000), trim(4200, 3201, &[]));
        // Never below what the stream still holds.
        assert_eq!(plan(3500, 5000, &r, 1000, 1_000_000), trim(4200, 3500, &[]));
        // No margin: everything every replica applied goes.
        assert_eq!(plan(1, 5000, &r, 0, 1_000_000), trim(4200, 4201, &[]));
        // Margin larger than the log: nothing to purge.
        assert_eq!(plan(1, 5000, &r, 10_000, 1_000_000), trim(4200, 1, &[]));
    }

    #[test]
    fn a_silent_replica_holds_the_floor_up_to_the_limit_then_is_released() {
        let held = [
            view("Server0", Some(9000), true),
            view("Server1", Some(2000), false),
        ];
        assert_eq!(plan(1, 9000, &held, 100, 7000), trim(2000, 1901, &[]));
        assert_eq!(
            plan(1, 9001, &held, 100, 7000),
            trim(9000, 8901, &["Server1"])
        );
        // An answering replica is never released, however far behind.
        let slow = [
            view("Server0", Some(9000), true),
            view("Server1", Some(10), true),
        ];
        assert_eq!(plan(1, 9000, &slow, 100, 5), trim(10, 1, &[]));
    }

    #[test]
    fn nothing_is_trimmed_without_enough_knowledge() {
        let unknown = [
            view("Server0", Some(900), true),
            view("Server1", None, false),
        ];
        assert!(matches!(plan(1, 900, &unknown, 10, 5), Plan::Keep(_)));
        let silent = [view("Server0", Some(900), false)];
        assert!(matches!(plan(1, 900, &silent, 10, 1_000), Plan::Keep(_)));
        assert!(matches!(plan(1, 900, &[], 10, 1_000), Plan::Keep(_)));
        // The stream lost entries a replica applied: leave it alone.
        let ahead = [view("Server0", Some(950), true)];
        assert!(matches!(plan(1, 900, &ahead, 10, 1_000), Plan::Keep(_)));
    }
}
