//! The gateway as a library: [`gateway::run`] serves on the listener it is given, answers
//! while NATS is unreachable (alive, but the data endpoints are `unavailable`), and stops
//! when its shutdown future resolves.

use std::time::Duration;

use clap::Parser;
use gateway::Config;
use serde_json::{json, Value};

#[tokio::test]
async fn serves_on_the_given_listener_until_told_to_stop() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Port 1 on loopback: nothing listens there, so NATS and the manager stay unreachable.
    let config = Config::parse_from([
        "gateway",
        "--nats-url",
        "nats://127.0.0.1:1",
        "--manager-url",
        "http://127.0.0.1:1",
    ]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway::run(config, listener, async {
        let _ = stopped.await;
    }));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("http://{addr}/read"))
        .json(&json!({"Stud_id": {"low": 0, "high": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["outcome"], "not_applied");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cluster metadata not loaded yet"),
        "{body}"
    );

    stop.send(()).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("run returns after shutdown");
    ended.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
