//! Failure detection and repair: heartbeats every server, marks it down after a few misses,
//! elects new primaries for the shards it led, and respawns it through the runtime when its
//! process is gone (a paused or hung process is fenced by the election, not killed).
//! Respawns back off; a server that keeps dying is marked `failed` and left alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline::meta::Health;
use shardline::names::ServerName;

use crate::cluster::Cluster;
use crate::runtime::Runtime;

#[derive(Debug, Clone)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive missed heartbeats after which a server is dead.
    pub dead_after: u32,
    /// Respawns allowed within `respawn_window` before the server is marked failed.
    pub max_respawns: usize,
    pub respawn_window: Duration,
}

#[derive(Default)]
struct Watch {
    misses: u32,
    respawning: bool,
    respawns: Vec<Instant>,
    down_since: Option<Instant>,
}

pub async fn run<R: Runtime>(cluster: Arc<Cluster<R>>, settings: Settings) {
    let state: Arc<Mutex<HashMap<ServerName, Watch>>> = Arc::default();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = round(&cluster, &settings, &state).await {
            tracing::warn!(error = %e, "monitor round failed");
        }
    }
}

async fn round<R: Runtime>(
    cluster: &Arc<Cluster<R>>,
    settings: &Settings,
    state: &Arc<Mutex<HashMap<ServerName, Watch>>>,
) -> Result<(), shardline::ApiError> {
    let Some(meta) = cluster.meta.get().await else {
        return Ok(());
    };
    let beats = futures::future::join_all(meta.servers.iter().map(|(name, sv)| async move {
        let beat = cluster.heartbeat(name, &sv.addr, settings.timeout).await;
        // A server whose process (container) is gone is dead now: no need to wait for more
        // misses, which only guard against a busy or briefly unreachable server. This also
        // makes a restarted manager (`make run` after `make stop`) respawn at once.
        let gone = beat.is_none() && !cluster.runtime.is_alive(name).await;
        (name.clone(), sv.health, beat, gone)
    }))
    .await;
    crate::metrics::record_progress(
        beats
            .iter()
            .filter_map(|(n, _, b, _)| Some((n.as_str(), b.as_ref()?))),
    );

    let mut changes: Vec<(ServerName, Health)> = Vec::new();
    let mut respawn = Vec::new();
    {
        let mut st = lock(state);
        st.retain(|n, _| meta.servers.contains_key(n));
        for (name, health, beat, gone) in beats {
            let w = st.entry(name.clone()).or_default();
            if w.respawning || health == Health::Failed {
                continue;
            }
            match beat {
                Some(b) => {
                    w.misses = 0;
                    let recovering = b.shards.values().any(|s| s.recovering);
                    let now = if recovering {
                        Health::Recovering
                    } else {
                        Health::Up
                    };
                    if now != health {
                        if let Some(since) = w.down_since.take() {
                            tracing::info!(server = %name, down_ms = since.elapsed().as_millis() as u64, "server is back");
                        }
                        changes.push((name, now));
                    }
                }
                None => {
                    metrics::counter!(crate::metrics::HEARTBEAT_FAILURES, "server" => name.to_string()).increment(1);
                    w.misses += 1;
                    if gone {
                        w.misses = w.misses.max(settings.dead_after);
                    }
                    if w.misses >= settings.dead_after && health != Health::Down {
                        tracing::warn!(server = %name, misses = w.misses, "server missed its heartbeats: down");
                        w.down_since = Some(Instant::now());
                        changes.push((name.clone(), Health::Down));
                    }
                    if w.misses >= settings.dead_after {
                        respawn.push(name);
                    }
                }
            }
        }
    }
    for (name, health) in &changes {
        cluster
            .set_health(std::slice::from_ref(name), *health)
            .await?;
    }

    // Elect wherever the primary is missing or not up.
    if let Some(meta) = cluster.meta.get().await {
        for s in &meta.shards {
            let primary_ok = s
                .primary
                .as_ref()
                .and_then(|p| meta.servers.get(p))
                .is_some_and(|sv| matches!(sv.health, Health::Up | Health::Recovering));
            if !primary_ok {
                if let Err(e) = cluster.elect(&s.id, &[]).await {
                    tracing::warn!(shard = %s.id, error = %e, "election failed");
                }
            }
        }
    }

    for name in respawn {
        if cluster.runtime.is_alive(&name).await {
            continue; // paused or hung: fenced by the election; it rejoins when it answers
        }
        enum Next {
            Fail,
            Wait,
            Respawn,
        }
        let next = {
            let mut st = lock(state);
            let w = st.entry(name.clone()).or_default();
            w.respawns.retain(|t| t.elapsed() < settings.respawn_window);
            // Back off: wait longer before each further respawn within the window.
            let delay = Duration::from_millis(200) * (1u32 << w.respawns.len().min(6));
            if w.respawns.len() >= settings.max_respawns {
                Next::Fail
            } else if w.respawns.last().is_some_and(|t| t.elapsed() < delay) {
                Next::Wait
            } else {
                w.respawns.push(Instant::now());
                w.respawning = true;
                Next::Respawn
            }
        };
        match next {
            Next::Wait => continue,
            Next::Fail => {
                tracing::error!(server = %name, respawns = settings.max_respawns, "server keeps dying; marked failed");
                cluster
                    .set_health(std::slice::from_ref(&name), Health::Failed)
                    .await?;
                continue;
            }
            Next::Respawn => {}
        }
        let cluster = cluster.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = respawn_one(&cluster, &name).await;
            match &result {
                Ok(()) => {
                    tracing::info!(server = %name, elapsed_ms = started.elapsed().as_millis() as u64, "respawned and caught up")
                }
                Err(e) => tracing::warn!(server = %name, error = %e, "respawn failed"),
            }
            if let Some(w) = lock(&state).get_mut(&name) {
                w.respawning = false;
                w.misses = 0;
            }
        });
    }
    Ok(())
}

async fn respawn_one<R: Runtime>(cluster: &Cluster<R>, name: &ServerName) -> anyhow::Result<()> {
    tracing::info!(server = %name, "respawning");
    metrics::counter!(crate::metrics::RESPAWNS, "server" => name.to_string()).increment(1);
    let addr = cluster.runtime.spawn(name).await?;
    let present = cluster
        .meta
        .update(|m| {
            let mut m = m.ok_or_else(crate::cluster::not_configured)?;
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
        cluster.runtime.remove(name).await?;
        anyhow::bail!("removed from the cluster while being respawned; the new process is stopped");
    }
    cluster.bring_up(vec![name.clone()]).await?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
