//! Property tests of the pure core: key → shard routing, the read ring, the WAL codec, and
//! the name/schema grammars. Each property is checked against an independent oracle (a
//! brute-force scan, a regex compiled from the documented grammar) rather than restating the
//! implementation. Case counts are proptest's default (256) unless a property is expensive;
//! `PROPTEST_CASES` raises them all.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{json, Map, Value as Json};
use shardline::meta::{ClusterMeta, InitRequest};
use shardline::names::{ColumnName, ServerName, ShardId};
use shardline::ring::{HashRing, RingHash};
use shardline::schema::{parse_number, Schema, SchemaSpec};
use shardline::wal::{WalEntry, WalOp};
use shardline::ApiError;

// ---------------------------------------------------------------------------------------
// Key → shard
// ---------------------------------------------------------------------------------------

/// A shard layout as a client might send it: any lows and sizes, possibly overlapping,
/// empty, negative or overflowing; and keys near the interesting edges.
fn layout() -> impl Strategy<Value = Vec<(i64, i64)>> {
    let bound = prop_oneof![
        -1000i64..1000,
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0)
    ];
    let size = prop_oneof![-5i64..500, any::<i64>(), Just(i64::MAX)];
    // Random layouts are mostly invalid (they overlap); half the cases are disjoint by
    // construction (gaps and sizes laid end to end, then shuffled) so routing is exercised.
    let disjoint = (
        -10_000i64..10_000,
        prop::collection::vec((0i64..50, 1i64..5000), 1..8),
    )
        .prop_map(|(mut at, parts)| {
            parts
                .into_iter()
                .map(|(gap, size)| {
                    at += gap;
                    let s = (at, size);
                    at += size;
                    s
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle();
    prop_oneof![prop::collection::vec((bound, size), 1..8), disjoint]
}

fn init_body(shards: &[(i64, i64)]) -> Json {
    let specs: Vec<Json> = shards
        .iter()
        .enumerate()
        .map(|(i, (low, size))| json!({"Stud_id_low": low, "Shard_id": format!("sh{i}"), "Shard_size": size}))
        .collect();
    let all: Vec<String> = (0..shards.len()).map(|i| format!("sh{i}")).collect();
    json!({
        "N": 1,
        "schema": {"columns": ["k", "v"], "dtypes": ["Number", "String"]},
        "shards": specs,
        "servers": {"S0": all},
    })
}

/// What the documented rules say about a layout: sizes > 0, no overflow, no overlap.
fn layout_is_valid(shards: &[(i64, i64)]) -> bool {
    let ranges: Option<Vec<(i128, i128)>> = shards
        .iter()
        .map(|&(low, size)| {
            (size > 0 && low.checked_add(size).is_some())
                .then(|| (i128::from(low), i128::from(low) + i128::from(size)))
        })
        .collect();
    let Some(ranges) = ranges else { return false };
    ranges
        .iter()
        .enumerate()
        .all(|(i, a)| ranges.iter().skip(i + 1).all(|b| a.1 <= b.0 || b.1 <= a.0))
}

proptest! {
    /// A layout is accepted exactly when valid; then every key is in exactly one shard or in
    /// none (and `shard_of` says which), and range reads see exactly the overlapping shards.
    #[test]
    fn every_key_maps_to_exactly_one_shard_or_none(
        shards in layout(),
        keys in prop::collection::vec(any::<i64>(), 0..16),
        near in prop::collection::vec((0usize..8, -2i64..3), 0..16),
        range in (any::<i64>(), any::<i64>()),
    ) {
        let req: InitRequest = serde_json::from_value(init_body(&shards)).unwrap();
        let plan = match req.validate() {
            Ok(plan) => plan,
            Err(e) => {
                prop_assert!(!layout_is_valid(&shards), "valid layout rejected: {e}");
                prop_assert!(matches!(e, ApiError::BadRequest(_)));
                prop_assert!(e.message().contains("shard"), "unclear error: {e}");
                return Ok(());
            }
        };
        prop_assert!(layout_is_valid(&shards), "invalid layout accepted: {shards:?}");
        let mut meta = ClusterMeta { schema: plan.schema, shards: plan.shards, servers: BTreeMap::new() };
        meta.sort_shards();
        // Keys at and around every boundary, plus random ones.
        let mut probe = keys;
        for (i, d) in near {
            if let Some(&(low, size)) = shards.get(i) {
                probe.push(low.saturating_add(d));
                probe.push(low.saturating_add(size).saturating_add(d));
            }
        }
        probe.extend([i64::MIN, i64::MAX, 0, -1]);
        for k in probe {
            let owners: Vec<&str> = meta.shards.iter().filter(|s| {
                i128::from(k) >= i128::from(s.low) && i128::from(k) < i128::from(s.low) + i128::from(s.size)
            }).map(|s| s.id.as_str()).collect();
            prop_assert!(owners.len() <= 1, "key {k} in {owners:?}");
            prop_assert_eq!(meta.shard_of(k).map(|s| s.id.as_str()), owners.first().copied(), "key {}", k);
        }
        let (low, high) = (range.0.min(range.1), range.0.max(range.1));
        let got: Vec<&str> = meta.overlapping(low, high).map(|s| s.id.as_str()).collect();
        let want: Vec<&str> = meta.shards.iter().filter(|s| {
            i128::from(s.low) <= i128::from(high) && i128::from(low) < i128::from(s.low) + i128::from(s.size)
        }).map(|s| s.id.as_str()).collect();
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------------------
// The read ring
// ---------------------------------------------------------------------------------------

fn server_names(n: usize) -> impl Strategy<Value = Vec<ServerName>> {
    prop::collection::btree_set("[A-Za-z0-9_-]{1,12}", n)
        .prop_map(|s| s.iter().map(|n| ServerName::parse(n).unwrap()).collect())
}

fn hash() -> impl Strategy<Value = RingHash> {
    prop_oneof![Just(RingHash::Mixed), Just(RingHash::Quadratic)]
}

proptest! {
    /// Whatever the replicas and which of them are live, a pick is a live replica of the
    /// shard, and there is a pick whenever some replica is live.
    #[test]
    fn the_ring_picks_a_live_replica_whenever_one_exists(
        (names, live) in (1usize..40).prop_flat_map(|n| (server_names(n), prop::collection::vec(any::<bool>(), n))),
        hash in hash(),
        requests in prop::collection::vec(any::<u64>(), 1..32),
    ) {
        let ring = HashRing::new(hash, names.clone());
        let is_live = |s: &ServerName| names.iter().position(|n| n == s).is_some_and(|i| live[i]);
        for r in requests {
            match ring.pick(r, is_live) {
                Some(s) => prop_assert!(is_live(s), "picked {s}, which is not live"),
                None => prop_assert!(!live.iter().any(|&l| l), "no pick though some replica is live"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The default (`mixed`) ring spreads any window of 20,000 consecutive request ids over
    /// 2..=8 replicas with every replica's share within [1/(3n), 3/n] — the bound the README
    /// states as "max/min ≤ 2.5 over 100,000 ids" loosened for the smaller, shifted sample.
    #[test]
    fn the_mixed_ring_spreads_load_within_a_bound(
        names in (2usize..=8).prop_flat_map(server_names),
        base in any::<u64>(),
    ) {
        const REQUESTS: u64 = 20_000;
        let n = names.len();
        let ring = HashRing::new(RingHash::Mixed, names.clone());
        let mut counts = vec![0u64; n];
        for r in 0..REQUESTS {
            let s = ring.pick(base.wrapping_add(r), |_| true).expect("all live");
            counts[names.iter().position(|x| x == s).expect("a replica")] += 1;
        }
        let fair = REQUESTS as f64 / n as f64;
        for (name, c) in names.iter().zip(&counts) {
            let share = *c as f64 / fair;
            prop_assert!((1.0 / 3.0..=3.0).contains(&share),
                "{name} got {c} of {REQUESTS} over {n} replicas ({share:.2}× fair): {counts:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// WAL codec
// ---------------------------------------------------------------------------------------

fn cell() -> impl Strategy<Value = Json> {
    prop_oneof![
        any::<i64>().prop_map(Json::from),
        any::<String>().prop_map(Json::from),
        Just(Json::from("")),
    ]
}

fn row() -> impl Strategy<Value = Map<String, Json>> {
    prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,10}", cell(), 1..5)
        .prop_map(|m| m.into_iter().collect())
}

fn wal_op() -> impl Strategy<Value = WalOp> {
    prop_oneof![
        prop::collection::vec(row(), 0..6).prop_map(|rows| WalOp::Insert { rows }),
        (any::<i64>(), row()).prop_map(|(key, row)| WalOp::Update { key, row }),
        any::<i64>().prop_map(|key| WalOp::Delete { key }),
        "[A-Za-z0-9_-]{1,64}".prop_map(|p| WalOp::Term {
            primary: ServerName::parse(&p).unwrap()
        }),
    ]
}

proptest! {
    /// Every entry survives encode → decode unchanged, and its JSON has the documented flat
    /// shape (`op`, `term`, `by`, `ts_ms` at the top level).
    #[test]
    fn wal_entries_round_trip(op in wal_op(), term in any::<u64>(), by in any::<String>(), ts_ms in any::<u64>()) {
        let e = WalEntry { op, term: shardline::Term(term), by, ts_ms };
        let bytes = e.encode();
        prop_assert_eq!(WalEntry::decode(&bytes).expect("decodes"), e.clone());
        let v: Json = serde_json::from_slice(&bytes).unwrap();
        prop_assert!(["insert", "update", "delete", "term"].contains(&v["op"].as_str().unwrap_or("")));
        prop_assert_eq!(v["term"].as_u64(), Some(term));
        prop_assert_eq!(v["ts_ms"].as_u64(), Some(ts_ms));
        prop_assert_eq!(v["by"].as_str(), Some(e.by.as_str()));
    }

    /// Garbage never panics the decoder: it is an entry or an error.
    #[test]
    fn wal_decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = WalEntry::decode(&bytes);
    }
}

// ---------------------------------------------------------------------------------------
// Names and schemas
// ---------------------------------------------------------------------------------------

/// Strings that are often close to the grammars: valid ones, valid ones with one character
/// changed, and arbitrary text.
fn candidate() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{0,70}",
        "[A-Za-z_][A-Za-z0-9_]{0,70}",
        "[A-Za-z0-9_\\-. /\"';é\\[\\]]{0,8}",
        any::<String>(),
        "\\PC{0,66}",
    ]
}

proptest! {
    /// Shard, server and column names are accepted exactly when they match the grammar
    /// written in docs/API.md.
    #[test]
    fn names_accept_exactly_the_documented_grammar(s in candidate()) {
        let node = regex::Regex::new(r"^[A-Za-z0-9_-]{1,64}$").unwrap();
        let column = regex::Regex::new(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$").unwrap();
        prop_assert_eq!(ShardId::parse(&s).is_ok(), node.is_match(&s), "shard id {:?}", s);
        prop_assert_eq!(ServerName::parse(&s).is_ok(), node.is_match(&s), "server name {:?}", s);
        prop_assert_eq!(ColumnName::parse(&s).is_ok(), column.is_match(&s), "column {:?}", s);
        if let Err(e) = ShardId::parse(&s) {
            prop_assert!(e.contains("^[A-Za-z0-9_-]{1,64}$"), "the error states the grammar: {e}");
        }
    }

    /// A schema is accepted exactly when: 1..=64 columns, as many dtypes, every column name
    /// valid and unique ignoring case, every dtype `Number` or `String`, the first a Number.
    #[test]
    fn schemas_accept_exactly_the_documented_rules(
        columns in prop::collection::vec(prop_oneof!["[A-Za-z_][A-Za-z0-9_]{0,4}", candidate()], 0..6),
        dtypes in prop::collection::vec(prop_oneof![Just("Number".to_owned()), Just("String".to_owned()), "[a-zA-Z]{0,7}"], 0..6),
    ) {
        let column = regex::Regex::new(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$").unwrap();
        let mut lower: Vec<String> = columns.iter().map(|c| c.to_ascii_lowercase()).collect();
        lower.sort();
        lower.dedup();
        let valid = !columns.is_empty()
            && columns.len() <= 64
            && columns.len() == dtypes.len()
            && columns.iter().all(|c| column.is_match(c))
            && lower.len() == columns.len()
            && dtypes.iter().all(|d| d == "Number" || d == "String")
            && dtypes[0] == "Number";
        let got = Schema::parse(&SchemaSpec { columns: columns.clone(), dtypes: dtypes.clone() });
        prop_assert_eq!(got.is_ok(), valid, "{:?} {:?}: {:?}", columns, dtypes, got.err());
    }

    /// A Number is exactly a JSON integer in the signed 64-bit range.
    #[test]
    fn numbers_are_exactly_signed_64_bit_integers(
        v in prop_oneof![
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            any::<f64>().prop_map(Json::from),
            any::<String>().prop_map(Json::from),
            any::<bool>().prop_map(Json::from),
            Just(Json::Null),
        ]
    ) {
        let want = v.as_i64();
        match parse_number("Stud_id", &v) {
            Ok(n) => prop_assert_eq!(Some(n), want),
            Err(e) => {
                prop_assert!(want.is_none(), "{v} rejected: {e}");
                prop_assert!(e.contains("Stud_id"), "the error names the field: {e}");
            }
        }
    }
}
