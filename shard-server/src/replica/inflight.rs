//! The writes a primary is waiting to commit, by when they arrived: the heartbeat's
//! `stalled_ms` is the age of the oldest, so the manager can replace a primary that accepts
//! writes but cannot commit them (cut off from NATS, applier stuck).

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::time::Instant;

use super::lock;

#[derive(Default)]
pub struct InFlight {
    /// Arrival time by a counter taken under the lock, so the first entry is the oldest.
    started: Mutex<(u64, BTreeMap<u64, Instant>)>,
}

/// One write waiting; dropping it (answered, or its caller gone) ends the wait.
pub struct Ticket<'a> {
    inflight: &'a InFlight,
    id: u64,
}

impl InFlight {
    pub fn start(&self) -> Ticket<'_> {
        let mut g = lock(&self.started);
        let id = g.0;
        g.0 += 1;
        g.1.insert(id, Instant::now());
        Ticket { inflight: self, id }
    }

    /// Age of the oldest write still waiting, in ms.
    pub fn oldest_ms(&self) -> Option<u64> {
        let g = lock(&self.started);
        g.1.values().next().map(|t| t.elapsed().as_millis() as u64)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        lock(&self.inflight.started).1.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_oldest_waiting_write_sets_the_age() {
        let f = InFlight::default();
        assert_eq!(f.oldest_ms(), None);
        let a = f.start();
        tokio::time::advance(Duration::from_millis(300)).await;
        let b = f.start();
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(f.oldest_ms(), Some(500));
        drop(a);
        assert_eq!(f.oldest_ms(), Some(200));
        drop(b);
        assert_eq!(f.oldest_ms(), None);
    }
}
