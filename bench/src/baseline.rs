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
    scratch_stream(&js, "BENCH_BASELINE", "bench.baseline").await?;
    let phase = publishes(
        &js,
        "jetstream publish",
        "bench.baseline",
        messages,
        publishers,
        max,
    )
    .await;
    let _ = js.delete_stream("BENCH_BASELINE").await;
    Ok(phase)
}

/// A fresh file-backed stream `name` on `subject` (an old one of that name is deleted).
async fn scratch_stream(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
) -> anyhow::Result<stream::Stream> {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating the scratch stream {name}"))
}

/// `messages` synchronous publishes to `subject` by `publishers` concurrent publishers.
async fn publishes(
    js: &jetstream::Context,
    phase: &str,
    subject: &'static str,
    messages: usize,
    publishers: usize,
    max: Duration,
) -> Phase {
    let js = js.clone();
    load::run(phase, messages, publishers, max, move |i| {
        let js = js.clone();
        async move {
            let ok = match js.publish(subject, payload(i).into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            (if ok { 200 } else { TRANSPORT_ERROR }, 0)
        }
    })
    .await
}

/// The floor of the WAL's message pattern on nats-server, without shardline's processes: the
/// same synchronous publishes as [`run`], to a stream followed by `followers` durable pull
/// consumers configured as a replica's applier (ack all, cumulative acks at most every
/// 50 ms, batches of up to 1,024), each on its own connection; every follower but the first
/// also publishes an announcement per batch received on a core subject the first one
/// subscribes to, as replicas announce their applied sequence to the primary. The phase ends
/// when every follower has received every message (bounded by `max`).
pub async fn fan_out(
    nats_url: &str,
    messages: usize,
    publishers: usize,
    followers: usize,
    max: Duration,
) -> anyhow::Result<Phase> {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    use futures::StreamExt as _;

    let client = async_nats::connect(nats_url)
        .await
        .context("connecting to nats-server for the fan-out baseline")?;
    let js = jetstream::new(client.clone());
    let stream = scratch_stream(&js, "BENCH_FANOUT", "bench.fanout").await?;
    // The first follower's connection hears the others' announcements.
    let mut announcements = client.subscribe("bench.fanout.applied").await?;
    let heard = tokio::spawn(async move {
        let mut n = 0u64;
        while announcements.next().await.is_some() {
            n += 1;
        }
        n
    });
    let mut tasks = Vec::new();
    for f in 0..followers {
        let conn = async_nats::connect(nats_url).await?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("follower{f}")),
                ack_policy: AckPolicy::All,
                max_ack_pending: 100_000,
                ..Default::default()
            })
            .await?;
        let mut msgs = consumer
            .stream()
            .max_messages_per_batch(1024)
            .messages()
            .await?;
        tasks.push(tokio::spawn(async move {
            let mut got = 0usize;
            let mut last_ack = tokio::time::Instant::now();
            while got < messages {
                let Some(Ok(m)) = msgs.next().await else {
                    break;
                };
                got += 1;
                let mut last = m;
                while let Some(Some(Ok(m))) = futures::FutureExt::now_or_never(msgs.next()) {
                    got += 1;
                    last = m;
                }
                if f > 0 {
                    let _ = conn
                        .publish("bench.fanout.applied", got.to_string().into())
                        .await;
                }
                if got >= messages || last_ack.elapsed() >= Duration::from_millis(50) {
                    let _ = last.ack().await;
                    last_ack = tokio::time::Instant::now();
                }
            }
            got
        }));
    }
    let mut phase = publishes(
        &js,
        "jetstream fan-out",
        "bench.fanout",
        messages,
        publishers,
        max,
    )
    .await;
    // Until every follower has every message: the phase covers their deliveries too.
    let started = std::time::Instant::now() - phase.elapsed;
    for t in tasks {
        let abort = t.abort_handle();
        let got = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .ok()
            .and_then(Result::ok);
        if got != Some(messages) {
            abort.abort();
            println!("  (a fan-out follower received {got:?} of {messages} messages in time)");
        }
    }
    phase.elapsed = started.elapsed();
    let _ = js.delete_stream("BENCH_FANOUT").await;
    heard.abort();
    Ok(phase)
}
