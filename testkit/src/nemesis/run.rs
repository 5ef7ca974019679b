//! One nemesis scenario end to end: cluster up, load, fault, heal, checks, one-line report.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::checker::{violation_window, Op, RegOp, RegRet, Status};
use super::faults::{self, Fault as Guard};
use super::workload::{shard_of, Recorder};
use crate::docker::DockerCluster;

/// A link the nemesis can cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// sh1's primary ↔ NATS.
    ServerNats,
    /// gateway ↔ sh1's primary.
    GatewayServer,
    /// manager ↔ NATS.
    ManagerNats,
    /// manager ↔ sh1's primary.
    ManagerServer,
}

/// The fault of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillPrimary,
    PausePrimary,
    PauseSecondary,
    Partition(Link),
    /// The manager dies at `election.after_marker` during an election, then restarts.
    ManagerFailpoint,
    /// A second manager runs next to the first.
    TwoManagers,
    /// One node of the 3-node NATS cluster restarts.
    NatsRestart,
    /// The NATS node sh1's primary uses is cut from the other two (its clients stay on it).
    NatsIsolate,
    /// That node and every component connected to it are cut from the other two NATS nodes.
    NatsMinority,
}

impl Fault {
    /// Whether the scenario runs on the 3-node NATS cluster profile.
    fn nats_cluster(self) -> bool {
        matches!(
            self,
            Fault::NatsRestart | Fault::NatsIsolate | Fault::NatsMinority
        )
    }
}

/// Durations of a run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub seed: u64,
    /// Load before the fault.
    pub before: Duration,
    /// How long the fault is held.
    pub fault: Duration,
    /// Load after the heal (at least; longer until a write succeeded, bounded by `recover`).
    pub after: Duration,
    pub recover: Duration,
    pub register_clients: usize,
    pub keys: usize,
}

impl Settings {
    /// Short runs, or `SHARDLINE_NEMESIS_SECS` seconds of fault per scenario.
    pub fn from_env(seed: u64) -> Settings {
        let secs: u64 = std::env::var("SHARDLINE_NEMESIS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3)
            .clamp(1, 300);
        Settings {
            seed,
            before: Duration::from_secs(secs.div_ceil(2)),
            fault: Duration::from_secs(secs),
            after: Duration::from_secs(secs.div_ceil(2) + 1),
            recover: Duration::from_secs(30),
            register_clients: 4,
            keys: 8,
        }
    }
}

/// What a scenario found.
#[derive(Debug, Default)]
pub struct Report {
    pub name: String,
    pub faults: String,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Anomalies; empty = pass.
    pub violations: Vec<String>,
    /// Informational remarks (fallbacks, staleness).
    pub notes: Vec<String>,
    /// From the heal to the first successful write to the affected shard.
    pub recovery: Option<Duration>,
    pub max_stale: Option<Duration>,
    /// The shortest failing history window, if any.
    pub window: Vec<Op>,
    /// Set when the scenario could not run (`SKIPPED: ...`).
    pub skipped: Option<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
    /// The one-line summary (plus the violation window, one op per line, when there is one).
    pub fn line(&self) -> String {
        if let Some(why) = &self.skipped {
            return format!("nemesis {}: SKIPPED: {why}", self.name);
        }
        let verdict = if self.passed() {
            "ok".to_string()
        } else {
            format!("VIOLATION: {}", self.violations.join("; "))
        };
        let rec = self.recovery.map_or("none within bound".into(), |d| {
            format!("{:.2}s", d.as_secs_f64())
        });
        let stale = self
            .max_stale
            .map_or("0".into(), |d| format!("{}ms", d.as_millis()));
        let mut s = format!(
            "nemesis {}: faults [{}]; ops ok {} / failed {} / unknown {}; checker: {verdict}; \
             recovery (first sh1 write after heal) {rec}; max any-read staleness {stale}",
            self.name, self.faults, self.ok, self.failed, self.unknown
        );
        for n in &self.notes {
            s.push_str(&format!("; {n}"));
        }
        for o in &self.window {
            s.push_str(&format!("\n    {o}"));
        }
        s
    }
}

/// Runs scenario `name` with `fault`; `None` when Docker tests cannot run here (the
/// `SKIPPED:` line is printed by [`DockerCluster::up`]).
pub async fn run(name: &str, fault: Fault, s: &Settings) -> Option<Report> {
    let c = DockerCluster::up(fault.nats_cluster()).await?;
    c.init(&crate::workload("a1")).await;
    let mut report = Report {
        name: name.into(),
        ..Report::default()
    };

    // What the fault needs, checked before any load.
    let sh1_primary = c.primaries().await.get("sh1").cloned().unwrap_or_default();
    let primary = c.server_container(&sh1_primary);
    let svc = |n: &str| c.service_container(n).unwrap_or_default();
    let (gateway, manager, nats) = (svc("gateway"), svc("manager"), svc("nats"));
    if let Fault::Partition(_) = fault {
        if let Err(e) = faults::iptables_usable(&primary) {
            report.notes.push(format!(
                "iptables unusable ({e}): whole-container disconnects"
            ));
        }
    }
    let rec = Recorder::new(
        &c.gateway_url(),
        s.keys,
        Duration::from_secs(3600),
        Duration::from_secs(4),
    );
    let mut tasks = Vec::new();
    for p in 0..s.register_clients {
        tasks.push(tokio::spawn(rec.clone().register_client(p, s.seed)));
    }
    tasks.push(tokio::spawn(rec.clone().set_client()));
    tasks.push(tokio::spawn(rec.clone().any_reader(s.seed)));
    tokio::time::sleep(s.before).await;

    // Inject, hold, heal.
    let fallback = !report.notes.is_empty();
    let cut = |a: &str, b: &str, label: &str| {
        if fallback {
            faults::disconnect(&c, a, label)
        } else {
            faults::partition(&c, a, b, label)
        }
    };
    let mut extra: Vec<Guard> = Vec::new();
    let injected: Result<Guard, String> = match fault {
        Fault::KillPrimary => faults::kill(&primary, &format!("{sh1_primary} (sh1 primary)")),
        Fault::PausePrimary => faults::pause(&primary, &format!("{sh1_primary} (sh1 primary)")),
        Fault::PauseSecondary => {
            let reps = c.replicas().await;
            let sec = reps
                .get("sh1")
                .into_iter()
                .flatten()
                .find(|r| **r != sh1_primary)
                .cloned();
            match sec {
                Some(sec) => {
                    faults::pause(&c.server_container(&sec), &format!("{sec} (sh1 secondary)"))
                }
                None => Err("sh1 has no secondary".into()),
            }
        }
        Fault::Partition(Link::ServerNats) => cut(
            &primary,
            &nats,
            &format!("{sh1_primary}(sh1 primary)<->nats"),
        ),
        Fault::Partition(Link::GatewayServer) => cut(
            &gateway,
            &primary,
            &format!("gateway<->{sh1_primary}(sh1 primary)"),
        ),
        Fault::Partition(Link::ManagerNats) => cut(&manager, &nats, "manager<->nats"),
        Fault::Partition(Link::ManagerServer) => cut(
            &manager,
            &primary,
            &format!("manager<->{sh1_primary}(sh1 primary)"),
        ),
        Fault::TwoManagers => faults::extra_manager(&c, "manager2", &[]),
        Fault::ManagerFailpoint => {
            manager_failpoint(&c, &manager, &primary, &sh1_primary, &mut extra).await
        }
        Fault::NatsRestart => {
            let node = svc("nats-2");
            faults::restart(&node, "nats-2 (one of 3 NATS nodes)")
        }
        Fault::NatsIsolate | Fault::NatsMinority => {
            let anchor = (format!("{sh1_primary}(sh1 primary)"), primary.clone());
            let mut comps = vec![
                ("gateway".to_string(), gateway.clone()),
                ("manager".to_string(), manager.clone()),
            ];
            let st = c.status().await;
            for s in st["health"].as_object().into_iter().flat_map(|h| h.keys()) {
                let label = if *s == sh1_primary { &anchor.0 } else { s };
                comps.push((label.clone(), c.server_container(s)));
            }
            faults::nats_split(&c, &comps, &anchor, fault == Fault::NatsMinority)
        }
    };
    let mut guard = match injected {
        Ok(g) => g,
        Err(e) => {
            rec.stop();
            report.skipped = Some(e);
            return Some(report);
        }
    };
    report.faults = guard.what.clone();
    // A killed or restarted process has nothing to heal: recovery counts from the fault.
    let injected_at = rec.now();
    tokio::time::sleep(s.fault).await;
    if fault == Fault::TwoManagers {
        if let Some(why) = two_managers_check(&c).await {
            rec.stop();
            report.skipped = Some(why);
            return Some(report);
        }
    }
    if let Err(e) = guard.heal() {
        report.violations.push(format!("heal failed: {e}"));
    }
    for mut g in extra.drain(..) {
        let _ = g.heal();
    }
    if fault == Fault::ManagerFailpoint {
        let _ = faults::restart(&manager, "manager");
    }
    let healed = match fault {
        Fault::KillPrimary | Fault::NatsRestart => injected_at,
        _ => rec.now(),
    };
    // Load after the heal: at least `after`, until a write to sh1 succeeded (bounded).
    let deadline = Instant::now() + s.recover;
    loop {
        let recovered = first_write_after(&rec, healed, "sh1");
        if (recovered.is_some() && rec.now() >= healed + s.after) || Instant::now() >= deadline {
            report.recovery = recovered;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rec.stop();
    for t in tasks {
        let _ = t.await;
    }
    if rec.linearizable_refused.load(Ordering::SeqCst) {
        report
            .notes
            .push("gateway refused `linearizable` (400): reads used `primary`".into());
    }
    judge(&c, &rec, &mut report).await;
    let after = c.primaries().await.get("sh1").cloned().unwrap_or_default();
    if after != sh1_primary {
        report
            .notes
            .push(format!("sh1 primary {sh1_primary} -> {after}"));
    }
    if !report.passed() {
        for n in ["manager", "gateway"] {
            eprintln!("--- {n}\n{}", faults::logs(&svc(n), 30));
        }
    }
    drop(guard);
    Some(report)
}

/// The first write to `shard` invoked after `t` that succeeded: its completion minus `t`.
fn first_write_after(rec: &Recorder, t: Duration, shard: &str) -> Option<Duration> {
    let reg = rec.register.lock().unwrap_or_else(|e| e.into_inner());
    let set = rec.set.lock().unwrap_or_else(|e| e.into_inner());
    let writes = reg
        .iter()
        .filter(|o| o.op != RegOp::Read && o.status == Status::Ok)
        .filter(|o| matches!(o.ret, Some(RegRet::Inserted | RegRet::Updated)))
        .map(|o| (o.key, o.invoke, o.complete))
        .chain(
            set.iter()
                .filter(|s| s.1 == Status::Ok)
                .map(|s| (s.0, s.2, s.3)),
        );
    writes
        .filter(|(k, inv, _)| *inv >= t && shard_of(*k) == shard)
        .map(|(_, _, done)| done - t)
        .min()
}

/// Stops the compose manager, starts one with `SHARDLINE_FAILPOINTS=election.after_marker`,
/// kills sh1's primary to cause an election, and waits for that manager to exit 86.
async fn manager_failpoint(
    c: &DockerCluster,
    manager: &str,
    primary: &str,
    name: &str,
    extra: &mut Vec<Guard>,
) -> Result<Guard, String> {
    crate::docker::docker(&["stop", "-t", "1", manager]);
    let fp = faults::extra_manager(
        c,
        "manager-fp",
        &[("SHARDLINE_FAILPOINTS", "election.after_marker")],
    )?;
    let container = format!("{}-manager-fp", c.project());
    // Give it time to take over before the election it must die in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    extra.push(faults::kill(primary, &format!("{name} (sh1 primary)"))?);
    let died = crate::wait_until(Duration::from_secs(20), || async {
        faults::state(&container).is_some_and(|(st, _)| st == "exited")
    })
    .await;
    match faults::state(&container) {
        Some((_, 86)) if died => Ok(fp),
        st => Err(format!(
            "needs failpoints (SHARDLINE_FAILPOINTS=election.after_marker; manager state {st:?})"
        )),
    }
}

/// Whether the manager lease exists: the second manager's `/healthz` names its role.
async fn two_managers_check(c: &DockerCluster) -> Option<String> {
    let container = format!("{}-manager2", c.project());
    let Some(port) = faults::host_port(&container, 5001) else {
        return Some(format!(
            "second manager not running: {}",
            faults::logs(&container, 5)
        ));
    };
    let (code, body) = c.get(&format!("http://127.0.0.1:{port}/healthz")).await;
    match body["role"].as_str() {
        Some(_) => None,
        None => Some(format!(
            "needs the manager lease (a second manager's /healthz names no role: {code} {body})"
        )),
    }
}

/// Settles the cluster and judges the history: replicas identical, the set, each register
/// key (with the final state as one last read), staleness.
async fn judge(c: &DockerCluster, rec: &Arc<Recorder>, report: &mut Report) {
    let reg = rec
        .register
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let set = rec.set.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let reads = rec
        .any_reads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for st in reg.iter().map(|o| o.status).chain(set.iter().map(|s| s.1)) {
        match st {
            Status::Ok => report.ok += 1,
            Status::Failed => report.failed += 1,
            Status::Unknown => report.unknown += 1,
        }
    }
    let longest = reg
        .iter()
        .filter(|o| o.op != RegOp::Read)
        .map(|o| o.complete.saturating_sub(o.invoke))
        .chain(set.iter().map(|s| s.3.saturating_sub(s.2)))
        .max()
        .unwrap_or_default();
    report
        .notes
        .push(format!("slowest write {}ms", longest.as_millis()));
    let stale: Vec<Duration> = reads.iter().filter_map(|r| r.3).collect();
    report.max_stale = stale.iter().max().copied();
    report.notes.push(format!(
        "{} of {} any-reads stale",
        stale.len(),
        reads.iter().filter(|r| r.1.is_some()).count()
    ));

    let rows = match replicas_identical(c, Duration::from_secs(60)).await {
        Ok(r) => r,
        Err(e) => {
            report.violations.push(format!("replicas: {e}"));
            return;
        }
    };
    let by_key: BTreeMap<i64, &Value> = rows
        .values()
        .flatten()
        .filter_map(|r| Some((r["Stud_id"].as_i64()?, r)))
        .collect();

    // The set: every acknowledged insert present; nothing present that certainly failed.
    let mut lost = Vec::new();
    let mut phantom = Vec::new();
    for (key, st, _, _) in &set {
        match (st, by_key.contains_key(key)) {
            (Status::Ok, false) => lost.push(*key),
            (Status::Failed, true) => phantom.push(*key),
            _ => {}
        }
    }
    if !lost.is_empty() {
        report
            .violations
            .push(format!("set: acknowledged inserts lost: {lost:?}"));
    }
    if !phantom.is_empty() {
        report.violations.push(format!(
            "set: inserts answered not_applied are present: {phantom:?}"
        ));
    }

    // Registers: each key's history plus its final value read after everything.
    let end = rec.now() + Duration::from_millis(1);
    let mut keys: BTreeMap<i64, Vec<Op>> = BTreeMap::new();
    for o in reg {
        keys.entry(o.key).or_default().push(o);
    }
    let mut bad = 0;
    for (key, mut ops) in keys {
        let last = by_key.get(&key).map(|r| {
            let v = r["Stud_marks"].as_i64().unwrap_or(-1);
            if r["Stud_name"] == format!("v{v}") {
                v
            } else {
                -1
            }
        });
        ops.push(Op {
            process: usize::MAX,
            key,
            op: RegOp::Read,
            ret: Some(RegRet::Value(last)),
            status: Status::Ok,
            invoke: end,
            complete: end,
            note: "final state, every replica".into(),
        });
        if let Some(w) = violation_window(&ops) {
            bad += 1;
            if report.window.is_empty() {
                report
                    .violations
                    .push(format!("register key {key} not linearizable"));
                report.window = w;
            }
        }
    }
    if bad > 1 {
        report
            .violations
            .push(format!("{bad} register keys not linearizable"));
    }
}

/// Waits until every server is up and every replica of each shard holds identical rows.
async fn replicas_identical(
    c: &DockerCluster,
    timeout: Duration,
) -> Result<BTreeMap<String, Vec<Value>>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let why = match replica_rows(c).await {
            Ok(rows) => return Ok(rows),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("not identical within {timeout:?}: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every shard's rows, if every server is up and all replicas of each shard agree
/// (`GET /read/{server}` through the gateway).
async fn replica_rows(c: &DockerCluster) -> Result<BTreeMap<String, Vec<Value>>, String> {
    let st = c.status().await;
    let Some(health) = st["health"].as_object() else {
        return Err(format!("no health in /status: {st}"));
    };
    if let Some((n, v)) = health.iter().find(|(_, v)| *v != "up") {
        return Err(format!("server {n} is {v}"));
    }
    let mut out = BTreeMap::new();
    for (shard, servers) in crate::check::replicas_of(&st) {
        let mut first: Option<(String, Vec<Value>)> = None;
        for server in servers {
            let (code, body) = c.get(&format!("/read/{server}")).await;
            if code != 200 {
                return Err(format!("GET /read/{server}: {code} {body}"));
            }
            let mut rows = body[&shard].as_array().cloned().unwrap_or_default();
            rows.sort_by_key(|r| r["Stud_id"].as_i64());
            match &first {
                None => first = Some((server, rows)),
                Some((s0, r0)) if *r0 != rows => {
                    let a: Vec<_> = r0.iter().filter(|r| !rows.contains(r)).collect();
                    let b: Vec<_> = rows.iter().filter(|r| !r0.contains(r)).collect();
                    return Err(format!(
                        "shard {shard}: {s0} has {} rows, {server} has {}; only on {s0}: {}; only on {server}: {}",
                        r0.len(),
                        rows.len(),
                        crate::check::short(&serde_json::json!(a)),
                        crate::check::short(&serde_json::json!(b)),
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some((_, rows)) = first {
            out.insert(shard, rows);
        }
    }
    Ok(out)
}
