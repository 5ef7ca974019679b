//! The queue's own limit: synchronous JetStream publishes (wait for each ack before the
//! next) of ~100-byte messages by concurrent publishers to a scratch stream on the same
//! nats-server, file storage like the WAL streams.

use std::time::Duration;

use crate::load::{self, Phase, TRANSPORT_ERROR};
use anyhow::Context as _;
use async_nats::jetstream::{self, stream};

/// A 100-byte payload shaped like a small WAL entry.
fn payload(i: usize) -> Vec<u8> {
    let mut s = format!(
        "{{\"op\":\"insert\",\"term\":1,\"rows\":[[{i},\"GHI\",{}]],\"by\":\"bench\"}}",
        i % 101
    );
    while s.len() < 100 {
        s.push(' ');
    }
    s.into_bytes()
}

pub async fn run(
    nats_url: &str,
    messages: usize,
    publishers: usize,
    max: Duration,
) -> anyhow::Result<Phase> {
    let client = async_nats::connect(nats_url)
        .await
        .context("connecting to nats-server for the baseline")?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("BENCH_BASELINE").await;
    js.create_stream(stream::Config {
        name: "BENCH_BASELINE".into(),
        subjects: vec!["bench.baseline".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the scratch stream")?;
    let js2 = js.clone();
    let phase = load::run("jetstream publish", messages, publishers, max, move |i| {
        let js = js2.clone();
        async move {
            let ok = match js.publish("bench.baseline", payload(i).into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            (if ok { 200 } else { TRANSPORT_ERROR }, 0)
        }
    })
    .await;
    let _ = js.delete_stream("BENCH_BASELINE").await;
    Ok(phase)
}
