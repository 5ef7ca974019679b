//! Self-test of testkit's LocalCluster: it starts, `/init` works, and dropping it leaves no
//! process behind (manager, gateway, nats and every shard server).

use std::time::Duration;

use testkit::{json, pid_alive, LocalCluster};

#[tokio::test(flavor = "multi_thread")]
async fn cluster_starts_and_cleans_up() {
    let c = LocalCluster::start().await;
    assert_eq!(c.get("/healthz").await.0, 200);
    assert_eq!(c.manager_get("/healthz").await.0, 200);
    c.init(testkit::workload("a1")).await;
    let (status, body) = c
        .post(
            "/write",
            json!({"data": [{"Stud_id": 1, "Stud_name": "A", "Stud_marks": 5}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let names = c.server_names();
    assert!(
        !names.is_empty(),
        "no server pid files under {}",
        c.servers_dir().display()
    );
    let mut pids: Vec<i32> = names.iter().filter_map(|n| c.server_pid(n)).collect();
    assert!(pids.iter().all(|&p| pid_alive(p)));
    pids.push(c.nats().proc().expect("nats running").pid());

    drop(c);
    let all_gone = testkit::wait_until(Duration::from_secs(5), || async {
        pids.iter().all(|&p| !pid_alive(p))
    })
    .await;
    assert!(
        all_gone,
        "processes left after Cluster drop: {:?}",
        pids.iter().filter(|&&p| pid_alive(p)).collect::<Vec<_>>()
    );
}
