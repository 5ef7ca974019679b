//! A nemesis suite in the spirit of Jepsen and etcd's robustness tests: the compose cluster
//! (its own project, network and volumes; see [`crate::docker`]) under client load while a
//! fault is injected and healed, every operation recorded, and the history judged.
//!
//! - [`checker`]: the register model and stateright's `LinearizabilityTester`;
//! - [`workload`]: register, set and staleness clients;
//! - [`faults`]: partitions of single links or of the NATS cluster, kill -9, pause, extra
//!   managers;
//! - [`run`]: one scenario end to end, giving a [`Report`] whose [`Report::line`] is the
//!   one-line summary the tests print.
//!
//! Scenarios are short and seeded by default (`make test`); `SHARDLINE_NEMESIS_SECS` makes
//! each run longer (`make nemesis`). A scenario needing a feature the system does not have
//! yet (failpoints, the manager lease) prints `SKIPPED: needs <feature>` instead of failing.

pub mod checker;
pub mod faults;
mod run;
pub mod workload;

pub use run::{run, Fault, Link, Report, Settings};
