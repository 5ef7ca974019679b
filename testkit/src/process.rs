//! Child processes: [`Proc`] (a started binary with its log and its `LISTENING` line) and
//! the spawner that gives every child `PR_SET_PDEATHSIG`, so it dies with the test process
//! even if that is killed outright.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::pids::{signal, tail};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns every child from one long-lived thread: `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked the child exits, so spawning from a tokio blocking-pool thread
/// (which exits when idle) would kill the child at a random moment.
fn spawn_child(mut cmd: Command, death_signal: i32) -> io::Result<Child> {
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
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("testkit spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("testkit spawner thread is gone"))?
}

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
    death_signal: i32,
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

    /// The signal the process gets when the test (or bench) process dies: `SIGKILL` unless
    /// set, e.g. `SIGTERM` for a manager so that it stops its shard servers first.
    pub fn death_signal(mut self, sig: i32) -> Self {
        self.death_signal = sig;
        self
    }

    /// Starts the process. Panics if it cannot be started.
    pub fn spawn(self) -> Proc {
        let program = self.program.clone();
        self.try_spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
    }

    /// Starts the process, or says why it could not be started.
    pub fn try_spawn(self) -> io::Result<Proc> {
        let (own_dir, dir) = match self.log_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new()
                    .prefix(&format!("shardline-{}-", self.name))
                    .tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        fs::create_dir_all(&dir)?;
        let log_path = dir.join(format!("{}.log", self.name));
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", log_path.display())))
        };
        let mut header = open_log()?;
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
            .stderr(Stdio::from(open_log()?));
        let mut child = spawn_child(cmd, self.death_signal)?;
        let pid = child.id() as i32;

        // Read stdout (for the LISTENING line) and copy it into the log too.
        let stdout = Arc::new(Stdout::default());
        let pipe = child.stdout.take().expect("piped stdout");
        let state = Arc::clone(&stdout);
        let mut log = open_log()?;
        let reader = thread::Builder::new()
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
            });
        if let Err(e) = reader {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }

        Ok(Proc {
            name: self.name,
            child,
            pid,
            status: None,
            log_path,
            own_log_dir: own_dir,
            stdout,
        })
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
            death_signal: libc::SIGKILL,
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
        self.try_listening(timeout)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Proc::listening`], but the failure (with the log's tail) is returned.
    pub async fn try_listening(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .stdout_lines()
                .iter()
                .find_map(|l| l.strip_prefix("LISTENING ").map(|a| a.trim().to_string()));
            if let Some(addr) = found {
                return Ok(addr);
            }
            if !self.is_running() || self.stdout.closed.load(Ordering::SeqCst) {
                return Err(format!(
                    "{} exited before printing `LISTENING <addr>` ({:?})\n{}",
                    self.name,
                    self.status,
                    self.report()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} printed no `LISTENING <addr>` within {timeout:?}\n{}",
                    self.name,
                    self.report()
                ));
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
        self.term_within(Duration::from_secs(10))
    }

    /// As [`Proc::term`], waiting up to `grace` before the SIGKILL.
    pub fn term_within(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.is_running() {
            signal(self.pid, libc::SIGTERM);
            signal(self.pid, libc::SIGCONT);
            if self.wait_exit(grace).is_none() {
                eprintln!(
                    "testkit: {} ignored SIGTERM for {grace:?}; killing",
                    self.name
                );
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
