//! Applying WAL entries to a replica's rows, in one transaction per batch. Deterministic: the
//! outcome of an entry depends only on the entry and the rows, so every replica that applies
//! the same prefix reaches the same state and reports the same outcomes.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection};
use serde_json::{Map, Value as Json};
use shardline::schema::{key_of, Row};
use shardline::wal::{WalEntry, WalOp};
use shardline::{Position, Seq, Term};

use super::sql::{set_position, sql_value};
use super::{lock, Store};

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
    /// A term marker, now the current term.
    NewTerm(Term),
    /// A term marker whose term is not greater than the last applied one (a second
    /// manager's, or a paused one's): ignored, so the current primary stays.
    IgnoredMarker {
        marker: Term,
        current: Term,
    },
    /// A group-committed entry: the outcome of each op, in order.
    Batch(Vec<Outcome>),
}

/// After a batch: the position committed and each new entry's outcome.
#[derive(Debug)]
pub struct BatchApplied {
    pub at: Position,
    pub outcomes: Vec<(Seq, Outcome)>,
}

impl Store {
    /// Applies a batch of `(seq, entry)` in one transaction. Entries at or below the stored
    /// sequence are ignored (a redelivery); the caller guarantees there is no gap.
    #[cfg(test)]
    pub fn apply(
        &self,
        batch: &[(Seq, Result<WalEntry, String>)],
    ) -> rusqlite::Result<BatchApplied> {
        self.apply_hashed(batch, None)
    }

    /// As [`Store::apply`], storing `last_hash` (the [`super::fingerprint`] of the last
    /// entry's payload) with the position, so a rewritten log is noticed.
    pub fn apply_hashed(
        &self,
        batch: &[(Seq, Result<WalEntry, String>)],
        last_hash: Option<u64>,
    ) -> rusqlite::Result<BatchApplied> {
        let mut w = lock(&self.writer);
        let Position {
            seq: mut applied,
            mut term,
        } = w.at;
        let stored_hash = w.log.last_hash;
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
        let at = Position { seq: applied, term };
        let last_hash = if outcomes.is_empty() {
            stored_hash
        } else {
            last_hash
        };
        set_position(&tx, at, last_hash)?;
        tx.commit()?;
        w.at = at;
        w.log.last_hash = last_hash;
        Ok(BatchApplied { at, outcomes })
    }

    fn apply_entry(
        &self,
        tx: &Connection,
        entry: &WalEntry,
        term: &mut Term,
    ) -> rusqlite::Result<Outcome> {
        if let WalOp::Term { .. } = entry.op {
            // Only a higher term moves on: `term` is the last applied marker's, stored with
            // the rows, so every replica decides the same way whatever its batching.
            if entry.term <= *term {
                return Ok(Outcome::IgnoredMarker {
                    marker: entry.term,
                    current: *term,
                });
            }
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
