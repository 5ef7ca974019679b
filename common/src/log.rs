//! Positions in a shard's write-ahead log: the JetStream stream sequence ([`Seq`]), the
//! election term ([`Term`]), and the pair a replica has reached ([`Position`]). Also how a
//! replica's SQLite commits reach the disk ([`SyncMode`]), which the manager hands on to the
//! servers it starts.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A position in a shard's WAL stream (the JetStream stream sequence; 0 = nothing applied).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

/// An election term of one shard. Every WAL entry carries the term of the primary that wrote
/// it; a term marker starts a new one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);

    pub fn get(self) -> u64 {
        self.0
    }

    /// The sequence right after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl Term {
    pub const ZERO: Term = Term(0);

    pub fn get(self) -> u64 {
        self.0
    }

    /// The term an election after this one starts.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Seq {
    fn from(v: u64) -> Seq {
        Seq(v)
    }
}

impl From<u64> for Term {
    fn from(v: u64) -> Term {
        Term(v)
    }
}

/// How far a replica has applied its shard's log: the last applied sequence and the term of
/// the latest marker at or before it. Stored with the rows in one SQLite transaction.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub seq: Seq,
    pub term: Term,
}

/// SQLite's `synchronous` setting for the shard databases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// `synchronous=NORMAL` in WAL mode: a commit survives a process crash, not a power loss.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before the write is acknowledged.
    Full,
}

impl SyncMode {
    /// The value of SQLite's `PRAGMA synchronous`.
    pub fn pragma(self) -> &'static str {
        match self {
            SyncMode::Normal => "NORMAL",
            SyncMode::Full => "FULL",
        }
    }

    /// The command-line spelling (`--sqlite-sync normal|full`).
    pub fn as_arg(self) -> &'static str {
        match self {
            SyncMode::Normal => "normal",
            SyncMode::Full => "full",
        }
    }

    pub fn is_durable(self) -> bool {
        self == SyncMode::Full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_plain_numbers_on_the_wire() {
        let p = Position {
            seq: Seq(57),
            term: Term(2),
        };
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            serde_json::json!({"seq": 57, "term": 2})
        );
        assert_eq!(Seq(1).next(), Seq(2));
        assert_eq!(Term::ZERO.next(), Term(1));
        assert!(
            Position {
                seq: Seq(3),
                term: Term(1)
            } < Position {
                seq: Seq(3),
                term: Term(2)
            }
        );
        assert_eq!(serde_json::to_value(SyncMode::Full).unwrap(), "full");
        assert_eq!(SyncMode::Normal.pragma(), "NORMAL");
    }
}
