//! `make run`'s runner (`scripts/run.sh`, run as it is) keeps the data path up: the manager
//! is killed with SIGKILL and writes keep working while it is away, then the runner restarts
//! it (a new pid answers `/healthz`) without touching nats-server or the shard servers; the
//! gateway is killed and restarted the same way; SIGTERM to the runner stops every process it
//! started, and nothing is restarted while it stops.
//!
//! `make stop` (`scripts/stop.sh`) from elsewhere stops the runner first, so nothing is
//! restarted behind it.
//!
//! The runner uses the debug binaries `make test` built (`SHARDLINE_BIN_DIR`, no cargo
//! build), the test's nats-server (`NATS_SERVER_BIN`), free ports and a temp run dir.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::pids::{cmdline_contains, kill_foreign, pids_naming, read_pid_file};
use testkit::{
    bin, free_port, json, nats_server_bin, pid_alive, signal, wait_until, workspace_root, Proc,
    Value,
};

/// First restart delay given to the runner: long enough that the writes below certainly
/// happen while the manager is away.
const BACKOFF_MS: u64 = 4000;
const UP_TIMEOUT: Duration = Duration::from_secs(30);

/// The runner and everything it started. Dropping it (also on a panic) kills the runner
/// first, so that it restarts nothing, then every process it started: by the pid files in its
/// run dir, and by scanning `/proc` for command lines naming the run dir or the gateway's
/// port. Components run in their own sessions, so each is killed with its process group.
struct Runner {
    proc: Proc,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    gateway_port: u16,
    manager_port: u16,
    http: reqwest::Client,
}

impl Runner {
    fn start() -> Runner {
        let dir = tempfile::Builder::new()
            .prefix("shardline-runner-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        let bin_dir = bin("manager")
            .parent()
            .expect("binary directory")
            .to_path_buf();
        // The other binaries must be there too (run.sh checks as well, less helpfully).
        bin("gateway");
        bin("shard-server");
        let (nats_port, manager_port, gateway_port) = (free_port(), free_port(), free_port());
        let proc = Proc::builder("runner", "bash")
            .arg(workspace_root().join("scripts/run.sh"))
            .env("SHARDLINE_RUN_DIR", &root)
            .env("SHARDLINE_BIN_DIR", &bin_dir)
            .env("NATS_SERVER_BIN", nats_server_bin())
            .env("SHARDLINE_NATS_PORT", nats_port.to_string())
            .env("SHARDLINE_MANAGER_PORT", manager_port.to_string())
            .env("SHARDLINE_GATEWAY_PORT", gateway_port.to_string())
            .env("SHARDLINE_RESTART_BACKOFF_MS", BACKOFF_MS.to_string())
            .log_dir(root.join("test"))
            .spawn();
        Runner {
            proc,
            dir: Some(dir),
            root,
            gateway_port,
            manager_port,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
        }
    }

    fn gateway(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway_port)
    }

    fn manager(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.manager_port)
    }

    /// The pid in `<run dir>/run/<name>.pid`, if any.
    fn pid(&self, name: &str) -> Option<i32> {
        read_pid_file(&self.root.join("run").join(format!("{name}.pid")))
    }

    /// `(server, pid)` of every shard server with a pid file.
    fn servers(&self) -> Vec<(String, i32)> {
        let mut out: Vec<(String, i32)> = std::fs::read_dir(self.root.join("servers"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid = read_pid_file(&e.path().join("server.pid"))?;
                Some((e.file_name().into_string().ok()?, pid))
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until the runner has started everything (it says so once the gateway answers
    /// `/healthz`, and supervises from then on); panics with the runner's log otherwise.
    async fn wait_up(&self) {
        let up = wait_until(Duration::from_secs(60), || async {
            let said = self.proc.stdout_lines();
            said.iter().any(|l| l.contains("shardline is running"))
                && self.status(&self.gateway("/healthz")).await == 200
        })
        .await;
        assert!(
            up,
            "the runner did not bring the gateway up\n{}",
            self.proc.log()
        );
    }

    async fn status(&self, url: &str) -> u16 {
        testkit::http::send(&self.http, testkit::Method::GET, url, None)
            .await
            .0
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        testkit::http::send(
            &self.http,
            testkit::Method::POST,
            &self.gateway(path),
            Some(body),
        )
        .await
    }

    async fn write(&self, key: i64) -> (u16, Value) {
        let row = json!({"data": [{"Stud_id": key, "Stud_name": format!("k{key}"), "Stud_marks": key % 100}]});
        self.post("/write", &row).await
    }

    /// Waits until `<name>.pid` names a live process other than `old` that answers `url`;
    /// returns its pid. Panics (with the runner's log) after [`UP_TIMEOUT`].
    async fn wait_restarted(&self, name: &str, old: i32, url: &str) -> i32 {
        let new = Cell::new(None);
        let up = wait_until(UP_TIMEOUT, || async {
            new.set(self.pid(name).filter(|&p| p != old && pid_alive(p)));
            new.get().is_some() && self.status(url).await == 200
        })
        .await;
        assert!(
            up,
            "the runner did not restart {name} (pid {old} killed) within {UP_TIMEOUT:?}\n{}",
            self.proc.log()
        );
        new.get().expect("checked above")
    }

    /// Every live process the runner may have started: by pid file and by command line.
    fn leftovers(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = ["nats", "manager", "gateway"]
            .iter()
            .filter_map(|n| self.pid(n))
            .chain(self.servers().into_iter().map(|(_, p)| p))
            .filter(|&p| {
                pid_alive(p)
                    && ["nats-server", "manager", "gateway", "shard-server"]
                        .iter()
                        .any(|prog| cmdline_contains(p, prog))
            })
            .collect();
        pids.extend(pids_naming(&self.root.display().to_string()));
        pids.extend(pids_naming(&format!("0.0.0.0:{}", self.gateway_port)));
        pids.retain(|&p| p != self.proc.pid());
        pids.sort();
        pids.dedup();
        pids
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.proc.kill();
        for _ in 0..2 {
            for pid in self.leftovers() {
                kill_foreign(pid);
            }
        }
        if std::thread::panicking() {
            for name in ["nats", "manager", "gateway"] {
                let log = self.root.join("logs").join(format!("{name}.log"));
                eprintln!(
                    "--- {name}.log (last 30 lines)\n{}",
                    testkit::pids::tail(&log, 30)
                );
            }
            if let Some(dir) = self.dir.take() {
                eprintln!("testkit: kept run dir {}", dir.keep().display());
            }
        }
    }
}

fn log_mentions(log: &str, what: &str) -> bool {
    log.lines().any(|l| l.contains(what))
}

#[tokio::test(flavor = "multi_thread")]
async fn runner_restarts_manager_and_gateway_and_stops_everything() {
    let mut r = Runner::start();
    let up = wait_until(Duration::from_secs(60), || async {
        r.status(&r.gateway("/healthz")).await == 200
    })
    .await;
    assert!(
        up,
        "the runner did not bring the gateway up\n{}",
        r.proc.log()
    );

    let (s, body) = r.post("/init", &testkit::workload("a1")).await;
    assert_eq!(s, 200, "POST /init: {body}");
    let ready = wait_until(Duration::from_secs(60), || async {
        r.status(&r.gateway("/readyz")).await == 200
    })
    .await;
    assert!(ready, "the cluster did not become ready after /init");
    let (s, body) = r.write(1).await;
    assert_eq!(s, 200, "a write before any fault: {body}");

    let nats = r.pid("nats").expect("nats pid file");
    let servers = r.servers();
    assert!(!servers.is_empty(), "no shard server pid files after /init");

    // The manager dies; the data path does not need it.
    let manager = r.pid("manager").expect("manager pid file");
    assert!(signal(manager, libc::SIGKILL));
    let away = wait_until(Duration::from_secs(5), || async {
        r.status(&r.manager("/healthz")).await == 0
    })
    .await;
    assert!(away, "the manager still answers after SIGKILL");
    // Keys spread over the four shards of A1 ([0, 16384)).
    let keys: Vec<i64> = (0..8).map(|i| 100 + i * 2048).collect();
    for &k in &keys {
        let (s, body) = r.write(k).await;
        assert_eq!(s, 200, "write of {k} while the manager is away: {body}");
    }
    assert_eq!(
        r.status(&r.manager("/healthz")).await,
        0,
        "the manager came back before the writes were done; they prove nothing"
    );

    let new_manager = r
        .wait_restarted("manager", manager, &r.manager("/healthz"))
        .await;
    let log = r.proc.log();
    assert!(
        log_mentions(
            &log,
            &format!("manager (pid {manager}) exited (killed by signal 9")
        ),
        "the runner did not log the manager's exit status\n{log}"
    );
    assert_eq!(r.pid("nats"), Some(nats), "nats-server was restarted");
    assert!(pid_alive(nats), "nats-server died with the manager");
    for (server, pid) in &servers {
        assert!(
            pid_alive(*pid),
            "{server} (pid {pid}) died with the manager"
        );
    }
    assert_eq!(r.servers(), servers, "shard servers were restarted");
    println!("manager {manager} killed; restarted as {new_manager}");

    // The gateway dies and comes back; writes go through the new one.
    let gateway = r.pid("gateway").expect("gateway pid file");
    assert!(signal(gateway, libc::SIGKILL));
    let new_gateway = r
        .wait_restarted("gateway", gateway, &r.gateway("/healthz"))
        .await;
    let last = RefCell::new((0, Value::Null));
    let wrote = wait_until(UP_TIMEOUT, || async {
        let answer = r.write(9).await;
        let ok = answer.0 == 200;
        *last.borrow_mut() = answer;
        ok
    })
    .await;
    assert!(
        wrote,
        "no write through the restarted gateway: {:?}",
        last.borrow()
    );
    let log = r.proc.log();
    assert!(
        log_mentions(
            &log,
            &format!("gateway (pid {gateway}) exited (killed by signal 9")
        ),
        "the runner did not log the gateway's exit status\n{log}"
    );
    println!("gateway {gateway} killed; restarted as {new_gateway}");

    // Every acknowledged row is there.
    let rows = RefCell::new(Value::Null);
    let all = wait_until(Duration::from_secs(10), || async {
        let (s, body) = r
            .post("/read", &json!({"Stud_id": {"low": 0, "high": 16383}}))
            .await;
        let have: Vec<i64> = body["data"]
            .as_array()
            .map(|d| d.iter().filter_map(|row| row["Stud_id"].as_i64()).collect())
            .unwrap_or_default();
        *rows.borrow_mut() = body;
        s == 200 && [1, 9].iter().chain(&keys).all(|k| have.contains(k))
    })
    .await;
    assert!(all, "acknowledged rows missing: {}", rows.borrow());

    // A deliberate stop stops everything, once.
    let mut started = vec![nats, manager, new_manager, gateway, new_gateway];
    started.extend(r.servers().into_iter().map(|(_, p)| p));
    let status = tokio::task::block_in_place(|| r.proc.term_within(Duration::from_secs(60)));
    let log = r.proc.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "the runner did not exit 0 on SIGTERM: {status:?}\n{log}"
    );
    let after_stop = log.split("run: stopping").nth(1).unwrap_or_default();
    assert!(
        !after_stop.contains("restarting"),
        "the runner restarted something while stopping\n{log}"
    );
    let alive: Vec<i32> = started.into_iter().filter(|&p| pid_alive(p)).collect();
    assert!(
        alive.is_empty(),
        "still running after the runner stopped: {alive:?}\n{log}"
    );
    let left = r.leftovers();
    assert!(
        left.is_empty(),
        "processes of the run dir still running: {left:?}"
    );
    assert!(
        !Path::new(&r.root.join("run/runner.pid")).exists(),
        "the runner left its pid file"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_script_stops_the_runner_and_everything() {
    let mut r = Runner::start();
    r.wait_up().await;
    let started: Vec<i32> = ["nats", "manager", "gateway"]
        .iter()
        .map(|n| r.pid(n).unwrap_or_else(|| panic!("no {n} pid file")))
        .collect();
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("bash")
            .arg(workspace_root().join("scripts/stop.sh"))
            .env("SHARDLINE_RUN_DIR", &r.root)
            .output()
            .expect("run stop.sh")
    });
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stop.sh failed: {said}");
    let status = tokio::task::block_in_place(|| r.proc.wait_exit(Duration::from_secs(30)));
    let log = r.proc.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "the runner did not exit 0 after stop.sh: {status:?}\n{log}"
    );
    assert!(
        !log.contains("restarting"),
        "the runner restarted something while stop.sh stopped it\n{log}"
    );
    let alive: Vec<i32> = started.into_iter().filter(|&p| pid_alive(p)).collect();
    assert!(alive.is_empty(), "still running after stop.sh: {alive:?}");
    assert!(r.leftovers().is_empty(), "processes of the run dir left");
}
