//! What an operator asks of a rollout: how its devices are split into waves, when it aborts,
//! and how long a device may take. [`RolloutSpec::validate`] bounds every field; the planner
//! refuses a spec that fails it, and so does a restore from stored records.

use serde::{Deserialize, Serialize};

/// Most waves a listed plan ([`WavePlan::Percent`], [`WavePlan::Count`]) may name.
pub const MAX_LISTED_WAVES: usize = 64;
/// Largest growth factor of an exponential plan.
pub const MAX_WAVE_FACTOR: u32 = 100;
/// Most retries per device after a failure or a timeout.
pub const MAX_RETRIES: u32 = 10;
/// Shortest timeout (milliseconds) a spec may set.
pub const MIN_TIMEOUT_MS: u64 = 1_000;
/// Longest timeout (milliseconds) a spec may set: 30 days.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;

/// How the devices of a rollout are split into waves. Devices are taken in the order the
/// rollout lists them; each wave starts once the one before it has finished far enough
/// ([`RolloutSpec::advance_percent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WavePlan {
    /// Each entry is a wave's share of all devices in percent (1..=100, summing to at most
    /// 100); devices left after the listed waves form one final wave.
    Percent(Vec<u8>),
    /// Each entry is a wave's number of devices (at least 1); devices left after the listed
    /// waves form one final wave.
    Count(Vec<u32>),
    /// Wave `i` has `first * factor^i` devices (`factor` 1 gives fixed-size batches).
    Exponential {
        /// Devices in the first wave (at least 1).
        first: u32,
        /// Growth per wave (1..=[`MAX_WAVE_FACTOR`]).
        factor: u32,
    },
}

/// When a rollout stops notifying devices because too many failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortThreshold {
    /// Abort once failures are more than this share (percent, 0..=100) of finished devices.
    pub max_failure_percent: u8,
    /// ... and at least this many devices have finished (succeeded or failed for good).
    pub min_finished: u32,
}

/// Everything an operator chooses about a rollout, apart from which devices it targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// How devices are split into waves.
    pub waves: WavePlan,
    /// The next wave starts once this share (percent, 1..=100) of the current wave has
    /// finished.
    pub advance_percent: u8,
    /// Abort rule; `None` never aborts.
    pub abort: Option<AbortThreshold>,
    /// A device that reported progress and then stays silent this long (milliseconds) times
    /// out.
    pub in_progress_timeout_ms: u64,
    /// A notified device that never starts times out after this long (milliseconds); `None`
    /// waits for it (an offline device gets its notification when it comes back).
    pub pending_timeout_ms: Option<u64>,
    /// How often a device is notified again after it failed or timed out (at most
    /// [`MAX_RETRIES`]). A device that rejects the update or rolls back is not retried.
    pub max_retries: u32,
}

impl Default for RolloutSpec {
    /// One wave of every device, no abort rule, one hour in-progress timeout, no retries.
    fn default() -> Self {
        Self {
            waves: WavePlan::Percent(vec![100]),
            advance_percent: 100,
            abort: None,
            in_progress_timeout_ms: 3600 * 1000,
            pending_timeout_ms: None,
            max_retries: 0,
        }
    }
}

/// Why a rollout spec was refused; each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A listed plan is empty or names more than [`MAX_LISTED_WAVES`] waves.
    #[error("waves: between 1 and {MAX_LISTED_WAVES} waves, got {0}")]
    WaveCount(usize),
    /// A percent wave is 0 or the percents sum past 100.
    #[error("waves: each percent 1..=100 and their sum at most 100")]
    WavePercent,
    /// A counted wave is empty.
    #[error("waves: each count at least 1")]
    WaveSize,
    /// An exponential plan with `first` 0 or `factor` outside 1..=[`MAX_WAVE_FACTOR`].
    #[error("waves: exponential first at least 1, factor 1..={MAX_WAVE_FACTOR}")]
    Exponential,
    /// `advance_percent` is outside 1..=100.
    #[error("advance_percent: 1..=100, got {0}")]
    AdvancePercent(u8),
    /// `abort.max_failure_percent` is over 100.
    #[error("abort.max_failure_percent: 0..=100, got {0}")]
    FailurePercent(u8),
    /// A timeout outside [`MIN_TIMEOUT_MS`]..=[`MAX_TIMEOUT_MS`].
    #[error("{0}: between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS} ms, got {1}")]
    Timeout(&'static str, u64),
    /// `max_retries` over [`MAX_RETRIES`].
    #[error("max_retries: at most {MAX_RETRIES}, got {0}")]
    Retries(u32),
}

impl RolloutSpec {
    /// Checks every field against its bound.
    pub fn validate(&self) -> Result<(), SpecError> {
        match &self.waves {
            WavePlan::Percent(shares) => {
                check_listed(shares.len())?;
                let sum: u32 = shares.iter().map(|&p| u32::from(p)).sum();
                if shares.contains(&0) || sum > 100 {
                    return Err(SpecError::WavePercent);
                }
            }
            WavePlan::Count(sizes) => {
                check_listed(sizes.len())?;
                if sizes.contains(&0) {
                    return Err(SpecError::WaveSize);
                }
            }
            WavePlan::Exponential { first, factor } => {
                if *first == 0 || !(1..=MAX_WAVE_FACTOR).contains(factor) {
                    return Err(SpecError::Exponential);
                }
            }
        }
        if !(1..=100).contains(&self.advance_percent) {
            return Err(SpecError::AdvancePercent(self.advance_percent));
        }
        if let Some(abort) = self.abort
            && abort.max_failure_percent > 100
        {
            return Err(SpecError::FailurePercent(abort.max_failure_percent));
        }
        check_timeout("in_progress_timeout_ms", self.in_progress_timeout_ms)?;
        if let Some(pending) = self.pending_timeout_ms {
            check_timeout("pending_timeout_ms", pending)?;
        }
        if self.max_retries > MAX_RETRIES {
            return Err(SpecError::Retries(self.max_retries));
        }
        Ok(())
    }

    /// Number of devices in wave `wave` (0-based) of a rollout over `total` devices, given
    /// that waves before it cover `covered` devices. 0 once every device is covered.
    pub(crate) fn wave_size(&self, wave: u32, covered: u32, total: u32) -> u32 {
        let left = total.saturating_sub(covered);
        let wanted = match &self.waves {
            WavePlan::Percent(shares) => match shares.get(wave as usize) {
                Some(_) => {
                    let cumulative: u64 =
                        shares[..=wave as usize].iter().map(|&p| u64::from(p)).sum();
                    let end = (u64::from(total) * cumulative).div_ceil(100);
                    // Rounding never leaves a listed wave empty while devices remain.
                    (end.saturating_sub(u64::from(covered)) as u32).max(1)
                }
                None => left,
            },
            WavePlan::Count(sizes) => sizes.get(wave as usize).copied().unwrap_or(left),
            WavePlan::Exponential { first, factor } => {
                let growth = factor.checked_pow(wave).unwrap_or(u32::MAX);
                first.saturating_mul(growth)
            }
        };
        wanted.min(left)
    }
}

fn check_listed(len: usize) -> Result<(), SpecError> {
    if len == 0 || len > MAX_LISTED_WAVES {
        return Err(SpecError::WaveCount(len));
    }
    Ok(())
}

fn check_timeout(field: &'static str, ms: u64) -> Result<(), SpecError> {
    if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) {
        return Err(SpecError::Timeout(field, ms));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(spec: &RolloutSpec, total: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut covered = 0;
        for wave in 0.. {
            let size = spec.wave_size(wave, covered, total);
            if size == 0 {
                break;
            }
            covered += size;
            out.push(size);
        }
        out
    }

    fn plan(waves: WavePlan) -> RolloutSpec {
        RolloutSpec {
            waves,
            ..RolloutSpec::default()
        }
    }

    #[test]
    fn percent_waves_round_up_and_leave_a_final_wave() {
        let spec = plan(WavePlan::Percent(vec![1, 10, 50]));
        assert_eq!(sizes(&spec, 1000), vec![10, 100, 500, 390]);
        // 1% of 7 devices rounds up to one; no listed wave is empty.
        assert_eq!(sizes(&spec, 7), vec![1, 1, 3, 2]);
        assert_eq!(sizes(&spec, 1), vec![1]);
        assert_eq!(sizes(&plan(WavePlan::Percent(vec![100])), 5), vec![5]);
    }

    #[test]
    fn counted_and_exponential_waves() {
        assert_eq!(sizes(&plan(WavePlan::Count(vec![2, 3])), 10), vec![2, 3, 5]);
        assert_eq!(sizes(&plan(WavePlan::Count(vec![20])), 10), vec![10]);
        let doubling = plan(WavePlan::Exponential {
            first: 1,
            factor: 2,
        });
        assert_eq!(sizes(&doubling, 20), vec![1, 2, 4, 8, 5]);
        let batches = plan(WavePlan::Exponential {
            first: 3,
            factor: 1,
        });
        assert_eq!(sizes(&batches, 7), vec![3, 3, 1]);
        // Growth saturates instead of overflowing.
        let steep = plan(WavePlan::Exponential {
            first: 1_000_000,
            factor: 100,
        });
        assert_eq!(
            sizes(&steep, u32::MAX),
            vec![1_000_000, 100_000_000, u32::MAX - 101_000_000]
        );
    }

    #[test]
    fn every_bound_is_checked() {
        let ok = RolloutSpec::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            (plan(WavePlan::Percent(vec![])), SpecError::WaveCount(0)),
            (
                plan(WavePlan::Count(vec![1; MAX_LISTED_WAVES + 1])),
                SpecError::WaveCount(65),
            ),
            (
                plan(WavePlan::Percent(vec![50, 51])),
                SpecError::WavePercent,
            ),
            (plan(WavePlan::Percent(vec![0, 10])), SpecError::WavePercent),
            (plan(WavePlan::Count(vec![1, 0])), SpecError::WaveSize),
            (
                plan(WavePlan::Exponential {
                    first: 0,
                    factor: 2,
                }),
                SpecError::Exponential,
            ),
            (
                plan(WavePlan::Exponential {
                    first: 1,
                    factor: 0,
                }),
                SpecError::Exponential,
            ),
            (
                plan(WavePlan::Exponential {
                    first: 1,
                    factor: MAX_WAVE_FACTOR + 1,
                }),
                SpecError::Exponential,
            ),
            (
                RolloutSpec {
                    advance_percent: 0,
                    ..ok.clone()
                },
                SpecError::AdvancePercent(0),
            ),
            (
                RolloutSpec {
                    advance_percent: 101,
                    ..ok.clone()
                },
                SpecError::AdvancePercent(101),
            ),
            (
                RolloutSpec {
                    abort: Some(AbortThreshold {
                        max_failure_percent: 101,
                        min_finished: 1,
                    }),
                    ..ok.clone()
                },
                SpecError::FailurePercent(101),
            ),
            (
                RolloutSpec {
                    in_progress_timeout_ms: MIN_TIMEOUT_MS - 1,
                    ..ok.clone()
                },
                SpecError::Timeout("in_progress_timeout_ms", 999),
            ),
            (
                RolloutSpec {
                    pending_timeout_ms: Some(MAX_TIMEOUT_MS + 1),
                    ..ok.clone()
                },
                SpecError::Timeout("pending_timeout_ms", MAX_TIMEOUT_MS + 1),
            ),
            (
                RolloutSpec {
                    max_retries: MAX_RETRIES + 1,
                    ..ok.clone()
                },
                SpecError::Retries(11),
            ),
        ];
        for (spec, error) in bad {
            assert_eq!(spec.validate(), Err(error), "{spec:?}");
        }
        // The bounds themselves are accepted.
        let edge = RolloutSpec {
            waves: WavePlan::Count(vec![1; MAX_LISTED_WAVES]),
            advance_percent: 100,
            abort: Some(AbortThreshold {
                max_failure_percent: 100,
                min_finished: 0,
            }),
            in_progress_timeout_ms: MAX_TIMEOUT_MS,
            pending_timeout_ms: Some(MIN_TIMEOUT_MS),
            max_retries: MAX_RETRIES,
        };
        assert_eq!(edge.validate(), Ok(()));
    }
}
