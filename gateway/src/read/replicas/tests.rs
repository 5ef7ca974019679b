//! The replica choice and the attempts of a ring read: against scripted answers, and against
//! stand-in shard servers (in-process axum) through the gateway's real HTTP client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use hyper::Method;
use serde_json::{json, Value};
use shardline::ring::RingHash;
use shardline::ErrorCode;

use super::*;
use crate::upstream;

fn name(s: &str) -> ServerName {
    ServerName::parse(s).unwrap()
}

fn ring() -> HashRing {
    let names = ["Server0", "Server1", "Server2"].map(name).to_vec();
    HashRing::new(RingHash::Mixed, names)
}

/// The replicas in the order request `r` meets them on the ring.
fn ring_order(ring: &HashRing, r: u64) -> Vec<ServerName> {
    let mut order: Vec<ServerName> = Vec::new();
    while let Some(s) = ring.pick(r, |s| !order.contains(s)) {
        order.push(s.clone());
    }
    assert_eq!(order.len(), ring.replicas().len());
    order
}

/// What a replica refusing a read because it is behind answers.
fn stale(server: &ServerName) -> Result<Bytes, CallError> {
    Err(CallError::Status(ApiError::Unavailable(format!(
        "shard sh1: replica {server} is 5000 ms behind its stream (max 1000 ms)"
    ))))
}

/// Runs [`from_ring`] for request 42 with every replica `live` unless listed in `down`,
/// `answer` answering each attempt; returns the result and the replicas sent to, in order.
async fn script(
    down: &[&ServerName],
    answer: impl Fn(&ServerName) -> Result<Bytes, CallError>,
) -> (Result<Bytes, ApiError>, Vec<ServerName>) {
    let ring = ring();
    let sent = Mutex::new(Vec::new());
    let result = from_ring(
        "sh1",
        &ring,
        42,
        |s| !down.contains(&s),
        |_| false,
        |s: &ServerName| {
            sent.lock().unwrap().push(s.clone());
            let a = answer(s);
            async move { a }
        },
    )
    .await;
    (result, sent.into_inner().unwrap())
}

#[tokio::test]
async fn stale_and_unreachable_replicas_are_skipped_until_one_serves() {
    let [a, b, c] = <[ServerName; 3]>::try_from(ring_order(&ring(), 42)).unwrap();
    let (result, sent) = script(&[], |s| {
        if *s == a {
            stale(s)
        } else if *s == b {
            Err(CallError::Connect("connection refused".into()))
        } else {
            Ok(Bytes::from_static(b"rows"))
        }
    })
    .await;
    assert_eq!(&result.unwrap()[..], b"rows");
    assert_eq!(sent, [a.clone(), b.clone(), c.clone()]);

    // No answer (a paused replica): a read changes nothing, so the next one is asked.
    let (result, sent) = script(&[], |s| {
        if *s == a {
            Err(CallError::Transport("no answer within 10000 ms".into()))
        } else {
            stale(s)
        }
    })
    .await;
    assert_eq!(sent, [a.clone(), b.clone(), c.clone()]);
    let e = result.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert_eq!(
        e.message(),
        format!(
            "shard sh1: no replica can serve the read: {a} did not answer: no answer within 10000 ms; \
             {b}: shard sh1: replica {b} is 5000 ms behind its stream (max 1000 ms); \
             {c}: shard sh1: replica {c} is 5000 ms behind its stream (max 1000 ms)"
        )
    );
}

#[tokio::test]
async fn replicas_the_metadata_marks_down_are_never_asked() {
    let [a, b, c] = <[ServerName; 3]>::try_from(ring_order(&ring(), 42)).unwrap();
    let (result, sent) = script(&[&a], |s| {
        if *s == b {
            stale(s)
        } else {
            Ok(Bytes::from_static(b"rows"))
        }
    })
    .await;
    assert!(result.is_ok());
    assert_eq!(sent, [b.clone(), c.clone()]);

    let (result, sent) = script(&[&a, &c], stale).await;
    assert_eq!(sent, std::slice::from_ref(&b));
    let e = result.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    // Those asked, in the order asked; then those not up, by name.
    let (first, second) = if a < c { (&a, &c) } else { (&c, &a) };
    assert_eq!(
        e.message(),
        format!(
            "shard sh1: no replica can serve the read: \
             {b}: shard sh1: replica {b} is 5000 ms behind its stream (max 1000 ms); \
             {first} is not up; {second} is not up"
        )
    );

    let (result, sent) = script(&[&a, &b, &c], stale).await;
    assert!(sent.is_empty());
    let e = result.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    let mut down = [&a, &b, &c];
    down.sort();
    assert_eq!(
        e.message(),
        format!(
            "shard sh1 has no live replica: {} is not up; {} is not up; {} is not up",
            down[0], down[1], down[2]
        )
    );
}

#[tokio::test]
async fn a_bad_request_is_answered_at_once() {
    let (result, sent) = script(&[], |_| {
        Err(CallError::Status(ApiError::BadRequest("bad".into())))
    })
    .await;
    assert_eq!(result.unwrap_err().code(), ErrorCode::BadRequest);
    assert_eq!(sent.len(), 1);
}

/// A stand-in shard server answering every `/read` with `status` and `body`, the query it
/// was asked with added to a successful body's `query`.
async fn stand_in(status: StatusCode, body: Value) -> SocketAddr {
    use axum::extract::RawQuery;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/read",
        axum::routing::post(move |RawQuery(q): RawQuery| {
            let mut body = body.clone();
            if status.is_success() {
                body["query"] = json!(q);
            }
            async move { (status, axum::Json(body)) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A loopback address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// [`from_ring`] for request 42 over the stand-ins at `addrs`, with the gateway's client.
async fn read_from(addrs: &BTreeMap<ServerName, SocketAddr>) -> Result<Bytes, ApiError> {
    let http = upstream::client(Duration::from_secs(5));
    let ring = ring();
    from_ring(
        "sh1",
        &ring,
        42,
        |_| true,
        |_| false,
        |s: &ServerName| {
            let uri: hyper::Uri = format!("http://{}/read", addrs[s]).parse().unwrap();
            upstream::call(&http, Method::POST, uri, Some(Bytes::from_static(b"{}")))
        },
    )
    .await
}

#[tokio::test]
async fn a_read_goes_past_stand_ins_that_refuse_as_stale_or_are_gone() {
    let order = ring_order(&ring(), 42);
    let refusal = json!({
        "message": "shard sh1: replica is 5000 ms behind its stream",
        "code": "unavailable",
        "outcome": "not_applied",
        "status": "failure",
    });
    let serving = json!({"data": [], "status": "success"});
    let mut addrs = BTreeMap::new();
    addrs.insert(
        order[0].clone(),
        stand_in(StatusCode::SERVICE_UNAVAILABLE, refusal.clone()).await,
    );
    addrs.insert(order[1].clone(), closed_port().await);
    addrs.insert(order[2].clone(), stand_in(StatusCode::OK, serving).await);

    let answer: Value = serde_json::from_slice(&read_from(&addrs).await.unwrap()).unwrap();
    assert_eq!(answer["status"], "success");
    assert_eq!(answer["query"], Value::Null);

    // The last one refusing too: a 503 naming the shard and every replica's reason.
    addrs.insert(
        order[2].clone(),
        stand_in(StatusCode::SERVICE_UNAVAILABLE, refusal).await,
    );
    let e = read_from(&addrs).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    let m = e.message();
    assert!(
        m.starts_with("shard sh1: no replica can serve the read: "),
        "{m}"
    );
    for s in &order {
        assert!(m.contains(s.as_str()), "{m}");
    }
    assert!(m.contains("behind its stream"), "{m}");
    assert!(m.contains(&format!("{} is unreachable", order[1])), "{m}");
}

#[test]
fn each_level_reaches_the_server_in_the_query() {
    use shardline::internal::ReadLevel;
    assert_eq!(crate::read::server_path(ReadLevel::Any), "/read");
    assert_eq!(
        crate::read::server_path(ReadLevel::Primary),
        "/read?consistency=primary"
    );
    assert_eq!(
        crate::read::server_path(ReadLevel::Linearizable),
        "/read?consistency=linearizable"
    );
}

#[tokio::test]
async fn the_query_reaches_a_stand_in() {
    let addr = stand_in(StatusCode::OK, json!({"data": [], "status": "success"})).await;
    let http = upstream::client(Duration::from_secs(5));
    let target = crate::topology::Target {
        name: name("Server0"),
        authority: addr.to_string().parse().unwrap(),
    };
    let path = crate::read::server_path(shardline::internal::ReadLevel::Linearizable);
    let answer = upstream::call(&http, Method::POST, target.uri(path), None)
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["query"], "consistency=linearizable");
}

#[test]
fn affinity_keeps_one_replica_until_it_is_busy_or_down() {
    use shardline::ring::RingHash;
    let names: Vec<ServerName> = ["Server0", "Server1", "Server2"]
        .iter()
        .map(|n| ServerName::parse(n).unwrap())
        .collect();
    let ring = HashRing::new(RingHash::Mixed, names.clone());
    let all = |_: &ServerName| true;
    let none = |_: &ServerName| false;
    let home = choose(&ring, 42, all, none).unwrap().clone();
    for _ in 0..10 {
        assert_eq!(choose(&ring, 42, all, none), Some(&home));
    }
    // Busy: the overflow goes to another replica, always the same one.
    let busy_home = |s: &ServerName| *s == home;
    let next = choose(&ring, 42, all, busy_home).unwrap().clone();
    assert_ne!(next, home);
    assert_eq!(choose(&ring, 42, all, busy_home), Some(&next));
    // Down: skipped whether busy or not; every live replica busy: the first live one.
    let up = |s: &ServerName| *s != home;
    assert_eq!(choose(&ring, 42, up, none), Some(&next));
    assert_eq!(choose(&ring, 42, up, all), Some(&next));
    assert_eq!(choose(&ring, 42, all, all), Some(&home));
    assert_eq!(choose(&ring, 42, none, none), None);
    // Different gateways (ids) land on different replicas.
    let homes: std::collections::BTreeSet<_> = (0..64u64)
        .filter_map(|r| choose(&ring, r, all, none).cloned())
        .collect();
    assert_eq!(homes.len(), names.len());
}
