//! The proposer's pure parts: group forming and splitting a group to fit a log entry.

use std::collections::VecDeque;

use proptest::prelude::*;
use shardline::Term;

use super::*;

/// A queued request for the tests: its place in the queue, term and rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Req {
    id: usize,
    term: u64,
    rows: usize,
}

impl Queued for Req {
    fn term(&self) -> Term {
        Term(self.term)
    }

    fn rows(&self) -> usize {
        self.rows
    }
}

/// Forms groups the way `propose_forever` does, from a queue that holds everything.
fn groups(reqs: &[Req]) -> Vec<Vec<Req>> {
    let mut queue: VecDeque<Req> = reqs.iter().copied().collect();
    let mut carry = None;
    let mut out = Vec::new();
    while let Some(first) = carry.take().or_else(|| queue.pop_front()) {
        let (group, rest) = form_group(first, || queue.pop_front());
        carry = rest;
        out.push(group);
    }
    out
}

fn reqs(spec: &[(u64, usize)]) -> Vec<Req> {
    spec.iter()
        .enumerate()
        .map(|(id, &(term, rows))| Req { id, term, rows })
        .collect()
}

fn ids(groups: &[Vec<Req>]) -> Vec<Vec<usize>> {
    groups
        .iter()
        .map(|g| g.iter().map(|r| r.id).collect())
        .collect()
}

#[test]
fn a_group_stops_at_a_term_change_and_at_the_limits() {
    let g = groups(&reqs(&[(1, 1), (1, 1), (2, 1), (2, 1), (1, 1)]));
    assert_eq!(ids(&g), vec![vec![0, 1], vec![2, 3], vec![4]]);

    let g = groups(&reqs(&vec![(1, 1); MAX_OPS_PER_ENTRY + 3]));
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].len(), MAX_OPS_PER_ENTRY);
    assert_eq!(g[1].len(), 3);

    // Rows: a request that would overflow starts the next group; a big one goes alone.
    let g = groups(&reqs(&[
        (1, 1000),
        (1, 1000),
        (1, 100),
        (1, MAX_ROWS_PER_ENTRY + 1),
        (1, 1),
    ]));
    assert_eq!(ids(&g), vec![vec![0, 1], vec![2], vec![3], vec![4]]);
    let g = groups(&reqs(&[(1, MAX_ROWS_PER_ENTRY), (1, 1)]));
    assert_eq!(ids(&g), vec![vec![0], vec![1]]);
}

/// Every piece of `ops` at once.
fn split_to_fit<T, P>(
    ops: Vec<T>,
    encode: &mut impl FnMut(Vec<T>) -> Encoded<T, P>,
) -> Vec<Piece<P>> {
    let mut splitter = Splitter::new(ops);
    std::iter::from_fn(|| splitter.next_piece(encode)).collect()
}

/// Encodes a run of sizes as their ids if their total (plus 10 bytes of envelope) fits.
fn encoder(
    sizes: &[usize],
    max: usize,
) -> impl FnMut(Vec<usize>) -> Encoded<usize, Vec<usize>> + '_ {
    move |ops: Vec<usize>| {
        let size = 10 + ops.iter().map(|&i| sizes[i]).sum::<usize>();
        if size > max {
            Encoded::TooLarge { ops, size }
        } else {
            Encoded::Fits(ops)
        }
    }
}

#[test]
fn splitting_halves_until_one_op() {
    let sizes = [10, 10, 10, 10];
    // Everything fits: one entry.
    let pieces = split_to_fit((0..4).collect(), &mut encoder(&sizes, 100));
    assert_eq!(
        pieces,
        vec![Piece::Entry {
            payload: vec![0, 1, 2, 3],
            ops: 4
        }]
    );
    // Halves fit.
    let pieces = split_to_fit((0..4).collect(), &mut encoder(&sizes, 30));
    assert_eq!(
        pieces,
        vec![
            Piece::Entry {
                payload: vec![0, 1],
                ops: 2
            },
            Piece::Entry {
                payload: vec![2, 3],
                ops: 2
            }
        ]
    );
    // One op too large alone: refused, its neighbours still go.
    let sizes = [10, 500, 10];
    let pieces = split_to_fit((0..3).collect(), &mut encoder(&sizes, 100));
    assert_eq!(
        pieces,
        vec![
            Piece::Entry {
                payload: vec![0],
                ops: 1
            },
            Piece::TooLarge { size: 510 },
            Piece::Entry {
                payload: vec![2],
                ops: 1
            }
        ]
    );
    assert!(split_to_fit(Vec::new(), &mut encoder(&sizes, 100)).is_empty());
}

proptest! {
    /// Groups never exceed the limits (rows only for a request alone), never mix terms, and
    /// together are the queue in order.
    #[test]
    fn formed_groups_keep_order_terms_and_limits(
        spec in proptest::collection::vec((1u64..4, prop_oneof![8 => 1usize..40, 1 => 1usize..3000]), 0..600),
    ) {
        let input = reqs(&spec);
        let formed = groups(&input);
        for g in &formed {
            prop_assert!(!g.is_empty());
            prop_assert!(g.len() <= MAX_OPS_PER_ENTRY);
            let rows: usize = g.iter().map(|r| r.rows).sum();
            prop_assert!(g.len() == 1 || rows <= MAX_ROWS_PER_ENTRY, "{} rows in {} requests", rows, g.len());
            prop_assert!(g.iter().all(|r| r.term == g[0].term));
        }
        let flat: Vec<Req> = formed.into_iter().flatten().collect();
        prop_assert_eq!(flat, input);
    }

    /// Every piece that is an entry fits; only single ops are refused, and only when they do
    /// not fit alone; the pieces cover the ops in order; a run that fits stays whole.
    #[test]
    fn split_pieces_fit_and_cover_the_ops_in_order(
        sizes in proptest::collection::vec(prop_oneof![6 => 1usize..50, 1 => 50usize..400], 0..200),
        max in 60usize..2000,
    ) {
        let n = sizes.len();
        let pieces = split_to_fit((0..n).collect(), &mut encoder(&sizes, max));
        let total = 10 + sizes.iter().sum::<usize>();
        if n > 0 && total <= max {
            prop_assert_eq!(pieces.len(), 1);
        }
        let mut next = 0;
        for p in &pieces {
            match p {
                Piece::Entry { payload, ops } => {
                    prop_assert_eq!(payload.len(), *ops);
                    prop_assert_eq!(payload.clone(), (next..next + ops).collect::<Vec<_>>());
                    prop_assert!(10 + payload.iter().map(|&i| sizes[i]).sum::<usize>() <= max);
                    next += ops;
                }
                Piece::TooLarge { size } => {
                    prop_assert_eq!(*size, 10 + sizes[next]);
                    prop_assert!(*size > max);
                    next += 1;
                }
            }
        }
        prop_assert_eq!(next, n);
    }
}

fn proposal(key: i64) -> (Proposal, oneshot::Receiver<Result<Outcome, ApiError>>) {
    let (reply, rx) = oneshot::channel();
    let p = Proposal {
        op: WalOp::Delete { key },
        term: Term(1),
        reply,
    };
    (p, rx)
}

/// A full queue refuses at once, saying "overloaded" and how many are queued; once the
/// proposer takes one, there is room again.
#[test]
fn a_full_queue_refuses_new_writes() {
    let (tx, mut rx) = mpsc::channel(2);
    let mut waiting = Vec::new();
    for k in 0..2 {
        let (p, r) = proposal(k);
        enqueue(&tx, p).unwrap();
        waiting.push(r);
    }
    let (p, mut refused) = proposal(2);
    let e = enqueue(&tx, p).unwrap_err();
    assert_eq!(e, "overloaded (2 writes queued); retry later");
    // The refused proposal was dropped, not queued: its reply channel is closed.
    assert!(refused.try_recv().is_err());
    assert!(rx.try_recv().is_ok());
    let (p, _r) = proposal(3);
    enqueue(&tx, p).unwrap();
    drop(rx);
    let (p, _r) = proposal(4);
    assert_eq!(enqueue(&tx, p).unwrap_err(), "the replica is stopping");
}

/// Requests whose caller is gone are dropped before appending; the others keep their order.
#[test]
fn abandoned_requests_are_not_appended() {
    let (a, _ra) = proposal(1);
    let (b, rb) = proposal(2);
    let (c, _rc) = proposal(3);
    drop(rb);
    let kept: Vec<i64> = drop_abandoned(vec![a, b, c])
        .into_iter()
        .map(|p| op_keys(&p.op)[0])
        .collect();
    assert_eq!(kept, vec![1, 3]);
}

/// The header counts against the limit: an entry of `max - 10` payload bytes does not fit,
/// one that leaves room for the header does.
#[test]
fn the_message_id_header_counts_against_the_limit() {
    let id = uuid::Uuid::new_v4().to_string();
    let header = format!("NATS/1.0\r\nNats-Msg-Id: {id}\r\n\r\n");
    assert_eq!(HEADER_BYTES, header.len());
    let max = 1024 * 1024;
    assert!(!fits(max - 10, max));
    assert!(!fits(max - HEADER_BYTES + 1, max));
    assert!(fits(max - HEADER_BYTES, max));
    assert!(fits(usize::MAX / 2, 0));
}
