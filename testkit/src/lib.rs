//! Test support for shardline integration tests.
//!
//! Everything here starts *real* processes: a pinned `nats-server` (see
//! `scripts/install-nats.sh`) and the workspace's own `manager` / `gateway` binaries (build
//! them with `cargo build --workspace` first; `make test` does both).
//!
//! ```ignore
//! use testkit::{json, Cluster};
//! use std::time::Duration;
//!
//! #[tokio::test(flavor = "multi_thread")]
//! async fn write_then_read() {
//!     let c = Cluster::start().await;
//!     c.init(testkit::workload("a1")).await;
//!     let (status, body) = c.post("/write", json!({"data": [{"Stud_id": 1, "Stud_name": "A", "Stud_marks": 5}]})).await;
//!     assert_eq!(status, 200, "{body}");
//!     assert!(c.wait_until(Duration::from_secs(10), || async {
//!         c.post("/read", json!({"Stud_id": {"low": 0, "high": 10}})).await.1["data"].as_array().map_or(false, |d| d.len() == 1)
//!     }).await);
//! }
//! ```
//!
//! Cleanup: every process started here is killed when its owner ([`Proc`], [`Nats`],
//! [`Cluster`]) is dropped, and additionally gets `PR_SET_PDEATHSIG = SIGKILL`, so it dies
//! with the test process even if that is killed outright (e.g. by a nextest timeout).
//! Shard servers are children of the manager, not of the test: [`Cluster`]'s `Drop` kills
//! them by the pid files under its data dir (and by scanning `/proc` for processes whose
//! command line names that data dir). When a test panics, the temp dirs holding logs and
//! data are kept and their paths printed, with the tail of each process's log.

use std::borrow::Borrow;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::future::Future;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub use reqwest::Method;
pub use serde_json::{json, Value};
use tempfile::TempDir;

/// How long to wait for a process to print `LISTENING <addr>`.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for something to become healthy/ready after start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two polls in the wait helpers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// The Cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives inside the workspace")
        .to_path_buf()
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The `nats-server` binary: `$NATS_SERVER_BIN`, else `<workspace>/.tools/bin/nats-server`.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = env_path("NATS_SERVER_BIN") {
        assert!(
            p.is_file(),
            "NATS_SERVER_BIN={} does not exist; run `scripts/install-nats.sh`",
            p.display()
        );
        return p;
    }
    let p = workspace_root().join(".tools/bin/nats-server");
    assert!(
        p.is_file(),
        "nats-server not found at {}: run `scripts/install-nats.sh` (or `make test`), \
         or set NATS_SERVER_BIN",
        p.display()
    );
    p
}

/// A workspace binary: `<workspace>/target/debug/<name>` (or `$CARGO_TARGET_DIR/debug`, or
/// `$SHARDLINE_BIN_DIR/<name>`). Panics if it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let dir = env_path("SHARDLINE_BIN_DIR").unwrap_or_else(|| {
        env_path("CARGO_TARGET_DIR")
            .map(|t| {
                if t.is_absolute() {
                    t
                } else {
                    workspace_root().join(t)
                }
            })
            .unwrap_or_else(|| workspace_root().join("target"))
            .join("debug")
    });
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "binary `{name}` not found at {}: run `cargo build --workspace` first \
         (or set SHARDLINE_BIN_DIR)",
        p.display()
    );
    p
}

/// `<workspace>/workloads/<name>.init.json`, parsed (e.g. `workload("a1")`).
pub fn workload(name: &str) -> Value {
    let p = workspace_root()
        .join("workloads")
        .join(format!("{name}.init.json"));
    let text = fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("cannot read workload {}: {e}", p.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("workload {} is not valid JSON: {e}", p.display()))
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// Polls `f` until it returns true (→ `true`) or `timeout` passes (→ `false`).
/// `f` is always tried at least once, and once more at the deadline.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Like [`wait_until`], but panics with `what` if the deadline passes.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !wait_until(timeout, f).await {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

// ---------------------------------------------------------------------------------------
// Signals and pids
// ---------------------------------------------------------------------------------------

/// Sends `sig` to `pid`; true if the signal was delivered.
pub fn signal(pid: i32, sig: i32) -> bool {
    pid > 0 && unsafe { libc::kill(pid, sig) } == 0
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) S ..."; comm may contain spaces/parens, so split at the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn cmdline(pid: i32) -> Option<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
}

/// SIGKILLs `pid` (and its process group when it leads one), then waits briefly for it to
/// disappear. Used for processes that are not our children (shard servers).
fn kill_foreign(pid: i32) {
    if pid <= 0 || pid == std::process::id() as i32 {
        return;
    }
    if unsafe { libc::getpgid(pid) } == pid {
        signal(-pid, libc::SIGKILL);
    }
    signal(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(3);
    while pid_alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
}

fn read_pid_file(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Spawning
// ---------------------------------------------------------------------------------------

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns every child from one long-lived thread: `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked the child exits, so spawning from a tokio blocking-pool thread
/// (which exits when idle) would kill the child at a random moment.
fn spawn_child(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start testkit spawner thread");
        Mutex::new(tx)
    });
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("testkit spawner thread is gone");
    reply_rx.recv().expect("testkit spawner thread is gone")
}

// ---------------------------------------------------------------------------------------
// Proc
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Stdout {
    lines: Mutex<Vec<String>>,
    closed: AtomicBool,
}

/// Builder for [`Proc`]; see [`Proc::builder`].
pub struct ProcBuilder {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log_dir: Option<PathBuf>,
}

impl ProcBuilder {
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }
    pub fn envs<I, K, V>(mut self, envs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.envs
            .extend(envs.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }
    /// Log to `<dir>/<name>.log` (appended to, so a restarted process keeps one log)
    /// instead of a fresh temp dir owned by the `Proc`.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Starts the process. Panics if it cannot be started.
    pub fn spawn(self) -> Proc {
        let (own_dir, dir) = match self.log_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("shardline-{}-", self.name))
                    .tempdir()
                    .expect("create log temp dir");
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        fs::create_dir_all(&dir).expect("create log dir");
        let log_path = dir.join(format!("{}.log", self.name));
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()))
        };
        let mut header = open_log();
        let _ = writeln!(
            header,
            "=== testkit: starting {} {:?}",
            self.program.display(),
            self.args
        );

        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(open_log()));
        let mut child = spawn_child(cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        let pid = child.id() as i32;

        // Read stdout (for the LISTENING line) and copy it into the log too.
        let stdout = Arc::new(Stdout::default());
        let pipe = child.stdout.take().expect("piped stdout");
        let state = Arc::clone(&stdout);
        let mut log = open_log();
        thread::Builder::new()
            .name(format!("testkit-stdout-{}", self.name))
            .spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log, "[stdout] {line}");
                    state
                        .lines
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(line);
                }
                state.closed.store(true, Ordering::SeqCst);
            })
            .expect("start stdout reader thread");

        Proc {
            name: self.name,
            child,
            pid,
            status: None,
            log_path,
            own_log_dir: own_dir,
            stdout,
        }
    }
}

/// A child process of the test: stdout captured (see [`Proc::listening`]), stderr (and a
/// copy of stdout) in a log file. SIGKILLed on drop.
pub struct Proc {
    name: String,
    child: Child,
    pid: i32,
    status: Option<ExitStatus>,
    log_path: PathBuf,
    own_log_dir: Option<TempDir>,
    stdout: Arc<Stdout>,
}

impl Proc {
    /// Builder: `Proc::builder("gateway", bin("gateway")).args([..]).env(k, v).spawn()`.
    pub fn builder(name: &str, program: impl Into<PathBuf>) -> ProcBuilder {
        ProcBuilder {
            name: name.to_string(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            log_dir: None,
        }
    }

    /// Shorthand for `Proc::builder(name, program).args(args).spawn()`.
    pub fn spawn<I, S>(name: &str, program: impl Into<PathBuf>, args: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self::builder(name, program).args(args).spawn()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// The log file (stderr, plus stdout lines prefixed `[stdout]`).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
    /// Lines printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for the `LISTENING <host:port>` line and returns `host:port`. Panics (with the
    /// log's tail) if the process exits first or `timeout` passes.
    pub async fn listening(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .stdout_lines()
                .iter()
                .find_map(|l| l.strip_prefix("LISTENING ").map(|a| a.trim().to_string()));
            if let Some(addr) = found {
                return addr;
            }
            if !self.is_running() || self.stdout.closed.load(Ordering::SeqCst) {
                panic!(
                    "{} exited before printing `LISTENING <addr>` ({:?})\n{}",
                    self.name,
                    self.status,
                    self.report()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} printed no `LISTENING <addr>` within {timeout:?}\n{}",
                    self.name,
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True while the process has not exited (a SIGSTOPped process is running).
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.status = Some(st);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// The exit status, if it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.status
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.status
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.is_running() {
            signal(self.pid, libc::SIGKILL);
            if let Ok(st) = self.child.wait() {
                self.status = Some(st);
            }
        }
    }

    /// SIGTERM (plus SIGCONT in case it is stopped) and wait up to 10 s for it to exit, then
    /// SIGKILL. Returns the exit status.
    pub fn term(&mut self) -> Option<ExitStatus> {
        if self.is_running() {
            signal(self.pid, libc::SIGTERM);
            signal(self.pid, libc::SIGCONT);
            if self.wait_exit(Duration::from_secs(10)).is_none() {
                eprintln!("testkit: {} ignored SIGTERM for 10s; killing", self.name);
                self.kill();
            }
        }
        self.status
    }

    /// SIGSTOP: freeze the process (it keeps its sockets; peers just see silence).
    pub fn stop(&self) {
        signal(self.pid, libc::SIGSTOP);
    }

    /// SIGCONT: resume after [`Proc::stop`].
    pub fn cont(&self) {
        signal(self.pid, libc::SIGCONT);
    }

    /// A failure report: log path and its last lines.
    pub fn report(&self) -> String {
        format!(
            "--- {} (pid {}) log: {} (last 40 lines)\n{}\n---",
            self.name,
            self.pid,
            self.log_path.display(),
            tail(&self.log_path, 40)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("{}", self.report());
            if let Some(dir) = self.own_log_dir.take() {
                eprintln!("testkit: kept {}", dir.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Nats
// ---------------------------------------------------------------------------------------

/// Credentials a test nats-server requires (see [`Nats::start_with_auth`]), and how each
/// kind of client is given them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsCreds {
    /// `nats-server --user <user> --pass <password>`
    UserPassword { user: String, password: String },
    /// `nats-server --auth <token>`
    Token(String),
}

impl NatsCreds {
    pub fn user_password(user: &str, password: &str) -> NatsCreds {
        NatsCreds::UserPassword {
            user: user.into(),
            password: password.into(),
        }
    }
    pub fn token(token: &str) -> NatsCreds {
        NatsCreds::Token(token.into())
    }
    /// The nats-server arguments that require these credentials.
    pub fn server_args(&self) -> Vec<String> {
        match self {
            NatsCreds::UserPassword { user, password } => {
                vec![
                    "--user".into(),
                    user.clone(),
                    "--pass".into(),
                    password.clone(),
                ]
            }
            NatsCreds::Token(t) => vec!["--auth".into(), t.clone()],
        }
    }
    /// The environment that gives a shardline binary these credentials.
    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            NatsCreds::UserPassword { user, password } => vec![
                ("SHARDLINE_NATS_USER".into(), user.clone()),
                ("SHARDLINE_NATS_PASSWORD".into(), password.clone()),
            ],
            NatsCreds::Token(t) => vec![("SHARDLINE_NATS_TOKEN".into(), t.clone())],
        }
    }
    /// The command-line flags that give a shardline binary these credentials.
    pub fn flags(&self) -> Vec<String> {
        match self {
            NatsCreds::UserPassword { user, password } => vec![
                "--nats-user".into(),
                user.clone(),
                "--nats-password".into(),
                password.clone(),
            ],
            NatsCreds::Token(t) => vec!["--nats-token".into(), t.clone()],
        }
    }
    /// `options` with these credentials (for a test's own NATS client).
    pub fn apply(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        match self {
            NatsCreds::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsCreds::Token(t) => options.token(t.clone()),
        }
    }
}

/// A private single-node nats-server with JetStream on a free loopback port and a temp
/// store dir, optionally requiring credentials. Killed on drop.
pub struct Nats {
    proc: Option<Proc>,
    port: u16,
    bin: PathBuf,
    extra_args: Vec<String>,
    auth: Option<NatsCreds>,
    store: Option<TempDir>,
    store_path: PathBuf,
    logs: Option<TempDir>,
    logs_path: PathBuf,
}

impl Nats {
    /// Starts `nats-server -js -a 127.0.0.1 -p <free port> -sd <temp dir>` and waits until
    /// JetStream answers.
    pub async fn start() -> Nats {
        Self::start_with_args(&[]).await
    }

    /// As [`Nats::start`], with extra nats-server arguments (e.g.
    /// `["-c", "<workspace>/nats/durable.conf"]`; `-a`, `-p`, `-sd` and `-js` are always
    /// given on the command line and win over the config file).
    pub async fn start_with_args(extra_args: &[&str]) -> Nats {
        Self::start_with(extra_args, None).await
    }

    /// As [`Nats::start`], requiring `creds` from every client (`--user`/`--pass` or
    /// `--auth`). Connect with [`Nats::connect`], or apply [`Nats::auth`] yourself.
    pub async fn start_with_auth(creds: NatsCreds) -> Nats {
        Self::start_with(&[], Some(creds)).await
    }

    /// Extra nats-server arguments and optional credentials.
    pub async fn start_with(extra_args: &[&str], auth: Option<NatsCreds>) -> Nats {
        let store = tempfile::Builder::new()
            .prefix("shardline-nats-store-")
            .tempdir()
            .expect("create nats store dir");
        let logs = tempfile::Builder::new()
            .prefix("shardline-nats-log-")
            .tempdir()
            .expect("create nats log dir");
        let mut nats = Nats {
            proc: None,
            port: 0,
            bin: nats_server_bin(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            auth,
            store_path: store.path().to_path_buf(),
            store: Some(store),
            logs_path: logs.path().to_path_buf(),
            logs: Some(logs),
        };
        // A port picked by free_port() can be taken by a parallel test before nats binds it.
        for attempt in 1..=5 {
            nats.port = free_port();
            match nats.launch(Duration::from_secs(30)).await {
                Ok(()) => return nats,
                Err(e) if attempt < 5 && e.contains("address already in use") => continue,
                Err(e) => panic!("nats-server did not start: {e}"),
            }
        }
        unreachable!()
    }

    async fn launch(&mut self, timeout: Duration) -> Result<(), String> {
        let port = self.port.to_string();
        let store = self.store_path.display().to_string();
        let mut args: Vec<String> = self.extra_args.clone();
        args.extend(self.auth.iter().flat_map(NatsCreds::server_args));
        args.extend(
            ["-js", "-a", "127.0.0.1", "-p", &port, "-sd", &store]
                .iter()
                .map(|s| s.to_string()),
        );
        let mut proc = Proc::builder("nats-server", &self.bin)
            .args(args)
            .log_dir(&self.logs_path)
            .spawn();
        let url = self.url();
        let deadline = Instant::now() + timeout;
        loop {
            if !proc.is_running() {
                let log = tail(proc.log_path(), 20);
                let err = format!(
                    "nats-server exited ({:?})\n{}",
                    proc.exit_status(),
                    proc.report()
                );
                drop(proc);
                return Err(if log.contains("address already in use") {
                    format!("address already in use: {err}")
                } else {
                    err
                });
            }
            if jetstream_ready(&url, self.auth.as_ref()).await {
                self.proc = Some(proc);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let err = format!("JetStream not ready within {timeout:?}\n{}", proc.report());
                proc.kill();
                return Err(err);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The credentials it requires, if any.
    pub fn auth(&self) -> Option<&NatsCreds> {
        self.auth.as_ref()
    }
    /// A client of this server, with its credentials if it requires any. Panics if the
    /// connection fails.
    pub async fn connect(&self) -> async_nats::Client {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(creds) = &self.auth {
            options = creds.apply(options);
        }
        options
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to nats-server at {}: {e}", self.url()))
    }
    /// The JetStream store dir (`-sd`), kept across restarts.
    pub fn store_dir(&self) -> &Path {
        &self.store_path
    }
    /// The running process, if any (e.g. `nats.proc().unwrap().stop()` to SIGSTOP it).
    pub fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// Graceful shutdown (SIGTERM: JetStream flushes its files) and wait.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.term();
        }
    }

    /// Hard kill (SIGKILL): the process dies without flushing anything.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Stops it if it runs (gracefully), then starts it again on the same port with the
    /// same store dir and waits until JetStream answers. Use [`Nats::kill`] first for a
    /// crash-restart.
    pub async fn restart(&mut self) {
        self.stop();
        // The old listener can take a moment to release the port: retry binding briefly.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.launch(Duration::from_secs(30)).await {
                Ok(()) => return,
                Err(e) if e.contains("address already in use") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("nats-server did not restart: {e}"),
            }
        }
    }
}

async fn jetstream_ready(url: &str, auth: Option<&NatsCreds>) -> bool {
    let addr = url.trim_start_matches("nats://");
    if TcpStream::connect_timeout(
        &addr.parse().expect("socket addr"),
        Duration::from_millis(200),
    )
    .is_err()
    {
        return false;
    }
    let mut options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
    if let Some(creds) = auth {
        options = creds.apply(options);
    }
    let connect = options.connect(url);
    let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(3), connect).await else {
        return false;
    };
    let js = async_nats::jetstream::new(client);
    matches!(
        tokio::time::timeout(Duration::from_secs(3), js.query_account()).await,
        Ok(Ok(_))
    )
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "--- nats-server log (last 40 lines): {}",
                self.logs_path.join("nats-server.log").display()
            );
            eprintln!("{}", tail(&self.logs_path.join("nats-server.log"), 40));
            if let Some(d) = self.logs.take() {
                eprintln!("testkit: kept {}", d.keep().display());
            }
            if let Some(d) = self.store.take() {
                eprintln!("testkit: kept {}", d.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------

/// Extra arguments and environment for [`Cluster::start_with`].
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
pub struct Cluster {
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

impl Cluster {
    /// Starts NATS, the manager and the gateway; returns once both answer `GET /healthz`.
    pub async fn start() -> Cluster {
        Self::start_with(ClusterOptions::default()).await
    }

    pub async fn start_with(opts: ClusterOptions) -> Cluster {
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
        let mut c = Cluster {
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
        let mut p = Proc::builder("manager", bin("manager"))
            .args(args)
            .envs(self.envs())
            .log_dir(self.root_path.join("logs"))
            .spawn();
        self.manager_addr = loopback(&p.listening(LISTEN_TIMEOUT).await);
        self.manager = Some(p);
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
        let mut p = Proc::builder("gateway", bin("gateway"))
            .args(args)
            .envs(self.envs())
            .envs(self.opts.nats_auth.iter().flat_map(NatsCreds::env))
            .log_dir(self.root_path.join("logs"))
            .spawn();
        self.gateway_addr = loopback(&p.listening(LISTEN_TIMEOUT).await);
        self.gateway = Some(p);
        let url = format!("{}/healthz", self.gateway_url());
        self.wait_healthy(&url, "gateway").await;
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

    fn reports(&self) -> String {
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
    /// The manager's pid (for signals from code that only holds `&Cluster`).
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

    // --- HTTP ---------------------------------------------------------------------------

    /// Sends a request and returns `(status, body)`. `url` is absolute, or a path
    /// (`/read`) on the gateway. The body is parsed as JSON; a non-JSON body becomes
    /// `Value::String`, an empty one `Value::Null`. A transport error (connection refused,
    /// timeout) gives status `0` and the error text as a string body. Never panics.
    pub async fn request(&self, method: Method, url: &str, body: Option<&Value>) -> (u16, Value) {
        let url = if url.starts_with('/') {
            format!("{}{url}", self.gateway_url())
        } else {
            url.to_string()
        };
        let mut req = self.client.request(method, &url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return (0, Value::String(format!("request to {url} failed: {e}"))),
        };
        let status = resp.status().as_u16();
        match resp.bytes().await {
            Ok(bytes) if bytes.is_empty() => (status, Value::Null),
            Ok(bytes) => (
                status,
                serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&bytes).into_owned())
                }),
            ),
            Err(e) => (
                status,
                Value::String(format!("reading body from {url} failed: {e}")),
            ),
        }
    }

    /// `GET <gateway><path>` without a body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(Method::GET, path, None).await
    }
    /// `GET` with a JSON body (the assignment's `GET /read` style).
    pub async fn get_json(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        self.request(Method::GET, path, Some(body.borrow())).await
    }
    pub async fn post(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        self.request(Method::POST, path, Some(body.borrow())).await
    }
    pub async fn put(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        self.request(Method::PUT, path, Some(body.borrow())).await
    }
    pub async fn delete(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        self.request(Method::DELETE, path, Some(body.borrow()))
            .await
    }
    /// `GET <manager><path>`.
    pub async fn manager_get(&self, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.manager_url());
        self.request(Method::GET, &url, None).await
    }
    /// `POST <manager><path>`.
    pub async fn manager_post(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.manager_url());
        self.request(Method::POST, &url, Some(body.borrow())).await
    }

    /// `POST /init` on the gateway, asserting 200, then waits until `GET /readyz` is 200
    /// (every shard has a primary). Returns the `/init` response body.
    pub async fn init(&self, body: impl Borrow<Value>) -> Value {
        let (status, resp) = self.post("/init", body).await;
        assert_eq!(status, 200, "POST /init failed: {resp}\n{}", self.reports());
        self.wait_ready(READY_TIMEOUT).await;
        resp
    }

    /// Waits until the gateway's `GET /readyz` answers 200; panics after `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) {
        let ok = wait_until(timeout, || async { self.get("/readyz").await.0 == 200 }).await;
        if !ok {
            let last = self.get("/readyz").await;
            panic!(
                "gateway not ready within {timeout:?}: last /readyz = {last:?}\n{}",
                self.reports()
            );
        }
    }

    /// [`wait_until`] as a method, for symmetry.
    pub async fn wait_until<F, Fut>(&self, timeout: Duration, f: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        wait_until(timeout, f).await
    }

    // --- shard servers ------------------------------------------------------------------

    /// The pid in `<data_dir>/servers/<name>/server.pid`, if that file exists.
    pub fn server_pid(&self, name: &str) -> Option<i32> {
        read_pid_file(&self.servers_dir().join(name).join("server.pid"))
    }

    /// Names of the server dirs under `servers/` that have a pid file, sorted.
    pub fn server_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.servers_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("server.pid").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    fn live_server_pid(&self, name: &str) -> i32 {
        let pid = self.server_pid(name).unwrap_or_else(|| {
            panic!(
                "no pid file for server {name} under {}",
                self.servers_dir().display()
            )
        });
        assert!(pid_alive(pid), "server {name} (pid {pid}) is not running");
        pid
    }

    /// SIGKILLs shard server `name` (by its pid file); returns the pid.
    pub fn kill_server(&self, name: &str) -> i32 {
        let pid = self.live_server_pid(name);
        signal(pid, libc::SIGKILL);
        pid
    }
    /// SIGSTOPs shard server `name`; returns the pid.
    pub fn stop_server(&self, name: &str) -> i32 {
        let pid = self.live_server_pid(name);
        signal(pid, libc::SIGSTOP);
        pid
    }
    /// SIGCONTs shard server `name`; returns the pid.
    pub fn cont_server(&self, name: &str) -> i32 {
        let pid = self.live_server_pid(name);
        signal(pid, libc::SIGCONT);
        pid
    }

    /// Every live process that belongs to this cluster's shard servers: pids from the pid
    /// files (when their command line is a shard-server), plus any process whose command
    /// line names this cluster's data dir (a server whose pid file is not written yet).
    fn server_pids(&self) -> Vec<i32> {
        let root = self.root_path.display().to_string();
        let me = std::process::id() as i32;
        let mut pids: Vec<i32> = Vec::new();
        for name in self.server_names() {
            if let Some(pid) = self.server_pid(&name) {
                if cmdline(pid).is_some_and(|c| c.contains("shard-server") || c.contains(&root)) {
                    pids.push(pid);
                }
            }
        }
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if pid != me && cmdline(pid).is_some_and(|c| c.contains(&root)) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Drop for Cluster {
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
pub mod check;
pub mod python;
pub mod workload;

pub mod docker;
