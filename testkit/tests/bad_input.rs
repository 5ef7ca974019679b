//! Table-driven bad inputs on every gateway endpoint. Each case must get its documented 4xx with
//! a JSON body `{"message", "status": "failure"}` whose message names the problem; nothing may be
//! written (rows over the full key range and `/status` unchanged; no server started or removed);
//! and every process stays up. Run with `--no-capture` to see each case's observed answer.

use std::time::Duration;

use futures::TryStreamExt;

use testkit::check::{self, failure};
use testkit::{json, LocalCluster, Value};

enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>),
}

struct Case {
    name: String,
    method: &'static str,
    path: String,
    body: Body,
    code: u16,
    needle: String,
}

fn case(
    name: impl Into<String>,
    method: &'static str,
    path: &str,
    body: Body,
    code: u16,
    needle: impl Into<String>,
) -> Case {
    Case {
        name: name.into(),
        method,
        path: path.to_string(),
        body,
        code,
        needle: needle.into(),
    }
}

fn j(v: Value) -> Body {
    Body::Json(v)
}

fn raw(s: &str) -> Body {
    Body::Raw(s.as_bytes().to_vec())
}

fn row(k: Value) -> Value {
    json!({"Stud_id": k, "Stud_name": "ABC", "Stud_marks": 57})
}

fn a1() -> Value {
    testkit::workload("a1")
}

fn a1_with(f: impl FnOnce(&mut Value)) -> Value {
    let mut v = a1();
    f(&mut v);
    v
}

/// A1 with Server0 renamed to `name`.
fn a1_server_named(name: &str) -> Value {
    a1_with(|v| {
        let servers = v["servers"].as_object_mut().unwrap();
        let shards = servers.remove("Server0").unwrap();
        servers.insert(name.to_string(), shards);
    })
}

const HOSTILE_NAMES: [(&str, &str); 7] = [
    ("space", "a b"),
    ("semicolon", "x;rm"),
    ("dotdot", "../x"),
    ("quote", "\""),
    ("unicode", "Sérvér0"),
    ("empty", ""),
    ("dot", "a.b"),
];

async fn send(c: &LocalCluster, case: &Case) -> (u16, Value) {
    let addr = c.gateway_url().trim_start_matches("http://").to_string();
    match &case.body {
        Body::None => check::raw_http(&addr, case.method, &case.path, None, b"").await,
        Body::Json(v) => {
            let bytes = serde_json::to_vec(v).unwrap();
            check::raw_http(
                &addr,
                case.method,
                &case.path,
                Some("application/json"),
                &bytes,
            )
            .await
        }
        Body::Raw(b) => {
            check::raw_http(&addr, case.method, &case.path, Some("application/json"), b).await
        }
    }
}

/// What must not change: every row, and /status without the replicas' progress.
async fn fingerprint(c: &LocalCluster) -> (Vec<Value>, Value, Vec<String>) {
    let rows = check::all_rows(c).await.unwrap_or_else(|e| panic!("{e}"));
    let mut st = check::status(c).await.unwrap_or_else(|e| panic!("{e}"));
    let obj = st.as_object_mut().unwrap();
    obj.remove("applied");
    obj.remove("health");
    (rows, st, c.server_names())
}

/// Runs the cases; returns a report line per case and the failures.
async fn run(c: &LocalCluster, cases: &[Case], configured: bool) -> (Vec<String>, Vec<String>) {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for case in cases {
        let before = if configured {
            fingerprint(c).await
        } else {
            (Vec::new(), json!(null), c.server_names())
        };
        let got = send(c, case).await;
        let msg = got.1["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| check::short(&got.1));
        report.push(format!(
            "{} {} [{}] -> {} {}",
            case.method,
            check::short(&Value::String(case.path.clone())),
            case.name,
            got.0,
            msg
        ));
        if let Err(e) = failure(&got, case.code, &case.needle) {
            failures.push(format!("[{}] {e}", case.name));
        }
        // Nothing written, nothing started or removed.
        if configured {
            let after = fingerprint(c).await;
            if after != before {
                failures.push(format!(
                    "[{}] changed the cluster: before {} / after {}",
                    case.name,
                    check::short(&json!([before.0.len(), before.1, before.2])),
                    check::short(&json!([after.0.len(), after.1, after.2])),
                ));
            }
        } else {
            let st = check::status(c).await.unwrap_or_else(|e| panic!("{e}"));
            if st["N"] != 0 || !c.server_names().is_empty() {
                failures.push(format!(
                    "[{}] configured something: {st} servers {:?}",
                    case.name,
                    c.server_names()
                ));
            }
        }
        // The gateway is still up after every case.
        if c.get("/healthz").await.0 != 200 {
            failures.push(format!(
                "[{}] gateway /healthz not 200 afterwards",
                case.name
            ));
        }
    }
    (report, failures)
}

fn init_cases() -> Vec<Case> {
    let mut v = vec![
        case(
            "malformed JSON",
            "POST",
            "/init",
            raw("{\"N\": 6,"),
            400,
            "not valid JSON",
        ),
        case("empty body", "POST", "/init", Body::None, 400, "empty"),
        case(
            "whitespace body",
            "POST",
            "/init",
            raw("  \n"),
            400,
            "empty",
        ),
        case(
            "array body",
            "POST",
            "/init",
            j(json!([1, 2])),
            400,
            "invalid",
        ),
        case(
            "missing N",
            "POST",
            "/init",
            j(a1_with(|v| {
                v.as_object_mut().unwrap().remove("N");
            })),
            400,
            "missing field `N`",
        ),
        case(
            "missing schema",
            "POST",
            "/init",
            j(a1_with(|v| {
                v.as_object_mut().unwrap().remove("schema");
            })),
            400,
            "schema",
        ),
        case(
            "extra field",
            "POST",
            "/init",
            j(a1_with(|v| v["extra"] = json!(1))),
            400,
            "unknown field `extra`",
        ),
        case(
            "N as string",
            "POST",
            "/init",
            j(a1_with(|v| v["N"] = json!("6"))),
            400,
            "`N`",
        ),
        case(
            "N negative",
            "POST",
            "/init",
            j(a1_with(|v| v["N"] = json!(-6))),
            400,
            "`N`",
        ),
        case(
            "N mismatch",
            "POST",
            "/init",
            j(a1_with(|v| v["N"] = json!(5))),
            400,
            "N is 5",
        ),
        case(
            "overlapping shard ranges",
            "POST",
            "/init",
            j(a1_with(|v| v["shards"][1]["Stud_id_low"] = json!(4000))),
            400,
            "overlap",
        ),
        case(
            "zero shard size",
            "POST",
            "/init",
            j(a1_with(|v| v["shards"][0]["Shard_size"] = json!(0))),
            400,
            "> 0",
        ),
        case(
            "negative shard size",
            "POST",
            "/init",
            j(a1_with(|v| v["shards"][0]["Shard_size"] = json!(-5))),
            400,
            "> 0",
        ),
        case(
            "range overflows i64",
            "POST",
            "/init",
            j(a1_with(|v| v["shards"][3]["Stud_id_low"] = json!(i64::MAX))),
            400,
            "overflow",
        ),
        case(
            "Stud_id_low as string",
            "POST",
            "/init",
            j(a1_with(|v| v["shards"][0]["Stud_id_low"] = json!("0"))),
            400,
            "Stud_id_low",
        ),
        case(
            "duplicate shard id",
            "POST",
            "/init",
            j(a1_with(|v| v["shards"][1]["Shard_id"] = json!("sh1"))),
            400,
            "sh1",
        ),
        case(
            "hostile shard id",
            "POST",
            "/init",
            j(a1_with(|v| v["shards"][0]["Shard_id"] = json!("../sh1"))),
            400,
            "Shard_id",
        ),
        case(
            "server names unknown shard",
            "POST",
            "/init",
            j(a1_with(|v| v["servers"]["Server0"] = json!(["sh1", "sh9"]))),
            400,
            "unknown shard sh9",
        ),
        case(
            "server lists a shard twice",
            "POST",
            "/init",
            j(a1_with(|v| v["servers"]["Server0"] = json!(["sh1", "sh1"]))),
            400,
            "twice",
        ),
        case(
            "server with no shards",
            "POST",
            "/init",
            j(a1_with(|v| v["servers"]["Server0"] = json!([]))),
            400,
            "at least one shard",
        ),
        case(
            "shard with no replica",
            "POST",
            "/init",
            j(
                json!({"N": 1, "schema": a1()["schema"], "shards": a1()["shards"], "servers": {"S0": ["sh1"]}}),
            ),
            400,
            "no replica",
        ),
        case(
            "no servers",
            "POST",
            "/init",
            j(a1_with(|v| {
                v["servers"] = json!({});
                v["N"] = json!(0);
            })),
            400,
            "server",
        ),
        case(
            "no shards",
            "POST",
            "/init",
            j(a1_with(|v| {
                v["shards"] = json!([]);
                v["servers"] = json!({"Server0": []});
                v["N"] = json!(1);
            })),
            400,
            "",
        ),
        case(
            "servers not an object",
            "POST",
            "/init",
            j(a1_with(|v| v["servers"] = json!(["Server0"]))),
            400,
            "servers",
        ),
        case(
            "key column is a String",
            "POST",
            "/init",
            j(a1_with(|v| v["schema"]["dtypes"][0] = json!("String"))),
            400,
            "Number",
        ),
        case(
            "unknown dtype",
            "POST",
            "/init",
            j(a1_with(|v| v["schema"]["dtypes"][2] = json!("Float"))),
            400,
            "Float",
        ),
        case(
            "columns/dtypes length differ",
            "POST",
            "/init",
            j(a1_with(|v| {
                v["schema"]["dtypes"] = json!(["Number", "String"])
            })),
            400,
            "dtypes",
        ),
        case(
            "hostile column name",
            "POST",
            "/init",
            j(a1_with(|v| {
                v["schema"]["columns"][1] = json!("name\"; DROP TABLE x;--")
            })),
            400,
            "column name",
        ),
        case(
            "duplicate column (case-insensitive)",
            "POST",
            "/init",
            j(a1_with(|v| v["schema"]["columns"][2] = json!("stud_NAME"))),
            400,
            "duplicate column",
        ),
        case(
            "placeholder name too long",
            "POST",
            "/init",
            j(a1_server_named(&format!("Server[{}]", "9".repeat(200)))),
            400,
            "too long",
        ),
    ];
    for (what, name) in HOSTILE_NAMES {
        v.push(case(
            format!("server name {what} {name:?}"),
            "POST",
            "/init",
            j(a1_server_named(name)),
            400,
            "server name",
        ));
    }
    v.push(case(
        "server name 200 chars",
        "POST",
        "/init",
        j(a1_server_named(&"S".repeat(200))),
        400,
        "server name",
    ));
    v
}

fn data_cases() -> Vec<Case> {
    let mut v = vec![
        // /init on a configured cluster.
        case("second /init", "POST", "/init", j(a1()), 409, "already configured"),
        // /write
        case("malformed JSON", "POST", "/write", raw("{\"data\": [ {\"Stud_id\": 1,"), 400, "not valid JSON"),
        case("empty body", "POST", "/write", Body::None, 400, "empty"),
        case("body is a string", "POST", "/write", j(json!("data")), 400, "JSON object"),
        case("missing data", "POST", "/write", j(json!({})), 400, "missing field `data`"),
        case("extra field", "POST", "/write", j(json!({"data": [row(json!(100))], "x": 1})), 400, "unknown field `x`"),
        case("data not an array", "POST", "/write", j(json!({"data": row(json!(100))})), 400, "`data` must be an array"),
        case("data empty", "POST", "/write", j(json!({"data": []})), 400, "empty"),
        case("row not an object", "POST", "/write", j(json!({"data": [5]})), 400, "data[0]"),
        case("Stud_id as string \"57\"", "POST", "/write", j(json!({"data": [row(json!("57"))]})), 400, "Stud_id"),
        case("Stud_id 1.5", "POST", "/write", j(json!({"data": [row(json!(1.5))]})), 400, "64-bit"),
        case("Stud_id 2^63", "POST", "/write", raw("{\"data\": [{\"Stud_id\": 9223372036854775808, \"Stud_name\": \"A\", \"Stud_marks\": 1}]}"), 400, "64-bit"),
        case("Stud_id 1e3", "POST", "/write", raw("{\"data\": [{\"Stud_id\": 1e3, \"Stud_name\": \"A\", \"Stud_marks\": 1}]}"), 400, "Stud_id"),
        case("Stud_id null", "POST", "/write", j(json!({"data": [row(Value::Null)]})), 400, "Stud_id"),
        case("Stud_marks as string", "POST", "/write",
            j(json!({"data": [{"Stud_id": 100, "Stud_name": "A", "Stud_marks": "57"}]})), 400, "Stud_marks"),
        case("Stud_name as number", "POST", "/write",
            j(json!({"data": [{"Stud_id": 100, "Stud_name": 7, "Stud_marks": 57}]})), 400, "Stud_name"),
        case("missing column", "POST", "/write",
            j(json!({"data": [{"Stud_id": 100, "Stud_name": "A"}]})), 400, "Stud_marks"),
        case("unknown column", "POST", "/write",
            j(json!({"data": [{"Stud_id": 100, "Stud_name": "A", "Stud_marks": 1, "Age": 3}]})), 400, "Age"),
        case("negative key outside every shard", "POST", "/write", j(json!({"data": [row(json!(-1))]})), 400, "outside every shard"),
        case("key just past the last shard", "POST", "/write", j(json!({"data": [row(json!(16384))]})), 400, "outside every shard"),
        case("i64::MIN key", "POST", "/write", j(json!({"data": [row(json!(i64::MIN))]})), 400, "outside every shard"),
        case("good rows + one outside", "POST", "/write",
            j(json!({"data": [row(json!(100)), row(json!(5000)), row(json!(-7))]})), 400, "data[2]"),
        case("good rows + one mistyped", "POST", "/write",
            j(json!({"data": [row(json!(100)), row(json!(5000)), row(json!("9000"))]})), 400, "data[2]"),
        case("duplicate key in the request", "POST", "/write",
            j(json!({"data": [row(json!(100)), row(json!(9000)), row(json!(100))]})), 409, "100"),
        case("existing key + new keys", "POST", "/write",
            j(json!({"data": [row(json!(101)), row(json!(10)), row(json!(102))]})), 409, "10"),
        case("batch over the limit", "POST", "/write",
            j(json!({"data": (0..10_001).map(|k| row(json!(k))).collect::<Vec<_>>()})), 400, "at most 10000"),
        // /update
        case("malformed JSON", "PUT", "/update", raw("{\"Stud_id\": 10 \"data\": {}}"), 400, "not valid JSON"),
        case("empty body", "PUT", "/update", Body::None, 400, "empty"),
        case("missing Stud_id", "PUT", "/update", j(json!({"data": row(json!(10))})), 400, "missing field `Stud_id`"),
        case("missing data", "PUT", "/update", j(json!({"Stud_id": 10})), 400, "missing field `data`"),
        case("extra field", "PUT", "/update", j(json!({"Stud_id": 10, "data": row(json!(10)), "upsert": true})), 400, "unknown field `upsert`"),
        case("Stud_id as string", "PUT", "/update", j(json!({"Stud_id": "10", "data": row(json!(10))})), 400, "Stud_id"),
        case("data key differs", "PUT", "/update", j(json!({"Stud_id": 10, "data": row(json!(11))})), 400, "cannot change"),
        case("data not a full row", "PUT", "/update", j(json!({"Stud_id": 10, "data": {"Stud_id": 10, "Stud_marks": 3}})), 400, "Stud_name"),
        case("data marks as string", "PUT", "/update", j(json!({"Stud_id": 10, "data": {"Stud_id": 10, "Stud_name": "A", "Stud_marks": "3"}})), 400, "Stud_marks"),
        case("key outside every shard", "PUT", "/update", j(json!({"Stud_id": -3, "data": row(json!(-3))})), 404, "-3"),
        // /del
        case("malformed JSON", "DELETE", "/del", raw("{Stud_id: 10}"), 400, "not valid JSON"),
        case("empty body", "DELETE", "/del", Body::None, 400, "empty"),
        case("missing Stud_id", "DELETE", "/del", j(json!({})), 400, "missing field `Stud_id`"),
        case("extra field", "DELETE", "/del", j(json!({"Stud_id": 10, "cascade": true})), 400, "unknown field `cascade`"),
        case("Stud_id as string", "DELETE", "/del", j(json!({"Stud_id": "10"})), 400, "Stud_id"),
        case("Stud_id 1.5", "DELETE", "/del", j(json!({"Stud_id": 1.5})), 400, "64-bit"),
        case("key outside every shard", "DELETE", "/del", j(json!({"Stud_id": -1})), 404, "-1"),
        // /read
        case("malformed JSON", "POST", "/read", raw("{\"Stud_id\": {\"low\": 1"), 400, "not valid JSON"),
        case("empty body", "POST", "/read", Body::None, 400, "empty"),
        case("GET with empty body", "GET", "/read", Body::None, 400, "empty"),
        case("low > high", "POST", "/read", j(json!({"Stud_id": {"low": 10, "high": 1}})), 400, "greater than"),
        case("low > high (GET)", "GET", "/read", j(json!({"Stud_id": {"low": 10, "high": 1}})), 400, "greater than"),
        case("missing high", "POST", "/read", j(json!({"Stud_id": {"low": 1}})), 400, "Stud_id.high"),
        case("low as string", "POST", "/read", j(json!({"Stud_id": {"low": "1", "high": 5}})), 400, "Stud_id.low"),
        case("high 2^63", "POST", "/read", raw("{\"Stud_id\": {\"low\": 1, \"high\": 9223372036854775808}}"), 400, "64-bit"),
        case("range not an object", "POST", "/read", j(json!({"Stud_id": [1, 5]})), 400, "must be an object"),
        case("extra field", "POST", "/read", j(json!({"Stud_id": {"low": 1, "high": 5}, "limit": 3})), 400, "unknown field `limit`"),
        case("extra range field", "POST", "/read", j(json!({"Stud_id": {"low": 1, "high": 5, "step": 2}})), 400, "Stud_id.step"),
        case("bad consistency", "POST", "/read", j(json!({"Stud_id": {"low": 1, "high": 5}, "consistency": "strong"})), 400, "consistency"),
        // /read/{server}
        case("unknown server", "GET", "/read/Server99", Body::None, 404, "Server99"),
        case("unknown server (POST)", "POST", "/read/Server99", j(json!({})), 404, "Server99"),
        case("dotdot", "GET", "/read/..", Body::None, 404, ""),
        case("percent-encoded dotdot", "GET", "/read/%2E%2E", Body::None, 404, ""),
        case("percent-encoded slash", "GET", "/read/Server0%2F..%2FServer1", Body::None, 404, "not found"),
        case("encoded traversal", "GET", "/read/..%2F..%2Fetc%2Fpasswd", Body::None, 404, "not found"),
        case("encoded NUL", "GET", "/read/Server0%00", Body::None, 404, "not found"),
        case("hostile chars", "GET", "/read/x;rm%20-rf", Body::None, 404, "not found"),
        case("empty server", "GET", "/read/", Body::None, 404, ""),
        // /add
        case("malformed JSON", "POST", "/add", raw("{\"n\": 1, "), 400, "not valid JSON"),
        case("empty body", "POST", "/add", Body::None, 400, "empty"),
        case("missing n", "POST", "/add", j(json!({"servers": {"Server9": ["sh1"]}})), 400, "missing field `n`"),
        case("missing servers", "POST", "/add", j(json!({"n": 1})), 400, "servers"),
        case("n as string", "POST", "/add", j(json!({"n": "1", "servers": {"Server9": ["sh1"]}})), 400, "`n`"),
        case("extra field", "POST", "/add", j(json!({"n": 1, "servers": {"Server9": ["sh1"]}, "force": true})), 400, "unknown field `force`"),
        case("n > servers listed", "POST", "/add", j(json!({"n": 3, "servers": {"Server9": ["sh1"]}})), 400,
            "<Error> Number of new servers (n) is greater than newly added instances"),
        case("n < servers listed", "POST", "/add", j(json!({"n": 1, "servers": {"Server9": ["sh1"], "Server10": ["sh2"]}})), 400, "n is 1"),
        case("existing server", "POST", "/add", j(json!({"n": 1, "servers": {"Server0": ["sh1"]}})), 409, "Server0"),
        case("unknown shard", "POST", "/add", j(json!({"n": 1, "servers": {"Server9": ["sh9"]}})), 400, "unknown shard sh9"),
        case("new shard overlaps", "POST", "/add", j(json!({"n": 1,
            "new_shards": [{"Stud_id_low": 16000, "Shard_id": "sh5", "Shard_size": 4096}],
            "servers": {"Server9": ["sh5"]}})), 400, "overlap"),
        case("new shard redefines sh1", "POST", "/add", j(json!({"n": 1,
            "new_shards": [{"Stud_id_low": 16384, "Shard_id": "sh1", "Shard_size": 4096}],
            "servers": {"Server9": ["sh1"]}})), 400, "twice"),
        case("new shard without replica", "POST", "/add", j(json!({"n": 1,
            "new_shards": [{"Stud_id_low": 16384, "Shard_id": "sh5", "Shard_size": 4096}],
            "servers": {"Server9": ["sh1"]}})), 400, "no replica"),
        case("new shard size 0", "POST", "/add", j(json!({"n": 1,
            "new_shards": [{"Stud_id_low": 16384, "Shard_id": "sh5", "Shard_size": 0}],
            "servers": {"Server9": ["sh5"]}})), 400, "> 0"),
        case("nothing to add", "POST", "/add", j(json!({"n": 0, "servers": {}})), 400, "nothing to add"),
        case("server name 200 chars", "POST", "/add", j(json!({"n": 1, "servers": {"S".repeat(200): ["sh1"]}})), 400, "server name"),
        // /rm
        case("malformed JSON", "DELETE", "/rm", raw("{\"n\": }"), 400, "not valid JSON"),
        case("empty body", "DELETE", "/rm", Body::None, 400, "empty"),
        case("missing n", "DELETE", "/rm", j(json!({"servers": ["Server0"]})), 400, "missing field `n`"),
        case("n as string", "DELETE", "/rm", j(json!({"n": "1", "servers": ["Server0"]})), 400, "`n`"),
        case("servers not a list", "DELETE", "/rm", j(json!({"n": 1, "servers": "Server0"})), 400, "servers"),
        case("extra field", "DELETE", "/rm", j(json!({"n": 1, "servers": ["Server0"], "all": true})), 400, "unknown field `all`"),
        case("more names than n", "DELETE", "/rm", j(json!({"n": 1, "servers": ["Server0", "Server1"]})), 400,
            "<Error> Length of server list is more than removable instances"),
        case("unknown server", "DELETE", "/rm", j(json!({"n": 1, "servers": ["Server99"]})), 404, "Server99"),
        case("hostile unknown server", "DELETE", "/rm", j(json!({"n": 1, "servers": ["../Server0"]})), 404, "../Server0"),
        case("n > cluster size", "DELETE", "/rm", j(json!({"n": 7})), 400, "only 6"),
        case("last replica of sh1", "DELETE", "/rm", j(json!({"n": 3, "servers": ["Server0", "Server2", "Server4"]})), 409, "no replica"),
        // Routing.
        case("wrong method", "GET", "/write", Body::None, 405, "not allowed"),
        case("unknown route", "POST", "/nope", j(json!({})), 404, "no route"),
    ];
    for (what, name) in HOSTILE_NAMES {
        v.push(case(
            format!("/add server name {what} {name:?}"),
            "POST",
            "/add",
            j(json!({"n": 1, "servers": {name: ["sh1"]}})),
            400,
            "server name",
        ));
    }
    // An update/delete of a missing key is refused before it reaches the log: /status,
    // wal_last_seq included, must not move.
    v.push(case(
        "update of unknown key",
        "PUT",
        "/update",
        j(json!({"Stud_id": 4000, "data": row(json!(4000))})),
        404,
        "4000",
    ));
    v.push(case(
        "del of unknown key",
        "DELETE",
        "/del",
        j(json!({"Stud_id": 4001})),
        404,
        "4001",
    ));
    // Within the body limit, but its log entry is over nats-server's max_payload (1 MiB
    // here): refused whole, before anything reaches the log.
    let wide = "w".repeat(3_500);
    let rows: Vec<Value> = (0..350)
        .map(|i| json!({"Stud_id": 1001 + 2 * i, "Stud_name": wide, "Stud_marks": 1}))
        .collect();
    v.push(case(
        "write whose log entry exceeds max_payload",
        "POST",
        "/write",
        j(json!({ "data": rows })),
        413,
        "log takes at most",
    ));
    // Body limit (default 8 MiB).
    let big = "x".repeat(9 << 20);
    for path in ["/write", "/init", "/read"] {
        let method = if path == "/read" { "GET" } else { "POST" };
        v.push(case(
            format!("body > 8 MiB on {path}"),
            method,
            path,
            j(json!({"data": [{"Stud_id": 1, "Stud_name": big, "Stud_marks": 1}]})),
            413,
            "larger than",
        ));
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_are_rejected_and_change_nothing() {
    let mut c = LocalCluster::start().await;

    // Before /init: bad /init bodies configure nothing.
    let (mut report, mut failures) = run(&c, &init_cases(), false).await;
    // Data endpoints before /init.
    let r = c.post("/write", json!({"data": [row(json!(1))]})).await;
    report.push(format!(
        "POST /write [before /init] -> {} {}",
        r.0, r.1["message"]
    ));
    if let Err(e) = failure(&r, 503, "not configured") {
        failures.push(format!("[write before init] {e}"));
    }

    // ...and created no WAL stream.
    let js = async_nats::jetstream::new(async_nats::connect(c.nats().url()).await.unwrap());
    let streams: Vec<String> = js.stream_names().try_collect().await.unwrap();
    assert!(
        streams.iter().all(|s| !s.starts_with("WAL_")),
        "rejected /init bodies created streams: {streams:?}"
    );

    c.init(a1()).await;
    let seed: Vec<Value> = (0..40).map(|i| row(json!(i * 400 + 10))).collect();
    let (code, body) = c.post("/write", json!({"data": seed})).await;
    assert_eq!(code, 200, "{body}");
    check::wait_converged(&c, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let start = check::all_rows(&c).await.unwrap();
    assert_eq!(start.len(), 40);

    // A read outside every shard is not an error: an empty answer.
    let (code, body) = c
        .post("/read", json!({"Stud_id": {"low": -100, "high": -1}}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"], json!([]));

    let (r2, f2) = run(&c, &data_cases(), true).await;
    report.extend(r2);
    failures.extend(f2);

    eprintln!("=== observed answers ===\n{}", report.join("\n"));
    // Nothing written overall; replicas still agree; every process up.
    assert_eq!(check::all_rows(&c).await.unwrap(), start);
    check::wait_converged(&c, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    check::replicas_identical(&c)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.get("/healthz").await.0, 200, "gateway down");
    assert_eq!(c.manager_get("/healthz").await.0, 200, "manager down");
    assert!(c.manager().is_running(), "manager exited");
    assert!(c.gateway().is_running(), "gateway exited");
    assert!(
        failures.is_empty(),
        "{} bad-input case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
