//! Resolves when the process is asked to stop (SIGINT or SIGTERM).

pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

/// Serves `app` until a stop signal, then lets requests in flight finish for at most `drain`
/// (a client stuck on a slow upstream must not keep the process alive forever). New
/// connections are refused as soon as the signal arrives.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    drain: std::time::Duration,
) -> std::io::Result<()> {
    serve_until(listener, app, drain, signal()).await
}

/// [`serve`], stopping when `stop` resolves instead of on a signal (in-process tests, or a
/// binary's `run` that its `main` gives the signal).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    drain: std::time::Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let deadline = async move {
        if stop_rx.wait_for(|stopped| *stopped).await.is_ok() {
            tokio::time::sleep(drain).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served,
        () = deadline => {
            tracing::warn!(drain_ms = drain.as_millis() as u64, "requests still in flight after the drain timeout; stopping anyway");
            Ok(())
        }
    }
}

/// The tokio runtime of a binary with `worker_threads` threads: `1` is a current-thread
/// runtime (no hand-offs between workers; cheapest where several processes share a few
/// cores), `0` one worker per core.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b.enable_all().build()
        }
    }
}
