//! One shard replica's SQLite database: the rows, plus the last applied WAL sequence and the
//! current term, both stored in the same transaction as the data they describe.
//!
//! Applying is deterministic: the outcome of an entry depends only on the entry and the rows.

use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value as Json};
use shardline::schema::{key_of, Dtype, Row, Schema, Value};
use shardline::wal::{WalEntry, WalOp};
use shardline::{Seq, Term};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row as _};

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

/// SQL text prepared once per schema.
#[derive(Debug)]
struct Statements {
    insert: String,
    insert_or_ignore: String,
    update: String,
    delete: String,
    exists: String,
    /// The range as one JSON array built by SQLite: one row crosses sqlx's worker channel
    /// instead of one per record, and nothing is re-encoded in Rust.
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
            range_json: format!(
                "SELECT json_group_array(json_object({pairs}) ORDER BY {key}) \
                 FROM records WHERE {key} >= ? AND {key} <= ?"
            ),
            all: format!("SELECT {list} FROM records ORDER BY {key}"),
        }
    }
}

struct Writer {
    conn: SqliteConnection,
    applied: Seq,
    term: Term,
}

pub struct Store {
    schema: Schema,
    sql: Statements,
    /// The single writer connection and the position it has committed (owned by the
    /// applier; serialised by the mutex).
    writer: tokio::sync::Mutex<Writer>,
    readers: SqlitePool,
}

/// Durability knob for SQLite (see README, "Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sync {
    Normal,
    Full,
}

impl Store {
    pub async fn open(path: &Path, schema: &Schema, sync: Sync) -> Result<Store, sqlx::Error> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match sync {
                Sync::Normal => SqliteSynchronous::Normal,
                Sync::Full => SqliteSynchronous::Full,
            })
            .busy_timeout(Duration::from_secs(5));
        let mut writer = SqliteConnection::connect_with(&opts).await?;
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
        let mut tx = writer.begin().await?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS records ({})",
            cols.join(", ")
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS replica_state (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                applied_seq INTEGER NOT NULL,
                term INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT OR IGNORE INTO replica_state (id, applied_seq, term) VALUES (1, 0, 0)")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let (applied, term) = read_position(&mut writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(opts.read_only(true))
            .await?;
        Ok(Store {
            schema: schema.clone(),
            sql: Statements::new(schema),
            writer: tokio::sync::Mutex::new(Writer {
                conn: writer,
                applied,
                term,
            }),
            readers,
        })
    }

    /// `(applied_seq, term)` as committed.
    pub async fn position(&self) -> (Seq, Term) {
        let w = self.writer.lock().await;
        (w.applied, w.term)
    }

    /// Applies a batch of `(seq, entry)` in one transaction. Entries at or below the stored
    /// sequence are ignored (a redelivery); the caller guarantees there is no gap.
    pub async fn apply(
        &self,
        batch: &[(Seq, Result<WalEntry, String>)],
    ) -> Result<(Seq, Term, Vec<(Seq, Outcome)>), sqlx::Error> {
        let mut w = self.writer.lock().await;
        let fast = batch
            .iter()
            .all(|(_, e)| e.as_ref().map_or(true, |e| !has_multi_row_insert(&e.op)));
        if fast {
            self.apply_in_one_round_trip(&mut w, batch).await
        } else {
            self.apply_step_by_step(&mut w, batch).await
        }
    }

    /// The general path: one statement per round trip to sqlx's SQLite worker, so a
    /// multi-row insert can check its keys before writing any of them.
    async fn apply_step_by_step(
        &self,
        w: &mut Writer,
        batch: &[(Seq, Result<WalEntry, String>)],
    ) -> Result<(Seq, Term, Vec<(Seq, Outcome)>), sqlx::Error> {
        let (mut applied, mut term) = (w.applied, w.term);
        let mut tx = w.conn.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (seq, entry) in batch {
            if *seq <= applied {
                continue;
            }
            let outcome = match entry {
                Err(e) => Outcome::Invalid(e.clone()),
                Ok(e) => self.apply_entry(&mut tx, e, &mut term).await?,
            };
            applied = *seq;
            outcomes.push((*seq, outcome));
        }
        sqlx::query("UPDATE replica_state SET applied_seq = ?, term = ? WHERE id = 1")
            .bind(applied as i64)
            .bind(term as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        (w.applied, w.term) = (applied, term);
        Ok((applied, term, outcomes))
    }

    /// The common path (single-row inserts, updates, deletes): the whole batch, from BEGIN
    /// to COMMIT, is one multi-statement query, so it crosses to sqlx's SQLite worker thread
    /// once instead of once per statement. Each DML statement's change count (one result
    /// per statement, in order) decides its op's outcome exactly as the general path would.
    async fn apply_in_one_round_trip(
        &self,
        w: &mut Writer,
        batch: &[(Seq, Result<WalEntry, String>)],
    ) -> Result<(Seq, Term, Vec<(Seq, Outcome)>), sqlx::Error> {
        let (mut applied, mut term) = (w.applied, w.term);
        let mut sql = String::from("BEGIN;");
        // Per entry: its sequence and either a final outcome or the DML ops it runs.
        let mut plan: Vec<(Seq, Planned)> = Vec::with_capacity(batch.len());
        for (seq, entry) in batch {
            if *seq <= applied {
                continue;
            }
            applied = *seq;
            let e = match entry {
                Err(e) => {
                    plan.push((*seq, Planned::Done(Outcome::Invalid(e.clone()))));
                    continue;
                }
                Ok(e) => e,
            };
            if let WalOp::Term { .. } = e.op {
                term = e.term;
                plan.push((*seq, Planned::Done(Outcome::NewTerm(e.term))));
                continue;
            }
            if e.term != term {
                let stale = Outcome::StaleTerm {
                    entry: e.term,
                    current: term,
                };
                plan.push((*seq, Planned::Done(stale)));
                continue;
            }
            let planned = match &e.op {
                WalOp::Batch { ops } => {
                    Planned::Batch(ops.iter().map(|op| self.plan_op(op, &mut sql)).collect())
                }
                op => Planned::One(self.plan_op(op, &mut sql)),
            };
            plan.push((*seq, planned));
        }
        sql.push_str(&format!(
            "UPDATE replica_state SET applied_seq = {applied}, term = {term} WHERE id = 1; COMMIT;"
        ));
        let results: Result<Vec<u64>, sqlx::Error> = sqlx::raw_sql(&sql)
            .fetch_many(&mut w.conn)
            .filter_map(|r| async move {
                match r {
                    Ok(sqlx::Either::Left(done)) => Some(Ok(done.rows_affected())),
                    Ok(sqlx::Either::Right(_)) => None,
                    Err(e) => Some(Err(e)),
                }
            })
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect();
        let changes = match results {
            Ok(c) => c,
            Err(e) => {
                // Leave no transaction open behind a failed statement.
                let _ = sqlx::query("ROLLBACK").execute(&mut w.conn).await;
                return Err(e);
            }
        };
        // BEGIN, one per DML op, the position update, COMMIT.
        let mut dml = changes
            .get(1..changes.len().saturating_sub(2))
            .unwrap_or(&[])
            .iter();
        let mut next = |op: &PlannedOp| match op {
            PlannedOp::Done(o) => Ok(o.clone()),
            PlannedOp::Dml(kind) => dml.next().map(|n| kind.outcome(*n)).ok_or_else(|| {
                sqlx::Error::Protocol("fewer statement results than statements".into())
            }),
        };
        let mut outcomes = Vec::with_capacity(plan.len());
        for (seq, p) in &plan {
            let o = match p {
                Planned::Done(o) => o.clone(),
                Planned::One(op) => next(op)?,
                Planned::Batch(ops) => {
                    Outcome::Batch(ops.iter().map(&mut next).collect::<Result<_, _>>()?)
                }
            };
            outcomes.push((*seq, o));
        }
        (w.applied, w.term) = (applied, term);
        Ok((applied, term, outcomes))
    }

    /// Appends the statement of one op (never a multi-row insert) to `sql`, values written
    /// as literals: integers in decimal, text as a hex blob cast to TEXT, so no value can
    /// change the statement whatever bytes it holds.
    fn plan_op(&self, op: &WalOp, sql: &mut String) -> PlannedOp {
        let invalid = |e: String| PlannedOp::Done(Outcome::Invalid(e));
        let cols = &self.schema.columns;
        let key_col = cols[0].sql();
        match op {
            WalOp::Term { .. } | WalOp::Batch { .. } => {
                invalid("a batch may hold only inserts, updates and deletes".into())
            }
            WalOp::Insert { rows } => {
                let row = match self.parse_rows(rows) {
                    Ok(mut r) if r.len() == 1 => r.pop().expect("one row"),
                    Ok(_) => {
                        return invalid("multi-row insert on the single-statement path".into())
                    }
                    Err(e) => return invalid(e),
                };
                let values: Vec<String> = row.iter().map(literal).collect();
                let list: Vec<String> = cols.iter().map(|c| c.sql()).collect();
                sql.push_str(&format!(
                    "INSERT OR IGNORE INTO records ({}) VALUES ({});",
                    list.join(", "),
                    values.join(", ")
                ));
                PlannedOp::Dml(Dml::Insert(key_of(&row)))
            }
            WalOp::Update { key: k, row } => {
                let row = match self.update_row(*k, row) {
                    Ok(r) => r,
                    Err(e) => return invalid(e),
                };
                let sets: Vec<String> = cols
                    .iter()
                    .zip(&row)
                    .skip(1)
                    .map(|(c, v)| format!("{} = {}", c.sql(), literal(v)))
                    .collect();
                let sets = if sets.is_empty() {
                    format!("{key_col} = {key_col}")
                } else {
                    sets.join(", ")
                };
                sql.push_str(&format!("UPDATE records SET {sets} WHERE {key_col} = {k};"));
                PlannedOp::Dml(Dml::Update(*k))
            }
            WalOp::Delete { key: k } => {
                sql.push_str(&format!("DELETE FROM records WHERE {key_col} = {k};"));
                PlannedOp::Dml(Dml::Delete(*k))
            }
        }
    }

    async fn apply_entry(
        &self,
        tx: &mut SqliteConnection,
        entry: &WalEntry,
        term: &mut Term,
    ) -> Result<Outcome, sqlx::Error> {
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
            WalOp::Batch { ops } => {
                let mut out = Vec::with_capacity(ops.len());
                for op in ops {
                    out.push(self.apply_op(tx, op).await?);
                }
                Ok(Outcome::Batch(out))
            }
            op => self.apply_op(tx, op).await,
        }
    }

    async fn apply_op(
        &self,
        tx: &mut SqliteConnection,
        op: &WalOp,
    ) -> Result<Outcome, sqlx::Error> {
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
                    let mut q = sqlx::query(&self.sql.insert_or_ignore);
                    for v in row {
                        q = bind(q, v);
                    }
                    let done = q.execute(&mut *tx).await?;
                    return Ok(Dml::Insert(key_of(row)).outcome(done.rows_affected()));
                }
                let mut dup = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for r in &rows {
                    let k = key_of(r);
                    if !seen.insert(k) || self.exists(tx, k).await? {
                        dup.push(k);
                    }
                }
                if !dup.is_empty() {
                    dup.sort_unstable();
                    dup.dedup();
                    return Ok(Outcome::Duplicate(dup));
                }
                for r in &rows {
                    let mut q = sqlx::query(&self.sql.insert);
                    for v in r {
                        q = bind(q, v);
                    }
                    q.execute(&mut *tx).await?;
                }
                Ok(Outcome::Applied)
            }
            WalOp::Update { key: k, row } => {
                let row = match self.update_row(*k, row) {
                    Ok(r) => r,
                    Err(e) => return Ok(Outcome::Invalid(e)),
                };
                let mut q = sqlx::query(&self.sql.update);
                for v in &row[1..] {
                    q = bind(q, v);
                }
                let done = q.bind(*k).execute(&mut *tx).await?;
                Ok(Dml::Update(*k).outcome(done.rows_affected()))
            }
            WalOp::Delete { key: k } => {
                let done = sqlx::query(&self.sql.delete)
                    .bind(*k)
                    .execute(&mut *tx)
                    .await?;
                Ok(Dml::Delete(*k).outcome(done.rows_affected()))
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

    async fn exists(&self, conn: &mut SqliteConnection, k: i64) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query(&self.sql.exists)
            .bind(k)
            .fetch_optional(&mut *conn)
            .await?
            .is_some())
    }

    /// Keys among `keys` that exist now (a fast pre-check; the apply is authoritative).
    pub async fn existing(&self, keys: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One query for the whole list (integers only, so literals are safe).
        let list: Vec<String> = keys.iter().map(i64::to_string).collect();
        let sql = format!(
            "SELECT {key} FROM records WHERE {key} IN ({})",
            list.join(","),
            key = self.schema.columns[0].sql()
        );
        let rows = sqlx::query(&sql)
            .persistent(false)
            .fetch_all(&self.readers)
            .await?;
        rows.iter().map(|r| r.try_get::<i64, _>(0)).collect()
    }

    /// Rows with `low <= key <= high`, in key order, as one JSON array text.
    pub async fn read_range_json(&self, low: i64, high: i64) -> Result<String, sqlx::Error> {
        let row = sqlx::query(&self.sql.range_json)
            .bind(low)
            .bind(high)
            .fetch_one(&self.readers)
            .await?;
        row.try_get::<String, _>(0)
    }

    pub async fn read_all(&self) -> Result<Vec<Json>, sqlx::Error> {
        Ok(self.snapshot().await?.0)
    }

    /// Every row plus the `(applied_seq, term)` they are consistent with, read in one
    /// transaction.
    pub async fn snapshot(&self) -> Result<(Vec<Json>, Seq, Term), sqlx::Error> {
        let mut conn = self.readers.acquire().await?;
        let mut tx = conn.begin().await?;
        let (seq, term) = read_position(&mut tx).await?;
        let rows = sqlx::query(&self.sql.all).fetch_all(&mut *tx).await?;
        tx.commit().await?;
        Ok((rows.iter().map(|r| self.to_json(r)).collect(), seq, term))
    }

    /// Replaces the whole replica with a snapshot taken elsewhere.
    pub async fn restore(&self, rows: &[Row], seq: Seq, term: Term) -> Result<(), sqlx::Error> {
        let mut w = self.writer.lock().await;
        let mut tx = w.conn.begin().await?;
        sqlx::query("DELETE FROM records").execute(&mut *tx).await?;
        for r in rows {
            let mut q = sqlx::query(&self.sql.insert);
            for v in r {
                q = bind(q, v);
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE replica_state SET applied_seq = ?, term = ? WHERE id = 1")
            .bind(seq as i64)
            .bind(term as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        (w.applied, w.term) = (seq, term);
        Ok(())
    }

    fn to_json(&self, r: &SqliteRow) -> Json {
        let mut m = Map::with_capacity(self.schema.columns.len());
        for (i, (c, d)) in self
            .schema
            .columns
            .iter()
            .zip(&self.schema.dtypes)
            .enumerate()
        {
            let v = match d {
                Dtype::Number => Json::from(r.try_get::<i64, _>(i).unwrap_or_default()),
                Dtype::String => Json::from(r.try_get::<String, _>(i).unwrap_or_default()),
            };
            m.insert(c.as_str().to_owned(), v);
        }
        Json::Object(m)
    }

    pub async fn close(&self) {
        self.readers.close().await;
    }
}

enum Planned {
    Done(Outcome),
    One(PlannedOp),
    Batch(Vec<PlannedOp>),
}

enum PlannedOp {
    Done(Outcome),
    Dml(Dml),
}

/// A planned statement and how its change count turns into an outcome.
enum Dml {
    Insert(i64),
    Update(i64),
    Delete(i64),
}

impl Dml {
    fn outcome(&self, changes: u64) -> Outcome {
        match (self, changes) {
            (_, n) if n > 0 => Outcome::Applied,
            (Dml::Insert(k), _) => Outcome::Duplicate(vec![*k]),
            (Dml::Update(k) | Dml::Delete(k), _) => Outcome::Missing(*k),
        }
    }
}

fn has_multi_row_insert(op: &WalOp) -> bool {
    match op {
        WalOp::Insert { rows } => rows.len() > 1,
        WalOp::Batch { ops } => ops.iter().any(has_multi_row_insert),
        _ => false,
    }
}

/// A value as an SQL literal that cannot alter the statement it is spliced into.
fn literal(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Text(t) => {
            let mut out = String::with_capacity(t.len() * 2 + 20);
            out.push_str("CAST(X'");
            for b in t.as_bytes() {
                let _ = write!(out, "{b:02X}");
            }
            out.push_str("' AS TEXT)");
            out
        }
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

fn bind<'q>(q: Query<'q>, v: &'q Value) -> Query<'q> {
    match v {
        Value::Int(i) => q.bind(*i),
        Value::Text(s) => q.bind(s.as_str()),
    }
}

async fn read_position(conn: &mut SqliteConnection) -> Result<(Seq, Term), sqlx::Error> {
    let row = sqlx::query("SELECT applied_seq, term FROM replica_state WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    Ok((
        row.try_get::<i64, _>(0)? as Seq,
        row.try_get::<i64, _>(1)? as Term,
    ))
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

    fn entry(op: WalOp, term: Term) -> Result<WalEntry, String> {
        Ok(WalEntry {
            op,
            term,
            by: "t".into(),
            ts_ms: 0,
        })
    }

    fn insert(k: i64, name: &str) -> WalOp {
        WalOp::Insert {
            rows: vec![json!({"Stud_id": k, "Stud_name": name, "Stud_marks": 1})
                .as_object()
                .unwrap()
                .clone()],
        }
    }

    /// The one-round-trip path and the statement-by-statement path must agree on every
    /// outcome and leave the same rows: hostile strings included.
    #[tokio::test]
    async fn both_apply_paths_agree() {
        let dir = tempfile::tempdir().unwrap();
        let nasty = "it's \"quoted\"; DROP TABLE records; --\u{0}é✓";
        let batch = vec![
            (
                1,
                entry(
                    WalOp::Term {
                        primary: shardline::names::ServerName::parse("s").unwrap(),
                    },
                    1,
                ),
            ),
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
                        row: json!({"Stud_id": 7, "Stud_name": "x", "Stud_marks": 0})
                            .as_object()
                            .unwrap()
                            .clone(),
                    },
                    1,
                ),
            ),
            (7, entry(insert(3, "stale"), 0)),
            (8, Err("garbage".to_string())),
            (9, entry(WalOp::Delete { key: 1 }, 1)),
            (10, entry(insert(4, "four"), 1)),
        ];
        let mut results = Vec::new();
        for fast in [true, false] {
            let store = Store::open(
                &dir.path().join(format!("{fast}.db")),
                &schema(),
                Sync::Normal,
            )
            .await
            .unwrap();
            let mut w = store.writer.lock().await;
            let out = if fast {
                store.apply_in_one_round_trip(&mut w, &batch).await.unwrap()
            } else {
                store.apply_step_by_step(&mut w, &batch).await.unwrap()
            };
            drop(w);
            assert_eq!((out.0, out.1), (10, 1));
            let rows = store.read_all().await.unwrap();
            results.push((out.2, rows));
        }
        assert_eq!(results[0], results[1]);
        let (outcomes, rows) = &results[0];
        assert_eq!(outcomes[2].1, Outcome::Duplicate(vec![1]));
        assert_eq!(
            outcomes[3].1,
            Outcome::Batch(vec![
                Outcome::Applied,
                Outcome::Duplicate(vec![2]),
                Outcome::Missing(9)
            ])
        );
        assert_eq!(outcomes[5].1, Outcome::Missing(7));
        assert!(matches!(
            outcomes[6].1,
            Outcome::StaleTerm {
                entry: 0,
                current: 1
            }
        ));
        assert_eq!(
            rows,
            &vec![
                json!({"Stud_id": 2, "Stud_name": "b'2", "Stud_marks": -3}),
                json!({"Stud_id": 4, "Stud_name": "four", "Stud_marks": 1}),
            ]
        );
        // A row with the hostile name survives the round trip byte for byte.
        let store = Store::open(&dir.path().join("n.db"), &schema(), Sync::Normal)
            .await
            .unwrap();
        let mut w = store.writer.lock().await;
        store
            .apply_in_one_round_trip(&mut w, &[(1, entry(insert(5, nasty), 0))])
            .await
            .unwrap();
        drop(w);
        assert_eq!(
            store.read_all().await.unwrap()[0]["Stud_name"],
            json!(nasty)
        );
        assert_eq!(
            store
                .read_range_json(0, 10)
                .await
                .unwrap()
                .matches("DROP TABLE")
                .count(),
            1
        );
    }
}
