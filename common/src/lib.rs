//! Types shared by every shardline binary. Keep this crate small: it holds what two or more
//! binaries must agree on, nothing that only one of them needs.
//!
//! - [`names`]: validated newtypes for shard, server and column names (nothing unvalidated
//!   ever reaches SQL, a subject or a file path).
//! - [`schema`]: the table schema given at `/init` and typed rows checked against it.
//! - [`wal`]: the write-ahead log entry written to JetStream, and the subjects/streams used.
//! - [`meta`]: cluster metadata kept in the NATS KV bucket, and the admin request bodies.
//! - [`ring`]: the consistent-hash ring that picks a read replica.
//! - [`error`]: the one error type that maps to an HTTP status and a JSON failure body.
//! - [`nats`]: connecting to NATS with the optional credentials every binary takes.
//! - [`watch`]: following the metadata key in NATS KV from gateways and shard servers.
//! - [`shutdown`]: the future every binary awaits to stop gracefully.
//! - [`telemetry`]: logging set-up and the `/metrics` route shared by the binaries.
//! - [`body`]: the JSON body extractor that turns every decoding problem into a 400 naming the field.

pub mod body;
pub mod error;
pub mod meta;
pub mod names;
pub mod nats;
pub mod ring;
pub mod schema;
pub mod shutdown;
pub mod telemetry;
pub mod wal;
pub mod watch;

pub use error::ApiError;

/// A position in a shard's WAL stream (the JetStream stream sequence).
pub type Seq = u64;
/// An election term of one shard. Every WAL entry carries the term of the primary that wrote it.
pub type Term = u64;
