//! Giving disk space back. Stores are opened with `auto_vacuum = INCREMENTAL`, so the pages
//! freed by deleted rows can be returned to the file system; a replica's maintenance task
//! ([`reclaim_forever`]) checks every [`CHECK_INTERVAL`] and, in short bounded steps under
//! the writer lock:
//!
//! - returns up to [`VACUUM_STEP`] free pages (`PRAGMA incremental_vacuum`) when at least
//!   [`MIN_FREE_PAGES`] are free;
//! - truncates the -wal file (`PRAGMA wal_checkpoint(TRUNCATE)`) when it is over
//!   [`WAL_LIMIT`] bytes or a vacuum just wrote to it. The checkpoint does not wait for
//!   readers (no busy handler): if one still reads an old snapshot, the next round retries.
//!
//! SQLite's own auto-checkpoint moves committed pages into the main file every 1,000 pages
//! but never shrinks the -wal file, and readers that are always busy can keep it from being
//! reused (checkpoint starvation); `journal_size_limit` and this task bound it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::{lock, Store};

/// How often a replica checks whether it has space to give back.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Free pages below this are left for reuse by the next inserts.
pub const MIN_FREE_PAGES: u64 = 256;
/// Most pages returned per round (4 KiB each: 8 MiB), so a round stays short.
pub const VACUUM_STEP: u64 = 2048;
/// A -wal file over this many bytes is checkpointed and truncated.
pub const WAL_LIMIT: u64 = 4 * 1024 * 1024;

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Pages returned to the file system.
    pub pages: u64,
    /// Whether the -wal file was truncated.
    pub wal_truncated: bool,
}

impl Store {
    /// One round of space maintenance (see the module doc). Short, but it holds the writer
    /// lock: call it on the blocking pool.
    pub fn reclaim(&self) -> rusqlite::Result<Reclaimed> {
        let w = lock(&self.writer);
        let mut done = Reclaimed::default();
        let free: i64 = w
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        if free as u64 >= MIN_FREE_PAGES {
            done.pages = incremental_vacuum(&w.conn, VACUUM_STEP)?;
        }
        if done.pages > 0 || file_len(&self.wal_path()) > WAL_LIMIT {
            done.wal_truncated = truncate_wal(&w.conn)?;
        }
        Ok(done)
    }

    /// The -wal file beside the database.
    pub(super) fn wal_path(&self) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push("-wal");
        PathBuf::from(p)
    }

    /// Bytes on disk: the database file and its -wal.
    pub fn disk_bytes(&self) -> u64 {
        file_len(&self.path) + file_len(&self.wal_path())
    }
}

/// Returns up to `pages` free pages; how many it did. The pragma yields one row per page
/// freed, so it runs until its last row.
fn incremental_vacuum(conn: &Connection, pages: u64) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut rows = stmt.query([])?;
    let mut n = 0;
    while rows.next()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Checkpoints the whole -wal into the database file and truncates it, without waiting for
/// readers; whether it could.
pub(super) fn truncate_wal(conn: &Connection) -> rusqlite::Result<bool> {
    conn.busy_timeout(Duration::ZERO)?;
    let busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    conn.busy_timeout(super::BUSY_TIMEOUT)?;
    Ok(busy? == 0)
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// A replica's maintenance task: a round of [`Store::reclaim`] every [`CHECK_INTERVAL`],
/// on the blocking pool, until the replica stops.
pub async fn reclaim_forever(store: Arc<Store>) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match super::blocking(&store, |s| s.reclaim()).await {
            Ok(r) if r.pages > 0 => tracing::debug!(
                db = %store.path.display(), pages = r.pages, wal_truncated = r.wal_truncated,
                bytes = store.disk_bytes(),
                "returned free pages to the file system"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(db = %store.path.display(), error = %e, "space maintenance failed")
            }
        }
    }
}
