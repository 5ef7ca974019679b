//! Types shared by every shardline binary. Keep this crate small: it holds what two or more
//! binaries must agree on, nothing that only one of them needs.
//!
//! - [`backup`]: the cluster backup archive (`backup.json` and one SQLite file per shard, as tar).
//! - [`names`]: validated newtypes for shard, server and column names (nothing unvalidated
//!   ever reaches SQL, a subject or a file path).
//! - [`schema`]: the table schema given at `/init` and typed rows checked against it.
//! - [`wal`]: the write-ahead log entry written to JetStream, and the subjects/streams used.
//! - [`meta`]: cluster metadata kept in the NATS KV bucket, and the admin request bodies.
//! - [`ring`]: the consistent-hash ring that picks a read replica.
//! - [`error`]: the one error type that maps to an HTTP status and a JSON failure body.
//! - [`nats`]: connecting to NATS with the optional credentials every binary takes.
//! - [`watch`]: following the metadata key in NATS KV from gateways and shard servers.
//! - [`shutdown`]: the future every binary awaits to stop gracefully, and the tokio runtime
//!   the gateway and the shard server are built on ([`shutdown::runtime`]).
//! - [`telemetry`]: logging set-up and the `/metrics` route shared by the binaries.
//! - [`body`]: the JSON body extractor that turns every decoding problem into a 400 naming the field.
//! - [`internal`]: the request and answer bodies of the internal HTTP API (gateway, manager and
//!   shard servers build and decode them with these types, never by hand).
//! - [`log`]: positions in a shard's log ([`Seq`], [`Term`], [`Position`]) and [`SyncMode`].

pub mod backup;
pub mod body;
pub mod error;
pub mod internal;
pub mod log;
pub mod meta;
pub mod names;
pub mod nats;
pub mod ring;
pub mod schema;
pub mod shutdown;
pub mod telemetry;
pub mod wal;
pub mod watch;

pub use error::{ApiError, Effect, ErrorCode};
pub use log::{Position, Seq, SyncMode, Term};
