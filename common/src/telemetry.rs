//! Logs and metrics plumbing every binary shares: the `tracing` subscriber (stderr, `RUST_LOG`)
//! and the `/metrics` route over a Prometheus recorder. What each binary measures stays in
//! its own `metrics` module.

use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// Logs to stderr, filtered by `RUST_LOG` (default: info, with the NATS client quieter);
/// colours only on a terminal, so log files stay plain text.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Keeps the recorder's rolling histogram windows drained (they must be, now and then).
pub fn spawn_upkeep(handle: &PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
}

/// `GET /metrics` in the Prometheus text format, to merge into a binary's router.
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = handle.render();
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    text,
                )
            }
        }),
    )
}
