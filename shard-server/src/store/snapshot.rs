//! Whole-replica copies as SQLite files, through SQLite's online backup API: `backup_to`
//! writes a consistent copy (rows and position) from a read connection, so the applier keeps
//! committing meanwhile; `install` replaces the replica with such a file, possibly made on
//! another server. Pages are copied as they are: nothing is decoded, and memory stays at
//! SQLite's page cache whatever the size of the shard.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{ffi, Connection, OpenFlags};
use shardline::Position;

use super::sql::{migrate_log_identity, read_log_identity, read_position};
use super::{lock, Store};

/// Attempts of one backup step that SQLite answered busy or locked (a checkpoint or
/// another connection holding a lock for a moment) before giving up.
const BUSY_RETRIES: u32 = 100;
const BUSY_PAUSE: Duration = Duration::from_millis(20);

impl Store {
    /// Writes a consistent copy of the whole database to `dest` (replaced if it exists) and
    /// returns the position the copy holds. Runs on a read connection, in one backup step,
    /// that is one read transaction: the applier is not blocked and the copy cannot mix two
    /// states. Long for a big shard: call it on the blocking pool.
    pub fn backup_to(&self, dest: &Path) -> rusqlite::Result<Position> {
        remove_db_files(dest);
        let mut out = Connection::open(dest)?;
        self.read(|conn| copy_all(conn, &mut out))?;
        // The copy's header says WAL (copied from the source): make it a single
        // self-contained file that any reader can open without a -wal or -shm beside it.
        out.pragma_update_and_check(None, "journal_mode", "DELETE", |_| Ok(()))?;
        let at = read_position(&out)?;
        out.close().map_err(|(_, e)| e)?;
        Ok(at)
    }

    /// Replaces the whole replica with the database file at `src` (made by `backup_to`,
    /// possibly on another server) and returns the position it holds. Refuses, changing
    /// nothing, a file whose `records` table differs from this store's or that holds no
    /// position. Runs under the writer lock (the applier must not be applying meanwhile);
    /// readers see the new content from their next read. Long for a big shard: call it on
    /// the blocking pool.
    pub fn install(&self, src: &Path) -> rusqlite::Result<Position> {
        let from = Connection::open_with_flags(
            src,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let mut w = lock(&self.writer);
        let want = columns(&w.conn)?;
        let got = columns(&from)
            .map_err(|e| mismatch(format!("{} is not a replica snapshot: {e}", src.display())))?;
        if got != want {
            return Err(mismatch(format!(
                "{} holds a records table with columns {} but this replica's are {}",
                src.display(),
                describe(&got),
                describe(&want)
            )));
        }
        read_position(&from)
            .map_err(|e| mismatch(format!("{} holds no replica position: {e}", src.display())))?;
        copy_all(&from, &mut w.conn)?;
        // Statements cached on the old schema are prepared again on first use anyway;
        // dropping them now frees what they hold of the old file.
        w.conn.flush_prepared_statement_cache();
        // The copy went through this store's -wal: move it into the main file and give the
        // space back rather than leave a -wal the size of the shard.
        super::space::truncate_wal(&w.conn)?;
        // A file made before the log identity existed gains its columns; the identity
        // comes with the copy (the peer's log, README "Log faults").
        migrate_log_identity(&w.conn)?;
        let at = read_position(&w.conn)?;
        w.at = at;
        w.log = read_log_identity(&w.conn)?;
        Ok(at)
    }
}

/// Copies every page of `from` into `to` in one step (one read transaction on `from`).
fn copy_all(from: &Connection, to: &mut Connection) -> rusqlite::Result<()> {
    let backup = Backup::new(from, to)?;
    for _ in 0..BUSY_RETRIES {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            // Busy or locked (`More` cannot follow a step of every page).
            _ => std::thread::sleep(BUSY_PAUSE),
        }
    }
    Err(rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_BUSY),
        Some(format!(
            "the database stayed busy for {BUSY_RETRIES} backup attempts"
        )),
    ))
}

/// The `records` table's columns: name, declared type, NOT NULL, primary key position.
type Column = (String, String, bool, i64);

fn columns(conn: &Connection) -> rusqlite::Result<Vec<Column>> {
    let mut stmt =
        conn.prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info('records')")?;
    let cols = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<Vec<Column>>>()?;
    Ok(cols)
}

fn describe(cols: &[Column]) -> String {
    if cols.is_empty() {
        return "(none: no records table)".into();
    }
    let list: Vec<String> = cols
        .iter()
        .map(|(name, ty, _, _)| format!("{name} {ty}"))
        .collect();
    format!("({})", list.join(", "))
}

fn mismatch(message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_MISMATCH), Some(message))
}

/// Removes a database file and its -wal, -shm and -journal companions, if present.
pub(crate) fn remove_db_files(path: &Path) {
    let _ = std::fs::remove_file(path);
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}
