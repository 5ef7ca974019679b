//! Polling with a deadline: the only way tests wait for something to happen.

use std::future::Future;
use std::time::{Duration, Instant};

/// Pause between two polls in the wait helpers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

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
