//! The live dashboard: `GET /ui` serves one page (HTML, CSS and plain JavaScript from
//! `gateway/assets/`, embedded in the binary: no CDN, no build step, works offline) that polls
//! the JSON endpoints below and draws the cluster. `GET /` redirects there.
//!
//! - `GET /ui/api/cluster?since=<event id>&wait_ms=<≤1000>` ([`view`]): shards, servers,
//!   replicas with applied sequence and lag, WAL lengths (the JetStream queries of `/status`),
//!   NATS state, and the events after `since`. With `wait_ms` it answers as soon as a new event exists, or after `wait_ms`:
//!   the page sees a failover at once and polls about once a second otherwise.
//! - `GET /ui/api/traffic` ([`traffic`]): writes and reads per second and their p99 over the
//!   last five minutes, from counters the metrics middleware keeps.
//! - `GET /ui/api/wal/{shard}?n=20` ([`wal`]): the tail of a shard's WAL.
//!
//! Everything is read-only: the page has no control that changes the cluster. The page sets
//! every piece of data with `textContent`, and is served with a Content-Security-Policy that
//! allows only its own script, so a value that looks like markup stays text.

pub mod events;
pub mod traffic;
pub mod view;
pub mod wal;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderName;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::join_all;
use shardline::names::ShardId;
use shardline::ApiError;

use crate::router::AppState;
use crate::status;
use crate::topology::{Topology, TopologyRx};
use view::ClusterView;

const HTML: &str = include_str!("../../assets/dashboard.html");
const CSS: &str = include_str!("../../assets/dashboard.css");
const JS: &str = include_str!("../../assets/dashboard.js");

/// Only the page's own script, style and API: injected markup could not run even if some
/// data reached the DOM as HTML.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Longest a `/ui/api/cluster` call waits for a new event.
const MAX_WAIT: Duration = Duration::from_millis(1000);

/// The dashboard's state in [`AppState`]: the event list, fed by a task that follows the
/// topology from the gateway's start, whether or not a page is open.
pub struct Dashboard {
    events: Arc<events::Events>,
}

impl Dashboard {
    /// Starts recording events; call once, in the runtime.
    pub fn spawn(topology: TopologyRx) -> Dashboard {
        Dashboard {
            events: events::spawn(topology),
        }
    }
}

/// The dashboard's routes, merged into the gateway's router.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(page))
        .route("/ui/dashboard.css", get(css))
        .route("/ui/dashboard.js", get(js))
        .route("/ui/api/cluster", get(cluster))
        .route("/ui/api/traffic", get(traffic))
        .route("/ui/api/wal/{shard}", get(wal_tail))
}

async fn page() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (HeaderName::from_static("content-security-policy"), CSP),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            (CACHE_CONTROL, "no-cache"),
        ],
        HTML,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `name=value` pairs of a query string; values here are numbers, so no percent-decoding.
fn param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn number(query: Option<&str>, name: &str) -> Result<Option<u64>, ApiError> {
    param(query, name)
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::BadRequest(format!("{name} must be a whole number")))
        })
        .transpose()
}

fn no_store(json: impl IntoResponse) -> Response {
    ([(CACHE_CONTROL, "no-store")], json).into_response()
}

async fn cluster(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let since = number(query.as_deref(), "since")?;
    let wait = number(query.as_deref(), "wait_ms")?.map(Duration::from_millis);
    let events = &state.ui.events;
    if let (Some(since), Some(wait)) = (since, wait) {
        if since == events.last_id() {
            events.wait_newer(since, wait.min(MAX_WAIT)).await;
        }
    }
    let nats = nats_state(&state);
    let topology = state.topology.borrow().clone();
    let (list, events_reset) = events.since(since);
    let mut view = ClusterView {
        state: "loading",
        nats,
        hint: None,
        example: None,
        revision: 0,
        now_ms: shardline::wal::now_ms(),
        shards: Vec::new(),
        servers: Vec::new(),
        key_space: None,
        last_event: list.last().map_or(events.last_id(), |e| e.id),
        events: list,
        events_reset,
    };
    match &*topology {
        Topology::Loading => {
            view.hint = Some(format!(
                "Waiting for the cluster metadata: NATS is {nats}, and the bucket {} may not \
                 exist yet (the manager creates it).",
                shardline::meta::META_BUCKET
            ))
        }
        Topology::Unconfigured => {
            view.state = "unconfigured";
            view.hint = Some(view::INIT_HINT.to_owned());
            view.example = Some(view::INIT_EXAMPLE);
        }
        Topology::Configured(c) => {
            view.state = "configured";
            view.revision = c.revision;
            // With NATS away, say so rather than wait for each stream's timeout.
            let mut acked = HashMap::new();
            let last = if nats == "connected" {
                let js = &state.jetstream;
                let replicas: Vec<_> = c
                    .meta
                    .servers
                    .iter()
                    .flat_map(|(name, s)| s.shards.iter().map(move |sh| (name, sh)))
                    .collect();
                let (last, floors) = tokio::join!(
                    join_all(c.meta.shards.iter().map(|s| status::last_seq(js, &s.id))),
                    join_all(
                        replicas
                            .iter()
                            .map(|(srv, sh)| status::ack_floor(js, sh, srv))
                    ),
                );
                for ((srv, sh), seq) in replicas.into_iter().zip(floors) {
                    if let Some(seq) = seq {
                        acked.insert((srv.as_str(), sh.as_str()), seq);
                    }
                }
                last
            } else {
                view.hint = Some(format!(
                    "NATS is {nats}: showing the last cluster metadata this gateway saw; WAL \
                     lengths and the WAL tail are unavailable."
                ));
                Vec::new()
            };
            (view.shards, view.servers) =
                view::render(&c.meta, &last, |srv, sh| acked.get(&(srv, sh)).copied());
            view.key_space = view::key_space(&c.meta);
        }
    }
    Ok(no_store(Json(view)))
}

/// The gateway's NATS connection, in a word.
fn nats_state(state: &AppState) -> &'static str {
    match state.jetstream.client().connection_state() {
        async_nats::connection::State::Connected => "connected",
        async_nats::connection::State::Disconnected => "disconnected",
        async_nats::connection::State::Pending => "pending",
    }
}

async fn traffic() -> Response {
    no_store(Json(traffic::snapshot()))
}

async fn wal_tail(
    State(state): State<Arc<AppState>>,
    Path(shard): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let shard = ShardId::parse(&shard).map_err(ApiError::BadRequest)?;
    let n = wal::tail_len(param(query.as_deref(), "n"))?;
    let topology = state.topology.borrow().clone();
    if topology.routing()?.meta.shard(shard.as_str()).is_none() {
        return Err(ApiError::NotFound(format!("no shard {shard}")));
    }
    let nats = nats_state(&state);
    if nats != "connected" {
        return Err(ApiError::Unavailable(format!(
            "NATS is {nats}: the WAL cannot be read"
        )));
    }
    let tail = wal::tail(&state.jetstream, &shard, n).await?;
    Ok(no_store(Json(tail)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shardline::meta::ClusterMeta;

    /// The assignment's A1 layout, no servers yet (the write module's fixture).
    pub(crate) fn a1() -> ClusterMeta {
        crate::write::tests::a1()
    }

    #[test]
    fn query_numbers() {
        let q = Some("since=12&wait_ms=800&x");
        assert_eq!(number(q, "since").unwrap(), Some(12));
        assert_eq!(number(q, "wait_ms").unwrap(), Some(800));
        assert_eq!(number(q, "n").unwrap(), None);
        assert!(number(Some("since=<b>"), "since").is_err());
        assert_eq!(number(None, "since").unwrap(), None);
    }

    /// The page must never turn data into markup: no API that parses HTML from a string.
    #[test]
    fn the_script_never_parses_data_as_html() {
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "createContextualFragment",
            "DOMParser",
        ] {
            assert!(!JS.contains(banned), "dashboard.js uses {banned}");
        }
        // No inline script or handler the CSP would have to allow.
        assert!(!HTML.contains("<script>"), "inline script");
        let handler = HTML.split(|c: char| c.is_whitespace()).find(|w| {
            w.strip_prefix("on")
                .and_then(|rest| rest.split_once('='))
                .is_some_and(|(name, _)| name.chars().all(|c| c.is_ascii_lowercase()))
        });
        assert_eq!(handler, None, "inline event handler");
        assert!(HTML.contains(r#"<script src="/ui/dashboard.js""#));
    }
}
