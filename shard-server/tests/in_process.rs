//! The server started in-process through the library's `run`, with no NATS reachable: the
//! HTTP API answers what it can decide alone (typed bodies, error codes, refusals before
//! configuration) and `run` returns once its shutdown future resolves.

use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use shard_server::Config;

/// Starts a server named Server0 whose NATS URL points at a closed port, and returns its
/// address, the trigger that stops it, and the task running it.
async fn start(
    dir: &tempfile::TempDir,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = Config::try_parse_from([
        "shard-server",
        "--name",
        "Server0",
        "--data-dir",
        &dir.path().display().to_string(),
        "--nats-url",
        "nats://127.0.0.1:1",
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shard_server::run(config, listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test]
async fn answers_before_configuration_and_stops_on_its_shutdown_future() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, server) = start(&dir).await;
    let base = format!("http://{addr}");

    let (code, body) = call(reqwest::Method::GET, format!("{base}/heartbeat"), None).await;
    assert_eq!(code, 200, "{body}");
    // No NATS at port 1: the heartbeat says so (the manager never elects such a server).
    assert_eq!(
        body,
        json!({"server": "Server0", "shards": {}, "nats_connected": false})
    );

    // Typed bodies: unknown fields and wrong types are 400s naming the field.
    let (code, body) = call(
        reqwest::Method::POST,
        format!("{base}/write"),
        Some(json!({"shard": "sh1", "data": [], "extra": 1})),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["code"], "bad_request");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("unknown field `extra`"));

    let (code, body) = call(
        reqwest::Method::POST,
        format!("{base}/read"),
        Some(json!({"shard": "sh1", "Stud_id": {"low": "a", "high": 2}})),
    )
    .await;
    assert_eq!(code, 400, "{body}");

    // Well-formed, but the server holds no schema yet: refused, certainly not applied.
    let (code, body) = call(
        reqwest::Method::DELETE,
        format!("{base}/del"),
        Some(json!({"shard": "sh1", "Stud_id": 3})),
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["code"], "unavailable");
    assert_eq!(body["outcome"], "not_applied");
    assert_eq!(body["status"], "failure");

    let (code, body) = call(
        reqwest::Method::POST,
        format!("{base}/copy"),
        Some(json!({"shards": ["sh1"]})),
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["code"], "not_found");

    // A snapshot of a shard not held here: 404, and no file left in the data directory.
    let (code, body) = call(reqwest::Method::GET, format!("{base}/snapshot/sh1"), None).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["code"], "not_found");
    assert!(body["message"].as_str().unwrap().contains("sh1"), "{body}");

    let (code, body) = call(reqwest::Method::GET, format!("{base}/read_all"), None).await;
    assert_eq!((code, body), (200, json!({"status": "success"})));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("run returns after its shutdown future resolved")
        .unwrap()
        .unwrap();
}
