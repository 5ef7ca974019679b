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
    /// The range as one JSON array built by SQLite, so nothing is re-encoded in Rust.
    pub(super) range_json: String,
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
        // Column names passed the identifier grammar, so they are safe inside '...' too.
        let pairs = schema
            .columns
            .iter()
            .map(|c| format!("'{}', {}", c.as_str(), c.sql()))
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
            // The inner ORDER BY is the primary-key scan's own order (no sort step), and the
            // aggregate takes rows in the order the subquery yields them; an ORDER BY inside
            // the aggregate would copy every row into a temporary b-tree instead.
            range_json: format!(
                "SELECT json_group_array(json_object({pairs})) FROM \
                 (SELECT {list} FROM records WHERE {key} >= ? AND {key} <= ? ORDER BY {key})"
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

pub(super) fn set_position(conn: &Connection, at: Position) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE replica_state SET applied_seq = ?, term = ? WHERE id = 1")?
        .execute(params![at.seq.get() as i64, at.term.get() as i64])?;
    Ok(())
}
