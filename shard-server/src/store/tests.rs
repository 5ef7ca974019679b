//! The store against real SQLite files: every kind of entry, redelivery, reopen, snapshot and
//! restore.

use serde_json::{json, Map, Value as Json};
use shardline::schema::{Schema, SchemaSpec};
use shardline::wal::{WalEntry, WalOp};
use shardline::{Position, Seq, SyncMode, Term};

use super::{Outcome, Store};

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
    row_with_marks(k, name, 1)
}

fn row_with_marks(k: i64, name: &str, marks: i64) -> Map<String, Json> {
    json!({"Stud_id": k, "Stud_name": name, "Stud_marks": marks})
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
    let applied = store.apply(&batch).unwrap();
    let (seq, t, outcomes) = (applied.at.seq, applied.at.term, applied.outcomes);
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
    let applied = store.apply(&batch).unwrap();
    let (seq, again) = (applied.at.seq, applied.outcomes);
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

/// A JSON snapshot (`/copy`) carries every row and the position it is consistent with.
#[test]
fn snapshot_carries_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.db"), &schema(), SyncMode::Normal).unwrap();
    a.apply(&[
        (Seq(1), entry(insert(1, "one"), 0)),
        (Seq(2), entry(insert(2, "two"), 0)),
    ])
    .unwrap();
    let (rows, at) = a.snapshot().unwrap();
    assert_eq!((rows.len(), at.seq, at.term), (2, Seq(2), Term(0)));
    assert_eq!(rows, a.read_all().unwrap());
    assert_eq!(rows[1], Json::Object(row(2, "two")));
}

/// A range as SQLite's JSON functions make it (what the store answered before it wrote the
/// text itself).
fn sqlite_range_json(path: &std::path::Path, low: i64, high: i64) -> String {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT json_group_array(json_object('Stud_id', \"Stud_id\", \
             'Stud_name', \"Stud_name\", 'Stud_marks', \"Stud_marks\")) FROM \
             (SELECT \"Stud_id\", \"Stud_name\", \"Stud_marks\" FROM records \
             WHERE \"Stud_id\" >= ? AND \"Stud_id\" <= ? ORDER BY \"Stud_id\")",
            [low, high],
            |r| r.get(0),
        )
        .unwrap()
}

/// A range's JSON text, written in Rust from the column values, is byte for byte what
/// SQLite's `json_group_array(json_object(..))` made before it (the gateway splices that
/// text into its answers and cuts rows out of it without a parse), whatever the strings
/// hold and however large the integers.
#[test]
fn range_text_is_the_text_sqlite_json_made() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = Store::open(&path, &schema(), SyncMode::Normal).unwrap();
    let names = [
        "plain",
        "",
        "it's \"quoted\" \\ back/slash",
        "controls \u{0}\u{1}\t\n\r\u{8}\u{c}\u{1f}\u{7f}",
        "é✓ 𝄞 \u{2028}\u{2029}",
    ];
    let mut entries: Vec<(Seq, _)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (Seq(i as u64 + 1), entry(insert(i as i64 * 10, n), 0)))
        .collect();
    for (k, marks) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (-7, 0)] {
        let rows = vec![row_with_marks(k, "edge", marks)];
        entries.push((
            Seq(entries.len() as u64 + 1),
            entry(WalOp::Insert { rows }, 0),
        ));
    }
    store.apply(&entries).unwrap();

    for (low, high) in [(i64::MIN, i64::MAX), (0, 25), (11, 19), (-7, -7), (5, 1)] {
        let ours = store.read_range_json(low, high).unwrap();
        assert_eq!(
            ours,
            sqlite_range_json(&path, low, high),
            "range {low}..={high}"
        );
    }
    assert_eq!(store.read_range_json(11, 19).unwrap(), "[]");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// [`range_text_is_the_text_sqlite_json_made`] for any strings and integers: the text
    /// written from the column values is SQLite's own, byte for byte.
    #[test]
    fn any_range_text_is_the_text_sqlite_json_made(
        rows in proptest::collection::vec(
            (
                proptest::prelude::any::<i64>(),
                proptest::prelude::any::<String>(),
                proptest::prelude::any::<i64>(),
            ),
            0..12,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let store = Store::open(&path, &schema(), SyncMode::Normal).unwrap();
        let entries: Vec<(Seq, _)> = rows
            .iter()
            .enumerate()
            .map(|(i, (k, name, marks))| {
                let rows = vec![row_with_marks(*k, name, *marks)];
                (Seq(i as u64 + 1), entry(WalOp::Insert { rows }, 0))
            })
            .collect();
        store.apply(&entries).unwrap();
        proptest::prop_assert_eq!(
            store.read_range_json(i64::MIN, i64::MAX).unwrap(),
            sqlite_range_json(&path, i64::MIN, i64::MAX)
        );
    }
}

/// A marker whose term is not greater than the last applied one (a second manager's marker
/// of the same term naming another primary, or a paused manager's lower term) changes
/// nothing: entries of the first marker's term keep applying, on every replica alike.
#[test]
fn markers_not_above_the_applied_term_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let marker = |primary: &str, t| {
        entry(
            WalOp::Term {
                primary: shardline::names::ServerName::parse(primary).unwrap(),
            },
            t,
        )
    };
    let batch: Vec<(Seq, _)> = vec![
        (1, marker("a", 2)),
        (2, entry(insert(1, "one"), 2)),
        (3, marker("b", 2)),
        (4, entry(insert(2, "two"), 2)),
        (5, marker("c", 1)),
        (6, entry(insert(3, "three"), 2)),
        (7, entry(insert(4, "low"), 1)),
    ]
    .into_iter()
    .map(|(s, e)| (Seq(s), e))
    .collect();
    // Applied in one batch on one replica and entry by entry on another: the same result.
    let one = Store::open(&dir.path().join("one.db"), &schema(), SyncMode::Normal).unwrap();
    let each = Store::open(&dir.path().join("each.db"), &schema(), SyncMode::Normal).unwrap();
    let outcomes: Vec<Outcome> = one
        .apply(&batch)
        .unwrap()
        .outcomes
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    let mut singly = Vec::new();
    for e in &batch {
        singly.extend(each.apply(std::slice::from_ref(e)).unwrap().outcomes);
    }
    let singly: Vec<Outcome> = singly.into_iter().map(|(_, o)| o).collect();
    assert_eq!(outcomes, singly);
    assert_eq!(
        outcomes,
        vec![
            Outcome::NewTerm(Term(2)),
            Outcome::Applied,
            Outcome::IgnoredMarker {
                marker: Term(2),
                current: Term(2)
            },
            Outcome::Applied,
            Outcome::IgnoredMarker {
                marker: Term(1),
                current: Term(2)
            },
            Outcome::Applied,
            Outcome::StaleTerm {
                entry: Term(1),
                current: Term(2)
            },
        ]
    );
    for s in [&one, &each] {
        assert_eq!(
            s.position(),
            Position {
                seq: Seq(7),
                term: Term(2)
            }
        );
        assert_eq!(s.existing(&[1, 2, 3, 4]).unwrap(), vec![1, 2, 3]);
    }
}

/// `backup_to` makes one self-contained SQLite file; `install` of it on another store with
/// the same schema gives the same rows and position, seen by reads at once, and the store
/// applies on from there.
#[test]
fn backup_installs_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.db"), &schema(), SyncMode::Normal).unwrap();
    let b = Store::open(&dir.path().join("b.db"), &schema(), SyncMode::Normal).unwrap();
    a.apply(&[
        (Seq(1), entry(insert(1, "one"), 0)),
        (Seq(2), entry(insert(2, "it's \"two\"é"), 0)),
        (Seq(3), entry(insert(3, "three"), 0)),
    ])
    .unwrap();
    b.apply(&[(Seq(1), entry(insert(9, "gone"), 0))]).unwrap();
    // A read before the install, so b's read connections are warm on the old content.
    assert_eq!(b.existing(&[9]).unwrap(), vec![9]);

    let file = dir.path().join("copy.sqlite3");
    let at = a.backup_to(&file).unwrap();
    let three = Position {
        seq: Seq(3),
        term: Term(0),
    };
    assert_eq!(at, three);
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut p = file.as_os_str().to_owned();
        p.push(suffix);
        assert!(
            !std::path::Path::new(&p).exists(),
            "{suffix} left beside the copy"
        );
    }
    // The source goes on after the copy; the copy keeps the state it was made at.
    a.apply(&[(Seq(4), entry(insert(4, "four"), 0))]).unwrap();

    assert_eq!(b.install(&file).unwrap(), three);
    assert_eq!(b.position(), three);
    assert_eq!(b.existing(&[1, 2, 3, 4, 9]).unwrap(), vec![1, 2, 3]);
    assert_eq!(
        b.read_range_json(0, 10).unwrap(),
        a.read_range_json(0, 3).unwrap()
    );
    // It applies on from the installed position, and reopens there.
    b.apply(&[(Seq(4), entry(insert(4, "four"), 0))]).unwrap();
    assert_eq!(b.read_all().unwrap(), a.read_all().unwrap());
    b.close();
    drop(b);
    let b = Store::open(&dir.path().join("b.db"), &schema(), SyncMode::Normal).unwrap();
    assert_eq!(b.position().seq, Seq(4));
    assert_eq!(b.read_all().unwrap(), a.read_all().unwrap());
}

/// A file whose records table differs from the store's schema, or that is no replica
/// snapshot at all, is refused with a message naming the problem, and nothing changes.
#[test]
fn install_refuses_another_schema() {
    let dir = tempfile::tempdir().unwrap();
    let other = Schema::parse(&SchemaSpec {
        columns: vec!["Stud_id".into(), "Stud_name".into()],
        dtypes: vec!["Number".into(), "String".into()],
    })
    .unwrap();
    let a = Store::open(&dir.path().join("a.db"), &other, SyncMode::Normal).unwrap();
    let b = Store::open(&dir.path().join("b.db"), &schema(), SyncMode::Normal).unwrap();
    b.apply(&[(Seq(1), entry(insert(9, "kept"), 0))]).unwrap();
    let file = dir.path().join("copy.sqlite3");
    a.backup_to(&file).unwrap();
    let e = b.install(&file).unwrap_err().to_string();
    assert!(
        e.contains("columns (Stud_id INTEGER, Stud_name TEXT)")
            && e.contains("(Stud_id INTEGER, Stud_name TEXT, Stud_marks INTEGER)"),
        "{e}"
    );

    let junk = dir.path().join("junk.sqlite3");
    std::fs::write(&junk, b"not a database at all, just some bytes".repeat(200)).unwrap();
    let e = b.install(&junk).unwrap_err().to_string();
    assert!(e.contains("is not a replica snapshot"), "{e}");

    assert_eq!(b.position().seq, Seq(1));
    assert_eq!(b.existing(&[9]).unwrap(), vec![9]);
}

/// Rows `keys` as insert entries of 500 rows each, from sequence `seq` on.
fn bulk_insert(store: &Store, keys: std::ops::Range<i64>, name: &str, seq: &mut u64) {
    let keys: Vec<i64> = keys.collect();
    let entries: Vec<_> = keys
        .chunks(500)
        .map(|chunk| {
            *seq += 1;
            let rows = chunk
                .iter()
                .map(|&k| {
                    json!({"Stud_id": k, "Stud_name": format!("{name}-{k}"), "Stud_marks": k % 100})
                        .as_object()
                        .unwrap()
                        .clone()
                })
                .collect();
            (Seq(*seq), entry(WalOp::Insert { rows }, 0))
        })
        .collect();
    store.apply(&entries).unwrap();
}

/// Rounds of space maintenance until one gives nothing back (bounded).
fn reclaim_all(store: &Store) -> u64 {
    let mut pages = 0;
    for _ in 0..1000 {
        let r = store.reclaim().unwrap();
        if r.pages == 0 {
            return pages;
        }
        pages += r.pages;
    }
    panic!("space maintenance never finished");
}

fn pragma(path: &std::path::Path, name: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .unwrap()
}

/// Deleting most rows and running the maintenance shrinks the files (database and -wal):
/// freed pages go back to the file system and the -wal is truncated.
#[test]
fn deleted_rows_give_their_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let a = Store::open(&path, &schema(), SyncMode::Normal).unwrap();
    assert_eq!(pragma(&path, "auto_vacuum"), 2, "incremental");
    let mut seq = 0;
    let name = "x".repeat(200);
    bulk_insert(&a, 0..20_000, &name, &mut seq);
    let full = a.disk_bytes();
    // Every row but the first 1,000, deleted in entries of 500 deletes.
    let deletes: Vec<_> = (1_000..20_000)
        .collect::<Vec<i64>>()
        .chunks(500)
        .map(|c| {
            seq += 1;
            let ops = c.iter().map(|&key| WalOp::Delete { key }).collect();
            (Seq(seq), entry(WalOp::Batch { ops }, 0))
        })
        .collect();
    a.apply(&deletes).unwrap();
    let deleted = a.disk_bytes();
    let pages = reclaim_all(&a);
    let after = a.disk_bytes();
    println!("20,000 rows: {full} bytes; 1,000 left: {deleted} bytes, {after} after returning {pages} pages");
    assert!(pages > 0);
    assert!(after * 5 < full, "{after} bytes is not a fifth of {full}");
    assert_eq!(
        std::fs::metadata(a.wal_path())
            .map(|m| m.len())
            .unwrap_or(0),
        0,
        "-wal truncated"
    );
    assert_eq!(a.existing(&[0, 999, 1_000, 19_999]).unwrap(), vec![0, 999]);
    assert_eq!(a.position().seq, Seq(seq));
    // Nothing more to do: a round is a no-op.
    assert_eq!(a.reclaim().unwrap(), super::space::Reclaimed::default());
}

/// A file made before incremental vacuum is converted when opened, rows and position kept.
#[test]
fn an_older_file_is_converted_to_incremental_vacuum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let a = Store::open(&path, &schema(), SyncMode::Normal).unwrap();
        a.apply(&[(Seq(1), entry(insert(1, "one"), 0))]).unwrap();
    }
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;")
        .unwrap();
    drop(raw);
    assert_eq!(pragma(&path, "auto_vacuum"), 0);
    let a = Store::open(&path, &schema(), SyncMode::Normal).unwrap();
    assert_eq!(pragma(&path, "auto_vacuum"), 2);
    assert_eq!(a.position().seq, Seq(1));
    assert_eq!(a.existing(&[1]).unwrap(), vec![1]);
}

/// Steady-state disk use of the A1 schema (`Stud_name` as the preload writes it): bytes per
/// row of 100,000 rows once the maintenance ran, and after deleting every other row and
/// inserting 50,000 new keys (the b-tree pages the deletes thinned stay half full: SQLite
/// frees whole pages only). README "Disk use" quotes both.
#[test]
fn steady_state_bytes_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.db"), &schema(), SyncMode::Normal).unwrap();
    let mut seq = 0;
    bulk_insert(&a, 0..100_000, "pre", &mut seq);
    reclaim_all(&a);
    let first = a.disk_bytes() as f64 / 100_000.0;
    let deletes: Vec<_> = (0..100_000)
        .step_by(2)
        .collect::<Vec<i64>>()
        .chunks(500)
        .map(|c| {
            seq += 1;
            let ops = c.iter().map(|&key| WalOp::Delete { key }).collect();
            (Seq(seq), entry(WalOp::Batch { ops }, 0))
        })
        .collect();
    a.apply(&deletes).unwrap();
    bulk_insert(&a, 100_000..150_000, "pre", &mut seq);
    reclaim_all(&a);
    let again = a.disk_bytes() as f64 / 100_000.0;
    println!("A1 rows: {first:.1} bytes/row at 100,000 rows; {again:.1} after deleting half and inserting 50,000");
    assert!(first < 40.0, "{first} bytes per row");
    assert!(again < first * 2.0, "{again} vs {first} bytes per row");
    assert_eq!(pragma(&a.path, "freelist_count"), 0, "no free page left");
}

/// A replica file made before the log identity existed gains its columns on open (empty);
/// the identity and the last entry's fingerprint are stored with the position and survive
/// a reopen; an install brings the copy's identity, adopting a log forgets the fingerprint.
#[test]
fn log_identity_is_migrated_stored_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE replica_state (id INTEGER PRIMARY KEY CHECK (id = 1),
                 applied_seq INTEGER NOT NULL, term INTEGER NOT NULL);
             INSERT INTO replica_state (id, applied_seq, term) VALUES (1, 7, 2);",
        )
        .unwrap();
    }
    let s = Store::open(&path, &schema(), SyncMode::Normal).unwrap();
    assert_eq!(s.position().seq, Seq(7));
    assert_eq!(s.log_identity(), super::LogIdentity::default());
    s.set_log_id(u64::MAX - 5).unwrap();
    let h = super::fingerprint(b"entry 8");
    assert_ne!(h, super::fingerprint(b"entry 9"));
    s.apply_hashed(&[(Seq(8), entry(insert(1, "a"), 2))], Some(h))
        .unwrap();
    // A redelivery changes nothing, the fingerprint included.
    s.apply_hashed(&[(Seq(8), entry(insert(1, "a"), 2))], Some(1))
        .unwrap();
    drop(s);
    let s = Store::open(&path, &schema(), SyncMode::Normal).unwrap();
    let want = super::LogIdentity {
        log_id: Some(u64::MAX - 5),
        last_hash: Some(h),
    };
    assert_eq!((s.position().seq, s.log_identity()), (Seq(8), want));
    let other = Store::open(&dir.path().join("other.db"), &schema(), SyncMode::Normal).unwrap();
    let file = dir.path().join("copy.sqlite3");
    s.backup_to(&file).unwrap();
    other.install(&file).unwrap();
    assert_eq!(other.log_identity(), want);
    s.apply_hashed(&[(Seq(9), entry(insert(2, "b"), 2))], Some(h))
        .unwrap();
    s.set_log_id(3).unwrap();
    drop(s);
    let s = Store::open(&path, &schema(), SyncMode::Normal).unwrap();
    assert_eq!(
        s.log_identity(),
        super::LogIdentity {
            log_id: Some(3),
            last_hash: None
        }
    );
}
