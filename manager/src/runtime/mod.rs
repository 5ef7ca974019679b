//! Where shard servers run. `Runtime` is implemented by local child processes
//! ([`process::ProcessRuntime`], the default) and Docker containers
//! ([`docker::DockerRuntime`], through bollard).

pub mod docker;
pub mod process;

use std::future::Future;

use shardline::names::ServerName;

/// How the manager starts, checks and stops shard servers.
pub trait Runtime: Send + Sync + 'static {
    /// Starts server `name` (reusing its data if it has any) and returns its `host:port`.
    fn spawn(&self, name: &ServerName) -> impl Future<Output = anyhow::Result<String>> + Send;
    /// Whether the server's process/container still exists (it may be paused or hung).
    fn is_alive(&self, name: &ServerName) -> impl Future<Output = bool> + Send;
    /// Stops the server and deletes its data.
    fn remove(&self, name: &ServerName) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Stops every server this runtime started (at manager shutdown, for `make run`).
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}
