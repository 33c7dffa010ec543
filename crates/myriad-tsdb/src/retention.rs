//! Retention per metric pattern: how long raw points and rollups of a series are kept.
//!
//! A [`RetentionPolicy`] holds rules tried in order (the first whose pattern matches the
//! series' metric applies) and a default for every other metric. Durations are in ms, rollups
//! kept at least as long as raw points. Patterns are metric names where `*` stands for any run
//! of characters (`debug.*`, `*_raw`, `*`); matching is iterative (no recursion), at most
//! pattern length x name length steps.

/// Most rules a policy may hold.
pub const MAX_RULES: usize = 64;
/// Longest pattern (bytes).
pub const MAX_PATTERN_LEN: usize = 256;

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// More than [`MAX_RULES`] rules.
    #[error("at most {MAX_RULES} retention rules, got {0}")]
    TooManyRules(usize),
    /// A pattern is empty or longer than [`MAX_PATTERN_LEN`].
    #[error("retention rule {0}: the metric pattern must be 1 to {MAX_PATTERN_LEN} bytes")]
    BadPattern(usize),
    /// A duration is not positive, or rollups would be kept shorter than raw points.
    #[error(
        "retention rule {0}: raw and rollup durations must be positive, rollups at least as long as raw"
    )]
    BadDurations(usize),
}

/// Keep raw points of the metrics matching `pattern` for `raw_ms`, rollups for `rollup_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    /// Metric name pattern (`*` matches any run of characters).
    pub pattern: String,
    /// How long raw points are kept (ms).
    pub raw_ms: i64,
    /// How long rollups are kept (ms), at least `raw_ms`.
    pub rollup_ms: i64,
}

/// The rules plus a default ([`RetentionPolicy::default`] keeps everything forever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    rules: Vec<RetentionRule>,
    default_raw_ms: i64,
    default_rollup_ms: i64,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default_raw_ms: i64::MAX,
            default_rollup_ms: i64::MAX,
        }
    }
}

impl RetentionPolicy {
    /// A policy of `rules` (first match wins) and a default for the other metrics.
    pub fn new(
        rules: Vec<RetentionRule>,
        default_raw_ms: i64,
        default_rollup_ms: i64,
    ) -> Result<Self, RetentionError> {
        if rules.len() > MAX_RULES {
            return Err(RetentionError::TooManyRules(rules.len()));
        }
        let ok = |raw: i64, rollup: i64| raw > 0 && rollup >= raw;
        for (i, r) in rules.iter().enumerate() {
            if r.pattern.is_empty() || r.pattern.len() > MAX_PATTERN_LEN {
                return Err(RetentionError::BadPattern(i));
            }
            if !ok(r.raw_ms, r.rollup_ms) {
                return Err(RetentionError::BadDurations(i));
            }
        }
        if !ok(default_raw_ms, default_rollup_ms) {
            return Err(RetentionError::BadDurations(rules.len()));
        }
        Ok(Self {
            rules,
            default_raw_ms,
            default_rollup_ms,
        })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[RetentionRule] {
        &self.rules
    }

    /// `(raw_ms, rollup_ms)` for `metric`.
    pub fn for_metric(&self, metric: &str) -> (i64, i64) {
        self.rules
            .iter()
            .find(|r| glob_match(&r.pattern, metric))
            .map_or((self.default_raw_ms, self.default_rollup_ms), |r| {
                (r.raw_ms, r.rollup_ms)
            })
    }

    /// Every duration of the policy, raw and rollup (the moments a partition crosses one are
    /// when its retention changes).
    pub fn durations(&self) -> impl Iterator<Item = i64> + '_ {
        self.rules
            .iter()
            .flat_map(|r| [r.raw_ms, r.rollup_ms])
            .chain([self.default_raw_ms, self.default_rollup_ms])
    }

    /// The longest raw duration: past it, no series of a partition keeps raw points.
    pub fn longest_raw_ms(&self) -> i64 {
        self.rules
            .iter()
            .map(|r| r.raw_ms)
            .fold(self.default_raw_ms, i64::max)
    }

    /// The longest rollup duration: a partition older than it holds nothing any rule keeps.
    pub fn longest_rollup_ms(&self) -> i64 {
        self.rules
            .iter()
            .map(|r| r.rollup_ms)
            .fold(self.default_rollup_ms, i64::max)
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of bytes (greedy with one
/// backtrack point: at most `pattern.len() * name.len()` steps, no recursion).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("temp", "temp", true),
            ("temp", "temp2", false),
            ("debug.*", "debug.x.y", true),
            ("debug.*", "debug", false),
            ("*_raw", "a_raw", true),
            ("*_raw", "a_raw_b", false),
            ("*", "", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("**", "x", true),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} {n}");
        }
        // Polynomial, not exponential, on a pathological pattern.
        let p = "*a".repeat(100);
        assert!(!glob_match(&p, &"a".repeat(99)));
    }

    #[test]
    fn first_match_wins_and_limits() {
        let rule = |p: &str, raw, rollup| RetentionRule {
            pattern: p.into(),
            raw_ms: raw,
            rollup_ms: rollup,
        };
        let p = RetentionPolicy::new(vec![rule("debug.*", 1, 2), rule("*", 3, 4)], 10, 20)
            .expect("valid");
        assert_eq!(p.for_metric("debug.x"), (1, 2));
        assert_eq!(p.for_metric("temp"), (3, 4));
        assert_eq!(p.longest_rollup_ms(), 20);
        assert_eq!(
            RetentionPolicy::new(vec![rule("a", 2, 1)], 10, 20),
            Err(RetentionError::BadDurations(0))
        );
        assert_eq!(
            RetentionPolicy::new(vec![rule("", 1, 1)], 10, 20),
            Err(RetentionError::BadPattern(0))
        );
        assert_eq!(
            RetentionPolicy::new(vec![rule(&"x".repeat(257), 1, 1)], 10, 20),
            Err(RetentionError::BadPattern(0))
        );
        assert_eq!(
            RetentionPolicy::new(vec![rule("a", 1, 1); 65], 10, 20),
            Err(RetentionError::TooManyRules(65))
        );
        assert!(RetentionPolicy::new(vec![rule("a", 1, 1); 64], 10, 20).is_ok());
        assert_eq!(
            RetentionPolicy::new(vec![], 0, 20),
            Err(RetentionError::BadDurations(0))
        );
    }
}
