//! A fresh local shardline cluster in its own temp dir: nats-server + manager (process
//! runtime, which spawns the shard servers) + gateway. Everything is stopped on drop, which
//! also runs on error, panic and Ctrl-C (the future holding the cluster is dropped).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::procstat;

/// Where the binaries are and how to run them.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub bin_dir: PathBuf,
    pub nats_bin: PathBuf,
    pub durable_conf: Option<PathBuf>,
    pub sqlite_full: bool,
    pub keep_dirs: bool,
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nats_url: String,
    pub gateway_url: String,
    nats: Option<Child>,
    manager: Option<Child>,
    gateway: Option<Child>,
    keep: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Makes a child die with us if we are killed outright: SIGTERM for the manager (so it
/// stops its shard servers), SIGKILL for the others.
fn set_pdeathsig(cmd: &mut Command, sig: libc::c_int) {
    // SAFETY: prctl is async-signal-safe; called between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0);
            Ok(())
        });
    }
}

/// Spawns `cmd` with stdout piped and waits for its `LISTENING <addr>` line; the rest of
/// stdout is drained by a thread. stderr goes to `log`.
fn spawn_listening(mut cmd: Command, log: &Path, what: &str) -> anyhow::Result<(Child, String)> {
    let logf = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(logf));
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => Ok((child, addr)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not print LISTENING within 30 s (log: {})",
                log.display()
            )
        }
    }
}

fn signal_and_wait(child: &mut Child, sig: libc::c_int, wait: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    let until = Instant::now() + wait;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Cluster {
    /// Starts nats-server, manager and gateway (no /init yet).
    pub fn start(opts: &ClusterOpts, tag: &str) -> anyhow::Result<Cluster> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shardline-bench-{}-{tag}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("nats"))?;
        std::fs::create_dir_all(dir.join("servers"))?;
        let mut c = Cluster {
            dir: dir.clone(),
            nats_url: String::new(),
            gateway_url: String::new(),
            nats: None,
            manager: None,
            gateway: None,
            keep: opts.keep_dirs,
        };

        // nats-server: a free port, JetStream store in the temp dir. Command-line flags
        // override the config file's port/host.
        let port = free_port()?;
        let mut cmd = Command::new(&opts.nats_bin);
        if let Some(conf) = &opts.durable_conf {
            cmd.arg("-c").arg(conf);
        }
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("nats"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("nats.log"))?));
        set_pdeathsig(&mut cmd, libc::SIGKILL);
        c.nats = Some(
            cmd.spawn()
                .with_context(|| format!("starting {}", opts.nats_bin.display()))?,
        );
        let until = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > until {
                bail!(
                    "nats-server did not listen on {port} (log: {}/nats.log)",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        c.nats_url = format!("nats://127.0.0.1:{port}");

        let mut cmd = Command::new(opts.bin_dir.join("manager"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--nats-url",
            &c.nats_url,
            "--data-dir",
        ])
        .arg(dir.join("servers"));
        if opts.sqlite_full {
            cmd.args(["--sqlite-sync", "full"]);
        }
        set_pdeathsig(&mut cmd, libc::SIGTERM);
        let (child, maddr) = spawn_listening(cmd, &dir.join("manager.log"), "manager")?;
        c.manager = Some(child);

        let mut cmd = Command::new(opts.bin_dir.join("gateway"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--nats-url",
            &c.nats_url,
            "--manager-url",
            &format!("http://{maddr}"),
        ]);
        set_pdeathsig(&mut cmd, libc::SIGKILL);
        let (child, gaddr) = spawn_listening(cmd, &dir.join("gateway.log"), "gateway")?;
        c.gateway = Some(child);
        c.gateway_url = format!("http://{gaddr}");
        Ok(c)
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

    /// Shard-server pids from `<dir>/servers/<name>/server.pid`.
    pub fn server_pids(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.dir.join("servers")) else {
            return out;
        };
        for e in rd.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path().join("server.pid")) else {
                continue;
            };
            let Ok(pid) = text.trim().parse::<u32>() else {
                continue;
            };
            if procstat::pid_matches(pid, Path::new("shard-server")) {
                out.push((e.file_name().to_string_lossy().into_owned(), pid));
            }
        }
        out.sort();
        out
    }

    /// Every component: (name, pid).
    pub fn component_pids(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for (name, child) in [
            ("nats-server", &self.nats),
            ("manager", &self.manager),
            ("gateway", &self.gateway),
        ] {
            if let Some(c) = child {
                out.push((name.to_owned(), c.id()));
            }
        }
        out.extend(self.server_pids());
        out
    }

    /// Stops everything: gateway, manager (SIGTERM stops its shard servers), any shard
    /// server still alive (by pid file), nats-server. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            signal_and_wait(&mut g, libc::SIGTERM, Duration::from_secs(3));
        }
        let servers = self.server_pids();
        if let Some(mut m) = self.manager.take() {
            signal_and_wait(&mut m, libc::SIGTERM, Duration::from_secs(10));
        }
        for (_, pid) in servers {
            if procstat::pid_matches(pid, &self.dir)
                || procstat::pid_matches(pid, Path::new("shard-server"))
            {
                // SAFETY: kill(2) on a pid whose command line we just checked.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if let Some(mut n) = self.nats.take() {
            signal_and_wait(&mut n, libc::SIGTERM, Duration::from_secs(5));
        }
    }
}

impl Cluster {
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

impl Drop for Cluster {
    /// Runs on error, panic and Ctrl-C too: stop everything, keep the logs.
    fn drop(&mut self) {
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            eprintln!("cluster logs and data kept in {}", self.dir.display());
        }
    }
}
