//! A rollout's bandwidth cap: a token bucket in bytes per second shared by every download of
//! the rollout (HTTP and MQTT chunks). A sender asks how long to wait before sending `n`
//! bytes, then sleeps that long; the bucket lends ahead (tokens go negative), so waiters queue
//! up fairly without holding a lock while they sleep.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A bytes-per-second cap (burst: one second's worth).
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may go now; negative when senders are already waiting.
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// A cap of `rate` bytes per second (at least 1).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        Self {
            rate,
            state: Mutex::new(Bucket {
                tokens: rate as f64,
                last: Instant::now(),
            }),
        }
    }

    /// Reserves `bytes` and says how long to wait before sending them.
    pub fn reserve(&self, bytes: u64) -> Duration {
        self.reserve_at(bytes, Instant::now())
    }

    fn reserve_at(&self, bytes: u64, now: Instant) -> Duration {
        let mut bucket = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let rate = self.rate as f64;
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = now;
        bucket.tokens -= bytes as f64;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_with_what_was_lent() {
        let throttle = Throttle::new(1000);
        let t0 = Instant::now();
        assert_eq!(
            throttle.reserve_at(1000, t0),
            Duration::ZERO,
            "one second's burst"
        );
        assert_eq!(throttle.reserve_at(500, t0), Duration::from_millis(500));
        assert_eq!(
            throttle.reserve_at(500, t0),
            Duration::from_millis(1000),
            "queued behind the first"
        );
        // Two seconds later the debt is paid and the bucket refills up to one second's worth.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(throttle.reserve_at(1000, later), Duration::ZERO);
        assert_eq!(throttle.reserve_at(1, later), Duration::from_millis(1));
    }
}
