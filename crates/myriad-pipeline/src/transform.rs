//! Pure transform stages: time (`now_ms`, unix milliseconds) and randomness (a `u64`) are
//! passed in, nothing blocks, nothing is spawned.
//!
//! - [`Batcher`] groups items into batches, flushed by count, by bytes or by age.
//! - [`Sampler`] keeps every n-th item, or each with a probability.
//! - [`RateLimiter`] is a token bucket deciding per item: pass or drop (counted).
//!
//! | bound | range | refused with |
//! |---|---|---|
//! | [`BatchConfig::max_records`] | 1 ..= [`MAX_BATCH_RECORDS`] | [`ConfigError`] naming the key |
//! | [`BatchConfig::max_bytes`] | 1 ..= [`MAX_BATCH_BYTES`] | [`ConfigError`] |
//! | [`BatchConfig::max_age_ms`] | 1 ..= [`MAX_BATCH_AGE_MS`] | [`ConfigError`] |
//! | [`SampleMode::EveryNth`] | 1 ..= u64::MAX | [`ConfigError`] |
//! | [`SampleMode::Probability`] | 0.0 ..= 1.0 | [`ConfigError`] |
//! | [`RateLimiter`] rate, burst | 1 ..= [`MAX_RATE_PER_SEC`], 1 ..= [`MAX_BURST`] | [`ConfigError`] |
//!
//! A batch holds at most `max_records` items and, since it is flushed as soon as it reaches
//! `max_bytes`, at most `max_bytes` plus one item's bytes: the memory a batcher holds is bounded
//! by its configuration.

use thiserror::Error;

/// The most records one batch may be configured to hold.
pub const MAX_BATCH_RECORDS: usize = 1_000_000;
/// The most bytes one batch may be configured to hold (256 MiB).
pub const MAX_BATCH_BYTES: usize = 256 * 1024 * 1024;
/// The longest a batch may be configured to stay open (one hour), in ms.
pub const MAX_BATCH_AGE_MS: u64 = 3_600_000;
/// The highest rate a [`RateLimiter`] may be configured with, per second.
pub const MAX_RATE_PER_SEC: u64 = 10_000_000;
/// The largest burst a [`RateLimiter`] may be configured with.
pub const MAX_BURST: u64 = 10_000_000;

/// A transform was configured out of range.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{key} = {value} is out of range ({range})")]
pub struct ConfigError {
    /// The configuration key.
    pub key: &'static str,
    /// The value given, printed.
    pub value: String,
    /// The accepted range.
    pub range: &'static str,
}

fn check(
    ok: bool,
    key: &'static str,
    value: impl ToString,
    range: &'static str,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            key,
            value: value.to_string(),
            range,
        })
    }
}

/// When a [`Batcher`] flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Flush when the batch holds this many items.
    pub max_records: usize,
    /// Flush when the batch's items add up to at least this many bytes.
    pub max_bytes: usize,
    /// Flush when the batch's first item has waited this long.
    pub max_age_ms: u64,
}

impl BatchConfig {
    /// Checks every field against its range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            (1..=MAX_BATCH_RECORDS).contains(&self.max_records),
            "max_records",
            self.max_records,
            "1 ..= 1000000",
        )?;
        check(
            (1..=MAX_BATCH_BYTES).contains(&self.max_bytes),
            "max_bytes",
            self.max_bytes,
            "1 ..= 268435456",
        )?;
        check(
            (1..=MAX_BATCH_AGE_MS).contains(&self.max_age_ms),
            "max_age_ms",
            self.max_age_ms,
            "1 ..= 3600000",
        )
    }
}

/// Why a batch was flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// It reached `max_records`.
    Count,
    /// It reached `max_bytes`.
    Bytes,
    /// Its first item reached `max_age_ms`.
    Age,
    /// [`Batcher::flush`] was called (shutdown, drain).
    Forced,
}

/// A flushed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<T> {
    /// The items, in arrival order.
    pub items: Vec<T>,
    /// Their bytes, as given to [`Batcher::push`].
    pub bytes: usize,
    /// When the first item arrived (ms).
    pub opened_ms: i64,
    /// Why it was flushed.
    pub reason: FlushReason,
}

/// Groups items into batches by count, bytes and age. Call [`Batcher::poll`] at
/// [`Batcher::deadline`] (or later) to flush by age.
#[derive(Debug)]
pub struct Batcher<T> {
    config: BatchConfig,
    items: Vec<T>,
    bytes: usize,
    opened_ms: i64,
}

impl<T> Batcher<T> {
    /// A batcher with `config` (validated).
    pub fn new(config: BatchConfig) -> Result<Batcher<T>, ConfigError> {
        config.validate()?;
        Ok(Batcher {
            config,
            items: Vec::new(),
            bytes: 0,
            opened_ms: 0,
        })
    }

    /// Adds `item` (weighing `bytes`) at `now_ms`; returns the batch when this item made it
    /// reach `max_records` or `max_bytes`, or when the open batch had already reached its age
    /// (then the batch holds the earlier items and `item` opens the next one).
    pub fn push(&mut self, item: T, bytes: usize, now_ms: i64) -> Option<Batch<T>> {
        let aged = self.poll(now_ms);
        if self.items.is_empty() {
            self.opened_ms = now_ms;
        }
        self.items.push(item);
        self.bytes = self.bytes.saturating_add(bytes);
        if aged.is_some() {
            // The new item alone could fill a batch too; it is flushed on the next call.
            return aged;
        }
        if self.items.len() >= self.config.max_records {
            return self.take(FlushReason::Count);
        }
        if self.bytes >= self.config.max_bytes {
            return self.take(FlushReason::Bytes);
        }
        None
    }

    /// Flushes the open batch if its first item has waited `max_age_ms` by `now_ms`, or if it
    /// is already full (an item pushed right after an age flush).
    pub fn poll(&mut self, now_ms: i64) -> Option<Batch<T>> {
        if self.items.is_empty() {
            return None;
        }
        if self.items.len() >= self.config.max_records {
            return self.take(FlushReason::Count);
        }
        if self.bytes >= self.config.max_bytes {
            return self.take(FlushReason::Bytes);
        }
        let age = now_ms.saturating_sub(self.opened_ms);
        if age >= 0 && age as u64 >= self.config.max_age_ms {
            return self.take(FlushReason::Age);
        }
        None
    }

    /// When the open batch is due (ms), if one is open: its age deadline, or its opening time
    /// (already past) when it is full and waiting for [`Batcher::poll`].
    pub fn deadline(&self) -> Option<i64> {
        if self.items.is_empty() {
            None
        } else if self.items.len() >= self.config.max_records || self.bytes >= self.config.max_bytes
        {
            Some(self.opened_ms)
        } else {
            Some(
                self.opened_ms
                    .saturating_add(i64::try_from(self.config.max_age_ms).unwrap_or(i64::MAX)),
            )
        }
    }

    /// Flushes whatever is open.
    pub fn flush(&mut self) -> Option<Batch<T>> {
        if self.items.is_empty() {
            None
        } else {
            self.take(FlushReason::Forced)
        }
    }

    /// Items in the open batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no batch is open.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes in the open batch.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn take(&mut self, reason: FlushReason) -> Option<Batch<T>> {
        let bytes = std::mem::take(&mut self.bytes);
        Some(Batch {
            items: std::mem::take(&mut self.items),
            bytes,
            opened_ms: self.opened_ms,
            reason,
        })
    }
}

/// How a [`Sampler`] chooses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleMode {
    /// Keep the 1st, (n+1)-th, (2n+1)-th... item.
    EveryNth(u64),
    /// Keep each item with this probability (0.0 ..= 1.0), decided from the random `u64`
    /// passed with it.
    Probability(f64),
}

/// Keeps a sample of the items (counting kept and dropped).
#[derive(Debug, Clone)]
pub struct Sampler {
    mode: SampleMode,
    /// For `Probability`: keep when the random value is below this (`None`: keep all).
    threshold: Option<u64>,
    seen: u64,
    kept: u64,
    dropped: u64,
}

impl Sampler {
    /// A sampler (`EveryNth(0)` and probabilities outside 0..=1 are refused).
    pub fn new(mode: SampleMode) -> Result<Sampler, ConfigError> {
        let threshold = match mode {
            SampleMode::EveryNth(n) => {
                check(n >= 1, "every_nth", n, "1 ..= 18446744073709551615")?;
                None
            }
            SampleMode::Probability(p) => {
                check((0.0..=1.0).contains(&p), "probability", p, "0.0 ..= 1.0")?;
                if p >= 1.0 {
                    None
                } else {
                    // p * 2^64, exact for the float's precision.
                    Some((p * 18_446_744_073_709_551_616.0) as u64)
                }
            }
        };
        Ok(Sampler {
            mode,
            threshold,
            seen: 0,
            kept: 0,
            dropped: 0,
        })
    }

    /// Whether to keep the next item; `random` is a uniformly random `u64` (ignored by
    /// `EveryNth`).
    pub fn keep(&mut self, random: u64) -> bool {
        let keep = match self.mode {
            SampleMode::EveryNth(n) => self.seen.is_multiple_of(n),
            SampleMode::Probability(_) => match self.threshold {
                None => true,
                Some(t) => random < t,
            },
        };
        self.seen = self.seen.wrapping_add(1);
        if keep {
            self.kept += 1;
        } else {
            self.dropped += 1;
        }
        keep
    }

    /// Items kept so far.
    pub fn kept(&self) -> u64 {
        self.kept
    }

    /// Items dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A [`RateLimiter`]'s decision for one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the rate: pass it on.
    Pass,
    /// Over the rate: drop it (counted).
    Drop,
}

/// A token bucket: `burst` tokens, refilled at `rate_per_sec`; each item takes one token or is
/// dropped. Integer arithmetic in thousandths of a token, so it is exact.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate_per_sec: u64,
    capacity_milli: u64,
    tokens_milli: u64,
    last_ms: i64,
    passed: u64,
    dropped: u64,
}

impl RateLimiter {
    /// A bucket that starts full at `now_ms`.
    pub fn new(rate_per_sec: u64, burst: u64, now_ms: i64) -> Result<RateLimiter, ConfigError> {
        check(
            (1..=MAX_RATE_PER_SEC).contains(&rate_per_sec),
            "rate_per_sec",
            rate_per_sec,
            "1 ..= 10000000",
        )?;
        check(
            (1..=MAX_BURST).contains(&burst),
            "burst",
            burst,
            "1 ..= 10000000",
        )?;
        Ok(RateLimiter {
            rate_per_sec,
            capacity_milli: burst * 1000,
            tokens_milli: burst * 1000,
            last_ms: now_ms,
            passed: 0,
            dropped: 0,
        })
    }

    /// Decides for one item at `now_ms` (a clock going backwards refills nothing).
    pub fn check(&mut self, now_ms: i64) -> Decision {
        if now_ms > self.last_ms {
            let elapsed =
                u64::try_from(i128::from(now_ms) - i128::from(self.last_ms)).unwrap_or(u64::MAX);
            // rate tokens per second = rate thousandths of a token per ms.
            let refill = elapsed.saturating_mul(self.rate_per_sec);
            self.tokens_milli = self
                .tokens_milli
                .saturating_add(refill)
                .min(self.capacity_milli);
            self.last_ms = now_ms;
        }
        if self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            self.passed += 1;
            Decision::Pass
        } else {
            self.dropped += 1;
            Decision::Drop
        }
    }

    /// Items passed so far.
    pub fn passed(&self) -> u64 {
        self.passed
    }

    /// Items dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(r: usize, b: usize, a: u64) -> BatchConfig {
        BatchConfig {
            max_records: r,
            max_bytes: b,
            max_age_ms: a,
        }
    }

    #[test]
    fn batcher_flushes_by_count() {
        let mut b = Batcher::new(cfg(3, 1000, 1000)).unwrap();
        assert_eq!(b.push(1, 1, 0), None);
        assert_eq!(b.push(2, 1, 1), None);
        let batch = b.push(3, 1, 2).unwrap();
        assert_eq!(batch.items, vec![1, 2, 3]);
        assert_eq!(batch.reason, FlushReason::Count);
        assert_eq!(batch.bytes, 3);
        assert_eq!(batch.opened_ms, 0);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn batcher_flushes_by_bytes_at_the_threshold_not_before() {
        let mut b = Batcher::new(cfg(100, 10, 1000)).unwrap();
        assert_eq!(b.push("a", 4, 0), None);
        assert_eq!(b.push("b", 5, 0), None);
        assert_eq!(b.bytes(), 9);
        let batch = b.push("c", 1, 0).unwrap();
        assert_eq!(batch.reason, FlushReason::Bytes);
        assert_eq!(batch.bytes, 10);
        // One item larger than the bound is a batch of its own.
        let batch = b.push("big", 50, 0).unwrap();
        assert_eq!(batch.items, vec!["big"]);
    }

    #[test]
    fn batcher_flushes_by_age() {
        let mut b = Batcher::new(cfg(100, 1000, 50)).unwrap();
        assert_eq!(b.push(1, 1, 100), None);
        assert_eq!(b.deadline(), Some(150));
        assert_eq!(b.poll(149), None);
        let batch = b.poll(150).unwrap();
        assert_eq!((batch.items, batch.reason), (vec![1], FlushReason::Age));
        // An overdue batch is flushed by the next push, which opens a new one.
        b.push(2, 1, 200);
        let batch = b.push(3, 1, 260).unwrap();
        assert_eq!((batch.items, batch.reason), (vec![2], FlushReason::Age));
        assert_eq!(b.len(), 1);
        assert_eq!(b.deadline(), Some(310));
        let batch = b.flush().unwrap();
        assert_eq!((batch.items, batch.reason), (vec![3], FlushReason::Forced));
        assert_eq!(b.flush(), None);
        // A clock going backwards does not flush.
        b.push(4, 1, 1000);
        assert_eq!(b.poll(10), None);
    }

    #[test]
    fn batcher_full_item_after_age_flush_flushes_on_next_poll() {
        let mut b = Batcher::new(cfg(1, 1000, 10)).unwrap();
        // max_records 1: every push flushes itself.
        assert_eq!(b.push(1, 1, 0).unwrap().items, vec![1]);
        let mut b = Batcher::new(cfg(2, 1000, 10)).unwrap();
        b.push(1, 1, 0);
        let aged = b.push(2, 1000, 20).unwrap();
        assert_eq!(aged.items, vec![1]);
        // The full batch left behind is due at once.
        assert_eq!(b.deadline(), Some(20));
        let full = b.poll(20).unwrap();
        assert_eq!((full.items, full.reason), (vec![2], FlushReason::Bytes));
    }

    #[test]
    fn batch_config_bounds_and_one_past() {
        assert!(
            Batcher::<u8>::new(cfg(MAX_BATCH_RECORDS, MAX_BATCH_BYTES, MAX_BATCH_AGE_MS)).is_ok()
        );
        let e = Batcher::<u8>::new(cfg(MAX_BATCH_RECORDS + 1, 1, 1)).unwrap_err();
        assert_eq!(e.key, "max_records");
        let e = Batcher::<u8>::new(cfg(1, MAX_BATCH_BYTES + 1, 1)).unwrap_err();
        assert_eq!(e.key, "max_bytes");
        let e = Batcher::<u8>::new(cfg(1, 1, MAX_BATCH_AGE_MS + 1)).unwrap_err();
        assert_eq!(e.key, "max_age_ms");
        assert_eq!(
            Batcher::<u8>::new(cfg(0, 1, 1)).unwrap_err().key,
            "max_records"
        );
        assert_eq!(
            Batcher::<u8>::new(cfg(1, 0, 1)).unwrap_err().key,
            "max_bytes"
        );
        assert_eq!(
            Batcher::<u8>::new(cfg(1, 1, 0)).unwrap_err().key,
            "max_age_ms"
        );
    }

    #[test]
    fn sampler_every_nth() {
        let mut s = Sampler::new(SampleMode::EveryNth(3)).unwrap();
        let kept: Vec<bool> = (0..7).map(|_| s.keep(0)).collect();
        assert_eq!(kept, [true, false, false, true, false, false, true]);
        assert_eq!((s.kept(), s.dropped()), (3, 4));
        assert_eq!(
            Sampler::new(SampleMode::EveryNth(0)).unwrap_err().key,
            "every_nth"
        );
    }

    #[test]
    fn sampler_probability() {
        let mut s = Sampler::new(SampleMode::Probability(0.25)).unwrap();
        assert!(s.keep(0));
        assert!(s.keep(u64::MAX / 4 - 1));
        assert!(!s.keep(u64::MAX / 4 + 1));
        assert!(!s.keep(u64::MAX));
        let mut all = Sampler::new(SampleMode::Probability(1.0)).unwrap();
        assert!(all.keep(u64::MAX));
        let mut none = Sampler::new(SampleMode::Probability(0.0)).unwrap();
        assert!(!none.keep(0));
        // A spread of inputs keeps about the probability.
        let mut s = Sampler::new(SampleMode::Probability(0.1)).unwrap();
        let mut x = 1u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s.keep(x);
        }
        assert!((900..1100).contains(&s.kept()), "{}", s.kept());
        assert!(Sampler::new(SampleMode::Probability(1.0000001)).is_err());
        assert!(Sampler::new(SampleMode::Probability(-0.1)).is_err());
        assert!(Sampler::new(SampleMode::Probability(f64::NAN)).is_err());
    }

    #[test]
    fn rate_limiter_token_bucket() {
        let mut r = RateLimiter::new(10, 2, 0).unwrap();
        assert_eq!(r.check(0), Decision::Pass);
        assert_eq!(r.check(0), Decision::Pass);
        assert_eq!(r.check(0), Decision::Drop);
        // 10/s: one token per 100 ms.
        assert_eq!(r.check(99), Decision::Drop);
        assert_eq!(r.check(100), Decision::Pass);
        assert_eq!(r.check(150), Decision::Drop);
        // Refill stops at the burst.
        assert_eq!(r.check(10_000), Decision::Pass);
        assert_eq!(r.check(10_000), Decision::Pass);
        assert_eq!(r.check(10_000), Decision::Drop);
        // A clock going backwards refills nothing.
        assert_eq!(r.check(5), Decision::Drop);
        assert_eq!((r.passed(), r.dropped()), (5, 5));
    }

    #[test]
    fn rate_limiter_bounds_and_one_past() {
        assert!(RateLimiter::new(MAX_RATE_PER_SEC, MAX_BURST, 0).is_ok());
        assert_eq!(
            RateLimiter::new(MAX_RATE_PER_SEC + 1, 1, 0)
                .unwrap_err()
                .key,
            "rate_per_sec"
        );
        assert_eq!(
            RateLimiter::new(1, MAX_BURST + 1, 0).unwrap_err().key,
            "burst"
        );
        assert_eq!(RateLimiter::new(0, 1, 0).unwrap_err().key, "rate_per_sec");
        assert_eq!(RateLimiter::new(1, 0, 0).unwrap_err().key, "burst");
        // Huge elapsed times saturate instead of overflowing.
        let mut r = RateLimiter::new(MAX_RATE_PER_SEC, MAX_BURST, i64::MIN).unwrap();
        assert_eq!(r.check(i64::MAX), Decision::Pass);
    }
}
