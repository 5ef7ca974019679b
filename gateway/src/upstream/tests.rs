//! The failover logic in-process: the metadata channel is a plain `tokio::sync::watch`
//! channel the test publishes on, time is paused (it advances only when every task
//! waits), and the shard servers are a closure answering from a script.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use shardline::meta::{ClusterMeta, Health, ServerMeta};
use shardline::names::ShardId;
use shardline::ring::RingHash;
use shardline::ErrorCode;
use tokio::sync::watch;

use super::*;
use crate::topology::{Routing, Topology};

const WAIT: Duration = Duration::from_secs(2);

fn name(s: &str) -> ServerName {
    ServerName::parse(s).unwrap()
}

/// The A1 layout on Server0..2, each holding sh1, with sh1's primary `primary`.
fn meta(primary: Option<&str>) -> ClusterMeta {
    let mut m = crate::write::tests::a1();
    for (i, n) in ["Server0", "Server1", "Server2"].into_iter().enumerate() {
        m.servers.insert(
            name(n),
            ServerMeta {
                addr: format!("127.0.0.1:{}", 9000 + i),
                shards: vec![ShardId::parse("sh1").unwrap()],
                health: Health::Up,
                applied: Default::default(),
            },
        );
    }
    m.shards[0].primary = primary.map(name);
    m
}

fn configured(primary: Option<&str>, revision: u64) -> Arc<Topology> {
    let routing = Routing::new(meta(primary), revision, RingHash::Mixed);
    Arc::new(Topology::Configured(Box::new(routing)))
}

fn channel(primary: Option<&str>) -> (watch::Sender<Arc<Topology>>, TopologyRx) {
    watch::channel(configured(primary, 1))
}

/// Publishes each `(after, primary)` in turn, `after` counted from the previous one.
fn publish_later(tx: watch::Sender<Arc<Topology>>, steps: Vec<(u64, Option<&'static str>)>) {
    tokio::spawn(async move {
        for (revision, (after, primary)) in (2..).zip(steps) {
            tokio::time::sleep(Duration::from_millis(after)).await;
            tx.send_replace(configured(primary, revision));
        }
        // Keep the channel open: a closed one ends the wait early.
        std::future::pending::<()>().await;
    });
}

#[tokio::test(start_paused = true)]
async fn returns_as_soon_as_another_primary_is_named() {
    let (tx, mut rx) = channel(Some("Server0"));
    // A revision that keeps the avoided primary does not end the wait.
    publish_later(tx, vec![(300, Some("Server0")), (200, Some("Server1"))]);
    let start = Instant::now();
    let avoid = name("Server0");
    let p = wait_for_primary(&mut rx, "sh1", Some(&avoid), None, WAIT)
        .await
        .unwrap();
    assert_eq!(p.name, name("Server1"));
    assert_eq!(p.authority.as_str(), "127.0.0.1:9001");
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn a_named_primary_is_taken_at_once() {
    let (_tx, mut rx) = channel(Some("Server2"));
    let start = Instant::now();
    let p = wait_for_primary(&mut rx, "sh1", None, None, WAIT)
        .await
        .unwrap();
    assert_eq!(p.name, name("Server2"));
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn at_the_deadline_falls_back_to_the_hint_then_the_current_primary() {
    let (_tx, mut rx) = channel(Some("Server0"));
    let avoid = name("Server0");
    let start = Instant::now();
    let p = wait_for_primary(&mut rx, "sh1", Some(&avoid), Some("Server2".into()), WAIT)
        .await
        .unwrap();
    assert_eq!(p.name, name("Server2"));
    assert_eq!(start.elapsed(), WAIT);
    // No hint, an unknown one, or the avoided server itself: the metadata's primary.
    for hint in [None, Some("Server9"), Some("Server0")] {
        let start = Instant::now();
        let p = wait_for_primary(&mut rx, "sh1", Some(&avoid), hint.map(Into::into), WAIT)
            .await
            .unwrap();
        assert_eq!(p.name, avoid, "hint {hint:?}");
        assert_eq!(start.elapsed(), WAIT);
    }
}

#[tokio::test(start_paused = true)]
async fn no_primary_until_the_deadline_is_no_primary() {
    let (_tx, mut rx) = channel(None);
    let start = Instant::now();
    let e = wait_for_primary(&mut rx, "sh1", None, None, WAIT)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NoPrimary);
    assert_eq!(e.message(), "shard sh1 has no primary");
    assert_eq!(start.elapsed(), WAIT);

    // Elected meanwhile: taken when the metadata says so.
    let (tx, mut rx) = channel(None);
    publish_later(tx, vec![(100, Some("Server1"))]);
    let start = Instant::now();
    let p = wait_for_primary(&mut rx, "sh1", None, None, WAIT)
        .await
        .unwrap();
    assert_eq!(p.name, name("Server1"));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn an_unconfigured_cluster_is_unavailable() {
    let (_tx, mut rx) = watch::channel(Arc::new(Topology::Unconfigured));
    let e = wait_for_primary(&mut rx, "sh1", None, None, WAIT)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert!(e.message().contains("POST /init"), "{e}");
}

fn not_primary(hint: Option<&str>) -> Result<Bytes, CallError> {
    Err(CallError::Status(ApiError::NotPrimary {
        message: "not the primary".into(),
        primary: hint.map(Into::into),
    }))
}

#[test]
fn retry_only_what_certainly_reached_no_primary() {
    let s = name("Server0");
    let retry = |r| match after_first("sh1", &s, r) {
        Next::Retry { hint, reason } => Some((hint, reason)),
        Next::Done(_) => None,
    };
    assert_eq!(
        retry(not_primary(Some("Server1"))),
        Some((Some("Server1".into()), "not_primary"))
    );
    assert_eq!(
        retry(Err(CallError::Connect("refused".into()))),
        Some((None, "primary_unreachable"))
    );
    // Sent, no answer: may have been committed, never sent again.
    match after_first("sh1", &s, Err(CallError::Transport("reset".into()))) {
        Next::Done(Err(e)) => {
            assert_eq!(e.code(), ErrorCode::OutcomeUnknown);
            assert_eq!(
                e.message(),
                "shard sh1: primary Server0 did not answer (reset); the request may or may not have been applied"
            );
        }
        other => panic!("{other:?}"),
    }
    // A server's own failure is the answer, code kept.
    let dup = Err(CallError::Status(ApiError::Duplicate("dup".into())));
    match after_first("sh1", &s, dup) {
        Next::Done(Err(e)) => assert_eq!(e.code(), ErrorCode::DuplicateKey),
        other => panic!("{other:?}"),
    }
    match after_first("sh1", &s, Ok(Bytes::from_static(b"{}"))) {
        Next::Done(Ok(b)) => assert_eq!(&b[..], b"{}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_last_attempt_says_whether_anything_was_applied() {
    let s = name("Server1");
    let e = after_second("sh1", &s, not_primary(None)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert!(e.message().starts_with(
        "shard sh1: Server1 refused as not the primary (not the primary); an election"
    ));
    let e = after_second("sh1", &s, Err(CallError::Connect("refused".into()))).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert_eq!(
        e.message(),
        "shard sh1: primary Server1 is unreachable: refused"
    );
    let e = after_second("sh1", &s, Err(CallError::Transport("timeout".into()))).unwrap_err();
    assert_eq!(e.code(), ErrorCode::OutcomeUnknown);
}

/// Runs [`failover`] against scripted answers; returns its result, the servers it sent to
/// and how long it took.
async fn script(
    rx: TopologyRx,
    answers: Vec<Result<Bytes, CallError>>,
) -> (Result<Bytes, ApiError>, Vec<ServerName>, Duration) {
    script_as(Kind::Write, rx, answers).await
}

/// [`script`] for a request of `kind`.
async fn script_as(
    kind: Kind,
    rx: TopologyRx,
    answers: Vec<Result<Bytes, CallError>>,
) -> (Result<Bytes, ApiError>, Vec<ServerName>, Duration) {
    let answers = Mutex::new(VecDeque::from(answers));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let send = |t: Target| {
        sent.lock().unwrap().push(t.name);
        let answer = answers
            .lock()
            .unwrap()
            .pop_front()
            .expect("an unscripted call");
        async move { answer }
    };
    let start = Instant::now();
    let result = failover(rx, "sh1", kind, WAIT, send).await;
    let sent = sent.lock().unwrap().clone();
    (result, sent, start.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_refused_write_goes_to_the_new_primary_once_the_metadata_names_it() {
    let (tx, rx) = channel(Some("Server0"));
    publish_later(tx, vec![(150, Some("Server2"))]);
    let ok = Ok(Bytes::from_static(b"{}"));
    let (result, sent, took) = script(rx, vec![not_primary(Some("Server1")), ok]).await;
    assert!(result.is_ok());
    // The metadata beats the refusing server's hint.
    assert_eq!(sent, [name("Server0"), name("Server2")]);
    assert_eq!(took, Duration::from_millis(150));
}

#[tokio::test(start_paused = true)]
async fn without_a_new_primary_the_hint_gets_the_retry_at_the_deadline() {
    let (_tx, rx) = channel(Some("Server0"));
    let (result, sent, took) = script(
        rx,
        vec![
            not_primary(Some("Server1")),
            Err(CallError::Connect("refused".into())),
        ],
    )
    .await;
    assert_eq!(result.unwrap_err().code(), ErrorCode::Unavailable);
    assert_eq!(sent, [name("Server0"), name("Server1")]);
    assert_eq!(took, WAIT);
}

#[tokio::test(start_paused = true)]
async fn a_request_without_an_answer_is_not_sent_again() {
    let (_tx, rx) = channel(Some("Server0"));
    let (result, sent, took) = script(rx, vec![Err(CallError::Transport("reset".into()))]).await;
    assert_eq!(result.unwrap_err().code(), ErrorCode::OutcomeUnknown);
    assert_eq!(sent, [name("Server0")]);
    assert_eq!(took, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_shard_without_a_primary_waits_for_one_then_gives_up() {
    let (_tx, rx) = channel(None);
    let (result, sent, took) = script(rx, vec![]).await;
    assert_eq!(result.unwrap_err().code(), ErrorCode::NoPrimary);
    assert!(sent.is_empty());
    assert_eq!(took, WAIT);
}

#[tokio::test(start_paused = true)]
async fn a_read_without_an_answer_goes_to_the_new_primary() {
    // A read changes nothing: unlike a write, it is sent again after a lost answer.
    let (tx, rx) = channel(Some("Server0"));
    publish_later(tx, vec![(100, Some("Server1"))]);
    let ok = Ok(Bytes::from_static(b"{}"));
    let (result, sent, took) = script_as(
        Kind::Read,
        rx,
        vec![Err(CallError::Transport("reset".into())), ok],
    )
    .await;
    assert_eq!(&result.unwrap()[..], b"{}");
    assert_eq!(sent, [name("Server0"), name("Server1")]);
    assert_eq!(took, Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_read_is_never_outcome_unknown() {
    let (tx, rx) = channel(Some("Server0"));
    publish_later(tx, vec![(100, Some("Server1"))]);
    let (result, sent, _) = script_as(
        Kind::Read,
        rx,
        vec![
            Err(CallError::Transport("reset".into())),
            Err(CallError::Transport("no answer within 10000 ms".into())),
        ],
    )
    .await;
    let e = result.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert_eq!(
        e.message(),
        "shard sh1: primary Server1 did not answer the read (no answer within 10000 ms)"
    );
    assert_eq!(sent, [name("Server0"), name("Server1")]);

    // Refusals and lost connections are retried as for a write.
    let (tx, rx) = channel(Some("Server0"));
    publish_later(tx, vec![(100, Some("Server2"))]);
    let ok = Ok(Bytes::from_static(b"{}"));
    let (result, sent, _) = script_as(Kind::Read, rx, vec![not_primary(None), ok]).await;
    assert!(result.is_ok());
    assert_eq!(sent, [name("Server0"), name("Server2")]);
}
