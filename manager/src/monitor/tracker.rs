//! The monitor's per-server decisions, as a state machine without I/O: fed what each round of
//! heartbeats heard and the time, it says which servers changed health, which are dead, and
//! whether a dead one may be respawned now. [`super::run`] does the talking (heartbeats,
//! metadata, elections, the runtime); this module is what its timing tests exercise.
//!
//! Time is [`tokio::time::Instant`], so tests drive it with tokio's paused clock.

use std::collections::HashMap;
use std::time::Duration;

use shardline::internal::Heartbeat;
use shardline::meta::Health;
use shardline::names::{ServerName, ShardId};
use shardline::Term;
use tokio::time::Instant;

use super::Settings;

/// What one round heard from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// It answered its heartbeat; `recovering` if any of its replicas is catching up.
    Answered { recovering: bool },
    /// No answer in time; `gone` if its process (container) no longer exists.
    Silent { gone: bool },
}

/// One server as one round saw it: its health in the metadata and what it said.
#[derive(Debug, Clone)]
pub struct Sighting {
    pub name: ServerName,
    pub health: Health,
    pub heard: Heard,
}

/// The decisions of one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Health to record in the metadata.
    pub changes: Vec<(ServerName, Health)>,
    /// Servers that missed `dead_after` heartbeats (or whose process is gone): candidates for
    /// a respawn, if their process is not merely paused or hung.
    pub dead: Vec<ServerName>,
}

/// Whether a dead server may be respawned now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Respawn {
    /// Respawn it; [`Tracker::respawned`] once that finished.
    Go,
    /// Not yet: backing off after the last respawn.
    Wait,
    /// It died `max_respawns` times within `respawn_window`: mark it failed, leave it alone.
    Fail,
}

/// The first respawn waits this long after the last one; each further one within the window
/// twice as long (up to 64 times).
const BACKOFF_BASE: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
struct Watch {
    misses: u32,
    respawning: bool,
    respawns: Vec<Instant>,
    down_since: Option<Instant>,
}

/// One shard's primary as a round saw it.
#[derive(Debug, Clone)]
pub struct PrimarySighting<'a> {
    pub shard: ShardId,
    pub primary: ServerName,
    /// The shard's term in the metadata.
    pub term: Term,
    /// The primary's heartbeat this round (`None`: silent; the misses count handles that).
    pub beat: Option<&'a Heartbeat>,
}

/// Why a primary that still answers its heartbeat is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// Its oldest write has waited longer than the commit-stall limit.
    Stalled { ms: u64 },
    /// It has reported no NATS connection for longer than the limit.
    NatsLost,
    /// It has applied a term other than the metadata's for longer than the limit.
    WrongTerm { applied: Term, metadata: Term },
}

/// A primary's problem and since when it has been seen (continuously).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    NatsLost,
    WrongTerm(Term, Term),
}

/// What the monitor remembers of each server between rounds.
#[derive(Debug)]
pub struct Tracker {
    dead_after: u32,
    max_respawns: usize,
    respawn_window: Duration,
    commit_stall: Duration,
    watches: HashMap<ServerName, Watch>,
    /// Per shard: its primary, the problem seen and since when.
    problems: HashMap<ShardId, (ServerName, Problem, Instant)>,
}

impl Tracker {
    pub fn new(settings: &Settings) -> Tracker {
        Tracker {
            dead_after: settings.dead_after,
            max_respawns: settings.max_respawns,
            respawn_window: settings.respawn_window,
            commit_stall: settings.commit_stall,
            watches: HashMap::new(),
            problems: HashMap::new(),
        }
    }

    /// Judges each shard's primary from its heartbeat: one whose writes have been stalled
    /// past the commit-stall limit is unfit at once (the stall is measured by the server);
    /// one without NATS, or that applied another term than the metadata's, is unfit once that
    /// has lasted the limit (a NATS reconnect or a marker being applied take a moment).
    pub fn primaries<'a>(
        &mut self,
        now: Instant,
        seen: impl IntoIterator<Item = PrimarySighting<'a>>,
    ) -> Vec<(ShardId, ServerName, Unfit)> {
        let mut unfit = Vec::new();
        let mut still = HashMap::new();
        for p in seen {
            let Some(beat) = p.beat else { continue };
            let progress = beat.shards.get(&p.shard);
            let stalled = progress.and_then(|g| g.stalled_ms);
            if let Some(ms) = stalled.filter(|ms| *ms > self.commit_stall.as_millis() as u64) {
                unfit.push((p.shard, p.primary, Unfit::Stalled { ms }));
                continue;
            }
            let problem = if !beat.nats_connected {
                Problem::NatsLost
            } else if let Some(applied) = progress
                // A primary still catching up (a respawned sole replica) reaches its term
                // when it has replayed the log; there is nobody better to elect meanwhile.
                .filter(|g| !g.recovering)
                .map(|g| g.term)
                .filter(|t| *t != p.term)
            {
                Problem::WrongTerm(applied, p.term)
            } else {
                continue;
            };
            let since = match self.problems.get(&p.shard) {
                Some((who, was, since)) if *who == p.primary && *was == problem => *since,
                _ => now,
            };
            if now.saturating_duration_since(since) >= self.commit_stall {
                let why = match problem {
                    Problem::NatsLost => Unfit::NatsLost,
                    Problem::WrongTerm(applied, metadata) => Unfit::WrongTerm { applied, metadata },
                };
                unfit.push((p.shard, p.primary, why));
            } else {
                still.insert(p.shard, (p.primary, problem, since));
            }
        }
        // A problem not seen this round (or acted on) starts from zero next time.
        self.problems = still;
        unfit
    }

    /// Takes one round of heartbeats over every server in the metadata (servers not in it
    /// are forgotten). Servers being respawned or marked failed are left alone.
    pub fn round(&mut self, now: Instant, seen: impl IntoIterator<Item = Sighting>) -> Verdict {
        let seen: Vec<Sighting> = seen.into_iter().collect();
        self.watches
            .retain(|n, _| seen.iter().any(|s| &s.name == n));
        let mut verdict = Verdict::default();
        for Sighting {
            name,
            health,
            heard,
        } in seen
        {
            let w = self.watches.entry(name.clone()).or_default();
            if w.respawning || health == Health::Failed {
                continue;
            }
            match heard {
                Heard::Answered { recovering } => {
                    w.misses = 0;
                    let now_health = if recovering {
                        Health::Recovering
                    } else {
                        Health::Up
                    };
                    if now_health != health {
                        if let Some(since) = w.down_since.take() {
                            let down_ms = now.saturating_duration_since(since).as_millis() as u64;
                            tracing::info!(server = %name, down_ms, "server is back");
                        }
                        verdict.changes.push((name, now_health));
                    }
                }
                Heard::Silent { gone } => {
                    metrics::counter!(crate::metrics::HEARTBEAT_FAILURES, "server" => name.to_string()).increment(1);
                    w.misses += 1;
                    // A server whose process is gone is dead now: more misses only guard
                    // against a busy or briefly unreachable server.
                    if gone {
                        w.misses = w.misses.max(self.dead_after);
                    }
                    if w.misses >= self.dead_after && health != Health::Down {
                        tracing::warn!(server = %name, misses = w.misses, "server missed its heartbeats: down");
                        w.down_since = Some(now);
                        verdict.changes.push((name.clone(), Health::Down));
                    }
                    if w.misses >= self.dead_after {
                        verdict.dead.push(name);
                    }
                }
            }
        }
        verdict
    }

    /// Decides whether the dead server `name`, whose process is gone, is respawned now; on
    /// [`Respawn::Go`] it counts the respawn and leaves the server alone until
    /// [`Tracker::respawned`].
    pub fn respawn(&mut self, name: &ServerName, now: Instant) -> Respawn {
        let window = self.respawn_window;
        let w = self.watches.entry(name.clone()).or_default();
        w.respawns
            .retain(|t| now.saturating_duration_since(*t) < window);
        // Back off: wait longer before each further respawn within the window.
        let delay = BACKOFF_BASE * (1u32 << w.respawns.len().min(6));
        if w.respawns.len() >= self.max_respawns {
            Respawn::Fail
        } else if (w.respawns.last()).is_some_and(|t| now.saturating_duration_since(*t) < delay) {
            Respawn::Wait
        } else {
            w.respawns.push(now);
            w.respawning = true;
            Respawn::Go
        }
    }

    /// A respawn finished, successfully or not: heartbeats judge the server again, from zero
    /// misses.
    pub fn respawned(&mut self, name: &ServerName) {
        if let Some(w) = self.watches.get_mut(name) {
            w.respawning = false;
            w.misses = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const INTERVAL: Duration = Duration::from_millis(300);

    fn settings() -> Settings {
        Settings {
            interval: INTERVAL,
            timeout: Duration::from_millis(250),
            dead_after: 3,
            max_respawns: 3,
            respawn_window: Duration::from_secs(300),
            commit_stall: STALL,
        }
    }

    const STALL: Duration = Duration::from_millis(2000);

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    fn saw(n: &ServerName, health: Health, heard: Heard) -> Sighting {
        Sighting {
            name: n.clone(),
            health,
            heard,
        }
    }

    const SILENT: Heard = Heard::Silent { gone: false };
    const GONE: Heard = Heard::Silent { gone: true };
    const UP: Heard = Heard::Answered { recovering: false };
    const CATCHING_UP: Heard = Heard::Answered { recovering: true };

    /// One round a heartbeat interval after the previous one.
    async fn round(t: &mut Tracker, seen: Vec<Sighting>) -> Verdict {
        advance(INTERVAL).await;
        t.round(Instant::now(), seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_is_down_after_dead_after_misses_in_a_row() {
        let mut t = Tracker::new(&settings());
        let s = name("S1");
        for _ in 0..2 {
            let v = round(&mut t, vec![saw(&s, Health::Up, SILENT)]).await;
            assert_eq!(v, Verdict::default(), "down too early");
        }
        let v = round(&mut t, vec![saw(&s, Health::Up, SILENT)]).await;
        assert_eq!(v.changes, [(s.clone(), Health::Down)]);
        assert_eq!(v.dead, std::slice::from_ref(&s));
        // Down already: no second change, but still dead (a respawn candidate).
        let v = round(&mut t, vec![saw(&s, Health::Down, SILENT)]).await;
        assert!(v.changes.is_empty());
        assert_eq!(v.dead, [s]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_starts_the_count_again() {
        let mut t = Tracker::new(&settings());
        let s = name("S1");
        for heard in [SILENT, SILENT, UP, SILENT, SILENT] {
            let v = round(&mut t, vec![saw(&s, Health::Up, heard)]).await;
            assert_eq!(v, Verdict::default(), "after {heard:?}");
        }
        let v = round(&mut t, vec![saw(&s, Health::Up, SILENT)]).await;
        assert_eq!(v.dead, [s]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_whose_process_is_gone_is_dead_at_once() {
        let mut t = Tracker::new(&settings());
        let (gone, slow) = (name("S1"), name("S2"));
        let v = round(
            &mut t,
            vec![saw(&gone, Health::Up, GONE), saw(&slow, Health::Up, SILENT)],
        )
        .await;
        assert_eq!(v.changes, [(gone.clone(), Health::Down)]);
        assert_eq!(v.dead, [gone]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_comes_back_is_marked_recovering_then_up() {
        let mut t = Tracker::new(&settings());
        let s = name("S1");
        let v = round(&mut t, vec![saw(&s, Health::Up, GONE)]).await;
        assert_eq!(v.changes, [(s.clone(), Health::Down)]);
        let v = round(&mut t, vec![saw(&s, Health::Down, CATCHING_UP)]).await;
        assert_eq!(v.changes, [(s.clone(), Health::Recovering)]);
        assert!(v.dead.is_empty());
        let v = round(&mut t, vec![saw(&s, Health::Recovering, UP)]).await;
        assert_eq!(v.changes, [(s.clone(), Health::Up)]);
        // Up and answering: nothing to record.
        let v = round(&mut t, vec![saw(&s, Health::Up, UP)]).await;
        assert_eq!(v, Verdict::default());
        // Straight from down to up when it answers caught up.
        round(&mut t, vec![saw(&s, Health::Up, GONE)]).await;
        let v = round(&mut t, vec![saw(&s, Health::Down, UP)]).await;
        assert_eq!(v.changes, [(s, Health::Up)]);
    }

    #[tokio::test(start_paused = true)]
    async fn respawns_back_off_and_a_server_that_keeps_dying_fails() {
        let mut t = Tracker::new(&settings());
        let s = name("S1");
        round(&mut t, vec![saw(&s, Health::Up, GONE)]).await;
        assert_eq!(t.respawn(&s, Instant::now()), Respawn::Go);
        // While it is being respawned, rounds leave it alone.
        let v = round(&mut t, vec![saw(&s, Health::Down, GONE)]).await;
        assert_eq!(v, Verdict::default());
        t.respawned(&s);

        // It dies again at once: the second respawn waits 400 ms after the first, the
        // third 800 ms after the second. Each loop starts an interval after the last respawn.
        for delay in [400, 800] {
            let v = t.round(Instant::now(), vec![saw(&s, Health::Down, GONE)]);
            assert_eq!(v.dead, std::slice::from_ref(&s));
            assert_eq!(t.respawn(&s, Instant::now()), Respawn::Wait);
            advance(Duration::from_millis(delay - 301)).await;
            assert_eq!(t.respawn(&s, Instant::now()), Respawn::Wait);
            advance(Duration::from_millis(1)).await;
            assert_eq!(
                t.respawn(&s, Instant::now()),
                Respawn::Go,
                "after {delay} ms"
            );
            t.respawned(&s);
            advance(INTERVAL).await;
        }

        // A fourth death within the window: failed, whatever the back-off.
        advance(Duration::from_secs(10)).await;
        assert_eq!(t.respawn(&s, Instant::now()), Respawn::Fail);
        // Marked failed, it is left alone.
        let v = round(&mut t, vec![saw(&s, Health::Failed, GONE)]).await;
        assert_eq!(v, Verdict::default());
    }

    #[tokio::test(start_paused = true)]
    async fn respawns_older_than_the_window_are_forgotten() {
        let mut t = Tracker::new(&settings());
        let s = name("S1");
        for _ in 0..3 {
            round(&mut t, vec![saw(&s, Health::Down, GONE)]).await;
            advance(Duration::from_secs(2)).await;
            assert_eq!(t.respawn(&s, Instant::now()), Respawn::Go);
            t.respawned(&s);
        }
        assert_eq!(t.respawn(&s, Instant::now()), Respawn::Fail);
        // The respawns were 2.3 s apart; the first leaves the window 300 s after it was made
        // (4.6 s ago): then one more is allowed.
        advance(Duration::from_millis(300_000 - 4_600 - 100)).await;
        assert_eq!(t.respawn(&s, Instant::now()), Respawn::Fail);
        advance(Duration::from_millis(100)).await;
        assert_eq!(t.respawn(&s, Instant::now()), Respawn::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn a_respawned_server_starts_from_zero_misses() {
        let mut t = Tracker::new(&settings());
        let s = name("S1");
        round(&mut t, vec![saw(&s, Health::Up, GONE)]).await;
        assert_eq!(t.respawn(&s, Instant::now()), Respawn::Go);
        t.respawned(&s);
        // Slow to answer after its respawn: not dead before `dead_after` misses.
        for _ in 0..2 {
            let v = round(&mut t, vec![saw(&s, Health::Recovering, SILENT)]).await;
            assert_eq!(v, Verdict::default());
        }
        let v = round(&mut t, vec![saw(&s, Health::Recovering, SILENT)]).await;
        assert_eq!(v.changes, [(s.clone(), Health::Down)]);
    }

    #[tokio::test(start_paused = true)]
    async fn servers_leaving_the_metadata_are_forgotten() {
        let mut t = Tracker::new(&settings());
        let (s1, s2) = (name("S1"), name("S2"));
        round(&mut t, vec![saw(&s1, Health::Up, SILENT)]).await;
        round(&mut t, vec![saw(&s1, Health::Up, SILENT)]).await;
        round(&mut t, vec![saw(&s2, Health::Up, UP)]).await;
        // Back under the same name: a new server, with no misses counted.
        let v = round(&mut t, vec![saw(&s1, Health::Up, SILENT)]).await;
        assert_eq!(v, Verdict::default());
    }

    fn beat(nats_connected: bool, term: u64, stalled_ms: Option<u64>) -> Heartbeat {
        Heartbeat {
            server: name("S1"),
            shards: [(
                ShardId::parse("sh1").unwrap(),
                shardline::internal::ReplicaProgress {
                    applied: shardline::Seq(5),
                    term: Term(term),
                    recovering: false,
                    stale_ms: None,
                    stalled_ms,
                    fault: None,
                    log_id: None,
                },
            )]
            .into(),
            nats_connected,
        }
    }

    /// One round a heartbeat interval after the previous one, judging sh1's primary S1 at
    /// metadata term 2.
    async fn judge(t: &mut Tracker, b: &Heartbeat) -> Vec<Unfit> {
        advance(INTERVAL).await;
        let seen = PrimarySighting {
            shard: ShardId::parse("sh1").unwrap(),
            primary: name("S1"),
            term: Term(2),
            beat: Some(b),
        };
        (t.primaries(Instant::now(), [seen]).into_iter())
            .map(|(_, _, why)| why)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_healthy_primary_or_a_short_stall_is_kept() {
        let mut t = Tracker::new(&settings());
        for b in [beat(true, 2, None), beat(true, 2, Some(2000))] {
            for _ in 0..20 {
                assert_eq!(judge(&mut t, &b).await, []);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_stalled_past_the_limit_is_replaced_at_once() {
        let mut t = Tracker::new(&settings());
        let b = beat(true, 2, Some(2001));
        assert_eq!(judge(&mut t, &b).await, [Unfit::Stalled { ms: 2001 }]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_without_nats_is_replaced_once_that_lasted_the_limit() {
        let mut t = Tracker::new(&settings());
        let cut = beat(false, 2, None);
        // 300 ms rounds: the first sighting starts the clock; replaced 2 s after it.
        let first = judge(&mut t, &cut).await;
        assert_eq!(first, []);
        for _ in 0..5 {
            assert_eq!(judge(&mut t, &cut).await, []);
        }
        advance(STALL - INTERVAL * 6).await;
        assert_eq!(judge(&mut t, &cut).await, [Unfit::NatsLost]);
        // A reconnect in between starts the count again.
        let mut t = Tracker::new(&settings());
        for _ in 0..5 {
            assert_eq!(judge(&mut t, &cut).await, []);
        }
        assert_eq!(judge(&mut t, &beat(true, 2, None)).await, []);
        for _ in 0..6 {
            assert_eq!(judge(&mut t, &cut).await, []);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_primary_at_another_term_than_the_metadata_is_replaced_after_the_limit() {
        let mut t = Tracker::new(&settings());
        // Applied a newer marker the metadata lacks (or has not applied its own yet).
        for applied in [3, 1] {
            let b = beat(true, applied, None);
            let mut rounds = 0;
            let unfit = loop {
                rounds += 1;
                let u = judge(&mut t, &b).await;
                if !u.is_empty() || rounds > 20 {
                    break u;
                }
            };
            let want = Unfit::WrongTerm {
                applied: Term(applied),
                metadata: Term(2),
            };
            assert_eq!(unfit, [want]);
            // The first sighting starts the clock: 2 s later, at the 8th round of 300 ms.
            assert_eq!(rounds, 8, "applied term {applied}");
        }
    }
}
