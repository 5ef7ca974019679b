//! The SQL a store runs: statement text built once from the schema (column names passed the
//! identifier grammar; values are always bound, never spliced), and the stored position.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection};
use shardline::schema::{Schema, Value};
use shardline::{Position, Seq, Term};

/// SQL text built once per schema; each connection prepares it once and caches it.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) insert: String,
    pub(super) insert_or_ignore: String,
    pub(super) update: String,
    pub(super) delete: String,
    pub(super) exists: String,
    /// The rows of a key range in key order (the primary-key scan's own order).
    pub(super) range: String,
    pub(super) all: String,
}

impl Statements {
    pub(super) fn new(schema: &Schema) -> Statements {
        let cols: Vec<String> = schema.columns.iter().map(|c| c.sql()).collect();
        let key = &cols[0];
        let list = cols.join(", ");
        let params = vec!["?"; cols.len()].join(", ");
        let sets = cols[1..]
            .iter()
            .map(|c| format!("{c} = ?"))
            .collect::<Vec<_>>()
            .join(", ");
        Statements {
            insert: format!("INSERT INTO records ({list}) VALUES ({params})"),
            insert_or_ignore: format!("INSERT OR IGNORE INTO records ({list}) VALUES ({params})"),
            update: if sets.is_empty() {
                format!("UPDATE records SET {key} = {key} WHERE {key} = ?")
            } else {
                format!("UPDATE records SET {sets} WHERE {key} = ?")
            },
            delete: format!("DELETE FROM records WHERE {key} = ?"),
            exists: format!("SELECT 1 FROM records WHERE {key} = ?"),
            range: format!(
                "SELECT {list} FROM records WHERE {key} >= ? AND {key} <= ? ORDER BY {key}"
            ),
            all: format!("SELECT {list} FROM records ORDER BY {key}"),
        }
    }
}

/// A value bound as a statement parameter (never spliced into SQL text).
pub(super) fn sql_value(v: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match v {
        Value::Int(i) => ValueRef::Integer(*i),
        Value::Text(s) => ValueRef::Text(s.as_bytes()),
    })
}

pub(super) fn read_position(conn: &Connection) -> rusqlite::Result<Position> {
    conn.query_row(
        "SELECT applied_seq, term FROM replica_state WHERE id = 1",
        [],
        |r| {
            Ok(Position {
                seq: Seq(r.get::<_, i64>(0)? as u64),
                term: Term(r.get::<_, i64>(1)? as u64),
            })
        },
    )
}

/// Stores the applied position with the fingerprint of the entry at it (`None`: unknown,
/// e.g. after a snapshot restore), in the caller's transaction.
pub(super) fn set_position(
    conn: &Connection,
    at: Position,
    last_hash: Option<u64>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE replica_state SET applied_seq = ?, term = ?, last_hash = ? WHERE id = 1",
    )?
    .execute(params![
        at.seq.get() as i64,
        at.term.get() as i64,
        last_hash.map(|h| h as i64)
    ])?;
    Ok(())
}

/// Adds the log identity columns to a `replica_state` made before they existed.
pub(super) fn migrate_log_identity(conn: &Connection) -> rusqlite::Result<()> {
    let mut cols = Vec::new();
    {
        let mut info = conn.prepare("PRAGMA table_info(replica_state)")?;
        let names = info.query_map([], |r| r.get::<_, String>(1))?;
        for n in names {
            cols.push(n?);
        }
    }
    for (col, ty) in [("log_id", "INTEGER"), ("last_hash", "INTEGER")] {
        if !cols.iter().any(|c| c == col) {
            conn.execute(
                &format!("ALTER TABLE replica_state ADD COLUMN {col} {ty}"),
                [],
            )?;
        }
    }
    Ok(())
}

/// The identity of the stream the replica applies from and the fingerprint of the entry at
/// its applied sequence, as stored (`None`: not known).
pub(super) fn read_log_identity(conn: &Connection) -> rusqlite::Result<LogIdentity> {
    conn.query_row(
        "SELECT log_id, last_hash FROM replica_state WHERE id = 1",
        [],
        |r| {
            Ok(LogIdentity {
                log_id: r.get::<_, Option<i64>>(0)?.map(|v| v as u64),
                last_hash: r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
            })
        },
    )
}

pub(super) fn set_log_id(conn: &Connection, log_id: u64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE replica_state SET log_id = ?, last_hash = NULL WHERE id = 1",
        params![log_id as i64],
    )?;
    Ok(())
}

/// What a replica knows of the log it applied (README "Log faults").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogIdentity {
    /// The stream's `created` time in ns.
    pub log_id: Option<u64>,
    /// FNV-1a of the payload of the entry at the applied sequence.
    pub last_hash: Option<u64>,
}

/// FNV-1a (64 bit) of an entry's payload: a fingerprint that stays the same across builds
/// and platforms (it is stored).
pub fn fingerprint(payload: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in payload {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
