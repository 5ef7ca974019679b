//! Docker end-to-end support: a whole shardline cluster brought up with `docker-compose`
//! from the project's own images (nats, manager with the Docker runtime, gateway), under a
//! project name unique to the test run.
//!
//! ```ignore
//! let Some(c) = testkit::docker::DockerCluster::up(false).await else { return }; // skipped
//! c.init(testkit::workload("a1")).await;
//! c.kill_server("Server2");
//! ```
//!
//! [`DockerCluster::up`] returns `None` (after printing `SKIPPED: <reason>`) when no Docker
//! engine is reachable, no compose command exists, or the images are not built
//! (`make images`). Docker tests of several processes (nextest) run one at a time: each holds
//! an exclusive lock on `$TMPDIR/shardline-docker-tests.lock` while its cluster exists.
//!
//! Cleanup: `Drop` removes every container (compose's and the manager-made shard servers),
//! volume and network labelled with the test's project, also when the test panicked (after
//! printing the tail of the manager's and gateway's logs).

mod engine;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, wait_until, workspace_root, Method, NatsCreds};
use engine::{compose_cmd, lock, stdout, sweep_stale_projects, Lock};

pub use engine::{docker, remove_project, unavailable, IMAGES, LABEL_PROJECT, LOCK_TIMEOUT};
pub use writer::{row, Writer};

/// How long `up` waits for the gateway.
pub const UP_TIMEOUT: Duration = Duration::from_secs(90);

/// A compose project of this test run; removed entirely on drop.
pub struct DockerCluster {
    project: String,
    compose: Vec<String>,
    compose_file: PathBuf,
    envs: Vec<(String, String)>,
    nats_creds: NatsCreds,
    profile_cluster: bool,
    gateway_port: u16,
    nats_port: u16,
    client: reqwest::Client,
    _lock: Lock,
}

impl DockerCluster {
    /// Brings up nats (or, with `nats_cluster`, the 3-node NATS cluster profile with WAL
    /// streams replicated 3 times), the manager and the gateway, and waits for the gateway.
    /// `None` (with a printed `SKIPPED:` line) when Docker tests cannot run here.
    pub async fn up(nats_cluster: bool) -> Option<DockerCluster> {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: Docker end-to-end test not run: {why}");
            return None;
        }
        // The published ports are picked free here but bound later by Docker, so a test running
        // beside this one can take one in between: then the whole project is brought up again
        // on other ports, a bounded number of times.
        let mut attempt = 1;
        let c = loop {
            let lock = lock();
            sweep_stale_projects();
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let project = format!("sltest{}x{}", std::process::id(), nanos % 1_000_000);
            let gateway_port = free_port();
            let nats_port = free_port();
            // Credentials of this run instead of the compose file's defaults; the space and the
            // punctuation check that they reach nats-server's command line in one piece.
            let nats_creds = NatsCreds::user_password("sltest", &format!("pw {project}:x@y/z"));
            let mut envs = vec![
                ("SHARDLINE_PROJECT".to_string(), project.clone()),
                ("SHARDLINE_GATEWAY_PORT".into(), gateway_port.to_string()),
                ("SHARDLINE_NATS_PORT".into(), nats_port.to_string()),
            ];
            envs.extend(nats_creds.env());
            if nats_cluster {
                envs.push(("SHARDLINE_STREAM_REPLICAS".into(), "3".into()));
                envs.push((
                    "SHARDLINE_NATS_CLUSTER_ARGS".into(),
                    "--cluster_name shardline --cluster nats://0.0.0.0:6222 --routes \
                 nats://nats-1:6222,nats://nats-2:6222,nats://nats-3:6222"
                        .into(),
                ));
            }
            let c = DockerCluster {
                project,
                compose: compose_cmd().expect("checked by unavailable()"),
                compose_file: workspace_root().join("docker-compose.yml"),
                envs,
                nats_creds,
                profile_cluster: nats_cluster,
                gateway_port,
                nats_port,
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .expect("reqwest client"),
                _lock: lock,
            };
            eprintln!(
                "docker test: project {} (gateway :{gateway_port})",
                c.project
            );
            let out = c.compose(&["up", "-d"]);
            if out.status.success() {
                break c;
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                attempt < PORT_ATTEMPTS && err.contains("address already in use"),
                "compose up failed: {err}"
            );
            eprintln!("docker test: a published port was taken meanwhile; again on other ports");
            drop(c);
            attempt += 1;
        };
        let ok = wait_until(UP_TIMEOUT, || async { c.get("/healthz").await.0 == 200 }).await;
        assert!(ok, "gateway not healthy within {UP_TIMEOUT:?}");
        Some(c)
    }

    pub fn project(&self) -> &str {
        &self.project
    }
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }
    /// NATS client URL on the host (nats-1's client port, published on 127.0.0.1).
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }
    /// The NATS credentials this project's nats nodes require (set through the compose
    /// file's SHARDLINE_NATS_USER/SHARDLINE_NATS_PASSWORD).
    pub fn nats_creds(&self) -> &NatsCreds {
        &self.nats_creds
    }
    /// A NATS client from the host, with the project's credentials. Panics if it fails.
    pub async fn nats_client(&self) -> async_nats::Client {
        (self.nats_creds.apply(async_nats::ConnectOptions::new()))
            .connect(self.nats_url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to NATS at {}: {e}", self.nats_url()))
    }

    /// Runs a compose command for this project (`--profile cluster` when in cluster mode).
    pub fn compose(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.compose_file);
        if self.profile_cluster {
            cmd.args(["--profile", "cluster"]);
        }
        cmd.args(args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("run compose")
    }

    /// Container of shard server `name` (created by the manager): `<project>-<name>`.
    pub fn server_container(&self, name: &str) -> String {
        format!("{}-{name}", self.project)
    }
    /// Volume of shard server `name`.
    pub fn server_volume(&self, name: &str) -> String {
        format!("{}-data-{name}", self.project)
    }
    /// The container of compose service `service` (e.g. `nats-2`), by compose's labels.
    pub fn service_container(&self, service: &str) -> Option<String> {
        let out = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]);
        stdout(&out).lines().next().map(str::to_string)
    }

    /// `(id, status)` of a container, `None` when it does not exist.
    pub fn container_state(&self, container: &str) -> Option<(String, String)> {
        let out = docker(&[
            "inspect",
            "--format",
            "{{.Id}} {{.State.Status}}",
            container,
        ]);
        if !out.status.success() {
            return None;
        }
        let s = stdout(&out);
        let (id, status) = s.split_once(' ')?;
        Some((id.to_string(), status.to_string()))
    }

    /// `docker kill` of server `name`'s container; returns the killed container's id.
    pub fn kill_server(&self, name: &str) -> String {
        let c = self.server_container(name);
        let (id, status) = self
            .container_state(&c)
            .unwrap_or_else(|| panic!("no container {c}"));
        assert_eq!(status, "running", "container {c} is not running");
        let out = docker(&["kill", &c]);
        assert!(out.status.success(), "docker kill {c}: {out:?}");
        id
    }

    /// `docker rm -f` of server `name`'s container and `docker volume rm` of its volume (a
    /// named volume outlives `rm -v`). Retries if the manager re-created the container in
    /// between. Returns the removed container's id.
    pub fn remove_server_and_volume(&self, name: &str) -> String {
        let c = self.server_container(name);
        let v = self.server_volume(name);
        let (id, _) = self
            .container_state(&c)
            .unwrap_or_else(|| panic!("no container {c}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let _ = docker(&["rm", "-f", "-v", &c]);
            let out = docker(&["volume", "rm", "-f", &v]);
            if out.status.success() {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "cannot remove volume {v}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until server `name` runs in a container other than `old_id` and the metadata
    /// says it is `up` (caught up). Returns how long that took.
    pub async fn wait_respawned(&self, name: &str, old_id: &str, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        let c = self.server_container(name);
        let ok = wait_until(timeout, || async {
            let respawned = self
                .container_state(&c)
                .is_some_and(|(id, st)| id != old_id && st == "running");
            respawned && self.status().await["health"][name] == "up"
        })
        .await;
        assert!(
            ok,
            "server {name} not respawned and up within {timeout:?}: container {:?}, status {}",
            self.container_state(&c),
            self.status().await
        );
        t0.elapsed()
    }

    /// `docker stop` of a compose service's container (e.g. `nats-2`).
    pub fn stop_service(&self, service: &str) {
        let c = self
            .service_container(service)
            .unwrap_or_else(|| panic!("no container for service {service}"));
        let out = docker(&["stop", "-t", "2", &c]);
        assert!(out.status.success(), "docker stop {c}: {out:?}");
    }
    /// `docker start` of a compose service's container.
    pub fn start_service(&self, service: &str) {
        let c = self
            .service_container(service)
            .unwrap_or_else(|| panic!("no container for service {service}"));
        let out = docker(&["start", &c]);
        assert!(out.status.success(), "docker start {c}: {out:?}");
    }

    // --- HTTP ---------------------------------------------------------------------------

    /// A request to the gateway (`path` relative) or any URL; `(0, error text)` when there
    /// is no HTTP answer.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.gateway_url())
        };
        crate::http::send(&self.client, method, &url, body).await
    }
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(Method::POST, path, Some(body)).await
    }

    /// `POST /init` (asserting 200), then waits for `/readyz`. While the manager is not up
    /// yet (a NATS cluster still electing its JetStream leader) the gateway answers 502/503:
    /// retried for up to a minute.
    pub async fn init(&self, body: &Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let (status, resp) = loop {
            let (status, resp) = self.post("/init", body).await;
            if !matches!(status, 0 | 502 | 503) || Instant::now() >= deadline {
                break (status, resp);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(status, 200, "POST /init: {resp}");
        let ok = wait_until(Duration::from_secs(60), || async {
            self.get("/readyz").await.0 == 200
        })
        .await;
        assert!(ok, "gateway not ready after /init: {}", self.status().await);
    }

    /// `GET /status` (Null when it fails).
    pub async fn status(&self) -> Value {
        match self.get("/status").await {
            (200, v) => v,
            _ => Value::Null,
        }
    }

    /// Primary of every shard, from `/status`.
    pub async fn primaries(&self) -> BTreeMap<String, String> {
        let st = self.status().await;
        st["shards"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                Some((
                    s["Shard_id"].as_str()?.to_string(),
                    s["primary"].as_str()?.to_string(),
                ))
            })
            .collect()
    }

    /// Replicas (server names) of every shard, from `/status`.
    pub async fn replicas(&self) -> BTreeMap<String, Vec<String>> {
        let st = self.status().await;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (server, shards) in st["servers"].as_object().into_iter().flatten() {
            for sh in shards.as_array().into_iter().flatten() {
                if let Some(sh) = sh.as_str() {
                    out.entry(sh.to_string()).or_default().push(server.clone());
                }
            }
        }
        out
    }

    /// Waits until every replica of every shard returns identical rows through
    /// `GET /read/<server>` and every server is `up`. Returns the rows per shard. Panics with the last difference on timeout.
    pub async fn wait_replicas_identical(&self, timeout: Duration) -> BTreeMap<String, Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.replica_rows().await {
                Ok(rows) => return rows,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!("replicas not identical within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn replica_rows(&self) -> Result<BTreeMap<String, Vec<Value>>, String> {
        let st = self.status().await;
        if let Some(h) = st["health"].as_object() {
            if let Some((n, v)) = h.iter().find(|(_, v)| *v != "up") {
                return Err(format!("server {n} is {v}"));
            }
        }
        let mut out = BTreeMap::new();
        for (shard, servers) in self.replicas().await {
            let mut first: Option<(String, Vec<Value>)> = None;
            for server in servers {
                let (code, body) = self.get(&format!("/read/{server}")).await;
                if code != 200 {
                    return Err(format!("GET /read/{server}: {code} {body}"));
                }
                let rows = body[&shard].as_array().cloned().unwrap_or_default();
                match &first {
                    None => first = Some((server, rows)),
                    Some((s0, r0)) if *r0 != rows => {
                        return Err(format!(
                            "shard {shard}: {s0} has {} rows, {server} has {}",
                            r0.len(),
                            rows.len()
                        ))
                    }
                    Some(_) => {}
                }
            }
            if let Some((_, rows)) = first {
                out.insert(shard, rows);
            }
        }
        Ok(out)
    }

    fn dump_logs(&self) {
        for service in ["manager", "gateway"] {
            if let Some(c) = self.service_container(service) {
                let out = docker(&["logs", "--tail", "40", &c]);
                eprintln!(
                    "--- docker logs --tail 40 {c}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }

    /// Removes everything of this project: manager first (so nothing is respawned), then
    /// every labelled container, compose's own objects, labelled volumes and networks.
    pub fn cleanup(&self) {
        remove_project(&self.project);
        let _ = self.compose(&["down", "--volumes", "--remove-orphans", "-t", "1"]);
        remove_project(&self.project);
    }

    /// Everything of this project still present (containers, volumes, networks).
    pub fn leftovers(&self) -> Vec<String> {
        let label = format!("label={LABEL_PROJECT}={}", self.project);
        let mut left = Vec::new();
        for kind in [
            vec!["ps", "-a", "--format", "{{.Names}}"],
            vec!["volume", "ls", "--format", "{{.Name}}"],
            vec!["network", "ls", "--format", "{{.Name}}"],
        ] {
            let mut args = kind.clone();
            args.extend(["--filter", &label]);
            left.extend(stdout(&docker(&args)).lines().map(str::to_string));
        }
        left.retain(|l| !l.is_empty());
        left
    }
}

/// How many times [`DockerCluster::up`] tries fresh ports when one was taken meanwhile.
const PORT_ATTEMPTS: u32 = 3;

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.cleanup();
        let left = self.leftovers();
        if !left.is_empty() {
            eprintln!(
                "docker test: left behind for project {}: {left:?}",
                self.project
            );
        }
    }
}
