//! [`BenchCluster`]: a fresh local shardline cluster for one measurement, in its own temp dir:
//! nats-server + manager (process runtime, which spawns the shard servers) + gateway, from
//! the binaries of `--bin-dir` (release ones by default).
//!
//! Processes are started and watched with testkit's process handling (`PR_SET_PDEATHSIG`,
//! logs, the `LISTENING` line, pid files); what is the bench's own is the binaries' place,
//! durable mode, the temp dir it may keep, and the pids it samples CPU and peak RSS of.
//! Everything is stopped on drop, which also runs on error, panic and Ctrl-C (the future
//! holding the cluster is dropped).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use testkit::pids::{cmdline_contains, kill_foreign, shard_server_pids};
use testkit::{Nats, NatsOptions, Proc};

/// How long a component may take to print its `LISTENING` line.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the binaries are and how to run them.
#[derive(Clone, Debug)]
pub struct BenchOpts {
    pub bin_dir: PathBuf,
    pub nats_bin: PathBuf,
    pub durable_conf: Option<PathBuf>,
    pub sqlite_full: bool,
    pub keep_dirs: bool,
    /// Appended to the manager's command line (the soak's retention settings).
    pub manager_args: Vec<String>,
}

pub struct BenchCluster {
    pub dir: PathBuf,
    pub nats_url: String,
    pub gateway_url: String,
    pub manager_url: String,
    nats: Option<Nats>,
    manager: Option<Proc>,
    gateway: Option<Proc>,
    keep: bool,
}

impl BenchCluster {
    /// Starts nats-server, manager and gateway (no /init yet).
    pub async fn start(opts: &BenchOpts, tag: &str) -> anyhow::Result<BenchCluster> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shardline-bench-{}-{tag}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("servers"))?;
        let mut c = BenchCluster {
            dir: dir.clone(),
            nats_url: String::new(),
            gateway_url: String::new(),
            manager_url: String::new(),
            nats: None,
            manager: None,
            gateway: None,
            keep: opts.keep_dirs,
        };

        // nats-server: a free port, JetStream store in the temp dir. Command-line flags
        // override the config file's port/host.
        let nats = Nats::try_start(NatsOptions {
            bin: Some(opts.nats_bin.clone()),
            extra_args: opts
                .durable_conf
                .iter()
                .flat_map(|conf| ["-c".to_owned(), conf.display().to_string()])
                .collect(),
            auth: None,
            dir: Some(dir.clone()),
        })
        .await
        .map_err(|e| anyhow!("nats-server did not start: {e}"))?;
        c.nats_url = nats.url();
        c.nats = Some(nats);

        let mut args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--nats-url".to_owned(),
            c.nats_url.clone(),
            "--data-dir".to_owned(),
            dir.join("servers").display().to_string(),
        ];
        if opts.sqlite_full {
            args.extend(["--sqlite-sync".to_owned(), "full".to_owned()]);
        }
        args.extend(opts.manager_args.iter().cloned());
        // SIGTERM if we are killed outright, so that the manager stops its shard servers.
        let (manager, maddr) = c.spawn(opts, "manager", args, libc::SIGTERM).await?;
        c.manager = Some(manager);
        c.manager_url = format!("http://{maddr}");

        let args = vec![
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--nats-url".to_owned(),
            c.nats_url.clone(),
            "--manager-url".to_owned(),
            format!("http://{maddr}"),
        ];
        let (gateway, gaddr) = c.spawn(opts, "gateway", args, libc::SIGKILL).await?;
        c.gateway = Some(gateway);
        c.gateway_url = format!("http://{gaddr}");
        Ok(c)
    }

    /// Starts `<bin_dir>/<name>`, logging to `<dir>/<name>.log`, and waits for its
    /// `LISTENING <addr>` line.
    async fn spawn(
        &self,
        opts: &BenchOpts,
        name: &str,
        args: Vec<String>,
        death_signal: i32,
    ) -> anyhow::Result<(Proc, String)> {
        let mut p = Proc::builder(name, opts.bin_dir.join(name))
            .args(args)
            .log_dir(&self.dir)
            .death_signal(death_signal)
            .try_spawn()
            .with_context(|| format!("starting {name}"))?;
        let addr = p
            .try_listening(LISTEN_TIMEOUT)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        Ok((p, addr))
    }

    /// POST /init and wait for /readyz.
    pub async fn init(&self, http: &reqwest::Client, body: &Value) -> anyhow::Result<()> {
        let r = http
            .post(format!("{}/init", self.gateway_url))
            .timeout(Duration::from_secs(180))
            .json(body)
            .send()
            .await
            .context("POST /init")?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if status != 200 {
            bail!(
                "/init answered {status}: {text} (logs in {})",
                self.dir.display()
            );
        }
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = http
                .get(format!("{}/readyz", self.gateway_url))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("gateway not ready 60 s after /init");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every component: (name, pid), shard servers by their pid files.
    pub fn component_pids(&self) -> Vec<(String, u32)> {
        let nats = self.nats.as_ref().and_then(Nats::proc);
        let mut out: Vec<(String, u32)> = [
            ("nats-server", nats),
            ("manager", self.manager.as_ref()),
            ("gateway", self.gateway.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, p)| Some((name.to_owned(), p?.pid() as u32)))
        .collect();
        out.extend(
            shard_server_pids(&self.dir.join("servers"))
                .into_iter()
                .map(|(name, pid)| (name, pid as u32)),
        );
        out
    }

    /// [`BenchCluster::component_pids`] as a function that can be called from another task
    /// (a respawned shard server is found by its new pid file).
    pub fn component_pids_fn(&self) -> impl Fn() -> Vec<(String, u32)> + Send + 'static {
        let fixed: Vec<(String, u32)> = self
            .component_pids()
            .into_iter()
            .filter(|(n, _)| matches!(n.as_str(), "nats-server" | "manager" | "gateway"))
            .collect();
        let servers = self.dir.join("servers");
        move || {
            let mut out = fixed.clone();
            out.extend(
                shard_server_pids(&servers)
                    .into_iter()
                    .map(|(name, pid)| (name, pid as u32)),
            );
            out
        }
    }

    /// The pid of shard server `name`, from its pid file.
    pub fn server_pid(&self, name: &str) -> Option<i32> {
        testkit::pids::read_pid_file(&self.dir.join("servers").join(name).join("server.pid"))
    }

    /// Stops everything: gateway, manager (SIGTERM stops its shard servers), any shard
    /// server still alive (by pid file), nats-server. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            g.term_within(Duration::from_secs(3));
        }
        let servers = shard_server_pids(&self.dir.join("servers"));
        if let Some(mut m) = self.manager.take() {
            m.term_within(Duration::from_secs(10));
        }
        let dir = self.dir.display().to_string();
        for (_, pid) in servers {
            // Checked again: the pid may have been reused since the manager stopped.
            if cmdline_contains(pid, "shard-server") || cmdline_contains(pid, &dir) {
                kill_foreign(pid);
            }
        }
        if let Some(mut n) = self.nats.take() {
            n.stop();
        }
    }

    /// Stops everything and removes the temp dir (unless asked to keep it).
    pub fn finish(mut self) {
        self.stop();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
            self.keep = true; // nothing left to report in Drop
            self.dir = PathBuf::new();
        }
    }
}

impl Drop for BenchCluster {
    /// Runs on error, panic and Ctrl-C too: stop everything, keep the logs.
    fn drop(&mut self) {
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            eprintln!("cluster logs and data kept in {}", self.dir.display());
        }
    }
}
