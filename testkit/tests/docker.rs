//! Docker end-to-end tests: the compose cluster from the project's own images, the manager
//! running shard servers as containers through bollard.
//!
//! Skipped (with a `SKIPPED:` line) when no Docker engine is reachable or the images are not
//! built; `make docker-test` (part of `make test` when Docker is reachable) builds them first.
//! Run by hand: `make images && cargo test -p testkit --test docker -- --nocapture`.
//!
//! After each failure: every acknowledged write is readable with its value, all replicas of
//! each shard (GET /read/<server> through the gateway) are identical, and no row exists that
//! was never written.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use testkit::docker::{docker, DockerCluster, Writer};
use testkit::NatsCreds;

const RESPAWN_TIMEOUT: Duration = Duration::from_secs(60);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes until `done` returns true (at least `min` writes), bounded by `timeout`.
async fn write_until<F, Fut>(
    c: &DockerCluster,
    w: &mut Writer,
    min: usize,
    timeout: Duration,
    mut done: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut n = 0;
    loop {
        w.write_one(c).await;
        n += 1;
        if n >= min && done().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

async fn verify(c: &DockerCluster, w: &Writer, what: &str) {
    let t0 = Instant::now();
    let rows = c.wait_replicas_identical(CONVERGE_TIMEOUT).await;
    w.check(&rows);
    let total: usize = rows.values().map(Vec::len).sum();
    eprintln!(
        "docker test [{what}]: ok: {total} rows, {} acknowledged, {} unknown outcome; replicas identical after {:?}",
        w.acked.len(),
        w.unknown.len(),
        t0.elapsed()
    );
}

/// The compose file's nats requires the credentials (an anonymous client is refused), and
/// the manager handed them to the shard-server containers it created as environment
/// variables, not on their command line.
async fn check_nats_credentials(c: &DockerCluster) {
    let err = async_nats::connect(c.nats_url())
        .await
        .expect_err("NATS must refuse a client without credentials");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
    c.nats_client().await;
    let NatsCreds::UserPassword { user, password } = c.nats_creds() else {
        panic!("the compose file uses a user and password");
    };
    let container = c.server_container("Server0");
    let inspect = |format: &str| {
        let out = docker(&["inspect", "--format", format, &container]);
        assert!(out.status.success(), "docker inspect {container}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let env = inspect("{{json .Config.Env}}");
    let env: Vec<String> = serde_json::from_str(&env).expect("env as JSON");
    assert!(
        env.contains(&format!("SHARDLINE_NATS_USER={user}")),
        "{env:?}"
    );
    assert!(
        env.contains(&format!("SHARDLINE_NATS_PASSWORD={password}")),
        "{env:?}"
    );
    assert!(!inspect("{{json .Args}}").contains(password.as_str()));
    eprintln!("docker test: NATS requires credentials; {container} got them in its environment");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_servers_heal() {
    let t0 = Instant::now();
    let Some(c) = DockerCluster::up(false).await else {
        return;
    };
    c.init(&testkit::workload("a1")).await;
    check_nats_credentials(&c).await;
    let mut w = Writer::default();
    assert_eq!(w.write_n(&c, 200).await, 200, "writes on a healthy cluster");
    verify(&c, &w, "initial").await;

    // 1. Kill a server that is a secondary of every shard it holds.
    let primaries: BTreeSet<String> = c.primaries().await.into_values().collect();
    let replicas = c.replicas().await;
    let secondary = replicas
        .values()
        .flatten()
        .find(|s| !primaries.contains(*s))
        .expect("a server that leads no shard")
        .clone();
    let old = c.kill_server(&secondary);
    eprintln!("docker test: killed secondary {secondary}");
    // Keep writing while it is down and being respawned.
    let back = write_until(&c, &mut w, 20, RESPAWN_TIMEOUT, || {
        let (c, old, name) = (&c, &old, &secondary);
        async move {
            c.container_state(&c.server_container(name))
                .is_some_and(|(id, st)| id != *old && st == "running")
        }
    })
    .await;
    assert!(back, "secondary {secondary} not respawned");
    let took = c.wait_respawned(&secondary, &old, RESPAWN_TIMEOUT).await;
    eprintln!("docker test: {secondary} respawned and up ({took:?} after the writes stopped)");
    verify(&c, &w, "secondary killed").await;

    // 2. Kill the primary of sh1: an election, writes continue, it comes back as secondary.
    let primary = c.primaries().await["sh1"].clone();
    let old = c.kill_server(&primary);
    let killed_at = Instant::now();
    eprintln!("docker test: killed primary {primary} of sh1");
    let p = primary.clone();
    let elected = write_until(&c, &mut w, 8, RESPAWN_TIMEOUT, || {
        let (c, p) = (&c, &p);
        async move { c.primaries().await.get("sh1").is_some_and(|n| n != p) }
    })
    .await;
    assert!(elected, "no new primary for sh1: {}", c.status().await);
    let new_primary = c.primaries().await["sh1"].clone();
    eprintln!(
        "docker test: sh1 primary {primary} -> {new_primary} after {:?}",
        killed_at.elapsed()
    );
    // Writes to every shard continue.
    let acked_before = w.acked.len();
    w.write_n(&c, 8).await;
    assert!(
        w.acked.len() >= acked_before + 4,
        "writes do not continue after the election ({} of 8 acknowledged)",
        w.acked.len() - acked_before
    );
    c.wait_respawned(&primary, &old, RESPAWN_TIMEOUT).await;
    assert_ne!(
        c.primaries().await["sh1"],
        primary,
        "the old primary must come back as a secondary"
    );
    w.write_n(&c, 20).await;
    verify(&c, &w, "primary killed").await;

    // 3. Remove a server's container and its volume: respawned empty, catches up by snapshot.
    let sh2_primary = c.primaries().await["sh2"].clone();
    let victim = c.replicas().await["sh2"]
        .iter()
        .find(|s| **s != sh2_primary)
        .expect("a secondary of sh2")
        .clone();
    let old = c.remove_server_and_volume(&victim);
    eprintln!("docker test: removed {victim} and its volume");
    w.write_n(&c, 20).await;
    let took = c.wait_respawned(&victim, &old, RESPAWN_TIMEOUT).await;
    eprintln!("docker test: {victim} respawned empty and caught up in {took:?}");
    verify(&c, &w, "server and volume removed").await;

    drop(c);
    eprintln!("docker test: docker_servers_heal took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_nats_cluster_node_loss() {
    let t0 = Instant::now();
    let Some(c) = DockerCluster::up(true).await else {
        return;
    };
    c.init(&testkit::workload("a1")).await;
    let mut w = Writer::default();
    assert_eq!(w.write_n(&c, 100).await, 100, "writes on a healthy cluster");

    // Stop a NATS node during writes. The metadata KV bucket has a single replica, so pick a
    // node that does not hold it (the WAL streams, replicated 3 times, survive any one node).
    let js = async_nats::jetstream::new(c.nats_client().await);
    let leader = |name: String| {
        let js = js.clone();
        async move {
            let info = js
                .get_stream(&name)
                .await
                .unwrap_or_else(|e| panic!("stream {name}: {e}"))
                .info()
                .await
                .unwrap_or_else(|e| panic!("stream {name} info: {e}"))
                .clone();
            (
                info.config.num_replicas,
                info.cluster.and_then(|cl| cl.leader),
            )
        }
    };
    let (_, kv_leader) = leader("KV_shardline_meta".into()).await;
    let mut wal_leaders = Vec::new();
    for shard in ["sh1", "sh2", "sh3", "sh4"] {
        let (replicas, l) = leader(format!("WAL_{shard}")).await;
        assert_eq!(replicas, 3, "WAL_{shard} must have 3 replicas");
        wal_leaders.extend(l);
    }
    // The node leading the most WAL streams, among those not holding the metadata.
    let victim = ["nats-1", "nats-2", "nats-3"]
        .into_iter()
        .filter(|n| kv_leader.as_deref() != Some(*n))
        .max_by_key(|n| wal_leaders.iter().filter(|l| l == n).count())
        .expect("a node");
    let service = if victim == "nats-1" { "nats" } else { victim };
    eprintln!(
        "docker test: metadata KV on {kv_leader:?}, WAL leaders {wal_leaders:?}; stopping NATS node {victim}"
    );
    w.longest_gap = Duration::ZERO;
    c.stop_service(service);
    let stopped_at = Instant::now();
    write_until(&c, &mut w, 50, Duration::from_secs(60), || async {
        stopped_at.elapsed() > Duration::from_secs(10)
    })
    .await;
    c.start_service(service);
    w.write_n(&c, 50).await;
    eprintln!(
        "docker test: longest pause between acknowledged writes with {victim} stopped: {:?}",
        w.longest_gap
    );
    assert!(
        w.longest_gap < Duration::from_secs(10),
        "writes stopped for {:?}",
        w.longest_gap
    );
    verify(&c, &w, "NATS node stopped").await;
    drop(c);
    eprintln!(
        "docker test: docker_nats_cluster_node_loss took {:?}",
        t0.elapsed()
    );
}
