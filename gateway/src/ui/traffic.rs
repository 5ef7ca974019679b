//! Write and read traffic of the last minutes for the dashboard's chart: per second, how many
//! requests each family answered, how many failed, and a latency histogram to take the p99
//! from.
//!
//! Recorded from the metrics middleware on every request, so it must cost next to nothing: a
//! process-wide ring of one slot per second per family, every field an atomic. A request does
//! a clock read and three relaxed `fetch_add`s (count, one histogram bucket, and the error
//! count on failures); the first request of a new second also claims and zeroes the slot.
//! No lock, no allocation. Two requests racing at a second's boundary can lose a count: this is
//! a chart, not the Prometheus counters (`/metrics` stays exact).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Seconds kept: five minutes.
pub const WINDOW_SECS: u64 = 300;
/// Latency buckets: two per power of two of microseconds, from 1 µs up to ~16 s.
const BUCKETS: usize = 48;

/// The request families the dashboard charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Write,
    Read,
}

impl Family {
    /// The family of a route template (as the metrics middleware labels it), if charted.
    pub fn of(endpoint: &str) -> Option<Family> {
        match endpoint {
            "/write" | "/update" | "/del" => Some(Family::Write),
            "/read" | "/read/{server}" => Some(Family::Read),
            _ => None,
        }
    }
}

struct Slot {
    /// The Unix second this slot currently counts.
    second: AtomicU64,
    count: AtomicU32,
    errors: AtomicU32,
    latency: [AtomicU32; BUCKETS],
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
            errors: AtomicU32::new(0),
            latency: [const { AtomicU32::new(0) }; BUCKETS],
        }
    }

    /// The slot for `second`, zeroed first if it still held an older second; `None` when it
    /// already holds a newer one (the clock stepped back): drop the sample.
    fn claim(&self, second: u64) -> Option<&Slot> {
        let held = self.second.load(Relaxed);
        if held == second {
            return Some(self);
        }
        if held > second {
            return None;
        }
        if self
            .second
            .compare_exchange(held, second, Relaxed, Relaxed)
            .is_ok()
        {
            self.count.store(0, Relaxed);
            self.errors.store(0, Relaxed);
            for b in &self.latency {
                b.store(0, Relaxed);
            }
        }
        (self.second.load(Relaxed) == second).then_some(self)
    }
}

struct Ring {
    slots: [Slot; WINDOW_SECS as usize],
}

impl Ring {
    const fn new() -> Ring {
        Ring {
            slots: [const { Slot::new() }; WINDOW_SECS as usize],
        }
    }

    fn record(&self, second: u64, elapsed: Duration, failed: bool) {
        let Some(slot) = self.slots[(second % WINDOW_SECS) as usize].claim(second) else {
            return;
        };
        slot.count.fetch_add(1, Relaxed);
        slot.latency[bucket(elapsed)].fetch_add(1, Relaxed);
        if failed {
            slot.errors.fetch_add(1, Relaxed);
        }
    }

    /// The complete seconds `[now - WINDOW_SECS + 1, now)`, oldest first; the current second is
    /// still filling, so it is left out.
    fn series(&self, now: u64) -> Series {
        let mut out = Series::default();
        let mut recent = [0u64; BUCKETS];
        let mut total = [0u64; BUCKETS];
        for second in now.saturating_sub(WINDOW_SECS - 1)..now {
            let slot = &self.slots[(second % WINDOW_SECS) as usize];
            let mut hist = [0u64; BUCKETS];
            let (mut count, mut errors) = (0, 0);
            if slot.second.load(Relaxed) == second {
                count = slot.count.load(Relaxed);
                errors = slot.errors.load(Relaxed);
                for (h, b) in hist.iter_mut().zip(&slot.latency) {
                    *h = u64::from(b.load(Relaxed));
                }
            }
            for i in 0..BUCKETS {
                total[i] += hist[i];
                if second + 10 >= now {
                    recent[i] += hist[i];
                }
            }
            out.count.push(count);
            out.errors.push(errors);
            out.p99_ms.push(p99_ms(&hist));
        }
        out.p99_ms_10s = p99_ms(&recent);
        out.p99_ms_window = p99_ms(&total);
        let last10 = out.count.iter().rev().take(10);
        out.per_sec_10s = last10.map(|&c| f64::from(c)).sum::<f64>() / 10.0;
        out
    }
}

/// One family's seconds, oldest first.
#[derive(Debug, Default, Serialize)]
pub struct Series {
    /// Requests answered in each second.
    pub count: Vec<u32>,
    /// Of those, answered with a 5xx.
    pub errors: Vec<u32>,
    /// p99 latency of each second in milliseconds (`null` without requests).
    pub p99_ms: Vec<Option<f64>>,
    /// Requests per second over the last 10 complete seconds.
    pub per_sec_10s: f64,
    pub p99_ms_10s: Option<f64>,
    pub p99_ms_window: Option<f64>,
}

/// `GET /ui/api/traffic`.
#[derive(Debug, Serialize)]
pub struct Traffic {
    /// Unix second of the first entry of each series; entry `i` is second `from + i`.
    pub from: u64,
    pub seconds: u64,
    pub write: Series,
    pub read: Series,
}

static WRITES: Ring = Ring::new();
static READS: Ring = Ring::new();

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Counts one answered request of route template `endpoint` (ignored unless it is a read or a
/// write) that took `elapsed` and answered `status`.
pub fn record(endpoint: &str, status: u16, elapsed: Duration) {
    let ring = match Family::of(endpoint) {
        Some(Family::Write) => &WRITES,
        Some(Family::Read) => &READS,
        None => return,
    };
    ring.record(unix_now().as_secs(), elapsed, status >= 500);
}

pub fn snapshot() -> Traffic {
    let now = unix_now().as_secs();
    let write = WRITES.series(now);
    let read = READS.series(now);
    Traffic {
        from: now.saturating_sub(WINDOW_SECS - 1),
        seconds: write.count.len() as u64,
        write,
        read,
    }
}

/// Bucket `2·⌊log2 µs⌋ + (next bit)`: two buckets per power of two, so a bucket's upper bound
/// is at most 50 % above its lower one.
fn bucket(elapsed: Duration) -> usize {
    let us = elapsed.as_micros().clamp(1, u128::from(u64::MAX)) as u64;
    let log = 63 - us.leading_zeros() as usize;
    let half = if log == 0 {
        0
    } else {
        ((us >> (log - 1)) & 1) as usize
    };
    (2 * log + half).min(BUCKETS - 1)
}

/// Upper bound of bucket `i` in microseconds.
fn upper_us(i: usize) -> f64 {
    let (log, half) = (i / 2, i % 2);
    // The bucket is [2^log · (2 + half) / 2, 2^log · (3 + half) / 2).
    2f64.powi(log as i32) * (3.0 + half as f64) / 2.0
}

/// The 99th percentile of a histogram, as its bucket's upper bound in milliseconds.
fn p99_ms(hist: &[u64; BUCKETS]) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = total - total / 100; // ≥ 99 % of the samples at or below
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(upper_us(i).round() / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_half_powers_of_two() {
        assert_eq!(bucket(Duration::from_micros(1)), 0);
        assert_eq!(bucket(Duration::from_micros(2)), 2);
        assert_eq!(bucket(Duration::from_micros(3)), 3);
        assert_eq!(bucket(Duration::from_micros(4)), 4);
        assert_eq!(bucket(Duration::from_micros(6)), 5);
        assert_eq!(bucket(Duration::from_secs(3600)), BUCKETS - 1);
        for us in [1u64, 5, 90, 1_000, 1_499, 1_500, 65_000, 2_000_000] {
            let i = bucket(Duration::from_micros(us));
            assert!(upper_us(i) >= us as f64, "{us} µs in bucket {i}");
            assert!(
                upper_us(i) <= 1.5 * us as f64 + 1.0,
                "{us} µs in bucket {i}"
            );
        }
    }

    #[test]
    fn p99_ignores_the_fastest_99_percent() {
        let ring = Ring::new();
        let now = 1_000_000;
        for _ in 0..990 {
            ring.record(now - 2, Duration::from_micros(800), false);
        }
        for _ in 0..10 {
            ring.record(now - 2, Duration::from_millis(40), true);
        }
        ring.record(now - 1, Duration::from_millis(3), false);
        // Still filling: not reported.
        ring.record(now, Duration::from_millis(500), false);
        let s = ring.series(now);
        assert_eq!(s.count.len() as u64, WINDOW_SECS - 1);
        assert_eq!(s.count[s.count.len() - 2..], [1000, 1]);
        assert_eq!(s.errors[s.errors.len() - 2], 10);
        let p99 = s.p99_ms[s.p99_ms.len() - 2].unwrap();
        assert!((0.8..=1.2).contains(&p99), "{p99}");
        assert!((3.0..=4.5).contains(&s.p99_ms.last().unwrap().unwrap()));
        assert_eq!(s.p99_ms[0], None);
        assert!((s.per_sec_10s - 100.1).abs() < 1e-9);
    }

    #[test]
    fn a_slot_is_reused_after_the_window() {
        let ring = Ring::new();
        ring.record(7, Duration::from_millis(1), false);
        ring.record(7 + WINDOW_SECS, Duration::from_millis(1), false);
        // The old second is gone, and a late sample for it is dropped.
        ring.record(7, Duration::from_millis(1), false);
        let s = ring.series(8 + WINDOW_SECS);
        assert_eq!(s.count.iter().sum::<u32>(), 1);
        assert_eq!(*s.count.last().unwrap(), 1);
    }

    #[test]
    fn families_by_route_template() {
        assert_eq!(Family::of("/update"), Some(Family::Write));
        assert_eq!(Family::of("/read/{server}"), Some(Family::Read));
        assert_eq!(Family::of("/status"), None);
        assert_eq!(Family::of("unmatched"), None);
    }
}
