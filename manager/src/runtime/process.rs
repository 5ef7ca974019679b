//! Shard servers as local child processes on free loopback ports, each with a data directory
//! `<data-dir>/<name>/` holding its databases, its log (`server.log`) and its pid
//! (`server.pid`, so a restarted manager or a test can find it).
//!
//! Children run in their own process group: a Ctrl-C in the terminal reaches the manager,
//! which stops them in order, and a manager killed with SIGKILL leaves them serving.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shardline::names::ServerName;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::Runtime;

pub struct ProcessRuntime {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    /// Extra arguments passed to every server (NATS URL, durability settings).
    pub args: Vec<String>,
    /// Environment set for every server: the NATS credentials. The credential variables of
    /// the manager's own environment are not inherited; a server gets these or none.
    pub env: Vec<(String, String)>,
}

impl ProcessRuntime {
    fn dir(&self, name: &ServerName) -> PathBuf {
        self.data_dir.join(name.as_str())
    }

    fn pid(&self, name: &ServerName) -> Option<Pid> {
        let text = std::fs::read_to_string(self.dir(name).join("server.pid")).ok()?;
        let pid = text.trim().parse::<i32>().ok()?;
        // A pid file may outlive its process (reboot, pid reuse): only trust it while the
        // process is still a shard-server.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains("shard-server")
            .then_some(Pid::from_raw(pid))
    }

    async fn stop(&self, name: &ServerName) {
        let Some(pid) = self.pid(name) else { return };
        if kill(pid, Signal::SIGKILL).is_ok() {
            // Wait until it is really gone so its port and files are free.
            for _ in 0..100 {
                if kill(pid, None).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let _ = std::fs::remove_file(self.dir(name).join("server.pid"));
    }
}

impl Runtime for ProcessRuntime {
    async fn spawn(&self, name: &ServerName) -> anyhow::Result<String> {
        // A stale process of the same name (hung, or from an earlier manager) must not keep
        // running beside the new one.
        self.stop(name).await;
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))?;
        let mut cmd = Command::new(&self.bin);
        for var in shardline::nats::ENV_VARS {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--name")
            .arg(name.as_str())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id().context("child has no pid")?;
        std::fs::write(dir.join("server.pid"), pid.to_string())?;
        let stdout = child.stdout.take().context("child has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("LISTENING ") {
                    return Ok(addr.trim().to_owned());
                }
            }
            anyhow::bail!(
                "server {name} exited before listening (see {}/server.log)",
                dir.display()
            )
        })
        .await
        .with_context(|| format!("server {name} did not start listening in time"))??;
        // Reap the child when it exits and keep draining its stdout.
        tokio::spawn(async move {
            while let Ok(Some(_)) = lines.next_line().await {}
            let _ = child.wait().await;
        });
        Ok(addr)
    }

    async fn is_alive(&self, name: &ServerName) -> bool {
        self.pid(name).is_some_and(|pid| kill(pid, None).is_ok())
    }

    async fn remove(&self, name: &ServerName) -> anyhow::Result<()> {
        self.stop(name).await;
        let dir = self.dir(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    async fn shutdown(&self) {
        let Ok(entries) = std::fs::read_dir(&self.data_dir) else {
            return;
        };
        for e in entries.flatten() {
            if let Some(name) = e
                .file_name()
                .to_str()
                .and_then(|n| ServerName::parse(n).ok())
            {
                if let Some(pid) = self.pid(&name) {
                    let _ = kill(pid, Signal::SIGTERM);
                }
            }
        }
    }
}
