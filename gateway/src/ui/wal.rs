//! `GET /ui/api/wal/{shard}?n=20`: the last `n` messages of stream `WAL_<shard>`, as
//! `nats stream view` shows them — sequence, subject, time, headers and the JSON payload as
//! stored. Read from JetStream by sequence, newest first, so the cost is `n` small requests
//! whatever the WAL's length; the WAL streams do not allow direct get, so these go to the
//! stream leader, as the NATS CLI's do.

use std::time::Duration;

use async_nats::jetstream;
use futures::future::join_all;
use serde::Serialize;
use shardline::names::ShardId;
use shardline::wal::stream_name;
use shardline::ApiError;

/// Entries shown when the page does not ask for a number.
pub const DEFAULT_TAIL: u64 = 20;
/// Most entries one call returns.
pub const MAX_TAIL: u64 = 100;
const NATS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize)]
pub struct WalTail {
    pub shard: String,
    pub stream: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Oldest first.
    pub messages: Vec<WalMessage>,
    pub status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct WalMessage {
    pub seq: u64,
    pub subject: String,
    /// When JetStream stored it, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub headers: Vec<(String, String)>,
    /// The payload as text (lossy UTF-8): a JSON `WalEntry`.
    pub payload: String,
}

/// Parses the `n` query parameter.
pub fn tail_len(n: Option<&str>) -> Result<u64, ApiError> {
    match n {
        None => Ok(DEFAULT_TAIL),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if (1..=MAX_TAIL).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "n must be a whole number from 1 to {MAX_TAIL}"
            ))),
        },
    }
}

/// The sequences of the last `n` messages of a stream holding `[first, last]`, oldest first.
fn window(first: u64, last: u64, n: u64) -> std::ops::RangeInclusive<u64> {
    if last == 0 || last < first {
        #[allow(clippy::reversed_empty_ranges)]
        return 1..=0;
    }
    last.saturating_sub(n - 1).max(first).max(1)..=last
}

pub async fn tail(js: &jetstream::Context, shard: &ShardId, n: u64) -> Result<WalTail, ApiError> {
    let name = stream_name(shard);
    let unavailable = |e: String| ApiError::Unavailable(format!("stream {name}: {e}"));
    let stream = tokio::time::timeout(NATS_TIMEOUT, js.get_stream(&name))
        .await
        .map_err(|_| unavailable("NATS did not answer".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
    let state = &stream.cached_info().state;
    let (first, last) = (state.first_sequence, state.last_sequence);
    let fetched = join_all(window(first, last, n).map(|seq| {
        let (stream, name) = (&stream, &name);
        async move {
            match tokio::time::timeout(NATS_TIMEOUT, stream.get_raw_message(seq)).await {
                Ok(Ok(m)) => Some(WalMessage {
                    seq: m.sequence,
                    subject: m.subject.to_string(),
                    time_ms: (m.time.unix_timestamp_nanos() / 1_000_000) as i64,
                    headers: m
                        .headers
                        .iter()
                        .flat_map(|(k, vs)| {
                            vs.iter()
                                .map(move |v| (k.to_string(), v.as_str().to_owned()))
                        })
                        .collect(),
                    payload: String::from_utf8_lossy(&m.payload).into_owned(),
                }),
                // Deleted or purged meanwhile: shown as a gap, as the CLI does.
                Ok(Err(e)) => {
                    tracing::debug!(stream = %name, seq, error = %e, "no message");
                    None
                }
                Err(_) => None,
            }
        }
    }))
    .await;
    Ok(WalTail {
        shard: shard.to_string(),
        stream: name.clone(),
        first_seq: first,
        last_seq: last,
        messages: fetched.into_iter().flatten().collect(),
        status: "success",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_last_n_sequences_that_exist() {
        assert_eq!(window(1, 50, 20), 31..=50);
        assert_eq!(window(1, 5, 20), 1..=5);
        assert_eq!(window(40, 50, 20), 40..=50);
        assert!(window(0, 0, 20).is_empty());
        assert!(window(51, 50, 20).is_empty());
        assert_eq!(window(1, 1, 1), 1..=1);
    }

    #[test]
    fn n_is_bounded() {
        assert_eq!(tail_len(None).unwrap(), DEFAULT_TAIL);
        assert_eq!(tail_len(Some("5")).unwrap(), 5);
        for bad in ["0", "101", "-1", "x", ""] {
            assert!(tail_len(Some(bad)).is_err(), "{bad}");
        }
    }
}
