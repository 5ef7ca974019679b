//! The internal HTTP API between the gateway, the manager and the shard servers: one type per
//! request and answer body, used by the sender to build it and by the receiver to decode it.
//! `docs/internal-api.md` describes the endpoints; the public API is `docs/API.md`.
//!
//! The bodies keep the assignment's shapes: a shard server's `/read`, `/update` and `/del` name
//! the key field after the schema's key column (`Stud_id`), which [`Keyed`] carries as data.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value as Json;

use crate::log::{Position, Seq, Term};
use crate::names::{ColumnName, ServerName, ShardId};
use crate::schema::SchemaSpec;

/// The `status` field of every body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Success,
    /// The assignment's spelling in `/add` and `/rm` answers.
    Successful,
    Failure,
}

/// A success answer that carries only a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub message: String,
    pub status: Status,
}

impl Done {
    pub fn new(message: impl Into<String>) -> Done {
        Done {
            message: message.into(),
            status: Status::Success,
        }
    }
}

/// `GET /heartbeat` on a shard server: what it holds and how far each replica applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub server: ServerName,
    pub shards: BTreeMap<ShardId, ReplicaProgress>,
    /// Whether the server's NATS connection is up. A server that cannot reach NATS can
    /// neither commit as a primary nor follow the log: it is never elected. (Absent from
    /// older servers: taken as connected.)
    #[serde(default = "connected")]
    pub nats_connected: bool,
}

fn connected() -> bool {
    true
}

/// One replica's progress through its shard's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaProgress {
    pub applied: Seq,
    pub term: Term,
    /// Still catching up (snapshot or log replay): gets no reads, is not elected.
    pub recovering: bool,
    /// How stale this replica may be, in ms: the time since it last confirmed that it had
    /// applied everything the stream held (`None`: not confirmed yet). A replica serves ring
    /// reads only while this is under the configured maximum staleness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_ms: Option<u64>,
    /// On the primary, how long the oldest write has been waiting to commit, in ms (`None`:
    /// nothing waiting). A primary stalled past the manager's limit is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_ms: Option<u64>,
    /// The replica found that its shard's stream no longer holds what it applied (README
    /// "Log faults"): it serves nothing for the shard until the manager recovers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<LogFaultKind>,
    /// The identity of the stream the replica follows (its `created` time in ns), as stored
    /// with its rows; `None` before it first looked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_id: Option<u64>,
}

/// What a replica found wrong with its shard's stream (README "Log faults").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFaultKind {
    /// The stream does not exist.
    Missing,
    /// The stream is not the one the replica applied from (deleted and re-created).
    Recreated,
    /// The stream's last sequence is below the replica's applied one.
    RolledBack,
    /// The entry at the replica's applied sequence is not the one it applied.
    Rewritten,
    /// The stream's first sequence is past the replica's next one: entries it needs are
    /// gone. Not latched: a re-seed from a peer that has them clears it.
    BehindFirst,
}

impl LogFaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFaultKind::Missing => "missing",
            LogFaultKind::Recreated => "recreated",
            LogFaultKind::RolledBack => "rolled_back",
            LogFaultKind::Rewritten => "rewritten",
            LogFaultKind::BehindFirst => "behind_first",
        }
    }
}

impl fmt::Display for LogFaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /adopt_log` on a shard server (the manager's log recovery): stop the replica of
/// `shard`, copy a snapshot from the server at `from` if given, then take the shard's stream
/// as it is now as the replica's log, provided it continues right after the replica's
/// position, and start the replica again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptLogRequest {
    pub shard: ShardId,
    #[serde(default)]
    pub from: Option<String>,
}

/// The guarantee a read asks for: the public `/read`'s `consistency` field, and the
/// `consistency` query parameter of a shard server's `/read` (`?consistency=primary`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadLevel {
    /// Any replica on the ring that is caught up within the maximum staleness.
    #[default]
    Any,
    /// The shard's primary, which checks that it leads the current term: read-your-writes.
    Primary,
    /// Read-index: the primary confirms it leads the current term and has applied everything
    /// the stream held when the read arrived, then reads.
    Linearizable,
}

impl ReadLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadLevel::Any => "any",
            ReadLevel::Primary => "primary",
            ReadLevel::Linearizable => "linearizable",
        }
    }
}

/// `POST /config` on a shard server: the schema and the shards it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigRequest {
    pub schema: SchemaSpec,
    pub shards: Vec<ShardId>,
}

/// `GET|POST /copy` on a shard server: snapshots of the named shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    pub shards: Vec<ShardId>,
}

/// The `/copy` answer. Shards sit under their own key, so no shard id can collide with
/// `status` (a shard may be named `seq` or `status`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyResponse {
    pub shards: BTreeMap<ShardId, Snapshot>,
    pub status: Status,
}

/// Every row of one shard replica, consistent with the log position `seq` (term `term`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub rows: Vec<Json>,
    pub seq: Seq,
    pub term: Term,
}

impl Snapshot {
    pub fn position(&self) -> Position {
        Position {
            seq: self.seq,
            term: self.term,
        }
    }
}

/// `GET /read_all` on a shard server (and the gateway's `/read/{server}`): every row of every
/// shard the server holds, in the assignment's shape `{"sh1": [rows], "status": "success"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRows {
    #[serde(flatten)]
    pub shards: BTreeMap<ShardId, Vec<Json>>,
    pub status: Status,
}

/// An inclusive key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRange {
    pub low: i64,
    pub high: i64,
}

/// `POST /write` on a shard's primary: rows of that shard (checked against the schema there).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    pub shard: ShardId,
    pub data: Vec<Json>,
}

/// `POST /write_batch` on a shard's primary: several independent writes to one shard, each
/// a `/write`'s `data` and each answered on its own. The gateway sends one when writes to a
/// shard queue up behind the ones it has in flight; the primary proposes them together, so
/// they share one log entry. The batch as a whole is refused (nothing proposed) when this
/// server does not lead the shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteBatch {
    pub shard: ShardId,
    pub writes: Vec<Vec<Json>>,
}

/// The answer to a [`WriteBatch`]: one result per write, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteBatchAnswer {
    pub results: Vec<BatchResult>,
}

/// One write's result in a [`WriteBatchAnswer`]: the HTTP status the write would have got
/// alone and, unless it is 200, the failure body it would have got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResult {
    pub http: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::error::ErrorBody>,
}

/// `POST /read_batch` on a shard server: several reads at the `any` level, each a `/read`
/// body (of any shard the server holds). The gateway sends one when reads to a server queue
/// up behind the ones it has in flight. The answer is [`frames`]: one frame per read, in
/// order, holding the status and body that read would have got from `/read`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBatch {
    pub reads: Vec<ReadRequest>,
}

/// Most requests in one `/write_batch` or `/read_batch`.
pub const MAX_BATCH_REQUESTS: usize = 128;

/// The framing of a batch answer whose parts are passed on without parsing: for each part,
/// the line `<status> <length>\n`, then `length` bytes of body. (A `/read` answer's rows are
/// spliced by the gateway as they came; a JSON envelope around them would have to be
/// scanned whole to find where each part ends.)
pub mod frames {
    use bytes::Bytes;

    /// The content type of a framed answer.
    pub const CONTENT_TYPE: &str = "application/x-shardline-frames";

    /// Appends one part.
    pub fn push(out: &mut Vec<u8>, status: u16, body: &[u8]) {
        out.extend_from_slice(format!("{status} {}\n", body.len()).as_bytes());
        out.extend_from_slice(body);
    }

    /// The parts of a framed answer, their bodies sharing its buffer; an error names what
    /// is malformed.
    pub fn split(all: &Bytes) -> Result<Vec<(u16, Bytes)>, String> {
        let mut parts = Vec::new();
        let mut at = 0;
        while at < all.len() {
            let rest = &all[at..];
            let end = rest
                .iter()
                .take(32)
                .position(|&b| b == b'\n')
                .ok_or_else(|| format!("no frame header at byte {at}"))?;
            let header = std::str::from_utf8(&rest[..end])
                .map_err(|_| format!("frame header at byte {at} is not text"))?;
            let (status, len) = header
                .split_once(' ')
                .and_then(|(s, l)| Some((s.parse::<u16>().ok()?, l.parse::<usize>().ok()?)))
                .ok_or_else(|| format!("bad frame header {header:?} at byte {at}"))?;
            let start = at + end + 1;
            let stop = start
                .checked_add(len)
                .filter(|&stop| stop <= all.len())
                .ok_or_else(|| format!("frame at byte {at} is cut short"))?;
            parts.push((status, all.slice(start..stop)));
            at = stop;
        }
        Ok(parts)
    }
}

/// `POST|GET /read` on a shard server: `{"shard": "sh1", "Stud_id": {"low": 0, "high": 9}}`.
pub type ReadRequest = Keyed<KeyRange>;
/// `PUT /update` on a shard's primary: `{"shard", "Stud_id": 5, "data": {full row}}`.
pub type UpdateRequest = Keyed<i64>;
/// `DELETE /del` on a shard's primary: `{"shard", "Stud_id": 5}`.
pub type DeleteRequest = Keyed<i64>;

/// The answer of a shard server's `/read`. The gateway decodes it with `R` =
/// `&serde_json::value::RawValue`, which finds each row's bounds without parsing the rows
/// (it splices them into its answer as they came).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadResponse<R = Json> {
    pub data: Vec<R>,
    pub status: Status,
}

/// A shard-server body with a field named after the schema's key column: `shard`, the key
/// field (`key` is its name, `value` its value) and, for `/update`, `data`. The receiver checks
/// that `key` is its schema's key column.
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed<T> {
    pub shard: ShardId,
    pub key: ColumnName,
    pub value: T,
    pub data: Option<Json>,
}

impl<T: Serialize> Serialize for Keyed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("shard", &self.shard)?;
        map.serialize_entry(self.key.as_str(), &self.value)?;
        if let Some(data) = &self.data {
            map.serialize_entry("data", data)?;
        }
        map.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Keyed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyedVisitor<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for KeyedVisitor<T> {
            type Value = Keyed<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object with `shard`, the key column's field and optionally `data`")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keyed<T>, A::Error> {
                let mut shard = None;
                let mut keyed: Option<(ColumnName, T)> = None;
                let mut data = None;
                while let Some(field) = map.next_key::<String>()? {
                    match field.as_str() {
                        "shard" => shard = Some(map.next_value::<ShardId>()?),
                        "data" => data = Some(map.next_value::<Json>()?),
                        _ if keyed.is_some() => {
                            return Err(de::Error::custom(format!(
                                "unknown field `{field}`; expected shard, the key column and data"
                            )))
                        }
                        _ => {
                            let name = ColumnName::parse(&field).map_err(de::Error::custom)?;
                            keyed = Some((name, map.next_value::<T>()?));
                        }
                    }
                }
                let shard = shard.ok_or_else(|| de::Error::missing_field("shard"))?;
                let (key, value) =
                    keyed.ok_or_else(|| de::Error::custom("missing the key column's field"))?;
                Ok(Keyed {
                    shard,
                    key,
                    value,
                    data,
                })
            }
        }

        d.deserialize_map(KeyedVisitor(std::marker::PhantomData))
    }
}

/// The manager's (and gateway's) `/add` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddResponse {
    #[serde(rename = "N")]
    pub n: usize,
    pub message: String,
    pub status: Status,
}

/// The manager's (and gateway's) `/rm` answer: `{"message": {"N", "servers"}, "status"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RmResponse {
    pub message: Removed,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    #[serde(rename = "N")]
    pub n: usize,
    pub servers: Vec<ServerName>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_round_trip_and_refuse_what_is_cut() {
        let mut out = Vec::new();
        frames::push(&mut out, 200, br#"{"data":[],"status":"success"}"#);
        frames::push(&mut out, 503, b"");
        frames::push(&mut out, 400, "n\u{e9}\n3 x".as_bytes());
        let all = bytes::Bytes::from(out);
        let parts = frames::split(&all).unwrap();
        let got: Vec<(u16, &[u8])> = parts.iter().map(|(s, b)| (*s, &b[..])).collect();
        assert_eq!(
            got,
            [
                (200, &br#"{"data":[],"status":"success"}"#[..]),
                (503, &b""[..]),
                (400, "n\u{e9}\n3 x".as_bytes()),
            ]
        );
        assert!(frames::split(&bytes::Bytes::new()).unwrap().is_empty());
        for bad in [
            &b"200 5\nabc"[..],
            b"200\nabc",
            b"x 1\na",
            b"200 1",
            b"200 -1\n",
        ] {
            let e = frames::split(&bytes::Bytes::copy_from_slice(bad));
            assert!(
                e.is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn keyed_bodies_keep_the_assignment_shape() {
        let r: ReadRequest =
            serde_json::from_value(json!({"shard": "sh2", "Stud_id": {"low": 1, "high": 9}}))
                .unwrap();
        assert_eq!(r.shard.as_str(), "sh2");
        assert_eq!(r.key.as_str(), "Stud_id");
        assert_eq!(r.value, KeyRange { low: 1, high: 9 });
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"shard": "sh2", "Stud_id": {"low": 1, "high": 9}})
        );
        let u: UpdateRequest =
            serde_json::from_value(json!({"shard": "sh1", "Stud_id": 5, "data": {"Stud_id": 5}}))
                .unwrap();
        assert_eq!(u.value, 5);
        assert_eq!(u.data, Some(json!({"Stud_id": 5})));
        let bad = serde_json::from_value::<DeleteRequest>(json!({"shard": "sh1", "a": 1, "b": 2}));
        assert!(bad.unwrap_err().to_string().contains("unknown field `b`"));
        let bad = serde_json::from_value::<DeleteRequest>(json!({"shard": "sh1"}));
        assert!(bad.unwrap_err().to_string().contains("key column"));
        let bad = serde_json::from_value::<DeleteRequest>(json!({"Stud_id": 1}));
        assert!(bad.unwrap_err().to_string().contains("shard"));
    }

    #[test]
    fn a_shard_named_like_a_field_does_not_collide() {
        let mut shards = BTreeMap::new();
        for name in ["seq", "status", "term"] {
            shards.insert(
                ShardId::parse(name).unwrap(),
                Snapshot {
                    rows: vec![json!({"k": 1})],
                    seq: Seq(7),
                    term: Term(2),
                },
            );
        }
        let body = CopyResponse {
            shards,
            status: Status::Success,
        };
        let back: CopyResponse =
            serde_json::from_value(serde_json::to_value(&body).unwrap()).unwrap();
        assert_eq!(back.shards.len(), 3);
        assert_eq!(back.shards["seq"].position().seq, Seq(7));
        assert_eq!(back.status, Status::Success);
    }

    #[test]
    fn heartbeat_and_admin_answers() {
        let hb: Heartbeat = serde_json::from_value(json!({
            "server": "Server0",
            "shards": {"sh1": {"applied": 12, "term": 1, "recovering": false}}
        }))
        .unwrap();
        assert_eq!(hb.shards["sh1"].applied, Seq(12));
        let rm = RmResponse {
            message: Removed {
                n: 4,
                servers: vec![ServerName::parse("Server1").unwrap()],
            },
            status: Status::Successful,
        };
        assert_eq!(
            serde_json::to_value(&rm).unwrap(),
            json!({"message": {"N": 4, "servers": ["Server1"]}, "status": "successful"})
        );
        let rows: ServerRows =
            serde_json::from_value(json!({"sh1": [{"k": 1}], "status": "success"})).unwrap();
        assert_eq!(rows.shards.len(), 1);
    }
}
