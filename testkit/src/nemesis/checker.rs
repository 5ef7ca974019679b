//! The register model and its linearizability check, with stateright's
//! [`LinearizabilityTester`] (an exhaustive search, so histories are kept short per key).
//!
//! One key of the store is one register whose state is "absent" or a row's `Stud_marks`.
//! Operations as the gateway offers them: insert (`POST /write`, 409 `duplicate_key` when the
//! key exists), update (`PUT /update`, 404 `not_found` when it does not) and read. Those
//! definite refusals are returns of the model, not failures.
//!
//! Operations whose outcome is unknown are fed to the tester as invocations that never
//! return, each on a thread of its own, as Jepsen/Knossos do with `:info` operations: the
//! tester may place them anywhere after their invocation, or leave them out. Operations that
//! certainly did not apply (`outcome: not_applied`) and reads without an answer are left out.

use std::fmt;
use std::time::Duration;

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// An operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegOp {
    Insert(i64),
    Update(i64),
    Read,
}

/// What the store answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegRet {
    Inserted,
    Duplicate,
    Updated,
    NotFound,
    Value(Option<i64>),
}

/// The sequential specification: a register that starts absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RowRegister(pub Option<i64>);

impl SequentialSpec for RowRegister {
    type Op = RegOp;
    type Ret = RegRet;
    fn invoke(&mut self, op: &RegOp) -> RegRet {
        match (op, self.0) {
            (RegOp::Insert(v), None) => {
                self.0 = Some(*v);
                RegRet::Inserted
            }
            (RegOp::Insert(_), Some(_)) => RegRet::Duplicate,
            (RegOp::Update(v), Some(_)) => {
                self.0 = Some(*v);
                RegRet::Updated
            }
            (RegOp::Update(_), None) => RegRet::NotFound,
            (RegOp::Read, v) => RegRet::Value(v),
        }
    }
}

/// How an operation ended, Jepsen's ok / fail / info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// A definite answer (including duplicate / not found).
    Ok,
    /// Certainly not applied.
    Failed,
    /// May or may not have been applied.
    Unknown,
}

/// One recorded operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// The client that issued it (one operation at a time per client).
    pub process: usize,
    pub key: i64,
    pub op: RegOp,
    /// The answer, for [`Status::Ok`].
    pub ret: Option<RegRet>,
    pub status: Status,
    /// Since the run started.
    pub invoke: Duration,
    pub complete: Duration,
    /// HTTP status and, on failure, the error code (for the printed window).
    pub note: String,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = match (&self.status, &self.ret) {
            (Status::Ok, Some(r)) => format!("{r:?}"),
            (s, _) => format!("{s:?}"),
        };
        write!(
            f,
            "[p{} {:>8.3}s..{:>8.3}s {:?} -> {} ({})]",
            self.process,
            self.invoke.as_secs_f64(),
            self.complete.as_secs_f64(),
            self.op,
            ret,
            self.note
        )
    }
}

/// Thread ids at or above this are the one-operation threads of unknown outcomes.
const GHOST: usize = 1 << 40;

/// Whether `ops` (one key's history, any order) is linearizable.
pub fn linearizable(ops: &[Op]) -> bool {
    // Events in time order; at equal times invocations first, which only adds concurrency.
    let mut events: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        let counts = matches!(
            (o.status, &o.op),
            (Status::Ok, _) | (Status::Unknown, RegOp::Insert(_) | RegOp::Update(_))
        );
        if !counts {
            continue;
        }
        events.push((o.invoke, false, i));
        if o.status == Status::Ok {
            events.push((o.complete.max(o.invoke), true, i));
        }
    }
    events.sort();
    let mut t = LinearizabilityTester::new(RowRegister::default());
    for (_, is_return, i) in events {
        let o = &ops[i];
        let thread = if o.status == Status::Ok {
            o.process
        } else {
            GHOST + i
        };
        let r = if is_return {
            let ret = o.ret.clone().unwrap_or(RegRet::Value(None));
            t.on_return(thread, ret).map(|_| ())
        } else {
            t.on_invoke(thread, o.op.clone()).map(|_| ())
        };
        // An ill-formed history (two operations in flight on one process) is a harness bug.
        if let Err(e) = r {
            panic!("ill-formed history for key {}: {e}", o.key);
        }
    }
    t.is_consistent()
}

/// The shortest prefix of `ops` (by invocation time) that is not linearizable: the window
/// to print for a violation. `None` when the whole history is linearizable.
pub fn violation_window(ops: &[Op]) -> Option<Vec<Op>> {
    let mut sorted = ops.to_vec();
    sorted.sort_by_key(|o| (o.invoke, o.complete));
    if linearizable(&sorted) {
        return None;
    }
    // A prefix by invocation time keeps every predecessor of its operations, so if the
    // whole history were linearizable every prefix would be.
    for n in 1..=sorted.len() {
        if !linearizable(&sorted[..n]) {
            return Some(sorted[..n].to_vec());
        }
    }
    Some(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(p: usize, op: RegOp, ret: Option<RegRet>, status: Status, from: u64, to: u64) -> Op {
        Op {
            process: p,
            key: 7,
            op,
            ret,
            status,
            invoke: Duration::from_millis(from),
            complete: Duration::from_millis(to),
            note: String::new(),
        }
    }
    fn ok(p: usize, o: RegOp, r: RegRet, from: u64, to: u64) -> Op {
        op(p, o, Some(r), Status::Ok, from, to)
    }

    #[test]
    fn accepts_a_linearizable_history() {
        let h = vec![
            ok(0, RegOp::Insert(1), RegRet::Inserted, 0, 10),
            // Concurrent with the update: may see either value.
            ok(1, RegOp::Update(2), RegRet::Updated, 20, 40),
            ok(2, RegOp::Read, RegRet::Value(Some(1)), 25, 30),
            ok(2, RegOp::Read, RegRet::Value(Some(2)), 45, 50),
            ok(0, RegOp::Insert(3), RegRet::Duplicate, 55, 60),
        ];
        assert!(linearizable(&h));
        assert_eq!(violation_window(&h), None);
    }

    #[test]
    fn rejects_a_stale_read() {
        // The update completed before the read began, which still sees the old value.
        let h = vec![
            ok(0, RegOp::Insert(1), RegRet::Inserted, 0, 10),
            ok(0, RegOp::Update(2), RegRet::Updated, 20, 30),
            ok(1, RegOp::Read, RegRet::Value(Some(1)), 40, 50),
            ok(1, RegOp::Read, RegRet::Value(Some(2)), 60, 70),
        ];
        assert!(!linearizable(&h));
        let w = violation_window(&h).expect("a window");
        assert_eq!(w.len(), 3, "the window ends at the stale read: {w:?}");
    }

    #[test]
    fn unknown_writes_may_or_may_not_apply() {
        let maybe = op(0, RegOp::Update(5), None, Status::Unknown, 20, 5000);
        let ins = ok(1, RegOp::Insert(1), RegRet::Inserted, 0, 10);
        // Applied late: a read long after sees it.
        let seen = vec![
            ins.clone(),
            maybe.clone(),
            ok(1, RegOp::Read, RegRet::Value(Some(1)), 30, 40),
            ok(1, RegOp::Read, RegRet::Value(Some(5)), 100, 110),
        ];
        assert!(linearizable(&seen));
        // Never applied.
        let unseen = vec![
            ins.clone(),
            maybe.clone(),
            ok(1, RegOp::Read, RegRet::Value(Some(1)), 100, 110),
        ];
        assert!(linearizable(&unseen));
        // But not un-applied: once seen, the old value cannot come back.
        let flicker = vec![
            ins,
            maybe,
            ok(1, RegOp::Read, RegRet::Value(Some(5)), 100, 110),
            ok(1, RegOp::Read, RegRet::Value(Some(1)), 120, 130),
        ];
        assert!(!linearizable(&flicker));
        // A write that certainly failed is never seen.
        let failed = vec![
            ok(1, RegOp::Insert(1), RegRet::Inserted, 0, 10),
            op(0, RegOp::Update(9), None, Status::Failed, 20, 30),
            ok(1, RegOp::Read, RegRet::Value(Some(9)), 40, 50),
        ];
        assert!(!linearizable(&failed));
    }
}
