//! Failure detection and repair: heartbeats every server, marks it down after a few misses,
//! elects new primaries for the shards it led, and respawns it through the runtime when its
//! process is gone (a paused or hung process is fenced by the election, not killed).
//! Respawns back off; a server that keeps dying is marked `failed` and left alone. A primary
//! that answers but cannot commit (stalled writes, no NATS, stuck at another term than the
//! metadata's) is replaced too. Rounds run only on the manager holding the lease; on
//! becoming active, and when a replica reports a term above the metadata's, the metadata is
//! reconciled with the streams' latest markers.
//!
//! [`run`] does the I/O of each round; [`tracker::Tracker`] makes the per-server decisions
//! (misses, down, back, respawn back-off, failed) and judges the primaries, from what the
//! round heard and the time.

pub mod tracker;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use shardline::internal::Heartbeat;
use shardline::meta::Health;
use shardline::names::ServerName;
use shardline::ApiError;
use tokio::task::{self, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::control_plane::{not_configured, ControlPlane};
use crate::runtime::Runtime;
use tracker::{Heard, PrimarySighting, Respawn, Sighting, Tracker, Unfit};

#[derive(Debug, Clone)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive missed heartbeats after which a server is dead.
    pub dead_after: u32,
    /// Respawns allowed within `respawn_window` before the server is marked failed.
    pub max_respawns: usize,
    pub respawn_window: Duration,
    /// A primary stalled (or without NATS, or at another term than the metadata's) this
    /// long is replaced.
    pub commit_stall: Duration,
}

/// Respawns in flight, each answering with the name of its server.
#[derive(Default)]
struct Respawns {
    tasks: JoinSet<ServerName>,
    names: HashMap<task::Id, ServerName>,
}

impl Respawns {
    /// The server whose respawn finished next (a respawn that panicked still names its server).
    async fn finished(&mut self) -> Option<ServerName> {
        let (id, name) = match self.tasks.join_next_with_id().await? {
            Ok((id, name)) => (id, Some(name)),
            Err(e) => {
                tracing::error!(error = %e, "respawn task failed");
                (e.id(), None)
            }
        };
        let known = self.names.remove(&id);
        name.or(known)
    }
}

/// Heartbeats every server each `interval` until `stop` is cancelled, then waits for the
/// respawns in flight to notice and stop.
pub async fn run<R: Runtime>(
    control: Arc<ControlPlane<R>>,
    settings: Settings,
    stop: CancellationToken,
) {
    let mut tracker = Tracker::new(&settings);
    let mut respawns = Respawns::default();
    // Whether the last round ran as the active manager: on becoming active, forget what was
    // tracked before and reconcile every shard with its stream (until that succeeded).
    let mut active = false;
    let mut reconcile_all = true;
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(name) = respawns.finished() => tracker.respawned(&name),
            _ = tick.tick() => {
                // Only the lease holder acts; a standby just waits for the lease.
                if control.lease.check().is_err() {
                    active = false;
                    continue;
                }
                if !active {
                    tracker = Tracker::new(&settings);
                    reconcile_all = true;
                    active = true;
                }
                let round = round(&control, &settings, &mut tracker, &mut respawns, &stop, &mut reconcile_all);
                tokio::select! {
                    () = stop.cancelled() => break,
                    result = round => {
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "monitor round failed");
                        }
                    }
                }
            }
        }
    }
    while respawns.tasks.join_next().await.is_some() {}
}

async fn round<R: Runtime>(
    control: &Arc<ControlPlane<R>>,
    settings: &Settings,
    tracker: &mut Tracker,
    respawns: &mut Respawns,
    stop: &CancellationToken,
    reconcile_all: &mut bool,
) -> Result<(), ApiError> {
    // Re-read: another manager may have written since this one last looked.
    let Some(meta) = control.meta.fresh().await? else {
        return Ok(());
    };
    let beats = futures::future::join_all(meta.servers.iter().map(|(name, sv)| async move {
        let beat = control
            .client
            .heartbeat(name, &sv.addr, settings.timeout)
            .await;
        // A server whose process (container) is gone is dead now: no need to wait for more
        // misses. This also makes a restarted manager (`make run` after `make stop`) respawn
        // at once.
        let gone = beat.is_none() && !control.runtime.is_alive(name).await;
        (name.clone(), sv.health, beat, gone)
    }))
    .await;
    crate::metrics::record_progress(
        beats
            .iter()
            .filter_map(|(n, _, b, _)| Some((n.as_str(), b.as_ref()?))),
    );
    let seen = beats.iter().map(|(name, health, beat, gone)| Sighting {
        name: name.clone(),
        health: *health,
        heard: heard(beat.as_ref(), *gone),
    });
    let verdict = tracker.round(Instant::now(), seen);
    for (name, health) in &verdict.changes {
        control
            .set_health(std::slice::from_ref(name), *health)
            .await?;
    }
    let beats: BTreeMap<ServerName, Heartbeat> = (beats.into_iter())
        .filter_map(|(name, _, beat, _)| Some((name, beat?)))
        .collect();

    // A marker the metadata lacks (an election interrupted between the two): on becoming
    // active look at every stream; afterwards whenever a replica reports a term above the
    // metadata's (it applied such a marker).
    let mut reconciled = true;
    for s in &meta.shards {
        let ahead = meta
            .replicas(s.id.as_str())
            .filter_map(|r| beats.get(r)?.shards.get(&s.id))
            .any(|p| p.term > s.term);
        if *reconcile_all || ahead {
            if let Err(e) = control.reconcile(&s.id, &beats).await {
                tracing::warn!(shard = %s.id, error = %e, "reconciling with the stream failed");
                reconciled = false;
            }
        }
    }
    *reconcile_all &= !reconciled;

    // A stream that lost entries its replicas applied: freeze the shard, then recover it.
    control.log_faults(&meta, &beats).await;

    let Some(meta) = control.meta.get().await else {
        return Ok(());
    };
    // Primaries that answer but cannot commit (stalled, cut off from NATS, stuck at another
    // term) are replaced by a replica that can.
    let unfit = tracker.primaries(
        Instant::now(),
        meta.shards.iter().filter_map(|s| {
            if s.fault.is_some() {
                return None; // frozen: no elections until recovered
            }
            let primary = s.primary.clone()?;
            Some(PrimarySighting {
                shard: s.id.clone(),
                beat: beats.get(&primary),
                primary,
                term: s.term,
            })
        }),
    );
    for (shard, primary, why) in &unfit {
        tracing::warn!(shard = %shard, primary = %primary, reason = ?why, "primary cannot commit; replacing it");
        // Another server if one can take over; for a primary at the wrong term, itself again
        // (with a new marker) if it is the only one.
        let mut elected = control.elect(shard, std::slice::from_ref(primary)).await;
        if matches!(why, Unfit::WrongTerm { .. }) && !matches!(elected, Ok(Some(_))) {
            elected = control.elect(shard, &[]).await;
        }
        if let Err(e) = elected {
            tracing::warn!(shard = %shard, error = %e, "replacing the primary failed");
        }
    }

    // Elect wherever the primary is missing or not up.
    if let Some(meta) = control.meta.get().await {
        for s in &meta.shards {
            let primary_ok = s
                .primary
                .as_ref()
                .and_then(|p| meta.servers.get(p))
                .is_some_and(|sv| matches!(sv.health, Health::Up | Health::Recovering));
            if !primary_ok && s.fault.is_none() {
                if let Err(e) = control.elect(&s.id, &[]).await {
                    tracing::warn!(shard = %s.id, error = %e, "election failed");
                }
            }
        }
    }

    for name in verdict.dead {
        if control.runtime.is_alive(&name).await {
            continue; // paused or hung: fenced by the election; it rejoins when it answers
        }
        match tracker.respawn(&name, Instant::now()) {
            Respawn::Wait => continue,
            Respawn::Fail => {
                tracing::error!(server = %name, respawns = settings.max_respawns, "server keeps dying; marked failed");
                control
                    .set_health(std::slice::from_ref(&name), Health::Failed)
                    .await?;
                continue;
            }
            Respawn::Go => {}
        }
        let control = control.clone();
        let stop = stop.clone();
        let server = name.clone();
        let handle = respawns.tasks.spawn(async move {
            let started = Instant::now();
            tokio::select! {
                // Shutting down: the respawned server is stopped with the others, or keeps
                // running for the next manager, which finds it up or respawns it again.
                () = stop.cancelled() => {
                    tracing::info!(server = %server, "respawn interrupted by shutdown");
                }
                result = respawn_one(&control, &server) => match result {
                    Ok(()) => {
                        tracing::info!(server = %server, elapsed_ms = started.elapsed().as_millis() as u64, "respawned and caught up")
                    }
                    Err(e) => tracing::warn!(server = %server, error = %e, "respawn failed"),
                },
            }
            server
        });
        respawns.names.insert(handle.id(), name);
    }
    Ok(())
}

/// What a heartbeat (or its absence) says about a server.
fn heard(beat: Option<&Heartbeat>, gone: bool) -> Heard {
    match beat {
        Some(b) => Heard::Answered {
            recovering: b.shards.values().any(|s| s.recovering),
        },
        None => Heard::Silent { gone },
    }
}

async fn respawn_one<R: Runtime>(
    control: &ControlPlane<R>,
    name: &ServerName,
) -> anyhow::Result<()> {
    tracing::info!(server = %name, "respawning");
    metrics::counter!(crate::metrics::RESPAWNS, "server" => name.to_string()).increment(1);
    let addr = control.runtime.spawn(name).await?;
    let present = control
        .meta
        .update(|m| {
            let mut m = m.ok_or_else(not_configured)?;
            let present = match m.servers.get_mut(name) {
                Some(s) => {
                    s.addr = addr.clone();
                    s.health = Health::Recovering;
                    true
                }
                None => false,
            };
            Ok((Some(m), present))
        })
        .await?;
    if !present {
        // `/rm` took the server out while it was being respawned (its runtime.remove may
        // have run before this spawn): the new process belongs to no cluster.
        control.runtime.remove(name).await?;
        anyhow::bail!("removed from the cluster while being respawned; the new process is stopped");
    }
    control.bring_up(vec![name.clone()]).await?;
    Ok(())
}
