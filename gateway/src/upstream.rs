//! Calls from the gateway to shard servers and the manager: pooled HTTP clients, decoding
//! of their answers (a failure body becomes the same [`ApiError`] the server meant, code
//! included), and routing of a request to a shard's primary with one retry after a failover.
//! The retry logic is pure over the call results ([`after_first`], [`after_second`]) and the
//! metadata channel ([`wait_for_primary`]), so it is tested in-process with paused time.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use shardline::names::ServerName;
use shardline::ApiError;
use tokio::time::Instant;

use crate::router::AppState;
use crate::topology::{Target, TopologyRx};

/// The client for the shard servers: pooled keep-alive HTTP/1.1 connections to every server.
#[derive(Clone)]
pub struct Client {
    inner: LegacyClient<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

pub fn client(timeout: Duration) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    let inner = LegacyClient::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector);
    Client { inner, timeout }
}

/// The client for the manager (admin calls, each with its own timeout).
pub fn manager_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        // The manager never redirects: a 3xx is an answer, not a hop.
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// How a call failed.
#[derive(Debug, Clone)]
pub enum CallError {
    /// No connection could be made: the request never reached the server, so it is safe to
    /// send it elsewhere.
    Connect(String),
    /// Sent, but no usable answer came back (timeout, reset, garbled body): the outcome is
    /// unknown.
    Transport(String),
    /// The server answered with a failure status.
    Status(ApiError),
}

/// Encodes a request body once (a retry re-sends the same bytes).
pub fn encode<B: Serialize + ?Sized>(body: &B) -> Result<Bytes, ApiError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(format!("cannot encode the request: {e}")))
}

/// Decodes a successful answer with its `internal` type; the error completes "the answer …".
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("does not decode: {e}"))
}

/// Sends one request with an optional JSON body and returns a successful answer's bytes
/// undecoded (the caller decodes them, or passes them on).
pub async fn call(
    http: &Client,
    method: Method,
    uri: Uri,
    body: Option<Bytes>,
) -> Result<Bytes, CallError> {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(json) => {
            req = req.header(CONTENT_TYPE, "application/json");
            Full::new(json)
        }
        None => Full::default(),
    };
    // Not sent at all: as safe to send elsewhere as a refused connection.
    let req = req
        .body(body)
        .map_err(|e| CallError::Connect(format!("invalid request: {e}")))?;
    let exchange = async {
        let resp = http.inner.request(req).await.map_err(|e| {
            if e.is_connect() {
                CallError::Connect(chain(&e))
            } else {
                CallError::Transport(chain(&e))
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| CallError::Transport(chain(&e)))?
            .to_bytes();
        if !status.is_success() {
            return Err(CallError::Status(error_from(status.as_u16(), &bytes)));
        }
        Ok(bytes)
    };
    tokio::time::timeout(http.timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(CallError::Transport(format!(
                "no answer within {} ms",
                http.timeout.as_millis()
            )))
        })
}

/// The error a failure answer stands for, keeping its code, message (and a 421's primary).
pub fn error_from(status: u16, bytes: &[u8]) -> ApiError {
    if let Ok(body) = serde_json::from_slice::<shardline::error::ErrorBody>(bytes) {
        return error_from_body(status, body);
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("HTTP {status}")
    } else {
        text.chars().take(500).collect()
    };
    ApiError::from_status(status, message)
}

/// The error a decoded failure body stands for.
pub fn error_from_body(status: u16, body: shardline::error::ErrorBody) -> ApiError {
    let message = match body.message {
        Value::String(m) => m,
        other => other.to_string(),
    };
    match body.code {
        Some(code) => ApiError::from_code(code, message, body.primary),
        None if status == 421 => ApiError::NotPrimary {
            message,
            primary: body.primary,
        },
        None => ApiError::from_status(status, message),
    }
}

/// An error with its causes, which reqwest and hyper keep out of their own `Display`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Whether a request sent to a primary changes anything: that decides when it may be sent a
/// second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A write: sent again only when it certainly reached no primary (421, no connection).
    Write,
    /// A read: it changes nothing, so one that got no answer is sent again too, and a last
    /// attempt without an answer is `unavailable`, never `outcome_unknown`.
    Read,
}

/// Sends `body` (encoded by [`encode`]) to the primary of `shard` and returns its answer's
/// bytes. When the primary refuses (421: it is not, or not yet, the primary) or cannot be
/// reached (for a [`Kind::Read`], also when it does not answer), waits a bounded time for the
/// metadata to name another primary and tries once more ([`failover`]). `path` may carry a
/// query (`/read?consistency=primary`).
pub async fn to_primary(
    state: &AppState,
    shard: &str,
    kind: Kind,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Bytes, ApiError> {
    state.topology.borrow().routing()?.check_not_frozen(shard)?;
    let send = |target: Target| {
        call(
            &state.upstream,
            method.clone(),
            target.uri(path),
            Some(body.clone()),
        )
    };
    failover(
        state.topology.clone(),
        shard,
        kind,
        state.config.failover_wait(),
        send,
    )
    .await
}

/// The attempts of [`to_primary`], with the sending left to `send` (so the sequence can be
/// tested without a network): the current primary, then, if [`after_first`] (or, for a read,
/// [`read_after_first`]) says so, the one [`wait_for_primary`] finds within `wait`.
pub async fn failover<F, Fut>(
    mut rx: TopologyRx,
    shard: &str,
    kind: Kind,
    wait: Duration,
    mut send: F,
) -> Result<Bytes, ApiError>
where
    F: FnMut(Target) -> Fut,
    Fut: Future<Output = Result<Bytes, CallError>>,
{
    let current = rx.borrow_and_update().routing()?.primary(shard);
    let first = match current {
        Some(t) => t,
        None => wait_for_primary(&mut rx, shard, None, None, wait).await?,
    };
    let answer = send(first.clone()).await;
    let next = match kind {
        Kind::Write => after_first(shard, &first.name, answer),
        Kind::Read => read_after_first(shard, &first.name, answer),
    };
    let hint = match next {
        Next::Done(answer) => return answer,
        Next::Retry { hint, reason } => {
            crate::metrics::retry(shard, reason);
            hint
        }
    };
    let second = wait_for_primary(&mut rx, shard, Some(&first.name), hint, wait).await?;
    let answer = send(second.clone()).await;
    match kind {
        Kind::Write => after_second(shard, &second.name, answer),
        Kind::Read => read_after_second(shard, &second.name, answer),
    }
}

/// What to do after the first attempt at a shard's primary.
#[derive(Debug)]
pub enum Next {
    /// The answer is final: a success, or a failure to pass on.
    Done(Result<Bytes, ApiError>),
    /// The request certainly reached no primary: send it again to another one, preferring
    /// `hint` (the primary named by a refusing server). `reason` labels the retry metric.
    Retry {
        hint: Option<String>,
        reason: &'static str,
    },
}

/// The retry decision: retry only when the request certainly was not applied (a 421
/// refusal, or no connection made). A request that was sent but got no answer is never
/// retried: it may have been committed, and a second attempt could report a false conflict.
pub fn after_first(shard: &str, server: &ServerName, result: Result<Bytes, CallError>) -> Next {
    match result {
        Ok(answer) => Next::Done(Ok(answer)),
        Err(CallError::Status(ApiError::NotPrimary { message, primary })) => {
            tracing::debug!(shard, %server, %message, "not the primary; retrying");
            Next::Retry {
                hint: primary,
                reason: "not_primary",
            }
        }
        Err(CallError::Connect(e)) => {
            tracing::debug!(shard, %server, error = %e, "primary unreachable; retrying");
            Next::Retry {
                hint: None,
                reason: "primary_unreachable",
            }
        }
        Err(CallError::Transport(e)) => Next::Done(Err(unknown_outcome(shard, server, &e))),
        Err(CallError::Status(e)) => Next::Done(Err(e)),
    }
}

/// The answer after the second (last) attempt: a refusal or a connection never made is
/// `unavailable` (certainly not applied), no answer is `outcome_unknown`.
pub fn after_second(
    shard: &str,
    server: &ServerName,
    result: Result<Bytes, CallError>,
) -> Result<Bytes, ApiError> {
    match result {
        Ok(answer) => Ok(answer),
        Err(CallError::Status(ApiError::NotPrimary { message, .. })) => {
            Err(ApiError::Unavailable(format!(
                "shard {shard}: {server} refused as not the primary ({message}); an election may be in progress, retry later"
            )))
        }
        Err(CallError::Connect(e)) => Err(ApiError::Unavailable(format!(
            "shard {shard}: primary {server} is unreachable: {e}"
        ))),
        Err(CallError::Transport(e)) => Err(unknown_outcome(shard, server, &e)),
        Err(CallError::Status(e)) => Err(e),
    }
}

/// [`after_first`] for a read: a read changes nothing, so one sent without an answer is as
/// safe to send again as one that was refused.
pub fn read_after_first(
    shard: &str,
    server: &ServerName,
    result: Result<Bytes, CallError>,
) -> Next {
    match result {
        Err(CallError::Transport(e)) => {
            tracing::debug!(shard, %server, error = %e, "no answer to a read; retrying");
            Next::Retry {
                hint: None,
                reason: "primary_no_answer",
            }
        }
        result => after_first(shard, server, result),
    }
}

/// [`after_second`] for a read: no answer is `unavailable` (nothing was changed).
pub fn read_after_second(
    shard: &str,
    server: &ServerName,
    result: Result<Bytes, CallError>,
) -> Result<Bytes, ApiError> {
    match result {
        Err(CallError::Transport(e)) => Err(ApiError::Unavailable(format!(
            "shard {shard}: primary {server} did not answer the read ({e})"
        ))),
        result => after_second(shard, server, result),
    }
}

fn unknown_outcome(shard: &str, server: &ServerName, e: &str) -> ApiError {
    ApiError::OutcomeUnknown(format!(
        "shard {shard}: primary {server} did not answer ({e}); the request may or may not have been applied"
    ))
}

/// The shard's primary once the metadata names one other than `avoid`, waiting at most
/// `wait`. If the metadata does not move in time, falls back to `hint` (the primary named by
/// a refusing server) and then to whatever primary the metadata names; `no_primary` when it
/// names none.
pub async fn wait_for_primary(
    rx: &mut TopologyRx,
    shard: &str,
    avoid: Option<&ServerName>,
    hint: Option<String>,
    wait: Duration,
) -> Result<Target, ApiError> {
    let deadline = Instant::now() + wait;
    loop {
        let found = rx.borrow_and_update().routing()?.primary(shard);
        if let Some(p) = found.filter(|p| Some(&p.name) != avoid) {
            return Ok(p);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => break,
        }
    }
    let topology = rx.borrow().clone();
    let routing = topology.routing()?;
    if let Some(h) = hint
        .and_then(|h| routing.target(&h))
        .filter(|h| Some(&h.name) != avoid)
    {
        return Ok(h);
    }
    routing
        .primary(shard)
        .ok_or_else(|| ApiError::NoPrimary(format!("shard {shard} has no primary")))
}

#[cfg(test)]
mod tests;
