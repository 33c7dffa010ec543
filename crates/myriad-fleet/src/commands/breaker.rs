//! A circuit breaker with an injected clock (unix ms).
//!
//! Closed: calls pass; the breaker opens after `consecutive_failures`
//! failures in a row, or when at least `min_calls` outcomes in the last
//! `window_ms` hold a failure share of `failure_rate` or more. Open: calls
//! fail fast until `cool_down_ms` has passed. Half-open: up to
//! `half_open_probes` calls pass as probes; a successful probe closes the
//! breaker, a failed one opens it again for another cool-down.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failures in a row that open the breaker (0: never by this rule).
    pub consecutive_failures: u32,
    /// Share of failures (0.0 to 1.0) in the window that opens it.
    pub failure_rate: f64,
    /// Outcomes the window needs before the rate counts.
    pub min_calls: u32,
    /// Length of the sliding window, ms.
    pub window_ms: u64,
    /// How long an open breaker fails fast before probing, ms.
    pub cool_down_ms: u64,
    /// Calls let through at once while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_calls: 20,
            window_ms: 30_000,
            cool_down_ms: 10_000,
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// Checks the values; `Err` names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.failure_rate) || self.failure_rate.is_nan() {
            return Err("failure_rate: between 0.0 and 1.0".into());
        }
        if self.window_ms == 0 {
            return Err("window_ms: at least 1".into());
        }
        if self.half_open_probes == 0 {
            return Err("half_open_probes: at least 1".into());
        }
        Ok(())
    }
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few probe calls pass.
    HalfOpen,
}

/// A breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen {
    /// When it will let a probe through (unix ms).
    pub retry_at: u64,
}

/// What a breaker looks like now, for the API and metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerSnapshot {
    /// Its state.
    pub state: BreakerState,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Outcomes in the window.
    pub window_calls: u32,
    /// Failures in the window.
    pub window_failures: u32,
    /// How many times it opened.
    pub opened: u64,
    /// When an open breaker lets a probe through (unix ms).
    pub retry_at: Option<u64>,
}

/// One circuit breaker. See the module docs.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    consecutive: u32,
    /// (time, failed) of recent outcomes, oldest first.
    window: VecDeque<(u64, bool)>,
    failures_in_window: u32,
    open_until: u64,
    probes_out: u32,
    opened: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed,
            consecutive: 0,
            window: VecDeque::new(),
            failures_in_window: 0,
            open_until: 0,
            probes_out: 0,
            opened: 0,
        }
    }

    /// The state at `now` (an open breaker past its cool-down is half-open).
    pub fn state(&self, now: u64) -> BreakerState {
        match self.state {
            BreakerState::Open if now >= self.open_until => BreakerState::HalfOpen,
            state => state,
        }
    }

    /// Asks to make a call at `now`. While half-open this takes a probe slot
    /// that [`Breaker::record`] gives back.
    pub fn try_call(&mut self, now: u64) -> Result<(), BreakerOpen> {
        if self.state == BreakerState::Open && now >= self.open_until {
            self.state = BreakerState::HalfOpen;
            self.probes_out = 0;
        }
        match self.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => Err(BreakerOpen {
                retry_at: self.open_until,
            }),
            BreakerState::HalfOpen if self.probes_out < self.config.half_open_probes => {
                self.probes_out += 1;
                Ok(())
            }
            BreakerState::HalfOpen => Err(BreakerOpen { retry_at: now }),
        }
    }

    /// Whether a call at `now` would be let through (takes nothing).
    pub fn would_allow(&self, now: u64) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                self.state == BreakerState::Open || self.probes_out < self.config.half_open_probes
            }
        }
    }

    /// Records the outcome of a call made at `now`.
    pub fn record(&mut self, now: u64, success: bool) {
        self.trim(now);
        self.window.push_back((now, !success));
        if !success {
            self.failures_in_window += 1;
        }
        match self.state {
            BreakerState::HalfOpen => {
                self.probes_out = self.probes_out.saturating_sub(1);
                if success {
                    self.close();
                } else {
                    self.open(now);
                }
            }
            BreakerState::Open => {
                // A late outcome of a call made before it opened.
            }
            BreakerState::Closed => {
                if success {
                    self.consecutive = 0;
                } else {
                    self.consecutive += 1;
                    if self.should_open() {
                        self.open(now);
                    }
                }
            }
        }
    }

    /// Gives back a half-open probe slot of a call that ended without an
    /// outcome (cancelled, expired).
    pub fn release(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.probes_out = self.probes_out.saturating_sub(1);
        }
    }

    fn should_open(&self) -> bool {
        let by_streak = self.config.consecutive_failures > 0
            && self.consecutive >= self.config.consecutive_failures;
        let calls = self.window.len() as u32;
        let by_rate = calls >= self.config.min_calls.max(1)
            && f64::from(self.failures_in_window) >= self.config.failure_rate * f64::from(calls);
        by_streak || by_rate
    }

    fn open(&mut self, now: u64) {
        self.state = BreakerState::Open;
        self.open_until = now.saturating_add(self.config.cool_down_ms);
        self.probes_out = 0;
        self.opened += 1;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.consecutive = 0;
        self.window.clear();
        self.failures_in_window = 0;
    }

    fn trim(&mut self, now: u64) {
        let window = self.config.window_ms;
        while let Some(&(at, failed)) = self.window.front() {
            if at.saturating_add(window) > now {
                break;
            }
            self.window.pop_front();
            if failed {
                self.failures_in_window -= 1;
            }
        }
    }

    /// Whether it holds nothing worth keeping (closed, no recent outcomes).
    pub fn is_idle(&mut self, now: u64) -> bool {
        self.trim(now);
        self.state == BreakerState::Closed && self.window.is_empty()
    }

    /// Its state and counters at `now`.
    pub fn snapshot(&self, now: u64) -> BreakerSnapshot {
        let window = self.config.window_ms;
        let recent = self
            .window
            .iter()
            .filter(|(at, _)| at.saturating_add(window) > now);
        let (calls, failures) = recent.fold((0u32, 0u32), |(c, f), (_, failed)| {
            (c + 1, f + u32::from(*failed))
        });
        let state = self.state(now);
        BreakerSnapshot {
            state,
            consecutive_failures: self.consecutive,
            window_calls: calls,
            window_failures: failures,
            opened: self.opened,
            retry_at: (state == BreakerState::Open).then_some(self.open_until),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            min_calls: 6,
            window_ms: 1_000,
            cool_down_ms: 500,
            half_open_probes: 1,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_fails_fast() {
        let mut b = Breaker::new(config());
        for t in 0..2 {
            assert!(b.try_call(t).is_ok());
            b.record(t, false);
        }
        b.record(5, true); // the streak restarts
        for t in 10..12 {
            b.record(t, false);
        }
        assert_eq!(b.state(12), BreakerState::Closed);
        b.record(12, false);
        assert_eq!(b.state(13), BreakerState::Open);
        assert_eq!(b.try_call(100), Err(BreakerOpen { retry_at: 512 }));
        assert_eq!(b.snapshot(100).opened, 1);
    }

    #[test]
    fn opens_on_failure_rate_over_the_window() {
        let mut b = Breaker::new(config());
        // Alternating: never 3 in a row, but half fail.
        for t in 0..5 {
            b.record(t, t % 2 == 0);
        }
        assert_eq!(b.state(5), BreakerState::Closed, "too few calls yet");
        b.record(5, false);
        assert_eq!(b.state(6), BreakerState::Open);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let mut b = Breaker::new(config());
        for t in 0..3 {
            b.record(t, t == 1);
        }
        b.record(3, true);
        // 1.5 s later the early failures are gone: 5 good + 1 bad stays closed.
        for t in 1_500..1_505 {
            b.record(t, true);
        }
        b.record(1_506, false);
        assert_eq!(b.state(1_507), BreakerState::Closed);
        assert_eq!(b.snapshot(1_507).window_calls, 6);
    }

    #[test]
    fn half_open_probe_closes_or_reopens() {
        let mut b = Breaker::new(config());
        for t in 0..3 {
            b.record(t, false);
        }
        assert!(b.try_call(100).is_err());
        assert_eq!(b.state(502), BreakerState::HalfOpen);
        assert!(b.try_call(502).is_ok(), "one probe");
        assert!(b.try_call(503).is_err(), "only one probe at a time");
        b.record(600, false);
        assert_eq!(b.state(601), BreakerState::Open, "failed probe reopens");
        assert_eq!(b.snapshot(601).retry_at, Some(1_100));
        assert!(b.try_call(1_100).is_ok());
        b.record(1_150, true);
        assert_eq!(b.state(1_151), BreakerState::Closed);
        assert!(b.try_call(1_152).is_ok());
        assert_eq!(b.snapshot(1_152).opened, 2);
    }
}
