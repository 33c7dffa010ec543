//! Token buckets with an injected clock (unix ms), one per key.
//!
//! Hand-written rather than `governor`: the engine is sans-IO and tested
//! with a fake millisecond clock, and the refusal must say when to retry
//! (HTTP `Retry-After`). Idle full buckets are dropped by
//! [`KeyedBuckets::retain_recent`], so memory follows active keys only.

use std::collections::HashMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// A rate: `per_second` tokens refill per second, up to `burst`.
/// `per_second = 0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Sustained rate (0: unlimited).
    pub per_second: f64,
    /// Largest burst.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 0.0,
            burst: 1,
        }
    }
}

impl RateLimit {
    /// Checks the values; `Err` names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.per_second >= 0.0 && self.per_second.is_finite()) {
            return Err("per_second: a number of 0 or more".into());
        }
        if self.burst == 0 {
            return Err("burst: at least 1".into());
        }
        Ok(())
    }

    /// Whether this limit lets everything through.
    pub fn is_unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    last: u64,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(limit: &RateLimit, now: u64) -> Bucket {
        Bucket {
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    fn refill(&mut self, limit: &RateLimit, now: u64) {
        let elapsed = now.saturating_sub(self.last) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
        self.last = self.last.max(now);
    }

    /// Takes a token at `now`, or says how many ms until one is there.
    pub fn try_take(&mut self, limit: &RateLimit, now: u64) -> Result<(), u64> {
        if limit.is_unlimited() {
            return Ok(());
        }
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(((missing / limit.per_second) * 1000.0).ceil().max(1.0) as u64)
        }
    }

    /// Gives back a token taken for a call that did not happen.
    pub fn give_back(&mut self, limit: &RateLimit) {
        self.tokens = (self.tokens + 1.0).min(f64::from(limit.burst));
    }

    /// Whether it would be full at `now` (so forgetting it changes nothing).
    pub fn is_full(&self, limit: &RateLimit, now: u64) -> bool {
        let mut copy = *self;
        copy.refill(limit, now);
        copy.tokens >= f64::from(limit.burst)
    }
}

/// One bucket per key, all with the same limit.
#[derive(Debug, Clone)]
pub struct KeyedBuckets<K> {
    limit: RateLimit,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    /// Buckets with `limit`.
    pub fn new(limit: RateLimit) -> KeyedBuckets<K> {
        KeyedBuckets {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `key` at `now`, or says how many ms to wait.
    pub fn try_take(&mut self, key: &K, now: u64) -> Result<(), u64> {
        if self.limit.is_unlimited() {
            return Ok(());
        }
        let limit = self.limit;
        self.buckets
            .entry(key.clone())
            .or_insert_with(|| Bucket::full(&limit, now))
            .try_take(&limit, now)
    }

    /// Gives back a token of `key`.
    pub fn give_back(&mut self, key: &K) {
        let limit = self.limit;
        if let Some(bucket) = self.buckets.get_mut(key) {
            bucket.give_back(&limit);
        }
    }

    /// Drops buckets that have refilled: a new one would be the same.
    pub fn retain_recent(&mut self, now: u64) {
        let limit = self.limit;
        self.buckets.retain(|_, b| !b.is_full(&limit, now));
    }

    /// How many keys have a bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key has a bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_with_retry_after() {
        let limit = RateLimit {
            per_second: 10.0,
            burst: 3,
        };
        let mut b = Bucket::full(&limit, 0);
        for _ in 0..3 {
            assert_eq!(b.try_take(&limit, 0), Ok(()));
        }
        assert_eq!(b.try_take(&limit, 0), Err(100));
        assert_eq!(b.try_take(&limit, 50), Err(50));
        assert_eq!(b.try_take(&limit, 100), Ok(()));
        assert!(b.try_take(&limit, 100).is_err());
    }

    #[test]
    fn unlimited_never_refuses() {
        let limit = RateLimit::default();
        let mut b = Bucket::full(&limit, 0);
        for _ in 0..1000 {
            assert!(b.try_take(&limit, 0).is_ok());
        }
    }

    #[test]
    fn keys_are_independent_and_idle_ones_are_dropped() {
        let mut k = KeyedBuckets::new(RateLimit {
            per_second: 1.0,
            burst: 1,
        });
        assert!(k.try_take(&"a", 0).is_ok());
        assert!(k.try_take(&"a", 0).is_err());
        assert!(k.try_take(&"b", 0).is_ok());
        assert_eq!(k.len(), 2);
        k.retain_recent(500);
        assert_eq!(k.len(), 2, "still refilling");
        k.retain_recent(1_000);
        assert!(k.is_empty());
        k.give_back(&"a");
        assert!(k.try_take(&"a", 1_000).is_ok());
    }
}
