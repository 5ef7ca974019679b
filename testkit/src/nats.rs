//! A private nats-server with JetStream for one test (or one bench cluster), optionally
//! requiring credentials, and the credentials' forms for servers, clients and binaries.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::paths::{free_port, nats_server_bin};
use crate::pids::tail;
use crate::process::Proc;
use crate::wait::POLL_INTERVAL;

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

/// How to start a [`Nats`] ([`Nats::try_start`]); every field has a default.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// The nats-server binary; default [`nats_server_bin`].
    pub bin: Option<PathBuf>,
    /// Extra nats-server arguments (e.g. `-c <config>`); `-a`, `-p`, `-sd` and `-js` are
    /// always given too and win over a config file.
    pub extra_args: Vec<String>,
    /// Credentials every client must present.
    pub auth: Option<NatsCreds>,
    /// The JetStream store in `<dir>/nats` and the log in `<dir>/nats-server.log`, left in
    /// place on drop; default: temp dirs removed on drop (kept when a test panics).
    pub dir: Option<PathBuf>,
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
        let opts = NatsOptions {
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            auth,
            ..NatsOptions::default()
        };
        Self::try_start(opts)
            .await
            .unwrap_or_else(|e| panic!("nats-server did not start: {e}"))
    }

    /// Starts a nats-server as `opts` say and waits until JetStream answers, or says why it
    /// did not start.
    pub async fn try_start(opts: NatsOptions) -> Result<Nats, String> {
        let temp = |prefix: &str| {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .map_err(|e| format!("cannot create a temp dir: {e}"))
        };
        let (store, store_path, logs, logs_path) = match &opts.dir {
            Some(dir) => {
                let store = dir.join("nats");
                std::fs::create_dir_all(&store)
                    .map_err(|e| format!("cannot create {}: {e}", store.display()))?;
                (None, store, None, dir.clone())
            }
            None => {
                let (store, logs) = (temp("shardline-nats-store-")?, temp("shardline-nats-log-")?);
                let (sp, lp) = (store.path().to_path_buf(), logs.path().to_path_buf());
                (Some(store), sp, Some(logs), lp)
            }
        };
        let mut nats = Nats {
            proc: None,
            port: 0,
            bin: opts.bin.unwrap_or_else(nats_server_bin),
            extra_args: opts.extra_args,
            auth: opts.auth,
            store,
            store_path,
            logs,
            logs_path,
        };
        // A port picked by free_port() can be taken by a parallel test before nats binds it.
        let mut attempt = 1;
        loop {
            nats.port = free_port();
            match nats.launch(Duration::from_secs(30)).await {
                Ok(()) => return Ok(nats),
                Err(e) if attempt < 5 && e.contains("address already in use") => attempt += 1,
                Err(e) => return Err(e),
            }
        }
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
            .try_spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
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
