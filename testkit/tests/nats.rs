//! Self-test of testkit's Nats: JetStream data survives a restart (graceful and crash).

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use testkit::Nats;

async fn connect(nats: &Nats) -> jetstream::Context {
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to nats");
    jetstream::new(client)
}

async fn last_payload(js: &jetstream::Context) -> (u64, Vec<u8>) {
    let mut s = js
        .get_stream("SELFTEST")
        .await
        .expect("stream survives restart");
    let messages = s.info().await.expect("stream info").state.messages;
    let msg = s
        .get_last_raw_message_by_subject("selftest.a")
        .await
        .expect("last message");
    (messages, msg.payload.to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_message_survives_restart() {
    let mut nats = Nats::start().await;
    let port = nats.port();
    let js = connect(&nats).await;
    js.create_stream(stream::Config {
        name: "SELFTEST".into(),
        subjects: vec!["selftest.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create stream");
    let ack = js
        .publish("selftest.a", "hello".into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
    assert_eq!(ack.sequence, 1);

    // Graceful restart: same port, same store.
    nats.restart().await;
    assert_eq!(nats.port(), port);
    let js = connect(&nats).await;
    assert_eq!(last_payload(&js).await, (1, b"hello".to_vec()));

    // Crash restart: an acknowledged message survives SIGKILL of nats-server.
    js.publish("selftest.a", "world".into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
    nats.kill();
    assert!(!nats.is_running());
    nats.restart().await;
    let js = connect(&nats).await;
    assert_eq!(last_payload(&js).await, (2, b"world".to_vec()));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_and_wait_helpers() {
    let a = Nats::start().await;
    let b = Nats::start().await;
    assert_ne!(a.port(), b.port());
    let client = async_nats::connect(b.url()).await.expect("connect");
    let url = a.url();
    assert!(
        testkit::wait_until(Duration::from_secs(5), || async {
            async_nats::connect(url.as_str()).await.is_ok()
        })
        .await
    );
    assert!(!testkit::wait_until(Duration::from_millis(200), || async { false }).await);
    drop(client);
}

#[test]
fn proc_lifecycle_and_listening_line() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut p = testkit::Proc::builder("sh", "/bin/sh")
            .args([
                "-c",
                "echo LISTENING 127.0.0.1:1234; echo to-stderr >&2; exec sleep 60",
            ])
            .spawn();
        assert_eq!(p.listening(Duration::from_secs(10)).await, "127.0.0.1:1234");
        let pid = p.pid();
        p.stop();
        assert!(p.is_running());
        p.cont();
        let st = p.term().expect("exited");
        assert!(!st.success());
        assert!(!testkit::pid_alive(pid));
        assert!(p.log().contains("to-stderr"));
    });
}

/// Never run: keeps the LocalCluster API (as the integration tests use it) compiling.
#[allow(dead_code)]
async fn cluster_api_compiles() {
    use testkit::{json, LocalCluster};
    let mut c = LocalCluster::start().await;
    c.init(testkit::workload("a1")).await;
    let row = json!({"data": [{"Stud_id": 1, "Stud_name": "A", "Stud_marks": 5}]});
    let (_status, _body) = c.post("/write", &row).await;
    let _ = c.put("/update", json!({})).await;
    let _ = c.delete("/del", json!({"Stud_id": 1})).await;
    let _ = c
        .get_json("/read", json!({"Stud_id": {"low": 0, "high": 1}}))
        .await;
    let _ = c.manager_get("/healthz").await;
    let ok = c
        .wait_until(Duration::from_secs(1), || async {
            c.get("/status").await.0 == 200
        })
        .await;
    testkit::wait_for(Duration::from_secs(1), "status", || async {
        c.get("/readyz").await.0 == 200
    })
    .await;
    let _ = ok;
    if c.server_pid("Server0").is_some() {
        c.kill_server("Server0");
    }
    c.nats_mut().kill();
    c.nats_mut().restart().await;
    c.restart_manager().await;
    c.restart_gateway().await;
    c.gateway().stop();
    c.gateway().cont();
    let _ = (
        c.data_dir(),
        c.gateway_url(),
        c.manager_url(),
        c.nats().url(),
    );
}
