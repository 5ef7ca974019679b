//! Test support for shardline integration tests.
//!
//! Everything here starts *real* processes: a pinned `nats-server` (see
//! `scripts/install-nats.sh`) and the workspace's own `manager` / `gateway` binaries (build
//! them with `cargo build --workspace` first; `make test` does both).
//!
//! ```ignore
//! use testkit::{json, LocalCluster};
//! use std::time::Duration;
//!
//! #[tokio::test(flavor = "multi_thread")]
//! async fn write_then_read() {
//!     let c = LocalCluster::start().await;
//!     c.init(testkit::workload("a1")).await;
//!     let (status, body) = c.post("/write", json!({"data": [{"Stud_id": 1, "Stud_name": "A", "Stud_marks": 5}]})).await;
//!     assert_eq!(status, 200, "{body}");
//!     assert!(c.wait_until(Duration::from_secs(10), || async {
//!         c.post("/read", json!({"Stud_id": {"low": 0, "high": 10}})).await.1["data"].as_array().map_or(false, |d| d.len() == 1)
//!     }).await);
//! }
//! ```
//!
//! Modules, by concern (their main items are re-exported here):
//!
//! - [`paths`]: the workspace, `nats-server`, the workspace binaries, workloads, free ports;
//! - [`process`]: [`Proc`], a started binary with its log and its `LISTENING` line, spawned
//!   with `PR_SET_PDEATHSIG`;
//! - [`pids`]: signals and `/proc` for processes that are not our children (shard servers);
//! - [`nats`]: [`Nats`], a private nats-server with JetStream, and [`NatsCreds`];
//! - [`cluster`]: [`LocalCluster`], nats-server + manager + gateway on loopback, with its HTTP
//!   helpers and shard-server handling;
//! - [`http`]: one request as `(status, body)`, never an error;
//! - [`wait`]: polling with a deadline ([`wait_until`], [`wait_for`]);
//! - [`check`]: generic checks over a running cluster (replicas, WAL progress, failure bodies,
//!   raw HTTP);
//! - [`workload`](mod@workload): a concurrent writer recording every request's outcome, and its checker;
//! - [`docker`]: a whole cluster from the project's images with docker-compose;
//! - [`nemesis`]: Jepsen-style fault scenarios on the Docker cluster, with a linearizability
//!   checker (stateright);
//! - [`python`]: the project's Python virtualenv (schemathesis, nats-py).
//!
//! Cleanup: every process started here is killed when its owner ([`Proc`], [`Nats`],
//! [`LocalCluster`]) is dropped, and additionally gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies
//! with the test process even if that is killed outright (e.g. by a nextest timeout).
//! Shard servers are children of the manager, not of the test: [`LocalCluster`]'s `Drop` kills
//! them by the pid files under its data dir (and by scanning `/proc` for processes whose
//! command line names that data dir). When a test panics, the temp dirs holding logs and
//! data are kept and their paths printed, with the tail of each process's log.

pub mod check;
pub mod cluster;
pub mod docker;
pub mod http;
pub mod nats;
pub mod nemesis;
pub mod paths;
pub mod pids;
pub mod process;
pub mod python;
pub mod wait;
pub mod workload;

use std::time::Duration;

pub use reqwest::Method;
pub use serde_json::{json, Value};

pub use crate::cluster::{ClusterOptions, LocalCluster};
pub use crate::nats::{Nats, NatsCreds, NatsOptions};
pub use crate::paths::{bin, free_port, nats_server_bin, workload, workspace_root};
pub use crate::pids::{pid_alive, signal};
pub use crate::process::{Proc, ProcBuilder};
pub use crate::wait::{wait_for, wait_until, POLL_INTERVAL};

/// How long to wait for a process to print `LISTENING <addr>`.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for something to become healthy/ready after start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
