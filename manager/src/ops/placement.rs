//! Where new servers and primaries go: fresh names for the placeholders of a request
//! (`Server[5]`) and initial primaries spread evenly over the servers.

use std::collections::{BTreeMap, BTreeSet};

use shardline::meta::{ClusterMeta, ShardMeta};
use shardline::names::{ServerName, ShardId};
use shardline::Term;

/// Replaces placeholder names (`Server[5]`) by fresh unique ones like `Server58127`.
pub fn resolve_names(
    requested: &[(String, Vec<ShardId>)],
    taken: &BTreeSet<ServerName>,
) -> BTreeMap<ServerName, Vec<ShardId>> {
    let mut out = BTreeMap::new();
    for (name, shards) in requested {
        if let Ok(n) = ServerName::parse(name) {
            out.insert(n, shards.clone());
        }
    }
    for (name, shards) in requested {
        if !ServerName::is_placeholder(name) {
            continue;
        }
        loop {
            let candidate = format!("Server{}", rand::random_range(10_000..100_000));
            let n = ServerName::parse(&candidate).expect("generated names are valid");
            if !taken.contains(&n) && !out.contains_key(&n) {
                out.insert(n, shards.clone());
                break;
            }
        }
    }
    out
}

/// How many shards each server leads now.
pub fn primaries_per_server(meta: &ClusterMeta) -> BTreeMap<ServerName, usize> {
    let mut m = BTreeMap::new();
    for s in &meta.shards {
        if let Some(p) = &s.primary {
            *m.entry(p.clone()).or_insert(0) += 1;
        }
    }
    m
}

/// Initial primaries (term 1), spread so that no server leads many more shards than another.
pub fn assign_primaries(
    shards: &mut [ShardMeta],
    servers: &BTreeMap<ServerName, Vec<ShardId>>,
    existing: &BTreeMap<ServerName, usize>,
) {
    let mut load = existing.clone();
    for s in shards.iter_mut() {
        let pick = servers
            .iter()
            .filter(|(_, sh)| sh.contains(&s.id))
            .map(|(n, _)| n)
            .min_by_key(|n| (load.get(*n).copied().unwrap_or(0), (*n).clone()));
        if let Some(p) = pick {
            *load.entry(p.clone()).or_insert(0) += 1;
            s.primary = Some(p.clone());
            s.term = Term(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    #[test]
    fn placeholders_get_fresh_unique_names() {
        let req = vec![
            ("Server[5]".to_string(), vec![]),
            ("Server[6]".to_string(), vec![]),
            ("Server1".to_string(), vec![]),
        ];
        let taken: BTreeSet<_> = [name("Server2")].into();
        let out = resolve_names(&req, &taken);
        assert_eq!(out.len(), 3);
        assert!(out.contains_key(&name("Server1")));
        assert!(out.keys().all(|n| !n.as_str().contains('[')));
    }

    #[test]
    fn primaries_are_spread() {
        let sh = |s: &str| ShardId::parse(s).unwrap();
        let mut shards: Vec<ShardMeta> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, id)| ShardMeta {
                id: sh(id),
                low: i as i64 * 10,
                size: 10,
                primary: None,
                term: Term(0),
                fault: None,
                log_id: None,
            })
            .collect();
        let all = vec![sh("a"), sh("b"), sh("c"), sh("d")];
        let servers: BTreeMap<_, _> = [(name("S0"), all.clone()), (name("S1"), all)].into();
        assign_primaries(&mut shards, &servers, &BTreeMap::new());
        let on_s0 = shards
            .iter()
            .filter(|s| s.primary == Some(name("S0")))
            .count();
        assert_eq!(on_s0, 2);
        assert!(shards.iter().all(|s| s.term == Term(1)));
    }
}
