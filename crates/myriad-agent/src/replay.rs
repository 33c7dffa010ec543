//! The replay pacer: after a reconnect, decides what goes out next, the spool's backlog or
//! live data, so the backlog drains at a configured rate and never holds live data up.
//!
//! Pure: the caller passes the time (`now_ms`), the backlog's size and whether a live message
//! waits, and reports what it sent. The rules:
//!
//! - backlog records go out at most [`ReplayConfig::records_per_sec`] on average (a token
//!   bucket holding at most [`ReplayConfig::burst`] records);
//! - when live data and a backlog with tokens both wait, sends are shared: live data gets
//!   [`ReplayConfig::live_share_percent`] of them, the backlog the rest (counted since both
//!   last started waiting), so neither starves;
//! - when the backlog has no token, live data goes at once; with nothing to send, the answer
//!   is [`Next::WaitUntil`] (the next token) or [`Next::Idle`].
//!
//! The platform refuses a sample more than one hour older than the newest of its series
//! (`too_old`, docs/limits.md). After an outage longer than that, live data sent before the
//! backlog would make the backlog's samples too old; a shell that must keep them appends live
//! data to the spool while a backlog waits (so everything goes in order) instead of using
//! [`Next::Live`].
//!
//! # Example
//!
//! ```
//! use myriad_agent::replay::{Next, Replay, ReplayConfig};
//!
//! let mut pacer = Replay::new(ReplayConfig::default(), 0)?;
//! // 500 records in the spool, a live message waiting: live first, then the backlog.
//! assert_eq!(pacer.next(0, 500, true), Next::Live);
//! pacer.sent_live();
//! let Next::Backlog { max_records } = pacer.next(0, 500, false) else { unreachable!() };
//! assert_eq!(max_records, 40); // the burst
//! pacer.sent_backlog(max_records);
//! // The bucket is empty: the next record may go 50 ms later (20 a second).
//! assert_eq!(pacer.next(0, 460, false), Next::WaitUntil(50));
//! # Ok::<(), myriad_agent::replay::ReplayConfigError>(())
//! ```
//!
//! # Limits
//!
//! | setting | default | bounds |
//! |---|---|---|
//! | `records_per_sec` | 20 | 1 ..= [`MAX_RATE`] (10,000) |
//! | `burst` | 40 | 1 ..= [`MAX_BURST`] (100,000) |
//! | `live_share_percent` | 50 | 1 ..= 99 (0 or 100 would starve one side) |

/// Highest `records_per_sec`.
pub const MAX_RATE: u32 = 10_000;
/// Highest `burst`.
pub const MAX_BURST: u32 = 100_000;

/// How fast the backlog drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Backlog records (messages) per second, on average.
    pub records_per_sec: u32,
    /// Records that may go back to back after a pause (the bucket's size).
    pub burst: u32,
    /// The share of sends given to live data when both wait, in percent.
    pub live_share_percent: u8,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            records_per_sec: 20,
            burst: 40,
            live_share_percent: 50,
        }
    }
}

/// A setting out of bounds (named).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay config: {0}")]
pub struct ReplayConfigError(pub String);

impl ReplayConfig {
    /// Checks the bounds; the error names the setting.
    pub fn validate(&self) -> Result<(), ReplayConfigError> {
        if !(1..=MAX_RATE).contains(&self.records_per_sec) {
            return Err(ReplayConfigError(format!(
                "records_per_sec {} not in 1..={MAX_RATE}",
                self.records_per_sec
            )));
        }
        if !(1..=MAX_BURST).contains(&self.burst) {
            return Err(ReplayConfigError(format!(
                "burst {} not in 1..={MAX_BURST}",
                self.burst
            )));
        }
        if !(1..=99).contains(&self.live_share_percent) {
            return Err(ReplayConfigError(format!(
                "live_share_percent {} not in 1..=99",
                self.live_share_percent
            )));
        }
        Ok(())
    }
}

/// What to send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The live message waiting.
    Live,
    /// Up to this many backlog records (peek them from the spool), then
    /// [`Replay::sent_backlog`] with how many went.
    Backlog {
        /// At most this many.
        max_records: u32,
    },
    /// Only backlog waits and it has no token: ask again at this time (unix ms, or whatever
    /// clock the caller passes).
    WaitUntil(u64),
    /// Nothing waits.
    Idle,
}

/// The pacer's state.
#[derive(Debug, Clone)]
pub struct Replay {
    config: ReplayConfig,
    /// Tokens in thousandths of a record.
    milli_tokens: u64,
    last_ms: u64,
    live_sent: u64,
    backlog_sent: u64,
}

impl Replay {
    /// A pacer with a full bucket at `now_ms`.
    pub fn new(config: ReplayConfig, now_ms: u64) -> Result<Replay, ReplayConfigError> {
        config.validate()?;
        Ok(Replay {
            config,
            milli_tokens: u64::from(config.burst) * 1000,
            last_ms: now_ms,
            live_sent: 0,
            backlog_sent: 0,
        })
    }

    fn refill(&mut self, now_ms: u64) {
        // A clock that goes back adds nothing.
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let cap = u64::from(self.config.burst) * 1000;
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(u64::from(self.config.records_per_sec)))
            .min(cap);
    }

    /// Backlog records that may go now.
    pub fn tokens(&mut self, now_ms: u64) -> u32 {
        self.refill(now_ms);
        (self.milli_tokens / 1000) as u32
    }

    /// What to send next, given the backlog's size (records) and whether live data waits.
    pub fn next(&mut self, now_ms: u64, backlog: u64, live_waiting: bool) -> Next {
        self.refill(now_ms);
        if backlog == 0 || !live_waiting {
            // No contention: the share starts again next time both wait.
            self.live_sent = 0;
            self.backlog_sent = 0;
        }
        let tokens = self.milli_tokens / 1000;
        let backlog_ready = backlog > 0 && tokens > 0;
        let max_records = tokens.min(backlog).min(u64::from(u32::MAX)) as u32;
        match (live_waiting, backlog_ready) {
            (false, false) if backlog == 0 => Next::Idle,
            (false, false) => {
                let need = 1000 - self.milli_tokens;
                let rate = u64::from(self.config.records_per_sec);
                Next::WaitUntil(self.last_ms + need.div_ceil(rate))
            }
            (true, false) => Next::Live,
            (false, true) => Next::Backlog { max_records },
            (true, true) => {
                let share = u64::from(self.config.live_share_percent);
                // Live while its share of the sends so far is at most its due.
                if self.live_sent * (100 - share) <= self.backlog_sent * share {
                    Next::Live
                } else {
                    // One record at a time while live data waits, so it is not held up.
                    Next::Backlog { max_records: 1 }
                }
            }
        }
    }

    /// Reports that `records` backlog records went out.
    pub fn sent_backlog(&mut self, records: u32) {
        self.milli_tokens = self.milli_tokens.saturating_sub(u64::from(records) * 1000);
        self.backlog_sent += u64::from(records);
    }

    /// Reports that a live message went out.
    pub fn sent_live(&mut self) {
        self.live_sent += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Drives the pacer for `ms` milliseconds with a backlog and maybe constant live data;
    /// returns (backlog records sent, live messages sent, sends in order).
    fn drive(config: ReplayConfig, mut backlog: u64, live: bool, ms: u64) -> (u64, u64, Vec<char>) {
        let mut r = Replay::new(config, 0).unwrap();
        let (mut b, mut l, mut order) = (0, 0, Vec::new());
        let mut now = 0;
        while now < ms {
            match r.next(now, backlog, live) {
                Next::Live => {
                    r.sent_live();
                    l += 1;
                    order.push('L');
                    now += 1; // a send takes a millisecond
                }
                Next::Backlog { max_records } => {
                    assert!(max_records >= 1 && u64::from(max_records) <= backlog);
                    r.sent_backlog(max_records);
                    backlog -= u64::from(max_records);
                    b += u64::from(max_records);
                    order.push('B');
                    now += 1;
                }
                Next::WaitUntil(t) => {
                    assert!(t > now);
                    now = t;
                }
                Next::Idle => break,
            }
        }
        (b, l, order)
    }

    #[test]
    fn the_backlog_drains_at_the_rate() {
        let c = ReplayConfig {
            records_per_sec: 100,
            burst: 10,
            live_share_percent: 50,
        };
        let (b, l, _) = drive(c, 1_000_000, false, 10_000);
        // The burst, then 100 per second.
        assert!((1000..=1010).contains(&b), "{b}");
        assert_eq!(l, 0);
        // A small backlog drains and then the pacer is idle.
        let mut r = Replay::new(c, 0).unwrap();
        assert_eq!(r.next(0, 3, false), Next::Backlog { max_records: 3 });
        r.sent_backlog(3);
        assert_eq!(r.next(0, 0, false), Next::Idle);
        // Empty bucket: wait for the next token (10 ms at 100/s).
        let mut r = Replay::new(c, 0).unwrap();
        r.sent_backlog(10);
        assert_eq!(r.next(0, 5, false), Next::WaitUntil(10));
        assert_eq!(r.next(10, 5, false), Next::Backlog { max_records: 1 });
        // A clock going back neither panics nor adds tokens.
        assert_eq!(r.next(5, 5, false), Next::Backlog { max_records: 1 });
    }

    #[test]
    fn live_data_is_never_starved_and_the_backlog_gets_its_share() {
        let half = ReplayConfig {
            records_per_sec: 10_000,
            burst: 100_000,
            live_share_percent: 50,
        };
        let (b, l, order) = drive(half, 1_000, true, 100);
        assert_eq!((b, l), (50, 50));
        assert!(
            order.windows(2).all(|w| w[0] != w[1]),
            "alternates: {order:?}"
        );
        let mostly_live = ReplayConfig {
            live_share_percent: 80,
            ..half
        };
        let (b, l, _) = drive(mostly_live, 1_000, true, 1000);
        assert_eq!((b, l), (200, 800));
        // Without tokens the live data goes every time.
        let slow = ReplayConfig {
            records_per_sec: 1,
            burst: 1,
            live_share_percent: 10,
        };
        let (b, l, _) = drive(slow, 1_000, true, 10_000);
        assert!(l >= 9_980 && b <= 11, "{b} {l}");
    }

    #[test]
    fn config_bounds_one_past() {
        ReplayConfig::default().validate().unwrap();
        let d = ReplayConfig::default();
        for bad in [
            ReplayConfig {
                records_per_sec: 0,
                ..d
            },
            ReplayConfig {
                records_per_sec: MAX_RATE + 1,
                ..d
            },
            ReplayConfig { burst: 0, ..d },
            ReplayConfig {
                burst: MAX_BURST + 1,
                ..d
            },
            ReplayConfig {
                live_share_percent: 0,
                ..d
            },
            ReplayConfig {
                live_share_percent: 100,
                ..d
            },
        ] {
            assert!(Replay::new(bad, 0).is_err(), "{bad:?}");
        }
        for ok in [
            ReplayConfig {
                records_per_sec: MAX_RATE,
                ..d
            },
            ReplayConfig {
                burst: MAX_BURST,
                ..d
            },
            ReplayConfig {
                live_share_percent: 99,
                ..d
            },
            ReplayConfig {
                live_share_percent: 1,
                ..d
            },
        ] {
            ok.validate().unwrap();
        }
    }

    proptest! {
        /// Over any run, backlog records sent never exceed the burst plus the rate times the
        /// time elapsed.
        #[test]
        fn never_faster_than_the_bucket(
            rate in 1u32..500, burst in 1u32..50, share in 1u8..100,
            steps in proptest::collection::vec((0u64..50, 0u64..20, any::<bool>()), 1..200),
        ) {
            let c = ReplayConfig { records_per_sec: rate, burst, live_share_percent: share };
            let mut r = Replay::new(c, 0).unwrap();
            let (mut now, mut sent) = (0u64, 0u64);
            for (dt, backlog, live) in steps {
                now += dt;
                match r.next(now, backlog, live) {
                    Next::Backlog { max_records } => {
                        prop_assert!(u64::from(max_records) <= backlog && max_records >= 1);
                        r.sent_backlog(max_records);
                        sent += u64::from(max_records);
                    }
                    Next::Live => {
                        prop_assert!(live);
                        r.sent_live();
                    }
                    Next::WaitUntil(t) => prop_assert!(t > now && backlog > 0 && !live),
                    Next::Idle => prop_assert!(backlog == 0 && !live),
                }
                prop_assert!(sent <= u64::from(burst) + now * u64::from(rate) / 1000);
            }
        }
    }
}
