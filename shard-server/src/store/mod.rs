//! One shard replica's SQLite database: the rows, plus the last applied WAL sequence and the
//! current term, both stored in the same transaction as the data they describe.
//!
//! - `sql`: the statements built from the schema, and the stored position.
//! - `apply`: applying WAL entries (deterministic: the outcome of an entry depends only on
//!   the entry and the rows) and what each one did ([`Outcome`]).
//! - `snapshot`: whole-database copies as SQLite files (`backup_to`, `install`).
//! - `space`: giving the pages of deleted rows and the -wal file back to the file system.
//! - this module: opening, reads, JSON snapshots and restores.
//!
//! Calls are synchronous and short (a prepared statement or a small transaction), so the
//! async code runs them in place: no hop to another thread per query, which on two cores
//! was the largest single cost of a write or a read (README.md, "Performance").
//! The calls that can take long (a whole snapshot, a restore, a commit that fsyncs in
//! durable mode) are run on tokio's blocking pool by their callers.

mod apply;
mod snapshot;
mod space;
mod sql;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde_json::{Map, Value as Json};
use shardline::schema::{Dtype, Schema};
use shardline::{Position, SyncMode};

pub use self::apply::{BatchApplied, Outcome};
pub(crate) use self::snapshot::remove_db_files;
pub use self::space::reclaim_forever;
pub use self::sql::{fingerprint, LogIdentity};
use self::sql::{migrate_log_identity, read_log_identity, read_position, set_log_id, Statements};

struct Writer {
    conn: Connection,
    /// The position committed last (what `replica_state` holds).
    at: Position,
    /// The log identity committed last.
    log: LogIdentity,
}

/// Idle read connections kept for reuse; more are opened when all are busy.
const IDLE_READERS: usize = 4;
/// Read connections opened with the store (reads run in place, so about one per worker
/// thread is busy at a time).
const WARM_READERS: usize = 2;
/// How long a connection waits for a lock held by another one.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Size the -wal file is cut back to whenever SQLite restarts it from the beginning.
const JOURNAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

pub struct Store {
    schema: Schema,
    sql: Statements,
    /// Each column's name as a JSON string (`"Stud_id"`), for [`Store::read_range_into`].
    json_names: Vec<Vec<u8>>,
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
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Before the first table exists (a new file), so freed pages can be given back
        // (`space`); an older file made without it is converted once below.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", sync.pragma())?;
        conn.pragma_update_and_check(None, "journal_size_limit", JOURNAL_SIZE_LIMIT, |_| Ok(()))?;
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
        migrate_log_identity(&tx)?;
        tx.commit()?;
        let auto_vacuum: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        if auto_vacuum != 2 {
            // A file from before incremental vacuum: rewriting it once makes the setting
            // take effect (as long as a copy of the shard; only ever once per file).
            tracing::info!(db = %path.display(), "converting to auto_vacuum=INCREMENTAL (VACUUM, once)");
            conn.execute_batch("VACUUM")?;
        }
        let at = read_position(&conn)?;
        let log = read_log_identity(&conn)?;
        let store = Store {
            schema: schema.clone(),
            sql: Statements::new(schema),
            json_names: schema
                .columns
                .iter()
                .map(|c| serde_json::to_vec(c.as_str()).expect("a str serializes"))
                .collect(),
            path: path.to_owned(),
            sync,
            writer: Mutex::new(Writer { conn, at, log }),
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
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.prepare_cached(&self.sql.range)?;
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
        lock(&self.writer).at
    }

    /// The identity of the log the replica applied from, as committed.
    pub fn log_identity(&self) -> LogIdentity {
        lock(&self.writer).log
    }

    /// Takes the stream identified by `log_id` as the replica's log from its current
    /// position on (a fresh replica's first look, or a log recovery).
    pub fn set_log_id(&self, log_id: u64) -> rusqlite::Result<()> {
        let mut w = lock(&self.writer);
        set_log_id(&w.conn, log_id)?;
        w.log = LogIdentity {
            log_id: Some(log_id),
            last_hash: None,
        };
        Ok(())
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
    #[cfg(test)]
    pub fn read_range_json(&self, low: i64, high: i64) -> rusqlite::Result<String> {
        let mut out = Vec::new();
        self.read_range_into(low, high, &mut out)?;
        // Only `str`s, `"`-escaped by serde_json, and ASCII were written.
        Ok(String::from_utf8(out).expect("JSON text is UTF-8"))
    }

    /// Appends the rows with `low <= key <= high`, in key order, to `out` as one compact
    /// JSON array (`[{"col":value,...},...]`, the columns in schema order). Written here
    /// from the column values: SQLite's `json_object`/`json_group_array` stringify every
    /// integer and copy every value twice more on the way.
    pub fn read_range_into(&self, low: i64, high: i64, out: &mut Vec<u8>) -> rusqlite::Result<()> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&self.sql.range)?;
            let mut rows = stmt.query([low, high])?;
            let mut ints = itoa::Buffer::new();
            out.push(b'[');
            let mut first = true;
            while let Some(r) = rows.next()? {
                if !first {
                    out.push(b',');
                }
                first = false;
                for (i, (name, d)) in self.json_names.iter().zip(&self.schema.dtypes).enumerate() {
                    out.push(if i == 0 { b'{' } else { b',' });
                    out.extend_from_slice(name);
                    out.push(b':');
                    match d {
                        Dtype::Number => {
                            out.extend_from_slice(ints.format(r.get::<_, i64>(i)?).as_bytes())
                        }
                        Dtype::String => {
                            let text = r.get_ref(i)?.as_str()?;
                            // A `str` into a `Vec`: neither serializing nor writing can fail.
                            serde_json::to_writer(&mut *out, text)
                                .expect("a str serializes into a Vec");
                        }
                    }
                }
                out.push(b'}');
            }
            out.push(b']');
            Ok(())
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

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
