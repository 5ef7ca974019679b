//! The load phases' HTTP client: hyper's pooled keep-alive HTTP/1.1 client, used directly.
//! The load generator shares the two cores with the system it measures, so every microsecond
//! it spends per request is taken from the cluster; reqwest re-parses each URL twice and wraps
//! each request in layers a load loop does not need (setup and verification still use it).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Longest one request may take before it counts as a transport error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct LoadClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl LoadClient {
    /// A client keeping up to `max_idle` connections open to the gateway.
    pub fn new(max_idle: usize) -> LoadClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(max_idle)
            .build(connector);
        LoadClient { inner }
    }

    /// POSTs a JSON body; the status and the whole answer, or `None` if no answer came.
    pub async fn post_json(&self, uri: Uri, body: Bytes) -> Option<(u16, Bytes)> {
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .ok()?;
        let exchange = async {
            let resp = self.inner.request(req).await.ok()?;
            let status = resp.status().as_u16();
            let answer = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, answer))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .ok()
            .flatten()
    }
}
