//! One shard replica's SQLite database: the rows, plus the last applied WAL sequence and the
//! current term, both stored in the same transaction as the data they describe.
//!
//! Applying is deterministic: the outcome of an entry depends only on the entry and the rows.
//!
//! Calls are synchronous and short (a prepared statement or a small transaction), so the
//! async code runs them in place: no hop to another thread per query, which on two cores
//! was the largest single cost of a write or a read (README.md, "Performance").
//! The calls that can take long (a whole snapshot, a restore, a commit that fsyncs in
//! durable mode) are run on tokio's blocking pool by their callers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, params_from_iter, Connection, OpenFlags};
use serde_json::{Map, Value as Json};
use shardline::schema::{key_of, Dtype, Row, Schema, Value};
use shardline::wal::{WalEntry, WalOp};
use shardline::{Position, Seq, SyncMode, Term};

/// What applying one entry did; the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Insert rejected: these keys exist already (or repeat within the entry).
    Duplicate(Vec<i64>),
    /// Update/delete of a key that does not exist.
    Missing(i64),
    /// Written under a term that is not the current one: skipped.
    StaleTerm {
        entry: Term,
        current: Term,
    },
    /// The entry does not decode or does not fit the schema: skipped.
    Invalid(String),
    /// A term marker.
    NewTerm(Term),
    /// A group-committed entry: the outcome of each op, in order.
    Batch(Vec<Outcome>),
}

/// SQL text built once per schema; each connection prepares it once and caches it.
#[derive(Debug)]
struct Statements {
    insert: String,
    insert_or_ignore: String,
    update: String,
    delete: String,
    exists: String,
    /// The range as one JSON array built by SQLite, so nothing is re-encoded in Rust.
    range_json: String,
    all: String,
}

impl Statements {
    fn new(schema: &Schema) -> Statements {
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

/// After a batch: the position committed `(applied_seq, term)` and each new entry's outcome.
pub type BatchApplied = (Seq, Term, Vec<(Seq, Outcome)>);

struct Writer {
    conn: Connection,
    applied: Seq,
    term: Term,
}

/// Idle read connections kept for reuse; more are opened when all are busy.
const IDLE_READERS: usize = 4;
/// Read connections opened with the store (reads run in place, so about one per worker
/// thread is busy at a time).
const WARM_READERS: usize = 2;

pub struct Store {
    schema: Schema,
    sql: Statements,
    path: PathBuf,
    sync: SyncMode,
    /// The single writer connection and the position it has committed (owned by the
    /// applier; serialised by the mutex).
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
}

impl Store {
    pub fn open(path: &Path, schema: &Schema, sync: SyncMode) -> rusqlite::Result<Store> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", sync.pragma())?;
        let cols: Vec<String> = schema
            .columns
            .iter()
            .zip(&schema.dtypes)
            .enumerate()
            .map(|(i, (c, d))| {
                let ty = match d {
                    Dtype::Number => "INTEGER",
                    Dtype::String => "TEXT",
                };
                if i == 0 {
                    format!("{} INTEGER PRIMARY KEY", c.sql())
                } else {
                    format!("{} {ty} NOT NULL", c.sql())
                }
            })
            .collect();
        let tx = conn.transaction()?;
        tx.execute(
            &format!("CREATE TABLE IF NOT EXISTS records ({})", cols.join(", ")),
            [],
        )?;
        tx.execute(
            "CREATE TABLE IF NOT EXISTS replica_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                applied_seq INTEGER NOT NULL,
                term INTEGER NOT NULL)",
            [],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO replica_state (id, applied_seq, term) VALUES (1, 0, 0)",
            [],
        )?;
        tx.commit()?;
        let Position { seq: applied, term } = read_position(&conn)?;
        let store = Store {
            schema: schema.clone(),
            sql: Statements::new(schema),
            path: path.to_owned(),
            sync,
            writer: Mutex::new(Writer {
                conn,
                applied,
                term,
            }),
            readers: Mutex::new(Vec::new()),
        };
        // Readers opened now, their statements prepared, so the first reads do not pay.
        let readers = (0..WARM_READERS)
            .map(|_| store.open_reader())
            .collect::<rusqlite::Result<Vec<_>>>()?;
        *lock(&store.readers) = readers;
        Ok(store)
    }

    fn open_reader(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.prepare_cached(&self.sql.range_json)?;
        conn.prepare_cached(&self.sql.exists)?;
        Ok(conn)
    }

    /// Whether a commit waits for the disk (`synchronous=FULL`): callers then apply on the
    /// blocking pool rather than in place.
    pub fn is_durable(&self) -> bool {
        self.sync.is_durable()
    }

    /// The applied sequence and term as committed.
    pub fn position(&self) -> Position {
        let w = lock(&self.writer);
        Position {
            seq: w.applied,
            term: w.term,
        }
    }

    /// Applies a batch of `(seq, entry)` in one transaction. Entries at or below the stored
    /// sequence are ignored (a redelivery); the caller guarantees there is no gap.
    pub fn apply(
        &self,
        batch: &[(Seq, Result<WalEntry, String>)],
    ) -> rusqlite::Result<BatchApplied> {
        let mut w = lock(&self.writer);
        let (mut applied, mut term) = (w.applied, w.term);
        let tx = w.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (seq, entry) in batch {
            if *seq <= applied {
                continue;
            }
            let outcome = match entry {
                Err(e) => Outcome::Invalid(e.clone()),
                Ok(e) => self.apply_entry(&tx, e, &mut term)?,
            };
            applied = *seq;
            outcomes.push((*seq, outcome));
        }
        set_position(&tx, applied, term)?;
        tx.commit()?;
        (w.applied, w.term) = (applied, term);
        Ok((applied, term, outcomes))
    }

    fn apply_entry(
        &self,
        tx: &Connection,
        entry: &WalEntry,
        term: &mut Term,
    ) -> rusqlite::Result<Outcome> {
        if let WalOp::Term { .. } = entry.op {
            *term = entry.term;
            return Ok(Outcome::NewTerm(entry.term));
        }
        if entry.term != *term {
            return Ok(Outcome::StaleTerm {
                entry: entry.term,
                current: *term,
            });
        }
        match &entry.op {
            WalOp::Batch { ops } => ops
                .iter()
                .map(|op| self.apply_op(tx, op))
                .collect::<rusqlite::Result<_>>()
                .map(Outcome::Batch),
            op => self.apply_op(tx, op),
        }
    }

    fn apply_op(&self, tx: &Connection, op: &WalOp) -> rusqlite::Result<Outcome> {
        match op {
            WalOp::Term { .. } | WalOp::Batch { .. } => Ok(Outcome::Invalid(
                "a batch may hold only inserts, updates and deletes".into(),
            )),
            WalOp::Insert { rows } => {
                let rows = match self.parse_rows(rows) {
                    Ok(r) => r,
                    Err(e) => return Ok(Outcome::Invalid(e)),
                };
                if let [row] = rows.as_slice() {
                    // One row: a single statement decides (the common case, kept cheap).
                    let changed = tx
                        .prepare_cached(&self.sql.insert_or_ignore)?
                        .execute(params_from_iter(row.iter().map(sql_value)))?;
                    return Ok(Dml::Insert(key_of(row)).outcome(changed));
                }
                // Several rows: all or none, so check every key before writing any.
                let mut dup = Vec::new();
                let mut seen = std::collections::HashSet::new();
                let mut exists = tx.prepare_cached(&self.sql.exists)?;
                for r in &rows {
                    let k = key_of(r);
                    if !seen.insert(k) || exists.exists([k])? {
                        dup.push(k);
                    }
                }
                if !dup.is_empty() {
                    dup.sort_unstable();
                    dup.dedup();
                    return Ok(Outcome::Duplicate(dup));
                }
                let mut insert = tx.prepare_cached(&self.sql.insert)?;
                for r in &rows {
                    insert.execute(params_from_iter(r.iter().map(sql_value)))?;
                }
                Ok(Outcome::Applied)
            }
            WalOp::Update { key: k, row } => {
                let row = match self.update_row(*k, row) {
                    Ok(r) => r,
                    Err(e) => return Ok(Outcome::Invalid(e)),
                };
                let values = row[1..]
                    .iter()
                    .map(sql_value)
                    .chain([ToSqlOutput::Borrowed(ValueRef::Integer(*k))]);
                let changed = tx
                    .prepare_cached(&self.sql.update)?
                    .execute(params_from_iter(values))?;
                Ok(Dml::Update(*k).outcome(changed))
            }
            WalOp::Delete { key: k } => {
                let changed = tx.prepare_cached(&self.sql.delete)?.execute([*k])?;
                Ok(Dml::Delete(*k).outcome(changed))
            }
        }
    }

    /// The full row of an update entry, which must carry the entry's key.
    fn update_row(&self, k: i64, row: &Map<String, Json>) -> Result<Row, String> {
        let row = self
            .schema
            .parse_row(&Json::Object(row.clone()), usize::MAX)?;
        if key_of(&row) == k {
            Ok(row)
        } else {
            Err("row key differs from entry key".into())
        }
    }

    fn parse_rows(&self, rows: &[Map<String, Json>]) -> Result<Vec<Row>, String> {
        rows.iter()
            .map(|r| self.schema.parse_row(&Json::Object(r.clone()), usize::MAX))
            .collect()
    }

    /// Runs `f` on an idle read connection (opening one when all are busy). Readers see the
    /// last committed state (WAL mode) and never wait for the writer.
    fn read<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let idle = lock(&self.readers).pop();
        let mut conn = match idle {
            Some(c) => c,
            None => self.open_reader()?,
        };
        let result = f(&mut conn);
        let mut idle = lock(&self.readers);
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Keys among `keys` that exist now (a fast pre-check; the apply is authoritative).
    pub fn existing(&self, keys: &[i64]) -> rusqlite::Result<Vec<i64>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.read(|conn| {
            let mut exists = conn.prepare_cached(&self.sql.exists)?;
            let mut found = Vec::new();
            for k in keys {
                if exists.exists([*k])? {
                    found.push(*k);
                }
            }
            Ok(found)
        })
    }

    /// Rows with `low <= key <= high`, in key order, as one JSON array text.
    pub fn read_range_json(&self, low: i64, high: i64) -> rusqlite::Result<String> {
        self.read(|conn| {
            conn.prepare_cached(&self.sql.range_json)?
                .query_row([low, high], |r| r.get(0))
        })
    }

    /// Every row, in key order. Long for a big shard: call it on the blocking pool.
    pub fn read_all(&self) -> rusqlite::Result<Vec<Json>> {
        Ok(self.snapshot()?.0)
    }

    /// Every row plus the `(applied_seq, term)` they are consistent with, read in one
    /// transaction. Long for a big shard: call it on the blocking pool.
    pub fn snapshot(&self) -> rusqlite::Result<(Vec<Json>, Position)> {
        self.read(|conn| {
            let tx = conn.transaction()?;
            let at = read_position(&tx)?;
            let rows = {
                let mut all = tx.prepare_cached(&self.sql.all)?;
                let rows = all.query_map([], |r| self.to_json(r))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.commit()?;
            Ok((rows, at))
        })
    }

    /// Replaces the whole replica with a snapshot taken elsewhere. Long for a big
    /// snapshot: call it on the blocking pool.
    pub fn restore(&self, rows: &[Row], at: Position) -> rusqlite::Result<()> {
        let mut w = lock(&self.writer);
        let tx = w.conn.transaction()?;
        tx.execute("DELETE FROM records", [])?;
        {
            let mut insert = tx.prepare_cached(&self.sql.insert)?;
            for r in rows {
                insert.execute(params_from_iter(r.iter().map(sql_value)))?;
            }
        }
        set_position(&tx, at.seq, at.term)?;
        tx.commit()?;
        (w.applied, w.term) = (at.seq, at.term);
        Ok(())
    }

    fn to_json(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<Json> {
        let mut m = Map::with_capacity(self.schema.columns.len());
        for (i, (c, d)) in self
            .schema
            .columns
            .iter()
            .zip(&self.schema.dtypes)
            .enumerate()
        {
            let v = match d {
                Dtype::Number => Json::from(r.get::<_, i64>(i)?),
                Dtype::String => Json::from(r.get::<_, String>(i)?),
            };
            m.insert(c.as_str().to_owned(), v);
        }
        Ok(Json::Object(m))
    }

    /// Closes the idle read connections (the writer closes when the store is dropped).
    pub fn close(&self) {
        lock(&self.readers).clear();
    }
}

/// How a statement's change count turns into an outcome.
enum Dml {
    Insert(i64),
    Update(i64),
    Delete(i64),
}

impl Dml {
    fn outcome(&self, changes: usize) -> Outcome {
        match (self, changes) {
            (_, n) if n > 0 => Outcome::Applied,
            (Dml::Insert(k), _) => Outcome::Duplicate(vec![*k]),
            (Dml::Update(k) | Dml::Delete(k), _) => Outcome::Missing(*k),
        }
    }
}

/// A value bound as a statement parameter (never spliced into SQL text).
fn sql_value(v: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match v {
        Value::Int(i) => ValueRef::Integer(*i),
        Value::Text(s) => ValueRef::Text(s.as_bytes()),
    })
}

fn read_position(conn: &Connection) -> rusqlite::Result<Position> {
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

fn set_position(conn: &Connection, seq: Seq, term: Term) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE replica_state SET applied_seq = ?, term = ? WHERE id = 1")?
        .execute(params![seq.0 as i64, term.0 as i64])?;
    Ok(())
}

/// Runs a store call that may take long (a snapshot, a restore, a commit that waits for the
/// disk) on tokio's blocking pool, so the runtime's workers keep serving.
pub async fn blocking<T, F>(store: &Arc<Store>, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> rusqlite::Result<T> + Send + 'static,
{
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(&store)).await??)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shardline::schema::SchemaSpec;

    fn schema() -> Schema {
        Schema::parse(&SchemaSpec {
            columns: vec!["Stud_id".into(), "Stud_name".into(), "Stud_marks".into()],
            dtypes: vec!["Number".into(), "String".into(), "Number".into()],
        })
        .unwrap()
    }

    fn entry(op: WalOp, term: u64) -> Result<WalEntry, String> {
        Ok(WalEntry {
            op,
            term: Term(term),
            by: "t".into(),
            ts_ms: 0,
        })
    }

    fn row(k: i64, name: &str) -> Map<String, Json> {
        json!({"Stud_id": k, "Stud_name": name, "Stud_marks": 1})
            .as_object()
            .unwrap()
            .clone()
    }

    fn insert(k: i64, name: &str) -> WalOp {
        WalOp::Insert {
            rows: vec![row(k, name)],
        }
    }

    /// Every kind of entry gets the outcome the protocol defines, whatever bytes its
    /// strings hold, and the position survives a reopen.
    #[test]
    fn outcomes_of_every_kind_of_entry() {
        let dir = tempfile::tempdir().unwrap();
        let nasty = "it's \"quoted\"; DROP TABLE records; --\u{0}é✓";
        let term = |t| {
            entry(
                WalOp::Term {
                    primary: shardline::names::ServerName::parse("s").unwrap(),
                },
                t,
            )
        };
        let batch: Vec<(u64, _)> = vec![
            (1, term(1)),
            (2, entry(insert(1, nasty), 1)),
            (3, entry(insert(1, "dup"), 1)),
            (
                4,
                entry(
                    WalOp::Batch {
                        ops: vec![insert(2, "b"), insert(2, "again"), WalOp::Delete { key: 9 }],
                    },
                    1,
                ),
            ),
            (
                5,
                entry(
                    WalOp::Update {
                        key: 2,
                        row: json!({"Stud_id": 2, "Stud_name": "b'2", "Stud_marks": -3})
                            .as_object()
                            .unwrap()
                            .clone(),
                    },
                    1,
                ),
            ),
            (
                6,
                entry(
                    WalOp::Update {
                        key: 7,
                        row: row(7, "x"),
                    },
                    1,
                ),
            ),
            (7, entry(insert(3, "stale"), 0)),
            (8, Err("garbage".to_string())),
            (9, entry(WalOp::Delete { key: 1 }, 1)),
            (10, entry(insert(4, "four"), 1)),
            // Several rows: all or none.
            (
                11,
                entry(
                    WalOp::Insert {
                        rows: vec![row(5, "five"), row(4, "dup"), row(5, "again")],
                    },
                    1,
                ),
            ),
            (
                12,
                entry(
                    WalOp::Insert {
                        rows: vec![row(6, nasty), row(8, "eight")],
                    },
                    1,
                ),
            ),
        ];
        let path = dir.path().join("s.db");
        let batch: Vec<(Seq, _)> = batch.into_iter().map(|(s, e)| (Seq(s), e)).collect();
        let store = Store::open(&path, &schema(), SyncMode::Normal).unwrap();
        let (seq, t, outcomes) = store.apply(&batch).unwrap();
        assert_eq!((seq, t), (Seq(12), Term(1)));
        let outcomes: Vec<Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();
        assert_eq!(outcomes[0], Outcome::NewTerm(Term(1)));
        assert_eq!(outcomes[1], Outcome::Applied);
        assert_eq!(outcomes[2], Outcome::Duplicate(vec![1]));
        assert_eq!(
            outcomes[3],
            Outcome::Batch(vec![
                Outcome::Applied,
                Outcome::Duplicate(vec![2]),
                Outcome::Missing(9)
            ])
        );
        assert_eq!(outcomes[4], Outcome::Applied);
        assert_eq!(outcomes[5], Outcome::Missing(7));
        assert_eq!(
            outcomes[6],
            Outcome::StaleTerm {
                entry: Term(0),
                current: Term(1)
            }
        );
        assert_eq!(outcomes[7], Outcome::Invalid("garbage".into()));
        assert_eq!(outcomes[8], Outcome::Applied);
        assert_eq!(outcomes[9], Outcome::Applied);
        assert_eq!(outcomes[10], Outcome::Duplicate(vec![4, 5]));
        assert_eq!(outcomes[11], Outcome::Applied);
        assert_eq!(
            store.read_all().unwrap(),
            vec![
                json!({"Stud_id": 2, "Stud_name": "b'2", "Stud_marks": -3}),
                json!({"Stud_id": 4, "Stud_name": "four", "Stud_marks": 1}),
                json!({"Stud_id": 6, "Stud_name": nasty, "Stud_marks": 1}),
                json!({"Stud_id": 8, "Stud_name": "eight", "Stud_marks": 1}),
            ]
        );
        let range: Json = serde_json::from_str(&store.read_range_json(5, 6).unwrap()).unwrap();
        assert_eq!(
            range,
            json!([{"Stud_id": 6, "Stud_name": nasty, "Stud_marks": 1}])
        );
        let all: Json =
            serde_json::from_str(&store.read_range_json(i64::MIN, i64::MAX).unwrap()).unwrap();
        assert_eq!(all, Json::Array(store.read_all().unwrap()), "key order");
        assert_eq!(store.existing(&[1, 2, 3, 4]).unwrap(), vec![2, 4]);

        // A redelivered batch changes nothing; the position is durable across a reopen.
        let (seq, _, again) = store.apply(&batch).unwrap();
        assert_eq!((seq, again.len()), (Seq(12), 0));
        drop(store);
        let store = Store::open(&path, &schema(), SyncMode::Full).unwrap();
        assert_eq!(
            store.position(),
            Position {
                seq: Seq(12),
                term: Term(1)
            }
        );
        assert_eq!(store.read_all().unwrap().len(), 4);
    }

    /// A restore replaces every row and the position in one go; the snapshot it came from
    /// carries the position it is consistent with.
    #[test]
    fn snapshot_restores_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a.db"), &schema(), SyncMode::Normal).unwrap();
        let b = Store::open(&dir.path().join("b.db"), &schema(), SyncMode::Normal).unwrap();
        a.apply(&[
            (Seq(1), entry(insert(1, "one"), 0)),
            (Seq(2), entry(insert(2, "two"), 0)),
        ])
        .unwrap();
        b.apply(&[(Seq(1), entry(insert(9, "gone"), 0))]).unwrap();
        let (rows, at) = a.snapshot().unwrap();
        assert_eq!((rows.len(), at.seq, at.term), (2, Seq(2), Term(0)));
        let rows: Vec<Row> = rows
            .iter()
            .map(|r| schema().parse_row(r, usize::MAX).unwrap())
            .collect();
        b.restore(&rows, at).unwrap();
        assert_eq!(b.read_all().unwrap(), a.read_all().unwrap());
        assert_eq!(
            b.position(),
            Position {
                seq: Seq(2),
                term: Term(0)
            }
        );
    }
}
