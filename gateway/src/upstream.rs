//! Calls from the gateway to shard servers and the manager: pooled HTTP clients, decoding
//! of their answers (a failure body becomes the same [`ApiError`] the server meant), and
//! routing of a request to a shard's primary with one retry after a failover.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{json, Value};
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
#[derive(Debug)]
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

/// Sends one request with an optional JSON body and decodes a JSON answer.
pub async fn call(
    http: &Client,
    method: Method,
    uri: Uri,
    body: Option<&Value>,
) -> Result<Value, CallError> {
    let bytes = call_raw(http, method, uri, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| CallError::Transport(format!("the answer is not valid JSON: {e}")))
}

/// Sends one request with an optional JSON body and returns a successful answer's bytes
/// undecoded (for answers the gateway only passes on).
pub async fn call_raw(
    http: &Client,
    method: Method,
    uri: Uri,
    body: Option<&Value>,
) -> Result<Bytes, CallError> {
    let mut req = Request::builder().method(method).uri(uri);
    let body = match body {
        Some(body) => {
            req = req.header(CONTENT_TYPE, "application/json");
            let json = serde_json::to_vec(body)
                .map_err(|e| CallError::Connect(format!("cannot encode the request: {e}")))?;
            Full::new(Bytes::from(json))
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
        let message = match body.message {
            Value::String(m) => m,
            other => other.to_string(),
        };
        return match body.code {
            Some(code) => ApiError::from_code(code, message, body.primary),
            None if status == 421 => ApiError::NotPrimary {
                message,
                primary: body.primary,
            },
            None => ApiError::from_status(status, message),
        };
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

/// Sends `body` to the primary of `shard`. When the primary refuses (421: it is not, or not
/// yet, the primary) or cannot be reached, waits a bounded time for the metadata to name
/// another primary and tries once more. A request that was sent but got no answer is not
/// retried: it may have been committed, and a second attempt could report a false conflict.
pub async fn to_primary(
    state: &AppState,
    shard: &str,
    method: Method,
    path: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let mut rx = state.topology.clone();
    let wait = state.config.failover_wait();
    let current = rx.borrow_and_update().cluster()?.primary(shard);
    let first = match current {
        Some(t) => t,
        None => wait_for_primary(&mut rx, shard, None, None, wait).await?,
    };
    let hint = match call(&state.upstream, method.clone(), first.uri(path), Some(body)).await {
        Ok(v) => return Ok(v),
        Err(CallError::Status(ApiError::NotPrimary { message, primary })) => {
            tracing::debug!(shard, server = %first.name, %message, "not the primary; retrying");
            crate::metrics::retry(shard, "not_primary");
            primary
        }
        Err(CallError::Connect(e)) => {
            tracing::debug!(shard, server = %first.name, error = %e, "primary unreachable; retrying");
            crate::metrics::retry(shard, "primary_unreachable");
            None
        }
        Err(CallError::Transport(e)) => return Err(unknown_outcome(shard, &first.name, &e)),
        Err(CallError::Status(e)) => return Err(e),
    };
    let second = wait_for_primary(&mut rx, shard, Some(&first.name), hint, wait).await?;
    match call(&state.upstream, method, second.uri(path), Some(body)).await {
        Ok(v) => Ok(v),
        Err(CallError::Status(ApiError::NotPrimary { message, .. })) => {
            Err(ApiError::Unavailable(format!(
                "shard {shard}: {} refused as not the primary ({message}); an election may be in progress, retry later",
                second.name
            )))
        }
        Err(CallError::Connect(e)) => Err(ApiError::Unavailable(format!(
            "shard {shard}: primary {} is unreachable: {e}",
            second.name
        ))),
        Err(CallError::Transport(e)) => Err(unknown_outcome(shard, &second.name, &e)),
        Err(CallError::Status(e)) => Err(e),
    }
}

fn unknown_outcome(shard: &str, server: &ServerName, e: &str) -> ApiError {
    ApiError::OutcomeUnknown(format!(
        "shard {shard}: primary {server} did not answer ({e}); the request may or may not have been applied"
    ))
}

/// The shard's primary once the metadata names one other than `avoid`, waiting at most
/// `wait`. If the metadata does not move in time, falls back to `hint` (the primary named by
/// a refusing server) and then to whatever primary the metadata names.
async fn wait_for_primary(
    rx: &mut TopologyRx,
    shard: &str,
    avoid: Option<&ServerName>,
    hint: Option<String>,
    wait: Duration,
) -> Result<Target, ApiError> {
    let deadline = Instant::now() + wait;
    loop {
        let found = rx.borrow_and_update().cluster()?.primary(shard);
        if let Some(p) = found.filter(|p| Some(&p.name) != avoid) {
            return Ok(p);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => break,
        }
    }
    let topology = rx.borrow().clone();
    let cluster = topology.cluster()?;
    if let Some(h) = hint
        .and_then(|h| cluster.target(&h))
        .filter(|h| Some(&h.name) != avoid)
    {
        return Ok(h);
    }
    cluster
        .primary(shard)
        .ok_or_else(|| ApiError::Unavailable(format!("shard {shard} has no primary")))
}
