//! `GET /openapi.json`: an OpenAPI 3.1 description of the gateway's API (shared/API.md),
//! generated with `utoipa` from the types and operation stubs below.
//!
//! Bodies whose field names come from the cluster's schema (the key column is `Stud_id` only
//! because the assignment's schema says so) cannot be Rust types of the handlers, which work
//! on JSON values. So, as in garage's `openapi.rs`, the operations are described here on
//! stub functions, with the assignment's schema as the documented one. A unit test keeps this
//! description and the router in step: every route is documented and every documented
//! operation is routed. The fuzz test (`testkit/tests/fuzz.rs`) checks the live gateway's
//! answers against it with schemathesis.

use std::collections::BTreeMap;

use axum::Json;
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use schemas::*;

/// `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "shardline gateway",
        description = "The public HTTP API of shardline, a sharded replicated record store \
            (the CS60002 sharded-database assignment's API, extended). Bodies are JSON; every \
            failure is `{\"message\": ..., \"status\": \"failure\"}`. Row and key field names \
            follow the schema given at /init; this description uses the assignment's schema \
            (`Stud_id` Number, `Stud_name` String, `Stud_marks` Number).",
        license(name = "MIT")
    ),
    paths(
        ops::init,
        ops::status,
        ops::add,
        ops::rm,
        ops::read_post,
        ops::read_get,
        ops::read_server_get,
        ops::read_server_post,
        ops::write,
        ops::update,
        ops::del,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi_json,
    ),
    components(schemas(
        Failure, Message, Row, KeyRange, ReadRequest, ReadResponse, WriteRequest, UpdateRequest,
        DeleteRequest, SchemaDoc, ShardSpecDoc, InitRequestDoc, AddRequestDoc, AddResponse,
        RmRequestDoc, RmResponse, RmMessage, StatusResponse, ShardStatus, ReadyResponse,
    )),
    modifiers(&AdminToken),
    tags(
        (name = "admin", description = "Cluster configuration; forwarded to the manager"),
        (name = "data", description = "Reads and writes of rows"),
        (name = "ops", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// The optional bearer token of `/init`, `/add`, `/rm` (`SHARDLINE_ADMIN_TOKEN`).
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Required on /init, /add and /rm only when the gateway runs with \
                         SHARDLINE_ADMIN_TOKEN set; compared in constant time.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The documented bodies; only their shape matters, they are never built.
#[allow(dead_code)]
mod schemas {
    use super::*;

    #[derive(Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum FailureStatus {
        Failure,
    }

    #[derive(Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum SuccessStatus {
        Success,
    }

    /// The assignment's spelling for `/add` and `/rm`.
    #[derive(Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum SuccessfulStatus {
        Successful,
    }

    /// Every failure. `primary`, `committed` and `failed` appear where noted.
    #[derive(Deserialize, ToSchema)]
    pub struct Failure {
        /// What is wrong, naming the field, shard or server.
        message: String,
        status: FailureStatus,
        /// A `/write` that failed for some shard groups: the shards that did commit.
        committed: Option<Vec<String>>,
        /// A `/write` that failed for some shard groups: shard → reason.
        failed: Option<BTreeMap<String, String>>,
    }

    #[derive(Deserialize, ToSchema)]
    pub struct Message {
        message: String,
        status: SuccessStatus,
    }

    /// One row; every column of the schema with its declared type, nothing else.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 27}))]
    pub struct Row {
        /// The shard key: a signed 64-bit integer.
        #[serde(rename = "Stud_id")]
        stud_id: i64,
        /// A String column: UTF-8, at most SHARDLINE_MAX_STRING_BYTES (4096) bytes.
        #[serde(rename = "Stud_name")]
        stud_name: String,
        #[serde(rename = "Stud_marks")]
        stud_marks: i64,
    }

    /// An inclusive key range; `low` must not exceed `high`.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct KeyRange {
        low: i64,
        high: i64,
    }

    #[derive(Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Consistency {
        Any,
        Primary,
    }

    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"Stud_id": {"low": 1000, "high": 8889}}))]
    pub struct ReadRequest {
        #[serde(rename = "Stud_id")]
        stud_id: KeyRange,
        /// `primary` reads every shard from its primary (read-your-writes); default `any`.
        consistency: Option<Consistency>,
    }

    #[derive(Deserialize, ToSchema)]
    pub struct ReadResponse {
        shards_queried: Vec<String>,
        /// Ordered by key. At most SHARDLINE_MAX_READ_ROWS (100,000) rows; a range matching
        /// more gets a 400.
        data: Vec<Row>,
        status: SuccessStatus,
    }

    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct WriteRequest {
        /// 1 to SHARDLINE_MAX_BATCH (10,000) rows, no key twice, every key inside some shard.
        data: Vec<Row>,
    }

    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"Stud_id": 2255, "data": {"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 28}}))]
    pub struct UpdateRequest {
        #[serde(rename = "Stud_id")]
        stud_id: i64,
        /// The full new row; its key must equal `Stud_id`.
        data: Row,
    }

    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    #[schema(example = json!({"Stud_id": 2255}))]
    pub struct DeleteRequest {
        #[serde(rename = "Stud_id")]
        stud_id: i64,
    }

    /// `columns` and `dtypes` of the same length; the first column is the key and a Number.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct SchemaDoc {
        /// Each `^[A-Za-z_][A-Za-z0-9_]{0,63}$`, unique ignoring case.
        columns: Vec<String>,
        /// Each `Number` (signed 64-bit integer) or `String`.
        dtypes: Vec<String>,
    }

    /// The keys `[Stud_id_low, Stud_id_low + Shard_size)`.
    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct ShardSpecDoc {
        #[serde(rename = "Stud_id_low")]
        low: i64,
        /// `^[A-Za-z0-9_-]{1,64}$`
        #[serde(rename = "Shard_id")]
        id: String,
        /// > 0
        #[serde(rename = "Shard_size")]
        size: i64,
    }

    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct InitRequestDoc {
        /// The number of servers listed in `servers`.
        #[serde(rename = "N")]
        n: u64,
        schema: SchemaDoc,
        shards: Vec<ShardSpecDoc>,
        /// Server name (`^[A-Za-z0-9_-]{1,64}$`, or a placeholder containing `[`) → its shards.
        servers: BTreeMap<String, Vec<String>>,
    }

    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct AddRequestDoc {
        n: u64,
        new_shards: Option<Vec<ShardSpecDoc>>,
        servers: BTreeMap<String, Vec<String>>,
    }

    #[derive(Deserialize, ToSchema)]
    pub struct AddResponse {
        #[serde(rename = "N")]
        n: u64,
        /// Names the servers actually added.
        message: String,
        status: SuccessfulStatus,
    }

    #[derive(Deserialize, ToSchema)]
    #[serde(deny_unknown_fields)]
    pub struct RmRequestDoc {
        n: u64,
        servers: Option<Vec<String>>,
    }

    #[derive(Deserialize, ToSchema)]
    pub struct RmMessage {
        #[serde(rename = "N")]
        n: u64,
        servers: Vec<String>,
    }

    #[derive(Deserialize, ToSchema)]
    pub struct RmResponse {
        message: RmMessage,
        status: SuccessfulStatus,
    }

    #[derive(Deserialize, ToSchema)]
    pub struct ShardStatus {
        #[serde(rename = "Stud_id_low")]
        low: i64,
        #[serde(rename = "Shard_id")]
        id: String,
        #[serde(rename = "Shard_size")]
        size: i64,
        primary: Option<String>,
        term: u64,
        /// Last sequence of the shard's WAL stream; null when NATS did not tell.
        wal_last_seq: Option<u64>,
    }

    /// `schema`, `health` and `applied` are absent before `/init`.
    #[derive(Deserialize, ToSchema)]
    pub struct StatusResponse {
        #[serde(rename = "N")]
        n: u64,
        #[schema(value_type = Option<Object>)]
        schema: Option<serde_json::Value>,
        shards: Vec<ShardStatus>,
        servers: BTreeMap<String, Vec<String>>,
        /// Server → `up`, `recovering`, `down` or `failed`.
        health: Option<BTreeMap<String, String>>,
        /// Server → shard → applied WAL sequence (null when unknown).
        applied: Option<BTreeMap<String, BTreeMap<String, Option<u64>>>>,
        status: SuccessStatus,
    }

    #[derive(Deserialize, ToSchema)]
    pub struct ReadyResponse {
        message: String,
        /// KV revision of the metadata the gateway routes by.
        revision: u64,
        status: SuccessStatus,
    }
}

/// Operation stubs: only their attributes matter (see the module comment).
#[allow(dead_code)]
mod ops {
    use super::schemas::*;

    #[utoipa::path(post, path = "/init", tag = "admin",
        request_body = InitRequestDoc,
        security((), ("admin_token" = [])),
        responses(
            (status = 200, description = "Configured Database", body = Message),
            (status = 400, description = "Invalid body", body = Failure),
            (status = 401, description = "Admin token missing or wrong", body = Failure),
            (status = 409, description = "Already configured", body = Failure),
            (status = 413, description = "Body too large", body = Failure),
            (status = 503, description = "Manager or NATS unavailable", body = Failure),
        ))]
    fn init() {}

    #[utoipa::path(get, path = "/status", tag = "admin",
        responses(
            (status = 200, description = "Shards, placement, primaries, progress", body = StatusResponse),
            (status = 503, description = "Metadata not loaded yet", body = Failure),
        ))]
    fn status() {}

    #[utoipa::path(post, path = "/add", tag = "admin",
        request_body = AddRequestDoc,
        security((), ("admin_token" = [])),
        responses(
            (status = 200, description = "Servers added", body = AddResponse),
            (status = 400, description = "Invalid body", body = Failure),
            (status = 401, description = "Admin token missing or wrong", body = Failure),
            (status = 404, description = "Unknown shard", body = Failure),
            (status = 409, description = "Server exists", body = Failure),
            (status = 413, description = "Body too large", body = Failure),
            (status = 503, description = "Not configured, or manager unavailable", body = Failure),
        ))]
    fn add() {}

    #[utoipa::path(delete, path = "/rm", tag = "admin",
        request_body = RmRequestDoc,
        security((), ("admin_token" = [])),
        responses(
            (status = 200, description = "Servers removed", body = RmResponse),
            (status = 400, description = "Invalid body", body = Failure),
            (status = 401, description = "Admin token missing or wrong", body = Failure),
            (status = 404, description = "Unknown server", body = Failure),
            (status = 409, description = "Would leave a shard without a replica", body = Failure),
            (status = 413, description = "Body too large", body = Failure),
            (status = 503, description = "Not configured, or manager unavailable", body = Failure),
        ))]
    fn rm() {}

    #[utoipa::path(post, path = "/read", tag = "data", operation_id = "read_post",
        request_body = ReadRequest,
        responses(
            (status = 200, description = "Rows in the range, by key", body = ReadResponse),
            (status = 400, description = "Invalid body, low > high, or too many rows", body = Failure),
            (status = 413, description = "Body too large", body = Failure),
            (status = 503, description = "A shard has no live replica", body = Failure),
        ))]
    fn read_post() {}

    #[utoipa::path(get, path = "/read", tag = "data", operation_id = "read_get",
        request_body = ReadRequest,
        responses(
            (status = 200, description = "Rows in the range, by key", body = ReadResponse),
            (status = 400, description = "Invalid body, low > high, or too many rows", body = Failure),
            (status = 413, description = "Body too large", body = Failure),
            (status = 503, description = "A shard has no live replica", body = Failure),
        ))]
    fn read_get() {}

    #[utoipa::path(get, path = "/read/{server}", tag = "data", operation_id = "read_server_get",
        params(("server" = String, Path, description = "A server name", example = "Server0")),
        responses(
            (status = 200, description = "Shard id → every row the server holds of it, plus `status`", body = Object),
            (status = 400, description = "Invalid server name", body = Failure),
            (status = 404, description = "Unknown server", body = Failure),
            (status = 503, description = "Server unreachable", body = Failure),
        ))]
    fn read_server_get() {}

    #[utoipa::path(post, path = "/read/{server}", tag = "data", operation_id = "read_server_post",
        params(("server" = String, Path, description = "A server name", example = "Server0")),
        responses(
            (status = 200, description = "Shard id → every row the server holds of it, plus `status`", body = Object),
            (status = 400, description = "Invalid server name", body = Failure),
            (status = 404, description = "Unknown server", body = Failure),
            (status = 503, description = "Server unreachable", body = Failure),
        ))]
    fn read_server_post() {}

    #[utoipa::path(post, path = "/write", tag = "data",
        request_body = WriteRequest,
        responses(
            (status = 200, description = "Every row committed on a majority", body = Message),
            (status = 400, description = "Invalid body or a key outside every shard", body = Failure),
            (status = 409, description = "A key exists or appears twice; may list committed shards", body = Failure),
            (status = 413, description = "Body too large", body = Failure),
            (status = 503, description = "No primary, no quorum or log unreachable; may list committed shards", body = Failure),
        ))]
    fn write() {}

    #[utoipa::path(put, path = "/update", tag = "data",
        request_body = UpdateRequest,
        responses(
            (status = 200, description = "Updated", body = Message),
            (status = 400, description = "Invalid body, or the row's key differs", body = Failure),
            (status = 404, description = "Unknown key", body = Failure),
            (status = 413, description = "Body too large", body = Failure),
            (status = 503, description = "No primary, no quorum or log unreachable", body = Failure),
        ))]
    fn update() {}

    #[utoipa::path(delete, path = "/del", tag = "data",
        request_body = DeleteRequest,
        responses(
            (status = 200, description = "Removed from all replicas", body = Message),
            (status = 400, description = "Invalid body", body = Failure),
            (status = 404, description = "Unknown key", body = Failure),
            (status = 413, description = "Body too large", body = Failure),
            (status = 503, description = "No primary, no quorum or log unreachable", body = Failure),
        ))]
    fn del() {}

    #[utoipa::path(get, path = "/healthz", tag = "ops",
        responses((status = 200, description = "The process is alive", body = Message)))]
    fn healthz() {}

    #[utoipa::path(get, path = "/readyz", tag = "ops",
        responses(
            (status = 200, description = "Configured; every shard has a primary", body = ReadyResponse),
            (status = 503, description = "Not configured, or a shard has no primary", body = Failure),
        ))]
    fn readyz() {}

    #[utoipa::path(get, path = "/metrics", tag = "ops",
        responses((status = 200, description = "Prometheus text exposition format",
            body = String, content_type = "text/plain")))]
    fn metrics() {}

    #[utoipa::path(get, path = "/openapi.json", tag = "ops",
        responses((status = 200, description = "This document", body = Object)))]
    fn openapi_json() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (method, path) of every documented operation.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
        ops
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        // The router's table (router.rs), method by method.
        let routed: BTreeSet<(String, String)> = [
            ("POST", "/init"),
            ("GET", "/status"),
            ("POST", "/add"),
            ("DELETE", "/rm"),
            ("GET", "/read"),
            ("POST", "/read"),
            ("GET", "/read/{server}"),
            ("POST", "/read/{server}"),
            ("POST", "/write"),
            ("PUT", "/update"),
            ("DELETE", "/del"),
            ("GET", "/healthz"),
            ("GET", "/readyz"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
        ]
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
        assert_eq!(documented(), routed);
        let router_src = include_str!("router.rs");
        for (_, path) in &routed {
            assert!(
                router_src.contains(&format!("\"{path}\"")),
                "{path} is documented but not in router.rs"
            );
        }
    }

    #[test]
    fn the_document_is_openapi_3_with_bodies_and_errors() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let write = &doc["paths"]["/write"]["post"];
        assert!(write["requestBody"].is_object());
        for code in ["200", "400", "409", "413", "503"] {
            assert!(write["responses"][code].is_object(), "/write {code}");
        }
        let row = &doc["components"]["schemas"]["Row"];
        assert_eq!(row["additionalProperties"], false);
        assert_eq!(
            row["required"],
            serde_json::json!(["Stud_id", "Stud_name", "Stud_marks"])
        );
        assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
    }
}
