//! Compact moments for per-connection and per-session state.
//!
//! An `Instant` is 16 bytes, and so is an `Option<Instant>`; a moment kept
//! by every connection or session is stored as [`Ticks`] instead: signed
//! nanoseconds from the broker's [`Epoch`], 8 bytes, exact both ways.

use std::time::{Duration, Instant};

/// A moment as nanoseconds from the broker's [`Epoch`] (negative: before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Ticks(i64);

impl Ticks {
    /// Later than every moment a broker sees: "not scheduled".
    pub(super) const NEVER: Ticks = Ticks(i64::MAX);

    /// Whole seconds from the epoch, rounded down.
    pub(super) fn secs(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }

    /// The moment `secs` whole seconds from the epoch.
    pub(super) fn from_secs(secs: i64) -> Ticks {
        Ticks(secs.saturating_mul(1_000_000_000))
    }

    /// This moment plus `duration`.
    pub(super) fn after(self, duration: Duration) -> Ticks {
        let nanos = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
        // Stays below NEVER: nothing real is scheduled that far away.
        Ticks(self.0.saturating_add(nanos).min(i64::MAX - 1))
    }
}

/// The moment [`Ticks`] count from: when the broker was created.
#[derive(Debug, Clone, Copy)]
pub(super) struct Epoch(Instant);

impl Epoch {
    /// Ticks counted from `at`.
    pub(super) fn new(at: Instant) -> Epoch {
        Epoch(at)
    }

    /// `at` as ticks.
    pub(super) fn ticks(self, at: Instant) -> Ticks {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX - 1);
        match at.checked_duration_since(self.0) {
            Some(after) => Ticks(nanos(after).min(i64::MAX - 1)),
            None => Ticks(-nanos(self.0.duration_since(at))),
        }
    }

    /// `ticks` as an instant (the epoch itself where it cannot be represented).
    pub(super) fn instant(self, ticks: Ticks) -> Instant {
        let nanos = ticks.0;
        let moment = if nanos >= 0 {
            self.0
                .checked_add(Duration::from_nanos(nanos.unsigned_abs()))
        } else {
            self.0
                .checked_sub(Duration::from_nanos(nanos.unsigned_abs()))
        };
        moment.unwrap_or(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_round_trip_exactly_on_both_sides_of_the_epoch() {
        let before = Instant::now();
        let epoch = Epoch::new(before + Duration::from_millis(1500));
        for at in [
            before,
            before + Duration::from_nanos(1),
            before + Duration::from_millis(1500),
            before + Duration::from_secs(86_400 * 365),
        ] {
            assert_eq!(epoch.instant(epoch.ticks(at)), at);
        }
        assert!(epoch.ticks(before) < epoch.ticks(before + Duration::from_nanos(1)));
        assert_eq!(epoch.ticks(before).secs(), -2);
        assert_eq!(epoch.ticks(before + Duration::from_millis(2500)).secs(), 1);
        assert_eq!(Ticks::from_secs(3).secs(), 3);
        assert!(Ticks(0).after(Duration::MAX) < Ticks::NEVER);
    }
}
