//! [`LocalCluster`]: nats-server, the manager (process runtime, which spawns the shard
//! servers) and the gateway, all on loopback with data and logs in one temp dir. Its HTTP
//! helpers are in `http`, the handling of its shard servers (pids, signals) in `servers`.

mod http;
mod servers;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use reqwest::Method;
use tempfile::TempDir;

use crate::nats::{Nats, NatsCreds};
use crate::paths::bin;
use crate::pids::kill_foreign;
use crate::process::Proc;
use crate::wait::wait_until;
use crate::{LISTEN_TIMEOUT, READY_TIMEOUT};

/// Extra arguments and environment for [`LocalCluster::start_with`].
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Appended to the manager's command line (e.g. heartbeat intervals).
    pub manager_args: Vec<String>,
    /// Appended to the gateway's command line.
    pub gateway_args: Vec<String>,
    /// Set for both the manager and the gateway (the manager's shard servers inherit it,
    /// except the NATS credential variables, which the manager sets itself).
    /// `RUST_LOG` defaults to `info`.
    pub env: Vec<(String, String)>,
    /// Start nats-server requiring these credentials. The manager gets them as command-line
    /// flags (so its shard servers can only have them from the manager handing them on),
    /// the gateway as environment variables.
    pub nats_auth: Option<NatsCreds>,
}

/// nats-server + manager (process runtime) + gateway, all on loopback, data in a temp dir.
pub struct LocalCluster {
    gateway: Option<Proc>,
    manager: Option<Proc>,
    nats: Nats,
    root: Option<TempDir>,
    root_path: PathBuf,
    gateway_addr: String,
    manager_addr: String,
    client: reqwest::Client,
    opts: ClusterOptions,
}

fn loopback(addr: &str) -> String {
    match addr.rsplit_once(':') {
        Some(("0.0.0.0" | "[::]", port)) => format!("127.0.0.1:{port}"),
        _ => addr.to_string(),
    }
}

impl LocalCluster {
    /// Starts NATS, the manager and the gateway; returns once both answer `GET /healthz`.
    pub async fn start() -> LocalCluster {
        Self::start_with(ClusterOptions::default()).await
    }

    pub async fn start_with(opts: ClusterOptions) -> LocalCluster {
        // Check the binaries before starting anything.
        bin("manager");
        bin("gateway");
        bin("shard-server");
        let root = tempfile::Builder::new()
            .prefix("shardline-cluster-")
            .tempdir()
            .expect("create cluster temp dir");
        let root_path = root.path().to_path_buf();
        fs::create_dir_all(root_path.join("servers")).expect("create servers dir");
        fs::create_dir_all(root_path.join("logs")).expect("create logs dir");
        let nats = Nats::start_with(&[], opts.nats_auth.clone()).await;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        let mut c = LocalCluster {
            gateway: None,
            manager: None,
            nats,
            root: Some(root),
            root_path,
            gateway_addr: String::new(),
            manager_addr: String::new(),
            client,
            opts,
        };
        c.start_manager("127.0.0.1:0").await;
        c.start_gateway("127.0.0.1:0").await;
        c
    }

    fn envs(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if std::env::var_os("RUST_LOG").is_none() {
            env.push(("RUST_LOG".to_string(), "info".to_string()));
        }
        env.extend(self.opts.env.iter().cloned());
        env
    }

    async fn start_manager(&mut self, listen: &str) {
        let data = self.servers_dir();
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen.into(),
            "--nats-url".into(),
            self.nats.url(),
            "--data-dir".into(),
            data.display().to_string(),
            "--server-bin".into(),
            bin("shard-server").display().to_string(),
        ];
        args.extend(self.opts.nats_auth.iter().flat_map(NatsCreds::flags));
        args.extend(self.opts.manager_args.iter().cloned());
        let (p, addr) = self.spawn_listening("manager", args, Vec::new()).await;
        (self.manager, self.manager_addr) = (Some(p), addr);
        let url = format!("{}/healthz", self.manager_url());
        self.wait_healthy(&url, "manager").await;
    }

    async fn start_gateway(&mut self, listen: &str) {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            listen.into(),
            "--nats-url".into(),
            self.nats.url(),
            "--manager-url".into(),
            self.manager_url(),
        ];
        args.extend(self.opts.gateway_args.iter().cloned());
        let creds = self
            .opts
            .nats_auth
            .iter()
            .flat_map(NatsCreds::env)
            .collect();
        let (p, addr) = self.spawn_listening("gateway", args, creds).await;
        (self.gateway, self.gateway_addr) = (Some(p), addr);
        let url = format!("{}/healthz", self.gateway_url());
        self.wait_healthy(&url, "gateway").await;
    }

    /// Starts workspace binary `name` logging into `logs/`, and waits for its `LISTENING`
    /// line; returns it with its loopback address.
    async fn spawn_listening(
        &self,
        name: &str,
        args: Vec<String>,
        extra_env: Vec<(String, String)>,
    ) -> (Proc, String) {
        let mut p = Proc::builder(name, bin(name))
            .args(args)
            .envs(self.envs())
            .envs(extra_env)
            .log_dir(self.logs_dir())
            .spawn();
        let addr = loopback(&p.listening(LISTEN_TIMEOUT).await);
        (p, addr)
    }

    async fn wait_healthy(&self, url: &str, what: &str) {
        let ok = wait_until(READY_TIMEOUT, || async {
            self.request(Method::GET, url, None).await.0 == 200
        })
        .await;
        if !ok {
            panic!(
                "{what} did not answer 200 on {url} within {READY_TIMEOUT:?}\n{}",
                self.reports()
            );
        }
    }

    /// The logs of the processes, for failure messages.
    pub fn reports(&self) -> String {
        [&self.manager, &self.gateway]
            .into_iter()
            .flatten()
            .map(|p| p.report())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `http://127.0.0.1:<port>` of the gateway.
    pub fn gateway_url(&self) -> String {
        format!("http://{}", self.gateway_addr)
    }
    /// `http://127.0.0.1:<port>` of the manager.
    pub fn manager_url(&self) -> String {
        format!("http://{}", self.manager_addr)
    }
    /// The cluster's temp dir: `servers/<name>/` (manager `--data-dir`) and `logs/`.
    pub fn data_dir(&self) -> &Path {
        &self.root_path
    }
    /// `data_dir()/servers`, the manager's `--data-dir`.
    pub fn servers_dir(&self) -> PathBuf {
        self.root_path.join("servers")
    }
    /// The address shard server `name` listens on now, from the last "shard-server
    /// listening" line of its log (`None` before it logged one).
    pub fn server_addr_from_log(&self, name: &str) -> Option<String> {
        let log = self.servers_dir().join(name).join("server.log");
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .rev()
            .filter(|l| l.contains("shard-server listening"))
            .find_map(|l| l.split_once("addr=").map(|(_, rest)| rest))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
    }
    /// `data_dir()/logs` (manager.log, gateway.log).
    pub fn logs_dir(&self) -> PathBuf {
        self.root_path.join("logs")
    }
    pub fn nats(&self) -> &Nats {
        &self.nats
    }
    pub fn nats_mut(&mut self) -> &mut Nats {
        &mut self.nats
    }
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }
    /// The gateway process (kill/stop/cont/term it, read its log).
    pub fn gateway(&mut self) -> &mut Proc {
        self.gateway.as_mut().expect("gateway not running")
    }
    /// The manager's pid (for signals from code that only holds `&LocalCluster`).
    pub fn manager_pid(&self) -> i32 {
        self.manager.as_ref().expect("manager not running").pid()
    }

    /// The manager process.
    pub fn manager(&mut self) -> &mut Proc {
        self.manager.as_mut().expect("manager not running")
    }

    /// SIGKILLs the gateway (if still running) and starts a new one on the same port.
    pub async fn restart_gateway(&mut self) {
        if let Some(mut p) = self.gateway.take() {
            p.kill();
        }
        let addr = self.gateway_addr.clone();
        self.start_gateway(&addr).await;
    }

    /// SIGKILLs the manager (if still running; its shard servers keep running) and starts a
    /// new one on the same port with the same data dir.
    pub async fn restart_manager(&mut self) {
        if let Some(mut p) = self.manager.take() {
            p.kill();
        }
        let addr = self.manager_addr.clone();
        self.start_manager(&addr).await;
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Dropping a Proc kills it (and prints its log's tail when panicking).
        drop(self.gateway.take());
        drop(self.manager.take());
        // The manager is dead, so nothing respawns servers now; sweep twice in case one
        // was being started while the manager died.
        for _ in 0..2 {
            for pid in self.server_pids() {
                kill_foreign(pid);
            }
        }
        self.nats.kill();
        if thread::panicking() {
            if let Some(root) = self.root.take() {
                eprintln!(
                    "testkit: kept cluster dir {} (logs/, servers/<name>/)",
                    root.keep().display()
                );
            }
        }
    }
}
