//! Which replica serves one shard's part of a ring read (`consistency: any`), and what happens
//! when it cannot: the choice on the shard's consistent-hash ring ([`choose`]) and the attempts
//! ([`from_ring`]). The sending is left to a closure, so the sequence is tested in-process
//! against scripted answers and against stand-in servers.

use std::future::Future;

use bytes::Bytes;
use shardline::names::ServerName;
use shardline::ring::HashRing;
use shardline::ApiError;

use crate::upstream::CallError;

/// The replica request `r` reads from: the first live one on the ring that is not `busy`, or,
/// if every live one is busy, the first live one.
pub fn choose(
    ring: &HashRing,
    r: u64,
    live: impl Fn(&ServerName) -> bool,
    busy: impl Fn(&ServerName) -> bool,
) -> Option<&ServerName> {
    ring.pick(r, |s| live(s) && !busy(s))
        .or_else(|| ring.pick(r, live))
}

/// Reads one shard's part with `send`, from the replica [`choose`] picks for request `r`;
/// when that one cannot serve (it refuses, e.g. `unavailable` because it is too far behind its
/// stream or recovering, or it cannot be reached, or it does not answer: a read changes
/// nothing, so that is safe), from the next live one on the ring, each replica at most once.
/// Replicas that are not `live` (not `up` in the metadata) are never asked. Only when none
/// serves: `unavailable`, naming the shard and every replica's reason. A request the replica
/// calls invalid (400, 413) is answered at once: another replica would say the same.
pub async fn from_ring<'r, F, Fut>(
    shard: &str,
    ring: &'r HashRing,
    r: u64,
    live: impl Fn(&ServerName) -> bool,
    busy: impl Fn(&ServerName) -> bool,
    mut send: F,
) -> Result<Bytes, ApiError>
where
    F: FnMut(&'r ServerName) -> Fut,
    Fut: Future<Output = Result<Bytes, CallError>>,
{
    // Empty until a replica fails: nothing is allocated on the usual path.
    let mut failed: Vec<(&ServerName, CallError)> = Vec::new();
    let mut next = choose(ring, r, &live, busy);
    // Bounded: every pass either returns or adds a replica to `failed`, which `pick` skips.
    while let Some(server) = next {
        match send(server).await {
            Ok(rows) => return Ok(rows),
            Err(CallError::Status(
                e @ (ApiError::BadRequest(_) | ApiError::PayloadTooLarge(_)),
            )) => return Err(e),
            Err(e) => {
                tracing::debug!(shard, %server, error = ?e, "replica cannot serve the read");
                failed.push((server, e));
            }
        }
        next = ring.pick(r, |s| live(s) && failed.iter().all(|(f, _)| *f != s));
        if next.is_some() {
            crate::metrics::retry(shard, "read_replica_failed");
        }
    }
    Err(none_serves(shard, ring, &live, &failed))
}

/// The 503 when no replica of `shard` served: each one's reason, those asked first.
fn none_serves(
    shard: &str,
    ring: &HashRing,
    live: impl Fn(&ServerName) -> bool,
    failed: &[(&ServerName, CallError)],
) -> ApiError {
    let mut reasons: Vec<String> = failed
        .iter()
        .map(|(server, e)| match e {
            CallError::Connect(e) => format!("{server} is unreachable: {e}"),
            CallError::Transport(e) => format!("{server} did not answer: {e}"),
            CallError::Status(e) => format!("{server}: {}", e.message()),
        })
        .collect();
    reasons.extend(
        ring.replicas()
            .iter()
            .filter(|s| !live(s))
            .map(|s| format!("{s} is not up")),
    );
    let reasons = reasons.join("; ");
    if failed.is_empty() {
        ApiError::Unavailable(format!("shard {shard} has no live replica: {reasons}"))
    } else {
        ApiError::Unavailable(format!(
            "shard {shard}: no replica can serve the read: {reasons}"
        ))
    }
}

#[cfg(test)]
mod tests;
