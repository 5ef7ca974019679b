//! [`LocalCluster`]'s HTTP helpers: requests to the gateway or the manager, `/init` and
//! waiting for readiness.

use std::borrow::Borrow;
use std::future::Future;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::LocalCluster;
use crate::wait::wait_until;
use crate::READY_TIMEOUT;

impl LocalCluster {
    /// Sends a request and returns `(status, body)`. `url` is absolute, or a path
    /// (`/read`) on the gateway. The body is parsed as JSON; a non-JSON body becomes
    /// `Value::String`, an empty one `Value::Null`. A transport error (connection refused,
    /// timeout) gives status `0` and the error text as a string body. Never panics
    /// (see [`crate::http::send`]).
    pub async fn request(&self, method: Method, url: &str, body: Option<&Value>) -> (u16, Value) {
        let url = if url.starts_with('/') {
            format!("{}{url}", self.gateway_url())
        } else {
            url.to_string()
        };
        crate::http::send(&self.client, method, &url, body).await
    }

    /// `GET <gateway><path>` without a body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(Method::GET, path, None).await
    }
    /// The gateway's `/status` once it answers 200, polling every 100 ms for at most `within`;
    /// panics with the last answer otherwise.
    pub async fn status_within(&self, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (code, st) = self.get("/status").await;
            if code == 200 {
                return st;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/status did not answer 200: {:?}",
                (code, st)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET` with a JSON body (the assignment's `GET /read` style).
    pub async fn get_json(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        self.request(Method::GET, path, Some(body.borrow())).await
    }
    pub async fn post(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        self.request(Method::POST, path, Some(body.borrow())).await
    }
    pub async fn put(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        self.request(Method::PUT, path, Some(body.borrow())).await
    }
    pub async fn delete(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        self.request(Method::DELETE, path, Some(body.borrow()))
            .await
    }
    /// `GET <manager><path>`.
    pub async fn manager_get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.manager_url());
        self.request(Method::GET, &url, None).await
    }
    /// `POST <manager><path>`.
    pub async fn manager_post(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.manager_url());
        self.request(Method::POST, &url, Some(body.borrow())).await
    }

    /// `POST /init` on the gateway, asserting 200, then waits until `GET /readyz` is 200
    /// (every shard has a primary). Returns the `/init` response body.
    pub async fn init(&self, body: impl Borrow<Value>) -> Value {
        let (status, resp) = self.post("/init", body).await;
        assert_eq!(status, 200, "POST /init failed: {resp}\n{}", self.reports());
        self.wait_ready(READY_TIMEOUT).await;
        resp
    }

    /// Waits until the gateway's `GET /readyz` answers 200; panics after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        let ok = wait_until(timeout, || async { self.get("/readyz").await.0 == 200 }).await;
        if !ok {
            let last = self.get("/readyz").await;
            panic!(
                "gateway not ready within {timeout:?}: last /readyz = {last:?}\n{}",
                self.reports()
            );
        }
    }

    /// [`wait_until`] as a method, for symmetry.
    pub async fn wait_until<F, Fut>(&self, timeout: Duration, f: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        wait_until(timeout, f).await
    }
}
