//! One HTTP exchange as the tests see it: `(status, body)`, never an error, so a test can
//! assert on (or record) whatever came back, including nothing at all.

use reqwest::Method;
use serde_json::Value;

/// Sends `method url` with an optional JSON body and returns `(status, body)`. The body is
/// parsed as JSON; a non-JSON body becomes `Value::String`, an empty one `Value::Null`. A
/// transport error (connection refused, timeout, the answer cut off) gives status `0` and
/// the error text as a string body: the request may or may not have reached the server.
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return (0, Value::String(format!("request to {url} failed: {e}"))),
    };
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(bytes) => (status, parse_body(&bytes)),
        Err(e) => (
            0,
            Value::String(format!("reading the answer from {url} failed: {e}")),
        ),
    }
}

/// An answer body as a `Value`: JSON if it parses, else the text; `Null` when empty.
pub fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}
