//! The leak watchdog: compares live connection tasks, online sessions and
//! open sockets, and watches allocator memory.
//!
//! [`Watchdog::check`] is a pure function of the samples it was given (unit
//! tested here); [`task::run`] is the thin periodic shell that takes the
//! samples from a running broker, logs a warning and sets the metrics.
//!
//! Rules (the seed platform's):
//! - connection tasks registered with a session and the broker's online
//!   network sessions must agree within 15% of the larger count (plus a
//!   small absolute slack, so a handful of connections in flight between
//!   a task and the core is not an alarm);
//! - open sockets and live connection tasks likewise, when the process's
//!   sockets are known (Linux `/proc/self/fd`, minus the sockets open when
//!   the watchdog started: listeners);
//! - allocator memory that grows at every one of `growth_checks`
//!   consecutive checks, by more than `growth_min_bytes` in all, while the
//!   number of connection tasks does not grow, is a suspected leak.

pub mod task;

use std::collections::VecDeque;

/// What one check looks at.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Connection tasks alive (handshaking or serving).
    pub tasks: u64,
    /// Connection tasks registered with a session.
    pub registered_tasks: u64,
    /// Network sessions online according to the broker core.
    pub sessions_online: u64,
    /// Open sockets beyond the baseline, if known.
    pub open_sockets: Option<u64>,
    /// Bytes allocated by the allocator, if known.
    pub allocated_bytes: Option<u64>,
}

/// Thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Largest tolerated deviation, as a fraction of the larger count.
    pub max_deviation: f64,
    /// Deviations up to this many are always tolerated.
    pub slack: u64,
    /// Consecutive growing checks that make a memory alert.
    pub growth_checks: usize,
    /// Least total growth over those checks for a memory alert.
    pub growth_min_bytes: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_deviation: 0.15,
            slack: 4,
            growth_checks: 5,
            growth_min_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Something the watchdog found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// Registered connection tasks and online sessions disagree.
    TaskDeviation {
        /// Registered connection tasks.
        tasks: u64,
        /// Online network sessions.
        sessions: u64,
    },
    /// Open sockets and live connection tasks disagree.
    SocketDeviation {
        /// Open sockets beyond the baseline.
        sockets: u64,
        /// Live connection tasks.
        tasks: u64,
    },
    /// Allocator memory kept growing while connections did not.
    MemoryGrowth {
        /// Allocated bytes at the start of the window.
        from: u64,
        /// Allocated bytes now.
        to: u64,
        /// Checks in the window.
        checks: usize,
    },
}

impl Alert {
    /// Every kind, as metric label values.
    pub const KINDS: [&'static str; 3] = ["task_deviation", "socket_deviation", "memory_growth"];

    /// This alert's kind (a metric label value).
    pub fn kind(&self) -> &'static str {
        match self {
            Alert::TaskDeviation { .. } => Self::KINDS[0],
            Alert::SocketDeviation { .. } => Self::KINDS[1],
            Alert::MemoryGrowth { .. } => Self::KINDS[2],
        }
    }
}

/// Whether `a` and `b` deviate by more than the rules allow.
pub fn deviates(a: u64, b: u64, rules: &Rules) -> bool {
    let diff = a.abs_diff(b);
    if diff <= rules.slack {
        return false;
    }
    let larger = a.max(b) as f64;
    diff as f64 > rules.max_deviation * larger
}

/// The deviation of `a` from `b` as a fraction of the larger (0 when both are 0).
pub fn deviation(a: u64, b: u64) -> f64 {
    let larger = a.max(b);
    if larger == 0 {
        0.0
    } else {
        a.abs_diff(b) as f64 / larger as f64
    }
}

/// The watchdog's memory of past samples.
#[derive(Debug, Clone)]
pub struct Watchdog {
    rules: Rules,
    history: VecDeque<Sample>,
}

impl Watchdog {
    /// A watchdog with no history.
    pub fn new(rules: Rules) -> Watchdog {
        Watchdog {
            rules,
            history: VecDeque::new(),
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Takes one sample; returns what is wrong now.
    pub fn check(&mut self, sample: Sample) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if deviates(sample.registered_tasks, sample.sessions_online, &self.rules) {
            alerts.push(Alert::TaskDeviation {
                tasks: sample.registered_tasks,
                sessions: sample.sessions_online,
            });
        }
        if let Some(sockets) = sample.open_sockets
            && deviates(sockets, sample.tasks, &self.rules)
        {
            alerts.push(Alert::SocketDeviation {
                sockets,
                tasks: sample.tasks,
            });
        }
        self.history.push_back(sample);
        while self.history.len() > self.rules.growth_checks + 1 {
            self.history.pop_front();
        }
        if let Some(alert) = self.memory_growth() {
            alerts.push(alert);
        }
        alerts
    }

    /// A memory alert if every one of the last `growth_checks` samples
    /// allocated more than the one before, by enough in all, while
    /// connection tasks did not grow.
    fn memory_growth(&self) -> Option<Alert> {
        let n = self.rules.growth_checks;
        if n == 0 || self.history.len() < n + 1 {
            return None;
        }
        let window: Vec<&Sample> = self.history.iter().rev().take(n + 1).rev().collect();
        let bytes: Option<Vec<u64>> = window.iter().map(|s| s.allocated_bytes).collect();
        let bytes = bytes?;
        let growing = bytes.windows(2).all(|w| w[1] > w[0]);
        let (first, last) = (window[0], window[n]);
        let (from, to) = (bytes[0], bytes[n]);
        let connections_flat = last.tasks <= first.tasks;
        (growing && connections_flat && to - from >= self.rules.growth_min_bytes).then_some(
            Alert::MemoryGrowth {
                from,
                to,
                checks: n,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(registered: u64, sessions: u64) -> Sample {
        Sample {
            tasks: registered,
            registered_tasks: registered,
            sessions_online: sessions,
            ..Sample::default()
        }
    }

    #[test]
    fn fifteen_percent_is_the_line() {
        let rules = Rules {
            slack: 0,
            ..Rules::default()
        };
        assert!(!deviates(100, 85, &rules));
        assert!(deviates(100, 84, &rules));
        assert!(deviates(84, 100, &rules));
        assert!(!deviates(0, 0, &rules));
        assert!(deviates(1, 0, &rules));
        assert!((deviation(100, 80) - 0.2).abs() < 1e-9);
        assert_eq!(deviation(0, 0), 0.0);
    }

    #[test]
    fn slack_tolerates_small_counts() {
        let rules = Rules::default();
        assert!(!deviates(4, 0, &rules));
        assert!(deviates(5, 0, &rules));
        assert!(!deviates(1000, 996, &rules));
    }

    #[test]
    fn leaked_tasks_raise_a_task_alert() {
        let mut dog = Watchdog::new(Rules::default());
        assert!(dog.check(sample(100, 98)).is_empty());
        let alerts = dog.check(sample(130, 100));
        assert_eq!(
            alerts,
            vec![Alert::TaskDeviation {
                tasks: 130,
                sessions: 100
            }]
        );
        assert_eq!(alerts[0].kind(), "task_deviation");
    }

    #[test]
    fn sockets_are_compared_with_live_tasks() {
        let mut dog = Watchdog::new(Rules::default());
        let mut s = sample(50, 50);
        s.tasks = 52;
        s.open_sockets = Some(55);
        assert!(dog.check(s).is_empty());
        s.open_sockets = Some(80);
        assert_eq!(
            dog.check(s),
            vec![Alert::SocketDeviation {
                sockets: 80,
                tasks: 52
            }]
        );
    }

    fn with_memory(tasks: u64, bytes: u64) -> Sample {
        Sample {
            allocated_bytes: Some(bytes),
            ..sample(tasks, tasks)
        }
    }

    #[test]
    fn memory_growing_while_connections_stay_is_an_alert() {
        let rules = Rules {
            growth_checks: 3,
            growth_min_bytes: 1000,
            ..Rules::default()
        };
        let mut dog = Watchdog::new(rules);
        assert!(dog.check(with_memory(10, 10_000)).is_empty());
        assert!(dog.check(with_memory(10, 10_500)).is_empty());
        assert!(dog.check(with_memory(10, 11_000)).is_empty());
        let alerts = dog.check(with_memory(10, 11_500));
        assert_eq!(
            alerts,
            vec![Alert::MemoryGrowth {
                from: 10_000,
                to: 11_500,
                checks: 3
            }]
        );
        // One check that does not grow ends the streak.
        assert!(dog.check(with_memory(10, 11_400)).is_empty());
    }

    #[test]
    fn memory_growing_with_connections_is_not_an_alert() {
        let rules = Rules {
            growth_checks: 3,
            growth_min_bytes: 1000,
            ..Rules::default()
        };
        let mut dog = Watchdog::new(rules);
        for (tasks, bytes) in [(10, 10_000), (20, 20_000), (30, 30_000), (40, 40_000)] {
            assert!(dog.check(with_memory(tasks, bytes)).is_empty());
        }
        // Growth below the minimum is noise.
        let mut dog = Watchdog::new(rules);
        for bytes in [10_000, 10_100, 10_200, 10_300] {
            assert!(dog.check(with_memory(10, bytes)).is_empty());
        }
        // Unknown allocator stats never alert.
        let mut dog = Watchdog::new(rules);
        for _ in 0..5 {
            assert!(dog.check(sample(10, 10)).is_empty());
        }
    }
}
