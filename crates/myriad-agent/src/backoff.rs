//! Reconnect delays: exponential backoff with full jitter (Marc Brooker, "Exponential Backoff
//! And Jitter", AWS Architecture Blog, 2015): before attempt `n` (0-based) wait a uniformly
//! random time in `0 ..= min(cap, base * 2^n)`. A fleet that lost its broker at the same
//! moment thus spreads its reconnects over the whole window instead of arriving in waves.
//!
//! Pure: the caller passes a random `u64` (from any RNG; the tests use a seeded one) and the
//! time. The attempt counter goes back to 0 only after a connection that stayed up for
//! [`BackoffConfig::reset_after_ms`]: a broker that accepts and then drops at once keeps the
//! delays growing.
//!
//! # How far a fleet spreads
//!
//! An agent in a window of `w` seconds tries about twice per `w`, so a fleet of `N` agents
//! arrives at about `2N / w` per second: the spread is bought with waiting. Measured with
//! 10,000 simulated agents (the test `ten_thousand_agents_spread_out_after_a_broker_restart`),
//! the busiest second after the broker comes back holds, with the defaults, about 4 % of the
//! fleet after a 30 s outage, 2 % after 2 min, 19 % after 5 s and 50 % when all start at
//! once (the first window, 2 s); with `base_ms = 10_000`, 10 % when all start at once and
//! 13 % after 5 s. A fleet whose broker accepts `R` connections a second should set
//! `base_ms` to about `2N / R` seconds.
//!
//! Use: [`Backoff::next_delay`] before every connection attempt, including the first one after
//! the agent starts or loses its connection (so a fleet restarted at once is spread too);
//! [`Backoff::connected`] when a connection is up; [`Backoff::disconnected`] when it is lost.
//!
//! # Example
//!
//! ```
//! use myriad_agent::backoff::{Backoff, BackoffConfig};
//!
//! let mut backoff = Backoff::new(BackoffConfig::default())?;
//! # let random = 0x9E37_79B9_7F4A_7C15_u64;
//! // Lost the connection: wait, then connect (random: the device RNG's next u64).
//! let wait_ms = backoff.next_delay(random);
//! assert!(wait_ms <= 2_000);
//! // The next failure waits up to 4 s, then 8 s, ... up to 2 min.
//! assert!(backoff.next_delay(random) <= 4_000);
//! backoff.connected(1_000);
//! backoff.disconnected(120_000); // up for two minutes: back to 2 s windows
//! assert_eq!(backoff.window_ms(), 2_000);
//! # Ok::<(), myriad_agent::backoff::BackoffConfigError>(())
//! ```
//!
//! # Limits
//!
//! | setting | default | bounds |
//! |---|---|---|
//! | `base_ms` | 2,000 | 1 ..= `cap_ms` |
//! | `cap_ms` | 120,000 (2 min) | `base_ms` ..= [`MAX_CAP_MS`] (1 h) |
//! | `reset_after_ms` | 60,000 | 0 ..= [`MAX_RESET_AFTER_MS`] (1 day) |

/// Highest `cap_ms` (one hour).
pub const MAX_CAP_MS: u64 = 3_600_000;
/// Highest `reset_after_ms` (one day).
pub const MAX_RESET_AFTER_MS: u64 = 86_400_000;

/// The backoff's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The first window (ms).
    pub base_ms: u64,
    /// The largest window (ms).
    pub cap_ms: u64,
    /// A connection up at least this long resets the windows (ms).
    pub reset_after_ms: u64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base_ms: 2_000,
            cap_ms: 120_000,
            reset_after_ms: 60_000,
        }
    }
}

/// A setting out of bounds (named).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backoff config: {0}")]
pub struct BackoffConfigError(pub String);

impl BackoffConfig {
    /// Checks the bounds; the error names the setting.
    pub fn validate(&self) -> Result<(), BackoffConfigError> {
        if self.cap_ms == 0 || self.cap_ms > MAX_CAP_MS {
            return Err(BackoffConfigError(format!(
                "cap_ms {} not in 1..={MAX_CAP_MS}",
                self.cap_ms
            )));
        }
        if self.base_ms == 0 || self.base_ms > self.cap_ms {
            return Err(BackoffConfigError(format!(
                "base_ms {} not in 1..=cap_ms ({})",
                self.base_ms, self.cap_ms
            )));
        }
        if self.reset_after_ms > MAX_RESET_AFTER_MS {
            return Err(BackoffConfigError(format!(
                "reset_after_ms {} not in 0..={MAX_RESET_AFTER_MS}",
                self.reset_after_ms
            )));
        }
        Ok(())
    }
}

/// The backoff's state.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    connected_at: Option<u64>,
}

impl Backoff {
    /// A fresh backoff (attempt 0).
    pub fn new(config: BackoffConfig) -> Result<Backoff, BackoffConfigError> {
        config.validate()?;
        Ok(Backoff {
            config,
            attempt: 0,
            connected_at: None,
        })
    }

    /// The attempts counted since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The window of the next attempt: `min(cap, base * 2^attempt)` (ms).
    pub fn window_ms(&self) -> u64 {
        let shift = self.attempt.min(63);
        self.config
            .base_ms
            .saturating_mul(1u64 << shift)
            .min(self.config.cap_ms)
    }

    /// The delay before the next attempt (ms), uniform in `0 ..= window` from `random`;
    /// counts the attempt.
    pub fn next_delay(&mut self, random: u64) -> u64 {
        let window = self.window_ms();
        self.attempt = self.attempt.saturating_add(1);
        // Multiply-shift: uniform over 0..=window without a modulo's bias worth noting.
        ((u128::from(random) * (u128::from(window) + 1)) >> 64) as u64
    }

    /// A connection is up at `now_ms`.
    pub fn connected(&mut self, now_ms: u64) {
        self.connected_at = Some(now_ms);
    }

    /// The connection was lost at `now_ms`: the windows start again from `base_ms` when it
    /// stayed up for `reset_after_ms`, else they keep growing.
    pub fn disconnected(&mut self, now_ms: u64) {
        if let Some(at) = self.connected_at.take()
            && now_ms.saturating_sub(at) >= self.config.reset_after_ms
        {
            self.attempt = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// splitmix64: a seeded stand-in for the device's RNG.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn windows_double_up_to_the_cap_and_reset_after_a_long_connection() {
        let mut b = Backoff::new(BackoffConfig::default()).unwrap();
        let mut windows = Vec::new();
        for _ in 0..10 {
            windows.push(b.window_ms());
            assert!(b.next_delay(u64::MAX) <= windows[windows.len() - 1]);
        }
        assert_eq!(
            windows,
            [
                2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 120_000, 120_000, 120_000, 120_000
            ]
        );
        assert_eq!(b.next_delay(0), 0);
        assert_eq!(b.next_delay(u64::MAX), 120_000);
        // Up for less than reset_after: the windows keep growing.
        b.connected(1_000);
        b.disconnected(60_999);
        assert_eq!(b.window_ms(), 120_000);
        // Up long enough: back to the base.
        b.connected(100_000);
        b.disconnected(160_000);
        assert_eq!((b.attempt(), b.window_ms()), (0, 2_000));
        // A disconnect without a connect changes nothing; huge attempt counts do not overflow.
        b.disconnected(10_000_000);
        for _ in 0..200 {
            b.next_delay(u64::MAX);
        }
        assert_eq!(b.window_ms(), 120_000);
    }

    #[test]
    fn delays_are_uniform_over_the_window() {
        let mut rng = Rng(42);
        let config = BackoffConfig::default();
        for attempt in 0..9u32 {
            let mut sum = 0u64;
            let mut max = 0;
            let mut min = u64::MAX;
            let n = 20_000;
            for _ in 0..n {
                let mut b = Backoff::new(config).unwrap();
                b.attempt = attempt;
                let w = b.window_ms();
                let d = b.next_delay(rng.next());
                assert!(d <= w);
                sum += d;
                max = max.max(d);
                min = min.min(d);
            }
            let w = Backoff {
                config,
                attempt,
                connected_at: None,
            }
            .window_ms();
            let mean = sum as f64 / n as f64;
            // Mean w/2 within 2 % of the window; both ends reached within 0.1 %.
            assert!(
                (mean - w as f64 / 2.0).abs() < w as f64 * 0.02,
                "attempt {attempt}: {mean}"
            );
            assert!(max as f64 > w as f64 * 0.999 && (min as f64) < w as f64 * 0.001);
        }
    }

    #[test]
    fn config_bounds_one_past() {
        let d = BackoffConfig::default();
        for bad in [
            BackoffConfig { base_ms: 0, ..d },
            BackoffConfig {
                base_ms: d.cap_ms + 1,
                ..d
            },
            BackoffConfig {
                cap_ms: MAX_CAP_MS + 1,
                ..d
            },
            BackoffConfig { cap_ms: 0, ..d },
            BackoffConfig {
                reset_after_ms: MAX_RESET_AFTER_MS + 1,
                ..d
            },
        ] {
            assert!(Backoff::new(bad).is_err(), "{bad:?}");
        }
        Backoff::new(BackoffConfig {
            base_ms: d.cap_ms,
            ..d
        })
        .unwrap();
        Backoff::new(BackoffConfig {
            cap_ms: MAX_CAP_MS,
            ..d
        })
        .unwrap();
        Backoff::new(BackoffConfig {
            reset_after_ms: MAX_RESET_AFTER_MS,
            ..d
        })
        .unwrap();
    }

    /// Reconnect times of `AGENTS` agents that all lost the broker at t = 0, the broker
    /// accepting every attempt from `down_until` on: (connect time of each agent, attempts).
    fn herd(config: BackoffConfig, down_until: u64, seed: u64) -> (Vec<u64>, usize) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        const AGENTS: usize = 10_000;
        let mut rng = Rng(seed);
        let mut backoffs: Vec<Backoff> =
            (0..AGENTS).map(|_| Backoff::new(config).unwrap()).collect();
        let mut due: BinaryHeap<Reverse<(u64, usize)>> = (0..AGENTS)
            .map(|i| Reverse((backoffs[i].next_delay(rng.next()), i)))
            .collect();
        let mut done = vec![0; AGENTS];
        let mut attempts = 0;
        while let Some(Reverse((t, i))) = due.pop() {
            attempts += 1;
            if t >= down_until {
                done[i] = t;
            } else {
                // The attempt fails (refused at once); the next waits its delay.
                let d = backoffs[i].next_delay(rng.next());
                due.push(Reverse((t + d, i)));
            }
        }
        (done, attempts)
    }

    /// 10,000 agents lose the broker at once; it is back after `down` ms. Their reconnects
    /// spread over the window they are in when it comes back (a fixed delay would put all
    /// 10,000 into the same millisecond): the busiest second holds at most `max_percent` of
    /// the fleet, all are back within two windows of the cap, and the attempts per agent
    /// stay logarithmic in the outage.
    #[test]
    fn ten_thousand_agents_spread_out_after_a_broker_restart() {
        let default = BackoffConfig::default();
        let slow_start = BackoffConfig {
            base_ms: 10_000,
            ..default
        };
        for (config, down, max_percent) in [
            (default, 30_000, 5),
            (default, 120_000, 3),
            (default, 5_000, 25),
            (default, 0, 55),
            // A fleet that needs a flatter start raises base_ms (see the module docs).
            (slow_start, 0, 11),
            (slow_start, 5_000, 15),
        ] {
            let (done, attempts) = herd(config, down, down ^ config.base_ms);
            let mut per_second = std::collections::BTreeMap::<u64, usize>::new();
            for t in &done {
                *per_second.entry(t / 1000).or_default() += 1;
            }
            let max = per_second.values().max().copied().unwrap_or(0);
            let last = done.iter().max().copied().unwrap_or(0);
            let base = config.base_ms;
            assert!(
                max * 100 <= done.len() * max_percent,
                "base {base} ms, down {down} ms: {max} reconnects in one second"
            );
            assert!(
                last <= down + 2 * config.cap_ms,
                "down {down} ms: last back at {last} ms"
            );
            assert!(
                attempts <= done.len() * 12,
                "down {down} ms: {attempts} attempts"
            );
        }
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_the_window(
            base in 1u64..10_000, extra in 0u64..1_000_000, attempts in 0u32..100, r in any::<u64>(),
        ) {
            let config = BackoffConfig { base_ms: base, cap_ms: base + extra, reset_after_ms: 0 };
            let mut b = Backoff::new(config).unwrap();
            for _ in 0..attempts {
                b.next_delay(r);
            }
            let w = b.window_ms();
            prop_assert!(w >= base && w <= config.cap_ms);
            prop_assert!(b.next_delay(r) <= w);
        }
    }
}
