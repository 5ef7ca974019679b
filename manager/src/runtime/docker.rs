//! Shard servers as Docker containers, driven through the Docker API (bollard).
//!
//! Server `Server0` of project `shardline` runs in container `shardline-Server0` from the
//! project's own `shard-server` image, on the cluster's user-defined bridge network, where it
//! listens on `0.0.0.0:8080` and is reached as `shardline-Server0:8080` (the bare server name
//! is a network alias too). Its data lives in one named volume, `shardline-data-Server0`,
//! mounted at `/data`, so a container that crashed or was killed is re-created with its data;
//! a server whose volume was removed comes back empty and catches up by snapshot.
//!
//! Every container, volume and network created here carries the label
//! `io.shardline.project=<project>` (containers and volumes also `io.shardline.server=<name>`),
//! so `make clean` and the tests find exactly the project's own objects.
//!
//! Docker restarts nothing by itself (restart policy `no`): respawning is the manager's job.
//!
//! The NATS credentials the manager was given reach each server as environment variables of
//! its container (`SHARDLINE_NATS_USER`/`SHARDLINE_NATS_PASSWORD` or `SHARDLINE_NATS_TOKEN`,
//! see `shardline::nats`), never on its command line; `docker inspect` shows them to whoever
//! may use the Docker socket, who could read the volumes anyway.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, EndpointSettings, HostConfig,
    NetworkCreateRequest, NetworkingConfig, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt as _;
use shardline::names::ServerName;

use super::Runtime;

/// Label naming the project that owns an object.
pub const LABEL_PROJECT: &str = "io.shardline.project";
/// Label naming the shard server a container or volume belongs to.
pub const LABEL_SERVER: &str = "io.shardline.server";
/// Label naming the role of a container (`shard-server`).
pub const LABEL_ROLE: &str = "io.shardline.role";
/// The port a shard server listens on inside its container.
pub const SERVER_PORT: u16 = 8080;
/// Where a server's volume is mounted inside its container.
const DATA_DIR: &str = "/data";
/// How long a new container may take to print `LISTENING`.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct DockerRuntime {
    docker: Docker,
    /// Project name: container name prefix and the value of [`LABEL_PROJECT`].
    project: String,
    image: String,
    network: String,
    volume_prefix: String,
    /// Extra arguments passed to every server (NATS URL, durability settings).
    args: Vec<String>,
    /// Extra environment of every server (`KEY=value`): the NATS credentials.
    env: Vec<String>,
}

/// Settings of [`DockerRuntime::connect`].
pub struct DockerSettings {
    pub project: String,
    pub image: String,
    pub network: String,
    pub volume_prefix: String,
    pub args: Vec<String>,
    /// Environment variables set in every server container (the NATS credentials).
    pub env: Vec<(String, String)>,
}

fn not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerRuntime {
    /// Connects to the engine (`DOCKER_HOST` or the local socket), negotiating the API
    /// version, and makes sure the network exists (created as a labelled user-defined bridge
    /// when it does not; compose normally creates it).
    pub async fn connect(s: DockerSettings) -> anyhow::Result<DockerRuntime> {
        let docker = Docker::connect_with_defaults()
            .context("connecting to the Docker engine")?
            .negotiate_version()
            .await
            .context("negotiating the Docker API version (is the Docker socket mounted?)")?;
        let rt = DockerRuntime {
            docker,
            project: s.project,
            image: s.image,
            network: s.network,
            volume_prefix: s.volume_prefix,
            args: s.args,
            env: (s.env.into_iter())
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        };
        rt.ensure_network().await?;
        Ok(rt)
    }

    fn container(&self, name: &ServerName) -> String {
        format!("{}-{}", self.project, name.as_str())
    }

    fn volume(&self, name: &ServerName) -> String {
        format!("{}{}", self.volume_prefix, name.as_str())
    }

    fn labels(&self, name: Option<&ServerName>) -> HashMap<String, String> {
        let mut l = HashMap::from([(LABEL_PROJECT.to_string(), self.project.clone())]);
        if let Some(n) = name {
            l.insert(LABEL_SERVER.into(), n.as_str().into());
        }
        l
    }

    async fn ensure_network(&self) -> anyhow::Result<()> {
        match self.docker.inspect_network(&self.network, None).await {
            Ok(_) => return Ok(()),
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e).context(format!("inspecting network {}", self.network)),
        }
        tracing::info!(network = %self.network, "creating Docker network");
        let r = self
            .docker
            .create_network(NetworkCreateRequest {
                name: self.network.clone(),
                driver: Some("bridge".into()),
                labels: Some(self.labels(None)),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            // Created concurrently by someone else: fine.
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(e).context(format!("creating network {}", self.network)),
        }
    }

    async fn remove_container(&self, name: &ServerName) -> anyhow::Result<()> {
        let c = self.container(name);
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(&c, Some(opts)).await {
            Ok(()) => {}
            Err(e) if not_found(&e) => return Ok(()),
            // "removal already in progress"
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => {}
            Err(e) => return Err(e).context(format!("removing container {c}")),
        }
        // Removal is asynchronous when already in progress: wait until the name is free.
        for _ in 0..100 {
            match self.docker.inspect_container(&c, None).await {
                Err(e) if not_found(&e) => return Ok(()),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        anyhow::bail!("container {c} is still there after removal")
    }

    async fn ensure_volume(&self, name: &ServerName) -> anyhow::Result<()> {
        let v = self.volume(name);
        // Creating an existing volume is a no-op that returns it.
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(v.clone()),
                driver: Some("local".into()),
                labels: Some(self.labels(Some(name))),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating volume {v}"))?;
        Ok(())
    }

    /// Waits for the container to print `LISTENING <addr>` on stdout.
    async fn wait_listening(&self, container: &str) -> anyhow::Result<()> {
        let opts = LogsOptionsBuilder::new()
            .follow(true)
            .stdout(true)
            .stderr(false)
            .build();
        let mut logs = self.docker.logs(container, Some(opts));
        let mut buf = Vec::new();
        tokio::time::timeout(LISTEN_TIMEOUT, async {
            while let Some(chunk) = logs.next().await {
                buf.extend_from_slice(chunk?.as_ref());
                if String::from_utf8_lossy(&buf)
                    .lines()
                    .any(|l| l.starts_with("LISTENING "))
                {
                    return Ok(());
                }
            }
            anyhow::bail!("container {container} exited before listening (docker logs {container})")
        })
        .await
        .with_context(|| format!("container {container} did not start listening in time"))?
    }
}

impl Runtime for DockerRuntime {
    async fn spawn(&self, name: &ServerName) -> anyhow::Result<String> {
        let container = self.container(name);
        // A stale container of the same name (exited, hung, or from an earlier manager) must
        // not keep running beside the new one; its volume is kept.
        self.remove_container(name).await?;
        self.ensure_volume(name).await?;
        let mut cmd = vec![
            "--name".to_string(),
            name.as_str().to_string(),
            "--listen".into(),
            format!("0.0.0.0:{SERVER_PORT}"),
            "--data-dir".into(),
            DATA_DIR.into(),
        ];
        cmd.extend(self.args.iter().cloned());
        let mut labels = self.labels(Some(name));
        labels.insert(LABEL_ROLE.into(), "shard-server".into());
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(cmd),
            hostname: Some(name.as_str().to_string()),
            labels: Some(labels),
            env: Some(
                std::iter::once("NO_COLOR=1".to_string())
                    .chain(self.env.iter().cloned())
                    .collect(),
            ),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:{DATA_DIR}", self.volume(name))]),
                network_mode: Some(self.network.clone()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings {
                        aliases: Some(vec![name.as_str().to_string()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&container)
            .build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .with_context(|| format!("creating container {container} from {}", self.image))?;
        self.docker
            .start_container(&container, None)
            .await
            .with_context(|| format!("starting container {container}"))?;
        self.wait_listening(&container).await?;
        tracing::info!(server = %name, %container, "server container started");
        Ok(format!("{container}:{SERVER_PORT}"))
    }

    /// Running, paused (fenced by the election, not replaced) or restarting. A container that
    /// was created but never started, exited or is being removed is dead.
    async fn is_alive(&self, name: &ServerName) -> bool {
        match self
            .docker
            .inspect_container(&self.container(name), None)
            .await
        {
            Ok(c) => matches!(
                c.state.and_then(|s| s.status),
                Some(
                    ContainerStateStatusEnum::RUNNING
                        | ContainerStateStatusEnum::PAUSED
                        | ContainerStateStatusEnum::RESTARTING
                )
            ),
            Err(e) if not_found(&e) => false,
            // The engine is unreachable: say "alive" so the monitor does not respawn in a
            // loop; it retries at its next round.
            Err(e) => {
                tracing::warn!(server = %name, error = %e, "cannot inspect server container");
                true
            }
        }
    }

    async fn remove(&self, name: &ServerName) -> anyhow::Result<()> {
        self.remove_container(name).await?;
        let v = self.volume(name);
        let opts = RemoveVolumeOptionsBuilder::new().force(true).build();
        match self.docker.remove_volume(&v, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e).context(format!("removing volume {v}")),
        }
    }

    async fn shutdown(&self) {
        // Containers go (a later manager re-creates them on the same volumes); volumes stay.
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_PROJECT}={}", self.project),
                format!("{LABEL_ROLE}=shard-server"),
            ],
        )]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let Ok(list) = self.docker.list_containers(Some(opts)).await else {
            return;
        };
        let rm = list.into_iter().filter_map(|c| c.id).map(|id| async move {
            let opts = RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = self.docker.remove_container(&id, Some(opts)).await;
        });
        futures::future::join_all(rm).await;
    }
}
