//! The nemesis suite: one short seeded run per fault scenario (see `testkit::nemesis`).
//! Each starts its own compose project (network, volumes), puts register, set and
//! staleness clients on it, injects the fault, heals it, and judges the history with a
//! linearizability checker. Each prints one line: faults, ops ok/failed/unknown, the
//! verdict, the recovery time, and on a violation the shortest history window showing it.
//!
//! Skipped (`SKIPPED:`) without a Docker engine or the images (`make images`); a scenario
//! needing a feature the system lacks prints `SKIPPED: needs <feature>`.
//! `make nemesis` runs every scenario, ignored ones included, with longer faults
//! (`SHARDLINE_NEMESIS_SECS`).

use testkit::nemesis::{run, Fault, Link, Settings};

async fn scenario(name: &str, fault: Fault, seed: u64) {
    let Some(report) = run(name, fault, &Settings::from_env(seed)).await else {
        return;
    };
    // Printed whatever happens: the line is the result.
    println!("{}", report.line());
    assert!(report.passed(), "{}", report.line());
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_kill_primary() {
    scenario("kill-primary", Fault::KillPrimary, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_pause_primary() {
    scenario("pause-primary", Fault::PausePrimary, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_pause_secondary() {
    scenario("pause-secondary", Fault::PauseSecondary, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_partition_server_nats() {
    scenario(
        "partition-server-nats",
        Fault::Partition(Link::ServerNats),
        4,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_partition_gateway_server() {
    scenario(
        "partition-gateway-server",
        Fault::Partition(Link::GatewayServer),
        5,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_partition_manager_nats() {
    scenario(
        "partition-manager-nats",
        Fault::Partition(Link::ManagerNats),
        6,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_partition_manager_server() {
    scenario(
        "partition-manager-server",
        Fault::Partition(Link::ManagerServer),
        7,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_manager_failpoint() {
    scenario("manager-failpoint-after-marker", Fault::ManagerFailpoint, 8).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_two_managers() {
    scenario("two-managers", Fault::TwoManagers, 9).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_nats_node_restart() {
    scenario("nats-node-restart", Fault::NatsRestart, 10).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_partition_nats_node() {
    scenario("partition-nats-node", Fault::NatsIsolate, 11).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nemesis_partition_nats_minority() {
    scenario("partition-nats-minority", Fault::NatsMinority, 12).await;
}
