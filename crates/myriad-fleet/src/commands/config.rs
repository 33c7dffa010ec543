//! The `[commands]` settings: timeouts, retries, pressure, rate limits
//! and breakers.

use serde::{Deserialize, Serialize};

use super::breaker::BreakerConfig;
use super::limits::RateLimit;

/// How commands are timed, limited and protected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandsConfig {
    /// Reply timeout when a request gives none, ms.
    pub default_timeout_ms: u64,
    /// Longest reply timeout a request may ask for, ms.
    pub max_timeout_ms: u64,
    /// Expiry of an L1 command that gives none, ms after it is accepted.
    pub l1_default_expiry_ms: u64,
    /// First wait before an L1 command not acknowledged by the device is sent again, ms.
    pub retry_initial_ms: u64,
    /// Longest wait between two sends of an L1 command, ms (the wait doubles).
    pub retry_max_ms: u64,
    /// Most sends of one L1 command (0: until it expires).
    pub max_attempts: u32,
    /// Most commands sent and not yet final, all classes together: L2 is
    /// refused (429) beyond it, L1 waits in its queue.
    pub max_in_flight: usize,
    /// Share of `max_in_flight` beyond which L3 commands are refused.
    pub l3_pressure: f64,
    /// Largest payload, bytes.
    pub max_payload_bytes: usize,
    /// Rate limit of L1 commands (all devices together).
    pub rate_l1: RateLimit,
    /// Rate limit of L2 commands.
    pub rate_l2: RateLimit,
    /// Rate limit of L3 commands.
    pub rate_l3: RateLimit,
    /// Rate limit per device (all classes).
    pub rate_device: RateLimit,
    /// Breaker of each class.
    pub breaker_class: BreakerConfig,
    /// Breaker of each device for L1 and for L2.
    pub breaker_device: BreakerConfig,
    /// Commands a fan-out batch may have waiting between its reader and its sender.
    pub batch_buffer: usize,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            default_timeout_ms: 30_000,
            max_timeout_ms: 3_600_000,
            l1_default_expiry_ms: 86_400_000,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            max_attempts: 0,
            max_in_flight: 50_000,
            l3_pressure: 0.5,
            max_payload_bytes: 64 * 1024,
            rate_l1: RateLimit::default(),
            rate_l2: RateLimit::default(),
            rate_l3: RateLimit {
                per_second: 1_000.0,
                burst: 1_000,
            },
            rate_device: RateLimit {
                per_second: 10.0,
                burst: 20,
            },
            breaker_class: BreakerConfig {
                consecutive_failures: 0,
                failure_rate: 0.5,
                min_calls: 100,
                window_ms: 30_000,
                cool_down_ms: 10_000,
                half_open_probes: 5,
            },
            breaker_device: BreakerConfig::default(),
            batch_buffer: 1_024,
        }
    }
}

impl CommandsConfig {
    /// Checks the values; `Err` names the bad key (relative to `[commands]`).
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("default_timeout_ms", self.default_timeout_ms),
            ("max_timeout_ms", self.max_timeout_ms),
            ("l1_default_expiry_ms", self.l1_default_expiry_ms),
            ("retry_initial_ms", self.retry_initial_ms),
            ("retry_max_ms", self.retry_max_ms),
            ("max_in_flight", self.max_in_flight as u64),
            ("max_payload_bytes", self.max_payload_bytes as u64),
            ("batch_buffer", self.batch_buffer as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{key}: at least 1"));
            }
        }
        if self.default_timeout_ms > self.max_timeout_ms {
            return Err("default_timeout_ms: at most max_timeout_ms".into());
        }
        if self.retry_initial_ms > self.retry_max_ms {
            return Err("retry_initial_ms: at most retry_max_ms".into());
        }
        if !(0.0..=1.0).contains(&self.l3_pressure) {
            return Err("l3_pressure: between 0.0 and 1.0".into());
        }
        for (key, rate) in [
            ("rate_l1", &self.rate_l1),
            ("rate_l2", &self.rate_l2),
            ("rate_l3", &self.rate_l3),
            ("rate_device", &self.rate_device),
        ] {
            rate.validate().map_err(|e| format!("{key}.{e}"))?;
        }
        for (key, breaker) in [
            ("breaker_class", &self.breaker_class),
            ("breaker_device", &self.breaker_device),
        ] {
            breaker.validate().map_err(|e| format!("{key}.{e}"))?;
        }
        Ok(())
    }
}
