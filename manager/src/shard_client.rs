//! The manager's HTTP client to the shard servers: `GET /heartbeat` (is it alive, how far has
//! each replica applied) and `POST /config` (the schema and the shards it holds). The bodies
//! are the common crate's [`shardline::internal`] types, as the shard server decodes them.

use std::time::Duration;

use shardline::internal::{AdoptLogRequest, ConfigRequest, Heartbeat};
use shardline::names::ServerName;

/// Why a `/config` call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No answer: the server is unreachable, or it did not answer in time.
    #[error(transparent)]
    Unreachable(#[from] reqwest::Error),
    /// The server answered with a failure status.
    #[error("{endpoint} answered {status}: {body}")]
    Refused {
        endpoint: &'static str,
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
                endpoint: "/config",
                status,
                body: resp.text().await.unwrap_or_default(),
            });
        }
        Ok(())
    }
}

impl ShardClient {
    /// `POST /adopt_log` (README "Log faults"): the server takes the shard's stream as it is
    /// now as its log, after copying a snapshot from `from` if given.
    pub async fn adopt_log(
        &self,
        addr: &str,
        request: &AdoptLogRequest,
    ) -> Result<(), ConfigError> {
        let resp = self
            .http
            .post(format!("http://{addr}/adopt_log"))
            .json(request)
            .timeout(Duration::from_secs(60))
            .send()
            .await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ConfigError::Refused {
                endpoint: "/adopt_log",
                status,
                body: resp.text().await.unwrap_or_default(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use shardline::internal::ReplicaProgress;
    use shardline::names::ShardId;
    use shardline::schema::SchemaSpec;
    use shardline::{Seq, Term};

    /// A stand-in shard server named Server1 on loopback that refuses every `/config`.
    async fn fake_server() -> String {
        let beat = Heartbeat {
            server: ServerName::parse("Server1").unwrap(),
            shards: [(
                ShardId::parse("sh1").unwrap(),
                ReplicaProgress {
                    applied: Seq(12),
                    term: Term(2),
                    recovering: false,
                    stale_ms: None,
                    stalled_ms: None,
                    fault: None,
                    log_id: None,
                },
            )]
            .into(),
            nats_connected: true,
        };
        let app = Router::new()
            .route("/heartbeat", get(move || async move { Json(beat) }))
            .route(
                "/config",
                post(|Json(c): Json<ConfigRequest>| async move {
                    (
                        StatusCode::CONFLICT,
                        format!("{} shards refused", c.shards.len()),
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn heartbeats_are_typed_and_checked_against_the_name() {
        let addr = fake_server().await;
        let client = ShardClient::build().unwrap();
        let timeout = Duration::from_secs(5);
        let beat = client
            .heartbeat(&ServerName::parse("Server1").unwrap(), &addr, timeout)
            .await
            .expect("Server1 answers");
        assert_eq!(beat.shards["sh1"].applied, Seq(12));
        // Another server at that address (the old one's port reused) is not this one.
        let other = client
            .heartbeat(&ServerName::parse("Server2").unwrap(), &addr, timeout)
            .await;
        assert_eq!(other, None);
    }

    #[tokio::test]
    async fn a_refused_config_says_what_the_server_answered() {
        let addr = fake_server().await;
        let client = ShardClient::build().unwrap();
        let config = ConfigRequest {
            schema: SchemaSpec {
                columns: vec!["Stud_id".into()],
                dtypes: vec!["Number".into()],
            },
            shards: vec![
                ShardId::parse("sh1").unwrap(),
                ShardId::parse("sh2").unwrap(),
            ],
        };
        let err = client.configure(&addr, &config).await.unwrap_err();
        assert!(matches!(err, ConfigError::Refused { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "/config answered 409 Conflict: 2 shards refused"
        );
    }
}
