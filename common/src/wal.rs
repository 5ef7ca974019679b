//! The write-ahead log: one JetStream stream per shard (`WAL_<shard>`, subject `wal.<shard>`),
//! one JSON [`WalEntry`] per message. Entries are applied by every replica in sequence order;
//! applying never consults anything but the entry and the replica's state, so every replica
//! reaches the same state from the same prefix.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::names::{ServerName, ShardId};
use crate::{Seq, Term};

pub fn stream_name(shard: &ShardId) -> String {
    format!("WAL_{shard}")
}

pub fn subject(shard: &ShardId) -> String {
    format!("wal.{shard}")
}

/// Core-NATS subject on which each replica announces the last sequence it committed.
pub fn applied_subject(shard: &ShardId) -> String {
    format!("shardline.applied.{shard}")
}

/// Who wrote a term marker: the manager, not a server.
pub const MANAGER: &str = "manager";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WalOp {
    /// Insert rows; if any key exists already, the whole entry is rejected on every replica.
    Insert { rows: Vec<Map<String, Json>> },
    /// Replace the row with this key; rejected when it does not exist.
    Update { key: i64, row: Map<String, Json> },
    /// Delete the row with this key; rejected when it does not exist.
    Delete { key: i64 },
    /// Term marker written by the manager at an election: from here on only entries of
    /// `term` (this entry's term) are applied.
    Term { primary: ServerName },
    /// Several client requests appended as one entry by a primary (group commit). Each op is
    /// applied in order with its own outcome; an op that is rejected does not affect the
    /// others. Ops are never `term` or `batch`.
    Batch { ops: Vec<WalOp> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalEntry {
    #[serde(flatten)]
    pub op: WalOp,
    /// Term of the primary that wrote the entry (for a marker: the new term).
    pub term: Term,
    /// The server (or `manager`) that appended the entry.
    pub by: String,
    /// Milliseconds since the Unix epoch when the entry was appended (informational).
    pub ts_ms: u64,
}

impl WalEntry {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a WalEntry always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<WalEntry, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Body of a message on [`applied_subject`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub server: ServerName,
    pub seq: Seq,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_round_trip_and_read_well() {
        let e = WalEntry {
            op: WalOp::Delete { key: -5 },
            term: Term(3),
            by: "Server0".into(),
            ts_ms: 1,
        };
        let bytes = e.encode();
        assert_eq!(
            serde_json::from_slice::<Json>(&bytes).unwrap(),
            json!({"op": "delete", "key": -5, "term": 3, "by": "Server0", "ts_ms": 1})
        );
        assert_eq!(WalEntry::decode(&bytes).unwrap(), e);
        let m = WalEntry {
            op: WalOp::Term {
                primary: ServerName::parse("Server1").unwrap(),
            },
            term: Term(2),
            by: MANAGER.into(),
            ts_ms: 9,
        };
        assert_eq!(WalEntry::decode(&m.encode()).unwrap(), m);
        let b = WalEntry {
            op: WalOp::Batch {
                ops: vec![WalOp::Delete { key: 1 }, WalOp::Delete { key: 2 }],
            },
            term: Term(2),
            by: "Server0".into(),
            ts_ms: 9,
        };
        assert_eq!(
            serde_json::from_slice::<Json>(&b.encode()).unwrap()["ops"][1],
            json!({"op": "delete", "key": 2})
        );
        assert_eq!(WalEntry::decode(&b.encode()).unwrap(), b);
    }
}
