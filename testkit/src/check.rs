//! Generic checks over a running [`LocalCluster`]: replica agreement, WAL progress,
//! failure-body shape, and raw HTTP for requests `reqwest` would normalise or re-encode.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{LocalCluster, POLL_INTERVAL};

/// `GET /status`, insisting on a 200.
pub async fn status(c: &LocalCluster) -> Result<Value, String> {
    let (code, body) = c.get("/status").await;
    if code != 200 {
        return Err(format!("GET /status answered {code}: {body}"));
    }
    Ok(body)
}

/// Shard id → the servers holding a replica of it, from a `/status` body.
pub fn replicas_of(status: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in status["shards"].as_array().into_iter().flatten() {
        if let Some(id) = s["Shard_id"].as_str() {
            out.entry(id.to_string()).or_default();
        }
    }
    for (server, shards) in status["servers"].as_object().into_iter().flatten() {
        for sh in shards.as_array().into_iter().flatten() {
            if let Some(sh) = sh.as_str() {
                out.entry(sh.to_string()).or_default().push(server.clone());
            }
        }
    }
    out
}

/// The primary of `shard` named in a `/status` body.
pub fn primary_of(status: &Value, shard: &str) -> Option<String> {
    status["shards"]
        .as_array()?
        .iter()
        .find(|s| s["Shard_id"] == shard)?["primary"]
        .as_str()
        .map(str::to_string)
}

/// Every row of every shard `server` holds, via the gateway's `GET /read/{server}`.
pub async fn server_rows(
    c: &LocalCluster,
    server: &str,
) -> Result<BTreeMap<String, Value>, String> {
    let (code, body) = c.get(&format!("/read/{server}")).await;
    if code != 200 {
        return Err(format!("GET /read/{server} answered {code}: {body}"));
    }
    let obj = body
        .as_object()
        .ok_or_else(|| format!("GET /read/{server}: not an object: {body}"))?;
    Ok(obj
        .iter()
        .filter(|(k, _)| k.as_str() != "status")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

/// For every shard, every replica's rows (via `/read/<server>`) equal each other. Returns
/// shard → its rows on success, or a description of the first difference.
pub async fn replicas_identical(c: &LocalCluster) -> Result<BTreeMap<String, Vec<Value>>, String> {
    let st = status(c).await?;
    let mut held: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for server in st["servers"].as_object().into_iter().flatten().map(|e| e.0) {
        held.insert(server.clone(), server_rows(c, server).await?);
    }
    let mut out = BTreeMap::new();
    for (shard, servers) in replicas_of(&st) {
        let mut reference: Option<(&str, Vec<Value>)> = None;
        for server in &servers {
            let rows = held[server]
                .get(&shard)
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| format!("/read/{server} has no array for its shard {shard}"))?;
            match &reference {
                None => reference = Some((server, rows)),
                Some((first, want)) if *want != rows => {
                    return Err(format!(
                        "shard {shard}: replica {server} differs from {first}: {} rows vs {} rows\n\
                         {server}: {}\n{first}: {}",
                        rows.len(),
                        want.len(),
                        short(&Value::Array(rows.clone())),
                        short(&Value::Array(want.clone())),
                    ));
                }
                Some(_) => {}
            }
        }
        out.insert(shard, reference.map(|r| r.1).unwrap_or_default());
    }
    Ok(out)
}

/// `Ok(())` if every replica of every shard reports (in `/status`'s `applied`) the shard's
/// `wal_last_seq`, otherwise a description of who lags.
pub fn converged(st: &Value) -> Result<(), String> {
    let mut lag = Vec::new();
    for (shard, servers) in replicas_of(st) {
        let last = st["shards"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["Shard_id"] == shard.as_str())
            .map(|s| s["wal_last_seq"].clone())
            .unwrap_or(Value::Null);
        if !last.is_u64() {
            lag.push(format!("{shard}: wal_last_seq unknown ({last})"));
            continue;
        }
        for server in servers {
            let applied = &st["applied"][&server][&shard];
            if *applied != last {
                lag.push(format!("{server}/{shard}: applied {applied}, last {last}"));
            }
        }
    }
    if lag.is_empty() {
        Ok(())
    } else {
        Err(lag.join("; "))
    }
}

/// Waits until [`converged`] holds; returns that `/status` body, or the last lag report.
pub async fn wait_converged(c: &LocalCluster, timeout: Duration) -> Result<Value, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let why = match status(c).await {
            Ok(st) => match converged(&st) {
                Ok(()) => return Ok(st),
                Err(e) => e,
            },
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("not converged after {timeout:?}: {why}"));
        }
        tokio::time::sleep(POLL_INTERVAL * 4).await;
    }
}

/// Every row in the whole key space, via `POST /read` over `[i64::MIN, i64::MAX]`.
pub async fn all_rows(c: &LocalCluster) -> Result<Vec<Value>, String> {
    let (code, body) = c
        .post(
            "/read",
            json!({"Stud_id": {"low": i64::MIN, "high": i64::MAX}}),
        )
        .await;
    match body["data"].as_array() {
        Some(rows) if code == 200 => Ok(rows.clone()),
        _ => Err(format!("full-range /read answered {code}: {body}")),
    }
}

/// Checks a failure answer: the status, `"status": "failure"`, a string `message`
/// containing `needle` (case-insensitively).
pub fn failure(got: &(u16, Value), code: u16, needle: &str) -> Result<(), String> {
    let (status, body) = got;
    let msg = body["message"].as_str().unwrap_or_default();
    if *status != code {
        return Err(format!("expected {code}, got {status}: {body}"));
    }
    if body["status"] != "failure" {
        return Err(format!("expected \"status\": \"failure\", got {body}"));
    }
    if !msg.to_lowercase().contains(&needle.to_lowercase()) {
        return Err(format!("message {msg:?} does not contain {needle:?}"));
    }
    Ok(())
}

/// Sends one raw HTTP/1.1 request to `addr` (`host:port`) exactly as given — no path
/// normalisation, no re-encoding, any body bytes — and returns `(status, body)` with the
/// body parsed like [`LocalCluster::request`] does (status 0 on transport errors).
pub async fn raw_http(
    addr: &str,
    method: &str,
    target: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let fut = async {
        let s = tokio::net::TcpStream::connect(addr).await?;
        let (mut rd, mut wr) = s.into_split();
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        // Write and read at once: the server may answer (e.g. 413) and close before it has
        // read the whole body.
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&req).await;
            wr
        });
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if buf.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        writer.abort();
        Ok::<_, std::io::Error>(buf)
    };
    let buf = match tokio::time::timeout(Duration::from_secs(30), fut).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return (0, Value::String(format!("raw request failed: {e}"))),
        Err(_) => return (0, Value::String("raw request timed out".into())),
    };
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        return (code, Value::Null);
    };
    let rest = if head.to_lowercase().contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    if rest.is_empty() {
        return (code, Value::Null);
    }
    (
        code,
        serde_json::from_str(&rest).unwrap_or(Value::String(rest)),
    )
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A value's JSON, cut to 300 characters for messages.
pub fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() <= 300 {
        s
    } else {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} chars)", &s[..end], s.len())
    }
}
