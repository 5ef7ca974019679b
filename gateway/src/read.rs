//! `POST|GET /read` (a key range over every overlapping shard, in parallel, each from one
//! replica picked on the shard's ring, or from its primary at the `primary` and `linearizable`
//! levels) and `GET|POST /read/{server}` (everything one server holds).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use hyper::Method;
use serde_json::value::RawValue;
use serde_json::Value;
use shardline::body::{bad, int, kind, object, only_fields, required, ApiJson};
use shardline::internal::{KeyRange, ReadLevel, ReadRequest, ReadResponse, ServerRows, Status};
use shardline::meta::ClusterMeta;
use shardline::names::{ColumnName, ServerName, ShardId};
use shardline::ApiError;

pub mod replicas;

use crate::router::AppState;
use crate::topology::Routing;
use crate::upstream::{self, CallError};

/// How a read picks a shard's replica on the ring (`--read-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadPolicy {
    /// The gateway's own id on the ring: one replica per shard, overflowing to the next.
    Affinity,
    /// A random id per read.
    Spread,
}

/// A validated read: the part of the range each overlapping shard owns, in key order.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadPlan {
    pub consistency: ReadLevel,
    pub parts: Vec<ShardRange>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ShardRange {
    pub shard: ShardId,
    /// Inclusive bounds, clipped to the shard's range.
    pub low: i64,
    pub high: i64,
}

/// Validates `{"<key>": {"low": int, "high": int},
/// "consistency"?: "any"|"primary"|"linearizable"}`.
pub fn plan(meta: &ClusterMeta, body: &Value) -> Result<ReadPlan, ApiError> {
    let key = meta.schema.key();
    let obj = object(body)?;
    only_fields(obj, &[key, "consistency"], "")?;
    let range = required(obj, "", key)?;
    let range = range.as_object().ok_or_else(|| {
        bad(format!(
            "`{key}` must be an object {{\"low\": <integer>, \"high\": <integer>}}, got {}",
            kind(range)
        ))
    })?;
    only_fields(range, &["low", "high"], key)?;
    let low = bound(key, range, "low")?;
    let high = bound(key, range, "high")?;
    if low > high {
        return Err(bad(format!(
            "`{key}.low` ({low}) is greater than `{key}.high` ({high})"
        )));
    }
    let consistency = match obj.get("consistency") {
        None | Some(Value::Null) => ReadLevel::Any,
        Some(Value::String(s)) if s == "any" => ReadLevel::Any,
        Some(Value::String(s)) if s == "primary" => ReadLevel::Primary,
        Some(Value::String(s)) if s == "linearizable" => ReadLevel::Linearizable,
        Some(other) => {
            return Err(bad(format!(
                "`consistency` must be one of \"any\" (the default), \"primary\", \"linearizable\"; got {other}"
            )))
        }
    };
    let parts = meta
        .overlapping(low, high)
        .map(|s| ShardRange {
            shard: s.id.clone(),
            low: low.max(s.low),
            high: high.min(s.end() - 1),
        })
        .collect();
    Ok(ReadPlan { consistency, parts })
}

/// `<key>.<field>` of a read body, as [`int`] reads it; the field's name for the message is only
/// built when it fails.
fn bound(key: &str, range: &serde_json::Map<String, Value>, field: &str) -> Result<i64, ApiError> {
    let v = required(range, key, field)?;
    v.as_i64()
        .map_or_else(|| int(&format!("{key}.{field}"), v), Ok)
}

pub async fn read(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let topology = state.topology.borrow().clone();
    let routing = topology.routing()?;
    let plan = plan(&routing.meta, &body)?;
    let key = crate::write::key_column(&routing.meta)?;
    let reads = plan
        .parts
        .iter()
        .map(|part| read_part(&state, routing, &key, part, plan.consistency));
    let answers = futures::future::try_join_all(reads).await?;
    // The servers' rows are spliced into the answer as they came, not decoded and
    // re-encoded: only their boundaries are found.
    let mut parts: Vec<Rows> = Vec::with_capacity(answers.len());
    for (answer, part) in answers.iter().zip(&plan.parts) {
        parts.push(rows_of(answer).map_err(|e| {
            ApiError::Unavailable(format!(
                "shard {}: the replica answered badly: {e}",
                part.shard
            ))
        })?);
    }
    let count: usize = parts.iter().map(|p| p.count).sum();
    // A cap rather than pagination: keys are dense integers, so a client narrows the range.
    let max = state.config.max_read_rows;
    if count > max {
        return Err(bad(format!(
            "the `{key}` range matched {count} rows; at most {max} are returned by one /read \
             (SHARDLINE_MAX_READ_ROWS): read a narrower range"
        )));
    }
    let queried: Vec<&str> = plan.parts.iter().map(|p| p.shard.as_str()).collect();
    let mut out = String::with_capacity(answers.iter().map(|a| a.len()).sum::<usize>() + 64);
    out.push_str(r#"{"shards_queried":"#);
    out.push_str(&serde_json::to_string(&queried).unwrap_or_else(|_| "[]".into()));
    out.push_str(r#","data":["#);
    let mut first = true;
    for p in parts.iter().filter(|p| p.count > 0) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&p.rows);
    }
    out.push_str(r#"],"status":"success"}"#);
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// One shard server's rows in a `/read` answer: their JSON text, comma-separated as the server
/// wrote them (`count` of them).
#[derive(Debug, PartialEq)]
struct Rows<'a> {
    rows: std::borrow::Cow<'a, str>,
    count: usize,
}

/// The rows of a shard server's `/read` answer ([`ReadResponse`]). The servers write it as
/// `{"data":[<rows>],"status":"success"}`; in that form the rows are found by [`split_rows`],
/// a scan of the JSON structure, which costs a fraction of a parse (a `/read` of 50 rows spent
/// about a third of the gateway's instructions parsing them). Any other form, or one the scan
/// does not accept, is parsed in full, with the parser's error.
fn rows_of(answer: &[u8]) -> Result<Rows<'_>, serde_json::Error> {
    let fast = std::str::from_utf8(answer).ok().and_then(|text| {
        let inner = text
            .strip_prefix(r#"{"data":["#)?
            .strip_suffix(r#"],"status":"success"}"#)?;
        let count = split_rows(inner)?;
        Some(Rows {
            rows: inner.into(),
            count,
        })
    });
    if let Some(rows) = fast {
        return Ok(rows);
    }
    let parsed: ReadResponse<&RawValue> = serde_json::from_slice(answer)?;
    let joined: Vec<&str> = parsed.data.iter().map(|r| r.get()).collect();
    Ok(Rows {
        count: joined.len(),
        rows: joined.join(",").into(),
    })
}

/// How many JSON values the comma-separated list `inner` holds, found by following strings
/// (with their escapes) and nesting only; `None` (parse it instead) when a string or a
/// bracket is left open, a bracket closes that was not opened, or a value is empty. The
/// values themselves are not checked: they are the shard server's own JSON text
/// (`Store::read_range_into`).
fn split_rows(inner: &str) -> Option<usize> {
    let b = inner.as_bytes();
    if b.is_empty() {
        return Some(0);
    }
    // The open brackets, innermost in bit 0 (set for `{`); deeper than 64 is left to the
    // parser.
    let (mut open, mut depth) = (0u64, 0u32);
    let (mut count, mut start, mut i) = (0usize, 0usize, 0usize);
    // Bounded: `i` grows on every pass.
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                // Bounded: `i` grows on every pass.
                loop {
                    i = quote_or_backslash(b, i)?;
                    if b[i] == b'"' {
                        break;
                    }
                    i += 2;
                }
            }
            c @ (b'{' | b'[') => {
                if depth == 64 {
                    return None;
                }
                open = open << 1 | u64::from(c == b'{');
                depth += 1;
            }
            c @ (b'}' | b']') => {
                if depth == 0 || (open & 1 == 1) != (c == b'}') {
                    return None;
                }
                open >>= 1;
                depth -= 1;
            }
            b',' if depth == 0 => {
                if i == start {
                    return None;
                }
                count += 1;
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    (depth == 0 && start < b.len()).then_some(count + 1)
}

/// The position of the first `"` or `\` in `b` from `i` on: eight bytes at a time, as most
/// of a row's text is strings (its column names).
fn quote_or_backslash(b: &[u8], mut i: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while i + 8 <= b.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&b[i..i + 8]);
        let w = u64::from_le_bytes(word);
        // A byte of `q` (`s`) is zero where `w` has a quote (backslash); the lowest high bit
        // set by "has a zero byte" marks the first one.
        let q = w ^ (ONES * u64::from(b'"'));
        let s = w ^ (ONES * u64::from(b'\\'));
        let found = ((q.wrapping_sub(ONES) & !q) | (s.wrapping_sub(ONES) & !s)) & HIGH;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|p| i + p)
}

/// Reads one shard's part: from its primary for `primary` and `linearizable`, otherwise from a
/// replica on the ring, going on to the next one while a replica cannot serve
/// ([`replicas::from_ring`]).
async fn read_part(
    state: &Arc<AppState>,
    routing: &Routing,
    key: &ColumnName,
    part: &ShardRange,
    consistency: ReadLevel,
) -> Result<Bytes, ApiError> {
    let shard = part.shard.as_str();
    routing.check_not_frozen(shard)?;
    let req = upstream::encode(&ReadRequest {
        shard: part.shard.clone(),
        key: key.clone(),
        value: KeyRange {
            low: part.low,
            high: part.high,
        },
        data: None,
    })?;

    // The primary's answer is passed on as it came, like a replica's. The level goes along in
    // the query: the primary checks it leads the current term (and, for `linearizable`, that
    // it has applied everything the stream held when the read arrived). A read changes
    // nothing, so nothing it answers leaves anything in doubt: `unavailable`, never
    // `outcome_unknown`.
    if consistency != ReadLevel::Any {
        let path = server_path(consistency);
        return upstream::to_primary(state, shard, upstream::Kind::Read, Method::POST, path, req)
            .await
            .map_err(|e| match e {
                ApiError::OutcomeUnknown(m) => ApiError::Unavailable(m),
                e => e,
            });
    }

    // The most rows the part can match: how much room it takes in a `/read_batch`.
    let width =
        usize::try_from(part.high.saturating_sub(part.low).saturating_add(1)).unwrap_or(usize::MAX);
    let ring = routing
        .ring(shard)
        .ok_or_else(|| ApiError::Unavailable(format!("shard {shard} has no replica")))?;
    let (request_id, overflow) = match state.config.read_policy {
        ReadPolicy::Affinity => (state.read_id, state.config.read_overflow as usize),
        ReadPolicy::Spread => (rand::random(), usize::MAX),
    };
    replicas::from_ring(
        shard,
        ring,
        request_id,
        |s| routing.is_up(s.as_str()),
        |s| routing.reads_in_flight(s.as_str()) >= overflow,
        |server| fetch(state, routing, server, &req, width),
    )
    .await
}

/// The shard server's `/read` for `level`: the level in the query, none for `any`.
pub fn server_path(level: ReadLevel) -> &'static str {
    match level {
        ReadLevel::Any => "/read",
        ReadLevel::Primary => "/read?consistency=primary",
        ReadLevel::Linearizable => "/read?consistency=linearizable",
    }
}

/// One `any`-level read from `server`: through its read lane (so it may share a
/// `/read_batch` with others), or on its own when reads are not coalesced.
async fn fetch(
    state: &Arc<AppState>,
    routing: &Routing,
    server: &ServerName,
    req: &Bytes,
    width: usize,
) -> Result<Bytes, CallError> {
    let target = routing
        .target(server.as_str())
        .ok_or_else(|| CallError::Connect(format!("server {server} has no address")))?;
    let _in_flight = routing.start_read(server.as_str());
    if state.read_lanes.enabled() {
        return crate::coalesce::read(state, server, req.clone(), width).await;
    }
    upstream::call(
        &state.upstream,
        Method::POST,
        target.uri(server_path(ReadLevel::Any)),
        Some(req.clone()),
    )
    .await
}

/// Every row of every shard `server` holds, read from that server: its `/read_all` answer,
/// in the same shape.
pub async fn read_server(
    State(state): State<Arc<AppState>>,
    server: Result<Path<String>, PathRejection>,
) -> Result<Json<ServerRows>, ApiError> {
    // A percent-encoding that is not UTF-8 gets the API's JSON 400, not axum's plain text.
    let Path(server) = server.map_err(|e| bad(format!("invalid server name in the path: {e}")))?;
    let topology = state.topology.borrow().clone();
    let routing = topology.routing()?;
    let target = routing
        .target(&server)
        .ok_or_else(|| ApiError::NotFound(format!("server {server} not found")))?;
    let answer = upstream::call(&state.upstream, Method::GET, target.uri("/read_all"), None)
        .await
        .map_err(|e| match e {
            CallError::Connect(e) | CallError::Transport(e) => {
                ApiError::Unavailable(format!("server {server} is unreachable: {e}"))
            }
            CallError::Status(e) => e,
        })?;
    let mut rows: ServerRows = upstream::decode(&answer)
        .map_err(|e| ApiError::Unavailable(format!("server {server}'s answer {e}")))?;
    rows.status = Status::Success;
    Ok(Json(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::tests::a1;
    use serde_json::json;

    fn msg(body: Value) -> String {
        plan(&a1(), &body).unwrap_err().message()
    }

    #[test]
    fn ranges_are_split_by_shard_in_key_order() {
        let p = plan(&a1(), &json!({"Stud_id": {"low": 1000, "high": 8889}})).unwrap();
        assert_eq!(p.consistency, ReadLevel::Any);
        let got: Vec<_> = p
            .parts
            .iter()
            .map(|r| (r.shard.as_str(), r.low, r.high))
            .collect();
        assert_eq!(
            got,
            [
                ("sh1", 1000, 4095),
                ("sh2", 4096, 8191),
                ("sh3", 8192, 8889)
            ]
        );
        let p = plan(
            &a1(),
            &json!({"Stud_id": {"low": 5, "high": 5}, "consistency": "primary"}),
        )
        .unwrap();
        assert_eq!(p.consistency, ReadLevel::Primary);
        assert_eq!(p.parts.len(), 1);
        // Outside every shard: nothing to read, not an error.
        let p = plan(&a1(), &json!({"Stud_id": {"low": -10, "high": -1}})).unwrap();
        assert!(p.parts.is_empty());
        let p = plan(
            &a1(),
            &json!({"Stud_id": {"low": i64::MIN, "high": i64::MAX}}),
        )
        .unwrap();
        assert_eq!(p.parts.len(), 4);
        assert_eq!(p.parts[3].high, 16383);
    }

    #[test]
    fn every_read_level_is_accepted_and_another_value_names_them() {
        let level = |c: Value| {
            plan(
                &a1(),
                &json!({"Stud_id": {"low": 1, "high": 2}, "consistency": c}),
            )
        };
        assert_eq!(level(json!(null)).unwrap().consistency, ReadLevel::Any);
        assert_eq!(level(json!("any")).unwrap().consistency, ReadLevel::Any);
        assert_eq!(
            level(json!("primary")).unwrap().consistency,
            ReadLevel::Primary
        );
        assert_eq!(
            level(json!("linearizable")).unwrap().consistency,
            ReadLevel::Linearizable
        );
        for other in [json!("strong"), json!("Primary"), json!(1), json!(["any"])] {
            let e = level(other.clone()).unwrap_err();
            assert_eq!(e.code(), shardline::ErrorCode::BadRequest);
            assert_eq!(
                e.message(),
                format!(
                    "`consistency` must be one of \"any\" (the default), \"primary\", \"linearizable\"; got {other}"
                )
            );
        }
    }

    #[test]
    fn server_rows_are_counted_and_kept_as_written() {
        let answer = |rows: &str| format!(r#"{{"data":[{rows}],"status":"success"}}"#);
        for (rows, count) in [
            ("", 0),
            (r#"{"Stud_id":1}"#, 1),
            (r#"{"Stud_id":1,"n":"a"},{"Stud_id":2,"n":"b"}"#, 2),
            // Commas, brackets, quotes and backslashes inside strings are not structure.
            (r#"{"n":"a,]}[{"},{"n":"q\",\\"},{"n":"\\"}"#, 3),
            (r#"{"a":[1,2,{"b":[3]}]},[4,5],"x,y",7"#, 4),
        ] {
            let text = answer(rows);
            let got = rows_of(text.as_bytes()).unwrap();
            assert_eq!((got.rows.as_ref(), got.count), (rows, count), "{text}");
            // The same as a full parse finds.
            let parsed: ReadResponse<&RawValue> = serde_json::from_str(&text).unwrap();
            assert_eq!(parsed.data.len(), count);
        }
        // Not in the servers' own form: parsed in full, with the same result.
        let got = rows_of(br#"{ "status": "success", "data": [ {"a": 1} , 2 ] }"#).unwrap();
        assert_eq!((got.rows.as_ref(), got.count), (r#"{"a": 1},2"#, 2));
    }

    #[test]
    fn the_first_quote_or_backslash_is_found_at_every_offset() {
        for len in 0..20 {
            for at in 0..len {
                for c in [b'"', b'\\'] {
                    let mut text = vec![b'a'; len];
                    text[at] = c;
                    // A later one, and bytes that differ from them by one bit, are not first.
                    if at + 2 < len {
                        text[at + 2] = b'"';
                    }
                    if at > 0 {
                        text[at - 1] = b'"' ^ 0x80;
                    }
                    for from in 0..=at {
                        assert_eq!(quote_or_backslash(&text, from), Some(at), "{text:?} {from}");
                    }
                }
            }
            assert_eq!(quote_or_backslash(&vec![b'!'; len], 0), None);
        }
        assert_eq!(quote_or_backslash(b"ab", 5), None);
    }

    #[test]
    fn a_garbled_server_answer_is_an_error() {
        for bad in [
            r#"{"data":[{"a":1},,{"b":2}],"status":"success"}"#,
            r#"{"data":[{"a":1},],"status":"success"}"#,
            r#"{"data":[{"a":"open],"status":"success"}"#,
            r#"{"data":[{"a":1}}],"status":"success"}"#,
            r#"{"data":[{"a":[1}],"status":"success"}"#,
            r#"{"data":[1,2]"#,
            "",
            "\u{0}\u{ff}",
        ] {
            assert!(rows_of(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(rows_of(b"{\"data\":[\"\xff\"],\"status\":\"success\"}").is_err());
    }

    #[test]
    fn bad_read_bodies_are_named() {
        assert!(msg(json!({"Stud_id": {"low": 9, "high": 1}})).contains("greater than"));
        assert!(msg(json!({})).contains("missing field `Stud_id`"));
        assert!(msg(json!({"Stud_id": {"low": 1}})).contains("`Stud_id.high`"));
        assert!(msg(json!({"Stud_id": {"low": "1", "high": 2}})).contains("Stud_id.low"));
        assert!(msg(json!({"Stud_id": {"low": 1.5, "high": 2}})).contains("64-bit"));
        assert!(msg(json!({"Stud_id": 5})).contains("must be an object"));
        assert!(msg(json!({"Stud_id": {"low": 1, "high": 2, "mid": 1}})).contains("`Stud_id.mid`"));
        assert!(
            msg(json!({"Stud_id": {"low": 1, "high": 2}, "x": 1, "y": 2}))
                .contains("unknown fields `x`, `y`")
        );
        assert!(
            msg(json!({"Stud_id": {"low": 1, "high": 2}, "consistency": "strong"}))
                .contains("consistency")
        );
        assert!(msg(json!([1])).contains("JSON object"));
        assert!(msg(json!({"stud_id": {"low": 1, "high": 2}})).contains("unknown field `stud_id`"));
    }
}
