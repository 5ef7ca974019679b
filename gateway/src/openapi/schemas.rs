//! The documented bodies of the public API. Only their shape matters: they are never built or
//! decoded; each mirrors what the handlers (and, for the admin calls, the manager) accept or
//! answer, with every constraint JSON Schema can state — integer ranges, name patterns,
//! lengths, `additionalProperties: false` where unknown fields are refused. The constraints it
//! cannot state (`low ≤ high`, `N` = number of servers, …) are listed in docs/API.md.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use shardline::{Effect, ErrorCode};
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, ArrayBuilder, KnownFormat, Object, ObjectBuilder,
    SchemaFormat, Type,
};
use utoipa::openapi::{Ref, RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

/// Shard ids and server names (`shardline::names`).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// Column names (`shardline::names::ColumnName`).
pub const COLUMN_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]{0,63}$";
/// The gateway's defaults of `--max-batch`, `--max-read-rows` and `--max-string-bytes`, as
/// the bounds below state them (a unit test compares them with the gateway's flags).
pub const DEFAULT_MAX_BATCH: usize = 10_000;
pub const DEFAULT_MAX_READ_ROWS: usize = 100_000;
pub const DEFAULT_MAX_STRING_BYTES: usize = 4096;
/// Most columns a schema may have (`Schema::parse`).
pub const MAX_COLUMNS: usize = 64;

/// A reference to one of the components below.
fn schema_ref(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn int64() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
}

/// A `Number` value: a JSON integer in the signed 64-bit range (no float, no string).
pub fn number() -> Object {
    int64()
        .minimum(Some(i64::MIN))
        .maximum(Some(i64::MAX))
        .build()
}

/// The key of a row. Shard ranges are half-open and end at most at `i64::MAX`, so no shard can
/// hold the key `i64::MAX` itself.
pub fn row_key() -> Object {
    int64()
        .minimum(Some(i64::MIN))
        .maximum(Some(i64::MAX - 1))
        .examples([2255])
        .description(Some(
            "The shard key: a signed 64-bit integer. Shards are half-open ranges ending at \
             most at 2^63-1, so that value itself is never a key; a key outside every \
             configured shard is refused (400 on /write, 404 on /update and /del).",
        ))
        .build()
}

/// A count: `n`, `N`.
pub fn count() -> Object {
    int64().minimum(Some(0)).maximum(Some(i64::MAX)).build()
}

/// `/init`'s `N`: the number of servers, at least one.
pub fn server_count() -> Object {
    int64()
        .minimum(Some(1))
        .maximum(Some(i64::MAX))
        .description(Some(
            "The number of servers listed in `servers` (must be equal).",
        ))
        .build()
}

/// `Shard_size`: > 0, and `Stud_id_low + Shard_size` must not overflow.
pub fn shard_size() -> Object {
    int64()
        .minimum(Some(1))
        .maximum(Some(i64::MAX))
        .description(Some(
            "> 0; `Stud_id_low + Shard_size` must not exceed 2^63-1.",
        ))
        .build()
}

/// `schema.dtypes`: the first is the key's and must be `Number`.
pub fn dtypes() -> ArrayBuilder {
    let dtype = || {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["Number", "String"]))
    };
    ArrayBuilder::new()
        .items(dtype())
        .prefix_items([dtype().enum_values(Some(["Number"])).build()])
        .min_items(Some(1))
        .max_items(Some(MAX_COLUMNS))
        .description(Some(
            "`Number` (signed 64-bit integer) or `String` (UTF-8), one per column; the first \
             column is the shard key and must be a `Number`.",
        ))
}

/// `servers` of `/init` and `/add`: server name (or a placeholder such as `Server[5]`, for
/// which the system picks a fresh name) → the shards it holds, each once.
pub fn placement() -> Object {
    let name = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NAME_PATTERN));
    let placeholder = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"\["))
        .max_length(Some(64))
        .description(Some("A placeholder: the system picks a fresh unique name."));
    let shards = ArrayBuilder::new()
        .items(schema_ref("ShardId"))
        .min_items(Some(1))
        .unique_items(true);
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            AnyOfBuilder::new().item(name).item(placeholder).build(),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Array(
            shards.build(),
        )))))
        .description(Some(
            "Server name (`^[A-Za-z0-9_-]{1,64}$`, or a placeholder of at most 64 bytes \
             containing `[`, as in `Server[5]`: the system picks a fresh name) → the shards it \
             holds, at least one, each once.",
        ))
        .build()
}

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

/// A shard id.
#[derive(Deserialize, ToSchema)]
#[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "sh1")]
pub struct ShardId(String);

/// A server name.
#[derive(Deserialize, ToSchema)]
#[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "Server0")]
pub struct ServerName(String);

/// A column name; unique in a schema, ignoring case.
#[derive(Deserialize, ToSchema)]
#[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,63}$", example = "Stud_id")]
pub struct ColumnName(String);

/// `code` of every failure: generated from `shardline::ErrorCode`.
pub struct ErrorCodeDoc;

impl PartialSchema for ErrorCodeDoc {
    fn schema() -> RefOr<Schema> {
        let mut text = String::from(
            "What kind of failure this is; decide on this and `outcome`, never on `message`.\n",
        );
        for c in ErrorCode::ALL {
            text.push_str(&format!(
                "\n- `{c}` ({}): {}; outcome `{}`",
                c.status().as_u16(),
                c.meaning(),
                outcome_str(c.effect())
            ));
        }
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ErrorCode::ALL.map(ErrorCode::as_str)))
            .description(Some(text))
            .into()
    }
}

impl ToSchema for ErrorCodeDoc {
    fn name() -> Cow<'static, str> {
        "ErrorCode".into()
    }
}

pub fn outcome_str(e: Effect) -> &'static str {
    match e {
        Effect::NotApplied => "not_applied",
        Effect::Unknown => "unknown",
    }
}

/// What the failed request did to the data.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Certainly nothing was written: a retry cannot apply the request twice.
    NotApplied,
    /// It may have been applied, in whole or (a multi-shard `/write`) in part.
    Unknown,
}

/// Every failure: `{"message", "code", "outcome", ["primary"], "status": "failure"}`.
#[derive(Deserialize, ToSchema)]
pub struct Failure {
    /// What is wrong, in English, naming the field, shard or server.
    message: String,
    #[schema(value_type = ErrorCodeDoc)]
    code: ErrorCode,
    outcome: Outcome,
    /// With `not_primary` only: the shard's primary as the refusing server knows it.
    primary: Option<String>,
    status: FailureStatus,
}

/// A failed `/write`. When its rows spanned several shards and more than one shard's part
/// failed or some committed, it also lists which shards committed and why the others did not;
/// `code` is then `partial_write` if any committed, else the worst failure's code, and the
/// status is the worst failure's.
#[derive(Deserialize, ToSchema)]
pub struct WriteFailure {
    message: String,
    #[schema(value_type = ErrorCodeDoc)]
    code: ErrorCode,
    outcome: Outcome,
    /// The shards whose part of the write committed.
    #[schema(nullable = false)]
    committed: Option<Vec<ShardId>>,
    /// Shard → why its part did not commit.
    #[schema(nullable = false)]
    failed: Option<BTreeMap<String, String>>,
    /// Shard → the error code of its failure.
    #[schema(nullable = false, value_type = Option<BTreeMap<String, ErrorCodeDoc>>)]
    failed_codes: Option<BTreeMap<String, ErrorCode>>,
    status: FailureStatus,
}

#[derive(Deserialize, ToSchema)]
pub struct Message {
    message: String,
    status: SuccessStatus,
}

/// One row: every column of the schema with its declared type, nothing else.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 27}))]
pub struct Row {
    #[serde(rename = "Stud_id")]
    #[schema(schema_with = row_key)]
    stud_id: i64,
    /// A String column: UTF-8 of at most SHARDLINE_MAX_STRING_BYTES bytes (default 4096).
    /// `maxLength` counts characters: the byte limit is checked on top.
    #[serde(rename = "Stud_name")]
    #[schema(max_length = 4096)]
    stud_name: String,
    /// A Number column: a signed 64-bit integer.
    #[serde(rename = "Stud_marks")]
    #[schema(schema_with = number)]
    stud_marks: i64,
}

/// An inclusive key range; `low` must not exceed `high` (not expressible here).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRange {
    #[schema(schema_with = number)]
    low: i64,
    #[schema(schema_with = number)]
    high: i64,
}

/// What a `/read` guarantees (docs/API.md, README "Reads"). `any` (the default): each shard
/// is read from one replica picked on its ring that is caught up with the shard's log within
/// the shard servers' `--max-staleness-ms` (default 1000); a replica further behind, or
/// recovering, refuses and the next one on the ring is asked, so a read may miss writes
/// acknowledged up to that long ago. `primary`: each shard is read from its primary, which
/// checks that it leads the current term and has applied that term's marker; it sees every
/// write it acknowledged (read-your-writes), though during a failover a deposed primary that
/// has not yet learned of the new term may still answer. `linearizable`: the `primary`
/// checks plus a read index: the primary waits until it has applied everything the shard's
/// log held when the read arrived and confirms it still leads the same term, then reads; the
/// read sees every write acknowledged before it began and no deposed primary answers it.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    Any,
    Primary,
    Linearizable,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"Stud_id": {"low": 1000, "high": 8889}}))]
pub struct ReadRequest {
    #[serde(rename = "Stud_id")]
    stud_id: KeyRange,
    /// `any` (absent or null: the default), `primary` or `linearizable`; see `Consistency`.
    consistency: Option<Consistency>,
}

#[derive(Deserialize, ToSchema)]
pub struct ReadResponse {
    /// The shards whose range overlaps the requested one, in key order.
    shards_queried: Vec<ShardId>,
    /// Ordered by key. At most SHARDLINE_MAX_READ_ROWS (default 100,000) rows; a range
    /// matching more gets a 400.
    #[schema(max_items = 100_000)]
    data: Vec<Row>,
    status: SuccessStatus,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    /// 1 to SHARDLINE_MAX_BATCH (default 10,000) rows, no key twice, every key inside some
    /// shard.
    #[schema(min_items = 1, max_items = 10_000)]
    data: Vec<Row>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"Stud_id": 2255, "data": {"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 28}}))]
pub struct UpdateRequest {
    #[serde(rename = "Stud_id")]
    #[schema(schema_with = row_key)]
    stud_id: i64,
    /// The full new row; its key must equal `Stud_id`.
    data: Row,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"Stud_id": 2255}))]
pub struct DeleteRequest {
    #[serde(rename = "Stud_id")]
    #[schema(schema_with = row_key)]
    stud_id: i64,
}

/// `columns` and `dtypes` of the same length (not expressible here).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchemaDoc {
    /// The first is the shard key. Unique ignoring case (`uniqueItems` states only the
    /// exact-case half).
    #[schema(schema_with = columns)]
    columns: Vec<ColumnName>,
    #[schema(schema_with = dtypes_schema)]
    dtypes: Vec<String>,
}

fn columns() -> utoipa::openapi::schema::Array {
    ArrayBuilder::new()
        .items(schema_ref("ColumnName"))
        .min_items(Some(1))
        .max_items(Some(MAX_COLUMNS))
        .unique_items(true)
        .description(Some(
            "Column names; the first is the shard key. Unique ignoring case (`uniqueItems` \
             states only the exact-case half).",
        ))
        .build()
}

fn dtypes_schema() -> utoipa::openapi::schema::Array {
    dtypes().build()
}

/// The keys `[Stud_id_low, Stud_id_low + Shard_size)`; shards must not overlap.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShardSpecDoc {
    #[serde(rename = "Stud_id_low")]
    #[schema(schema_with = number)]
    low: i64,
    #[serde(rename = "Shard_id")]
    id: ShardId,
    #[serde(rename = "Shard_size")]
    #[schema(schema_with = shard_size)]
    size: i64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitRequestDoc {
    #[serde(rename = "N")]
    #[schema(schema_with = server_count)]
    n: u64,
    schema: SchemaDoc,
    /// At least one; ids unique; ranges must not overlap.
    #[schema(min_items = 1)]
    shards: Vec<ShardSpecDoc>,
    /// At least one server; every shard on at least one.
    #[schema(schema_with = placement_nonempty)]
    servers: BTreeMap<String, Vec<ShardId>>,
}

fn placement_nonempty() -> Object {
    let mut o = placement();
    o.min_properties = Some(1);
    o
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddRequestDoc {
    /// The number of servers listed in `servers` (must be equal; 0 with only new shards).
    #[schema(schema_with = count)]
    n: u64,
    /// Shards to create; each must be placed on some server of `servers`.
    #[serde(default)]
    #[schema(required = false)]
    new_shards: Vec<ShardSpecDoc>,
    #[schema(schema_with = placement)]
    servers: BTreeMap<String, Vec<ShardId>>,
}

#[derive(Deserialize, ToSchema)]
pub struct AddResponse {
    #[serde(rename = "N")]
    #[schema(schema_with = count)]
    n: u64,
    /// Names the servers actually added.
    message: String,
    status: SuccessfulStatus,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RmRequestDoc {
    /// How many servers to remove: the listed ones plus random others (at least as many as
    /// listed).
    #[schema(schema_with = count)]
    n: u64,
    /// Servers to remove for sure.
    #[serde(default)]
    #[schema(required = false)]
    servers: Vec<ServerName>,
}

#[derive(Deserialize, ToSchema)]
pub struct RmMessage {
    #[serde(rename = "N")]
    #[schema(schema_with = count)]
    n: u64,
    servers: Vec<ServerName>,
}

#[derive(Deserialize, ToSchema)]
pub struct RmResponse {
    message: RmMessage,
    status: SuccessfulStatus,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Recovering,
    Down,
    Failed,
}

#[derive(Deserialize, ToSchema)]
pub struct ShardStatus {
    #[serde(rename = "Stud_id_low")]
    #[schema(schema_with = number)]
    low: i64,
    #[serde(rename = "Shard_id")]
    id: ShardId,
    #[serde(rename = "Shard_size")]
    #[schema(schema_with = shard_size)]
    size: i64,
    /// Null while the shard has no primary.
    primary: Option<ServerName>,
    #[schema(schema_with = count)]
    term: u64,
    /// Last sequence of the shard's WAL stream; null when NATS did not tell.
    wal_last_seq: Option<u64>,
}

/// `schema`, `health` and `applied` are absent before `/init`.
#[derive(Deserialize, ToSchema)]
pub struct StatusResponse {
    #[serde(rename = "N")]
    #[schema(schema_with = count)]
    n: u64,
    #[schema(nullable = false)]
    schema: Option<SchemaDoc>,
    shards: Vec<ShardStatus>,
    servers: BTreeMap<String, Vec<ShardId>>,
    /// Server → its health.
    #[schema(nullable = false)]
    health: Option<BTreeMap<String, Health>>,
    /// Server → shard → applied WAL sequence (null when unknown).
    #[schema(nullable = false)]
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

/// `/read/{server}`: shard id → every row the server holds of it, plus `status`.
pub struct ServerRowsDoc;

impl PartialSchema for ServerRowsDoc {
    fn schema() -> RefOr<Schema> {
        let rows = ArrayBuilder::new().items(schema_ref("Row"));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("status", schema_ref("SuccessStatus"))
            .required("status")
            .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Array(
                rows.build(),
            )))))
            .description(Some(
                "Shard id → every row the server holds of that shard, plus `status`.",
            ))
            .examples([serde_json::json!({
                "sh1": [{"Stud_id": 1, "Stud_name": "ABC", "Stud_marks": 57}],
                "status": "success"
            })])
            .into()
    }
}

impl ToSchema for ServerRowsDoc {
    fn name() -> Cow<'static, str> {
        "ServerRows".into()
    }
}

/// A backup archive (tar) made by `GET /backup`, as bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Archive(Vec<u8>);
