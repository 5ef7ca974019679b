//! The manager's HTTP client to the shard servers: `GET /heartbeat` (is it alive, how far has
//! each replica applied) and `POST /config` (the schema and the shards it holds). The bodies
//! are the common crate's [`shardline::internal`] types, as the shard server decodes them.

use std::time::Duration;

use shardline::internal::{ConfigRequest, Heartbeat};
use shardline::names::ServerName;

/// Why a `/config` call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No answer: the server is unreachable, or it did not answer in time.
    #[error(transparent)]
    Unreachable(#[from] reqwest::Error),
    /// The server answered with a failure status.
    #[error("/config answered {status}: {body}")]
    Refused {
        status: reqwest::StatusCode,
        body: String,
    },
}

/// One pooled HTTP client for every call to a shard server.
#[derive(Debug, Clone)]
pub struct ShardClient {
    http: reqwest::Client,
}

impl ShardClient {
    /// A client that gives up connecting after a second and on any call after 30 s (a call
    /// with its own timeout, like the heartbeat, uses that instead).
    pub fn build() -> reqwest::Result<ShardClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(ShardClient { http })
    }

    /// The server's heartbeat, or `None` when it does not answer within `timeout`, answers
    /// with a failure, or is not `name` (another server took over its address).
    pub async fn heartbeat(
        &self,
        name: &ServerName,
        addr: &str,
        timeout: Duration,
    ) -> Option<Heartbeat> {
        let resp = self
            .http
            .get(format!("http://{addr}/heartbeat"))
            .timeout(timeout)
            .send()
            .await
            .ok()?;
        let beat: Heartbeat = resp.error_for_status().ok()?.json().await.ok()?;
        (beat.server == *name).then_some(beat)
    }

    /// Tells a freshly started server its schema and shards; it then catches up on them.
    pub async fn configure(&self, addr: &str, config: &ConfigRequest) -> Result<(), ConfigError> {
        let resp = self
            .http
            .post(format!("http://{addr}/config"))
            .json(config)
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ConfigError::Refused {
                status,
                body: resp.text().await.unwrap_or_default(),
            });
        }
        Ok(())
    }
}
