//! The `shard-server` binary: parses the configuration, builds the runtime, binds the listener,
//! prints `LISTENING <addr>` (which the manager and the test kit wait for) and runs the server
//! from the library until SIGINT or SIGTERM.

use anyhow::Context as _;
use clap::Parser;
use shard_server::Config;

fn main() -> anyhow::Result<()> {
    shardline::telemetry::init_logging();
    let config = Config::parse();
    // Unusable NATS credentials stop the server before it announces itself.
    config.nats_auth.auth()?;
    let runtime = match config.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b.enable_all().build()?
        }
    };
    runtime.block_on(async {
        // A server outlives its manager: when the manager exits while this server is stopped
        // (SIGSTOP), the kernel sends its orphaned process group SIGHUP, which would kill it.
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP ignored: a shard server stops on SIGINT or SIGTERM");
            }
        });
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        println!("LISTENING {}", listener.local_addr()?);
        shard_server::run(config, listener, shardline::shutdown::signal()).await
    })
}
