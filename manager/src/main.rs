//! The `manager` binary: parses and checks the configuration, binds the admin address, prints
//! `LISTENING <addr>` (the test kit and scripts wait for that line) and runs [`manager::run`]
//! until SIGINT or SIGTERM.

use anyhow::Context as _;
use clap::Parser;
use manager::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shardline::telemetry::init_logging();
    let config = Config::parse();
    config.check()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    println!("LISTENING {}", listener.local_addr()?);
    manager::run(config, listener, shardline::shutdown::signal()).await
}
