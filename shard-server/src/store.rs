//! One shard replica's SQLite database: the rows, plus the last applied WAL sequence and the
//! current term, both stored in the same transaction as the data they describe.
//!
//! Applying is deterministic: the outcome of an entry depends only on the entry and the rows.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value as Json};
use shardline::schema::{Dtype, Row, Schema, Value};
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
                    return Ok(if done.rows_affected() == 0 {
                        Outcome::Duplicate(vec![key(row)])
                    } else {
                        Outcome::Applied
                    });
                }
                let mut dup = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for r in &rows {
                    let k = key(r);
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
                let row = match self
                    .schema
                    .parse_row(&Json::Object(row.clone()), usize::MAX)
                {
                    Ok(r) if key(&r) == *k => r,
                    Ok(_) => return Ok(Outcome::Invalid("row key differs from entry key".into())),
                    Err(e) => return Ok(Outcome::Invalid(e)),
                };
                let mut q = sqlx::query(&self.sql.update);
                for v in &row[1..] {
                    q = bind(q, v);
                }
                let done = q.bind(*k).execute(&mut *tx).await?;
                Ok(if done.rows_affected() == 0 {
                    Outcome::Missing(*k)
                } else {
                    Outcome::Applied
                })
            }
            WalOp::Delete { key: k } => {
                let done = sqlx::query(&self.sql.delete)
                    .bind(*k)
                    .execute(&mut *tx)
                    .await?;
                Ok(if done.rows_affected() == 0 {
                    Outcome::Missing(*k)
                } else {
                    Outcome::Applied
                })
            }
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
        let mut conn = self.readers.acquire().await?;
        let mut out = Vec::new();
        for k in keys {
            if self.exists(&mut conn, *k).await? {
                out.push(*k);
            }
        }
        Ok(out)
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

fn key(r: &Row) -> i64 {
    match r[0] {
        Value::Int(k) => k,
        Value::Text(_) => unreachable!("the schema's first column is a Number"),
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
