//! Login throttling: refuse logins for a while after repeated failures,
//! per principal and per source address, before spending Argon2 on them.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};

/// Limits for one kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// Failures within the window that block the key.
    pub max_failures: u32,
    /// Length of the counting window, ms.
    pub window_ms: u64,
    /// First block, ms; doubles with each further block.
    pub backoff_ms: u64,
    /// Longest block, ms.
    pub max_backoff_ms: u64,
}

/// How a [`LoginThrottle`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Per principal (username): default 5 failures in 60 s, then 30 s
    /// doubling up to 15 min.
    pub principal: ThrottleLimits,
    /// Per source address: default 50 failures in 60 s, then 30 s doubling
    /// up to 15 min. Higher than per principal because whole fleets sit
    /// behind one carrier NAT address, and a handful of devices with stale
    /// credentials must not lock out the rest.
    pub ip: ThrottleLimits,
    /// Most keys per table (default 100,000).
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        let limits = |max_failures| ThrottleLimits {
            max_failures,
            window_ms: 60_000,
            backoff_ms: 30_000,
            max_backoff_ms: 15 * 60_000,
        };
        ThrottleConfig {
            principal: limits(5),
            ip: limits(50),
            max_entries: 100_000,
        }
    }
}

/// Whether a login may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleCheck {
    /// Check the password.
    Allowed,
    /// Refuse without checking.
    Refused {
        /// How long until the block ends, ms.
        retry_after_ms: u64,
    },
}

/// Counters for metrics, since creation (the `tracked_*` are current).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThrottleStats {
    /// Failed logins recorded.
    pub failures: u64,
    /// Logins refused because of a block.
    pub refusals: u64,
    /// Blocks started (per principal and per address).
    pub lockouts: u64,
    /// Failures of keys that could not be tracked because a table was full.
    pub untracked: u64,
    /// Principals currently tracked.
    pub tracked_principals: usize,
    /// Addresses currently tracked.
    pub tracked_addresses: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: u64,
    failures: u32,
    blocked_until: u64,
    strikes: u32,
    last_failure: u64,
}

impl Entry {
    fn expired(&self, limits: &ThrottleLimits, now: u64) -> bool {
        now >= self.blocked_until
            && now >= self.window_start.saturating_add(limits.window_ms)
            && now >= self.last_failure.saturating_add(limits.max_backoff_ms)
    }
}

#[derive(Debug)]
struct Table<K> {
    limits: ThrottleLimits,
    map: HashMap<K, Entry>,
    last_prune: Option<u64>,
}

impl<K: Hash + Eq> Table<K> {
    fn new(limits: ThrottleLimits) -> Self {
        Table {
            limits,
            map: HashMap::new(),
            last_prune: None,
        }
    }

    fn blocked_for(&self, key: &K, now: u64) -> u64 {
        self.map
            .get(key)
            .map_or(0, |e| e.blocked_until.saturating_sub(now))
    }

    fn prune(&mut self, now: u64) {
        let limits = self.limits;
        self.map.retain(|_, e| !e.expired(&limits, now));
        self.last_prune = Some(now);
    }

    /// Records a failure; `None` if the key could not be tracked, else
    /// whether it started a block.
    fn fail(&mut self, key: K, now: u64, max_entries: usize) -> Option<bool> {
        if !self.map.contains_key(&key) && self.map.len() >= max_entries {
            if self
                .last_prune
                .is_none_or(|at| now.saturating_sub(at) >= 1_000)
            {
                self.prune(now);
            }
            if self.map.len() >= max_entries {
                return None;
            }
        }
        let limits = self.limits;
        let entry = self.map.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: 0,
            strikes: 0,
            last_failure: now,
        });
        if entry.expired(&limits, now) {
            entry.strikes = 0;
        }
        if now >= entry.window_start.saturating_add(limits.window_ms) || entry.failures == 0 {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures += 1;
        entry.last_failure = now;
        if entry.failures < limits.max_failures {
            return Some(false);
        }
        let doubled = limits
            .backoff_ms
            .saturating_mul(1u64 << entry.strikes.min(32));
        entry.blocked_until = now.saturating_add(doubled.min(limits.max_backoff_ms));
        entry.strikes = entry.strikes.saturating_add(1);
        entry.failures = 0;
        Some(true)
    }
}

/// # Rules
///
/// For each principal (username) and each source address, failures are
/// counted in a window ([`ThrottleLimits::window_ms`], starting at the
/// first failure). The failure that brings the count to
/// [`ThrottleLimits::max_failures`] blocks the key for
/// [`ThrottleLimits::backoff_ms`]; each further block of the same key
/// doubles that, up to [`ThrottleLimits::max_backoff_ms`]. A blocked
/// login is refused without checking the password ([`ThrottleCheck`] says
/// for how long). A successful login clears its principal's record (not
/// its address's: many devices may share one NAT address). A key forgets
/// its blocks once it has been quiet (no failures, not blocked) for
/// `max_backoff_ms`.
///
/// IPv6 addresses are counted per /64 network (one host usually has a
/// whole /64); IPv4-mapped IPv6 addresses count as their IPv4 address.
///
/// # Memory
///
/// Each table holds at most [`ThrottleConfig::max_entries`] keys. When a
/// table is full, expired entries are pruned (at most once a second); if
/// it is still full, the new key is not tracked (counted in
/// [`ThrottleStats::untracked`]) rather than evicting a live block an
/// attacker could otherwise flush. Call [`LoginThrottle::prune`]
/// periodically (e.g. every minute) to keep the tables small.
///
/// Counts failed logins and refuses logins of blocked principals and
/// addresses. Sans-IO: every method
/// takes the current time in unix ms.
#[derive(Debug)]
pub struct LoginThrottle {
    max_entries: usize,
    principals: Table<String>,
    addresses: Table<IpAddr>,
    stats: ThrottleStats,
}

/// The key an address is counted under: IPv6 by /64, IPv4-mapped as IPv4.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl LoginThrottle {
    /// An empty throttle.
    pub fn new(config: ThrottleConfig) -> Self {
        LoginThrottle {
            max_entries: config.max_entries.max(1),
            principals: Table::new(config.principal),
            addresses: Table::new(config.ip),
            stats: ThrottleStats::default(),
        }
    }

    /// Whether a login of `principal` from `ip` may be checked now. A
    /// refusal is counted in [`ThrottleStats::refusals`].
    pub fn check(&mut self, principal: &str, ip: Option<IpAddr>, now_ms: u64) -> ThrottleCheck {
        let by_principal = self
            .principals
            .map
            .get(principal)
            .map_or(0, |e| e.blocked_until.saturating_sub(now_ms));
        let by_address = ip.map_or(0, |ip| self.addresses.blocked_for(&address_key(ip), now_ms));
        let wait = by_principal.max(by_address);
        if wait == 0 {
            ThrottleCheck::Allowed
        } else {
            self.stats.refusals += 1;
            ThrottleCheck::Refused {
                retry_after_ms: wait,
            }
        }
    }

    /// Records a failed login (wrong password, unknown or disabled
    /// principal).
    pub fn record_failure(&mut self, principal: &str, ip: Option<IpAddr>, now_ms: u64) {
        self.stats.failures += 1;
        let results = [
            self.principals
                .fail(principal.to_string(), now_ms, self.max_entries),
            match ip {
                Some(ip) => self
                    .addresses
                    .fail(address_key(ip), now_ms, self.max_entries),
                None => Some(false),
            },
        ];
        for result in results {
            match result {
                Some(true) => self.stats.lockouts += 1,
                Some(false) => {}
                None => self.stats.untracked += 1,
            }
        }
    }

    /// Records a successful login: clears the principal's failures and
    /// blocks.
    pub fn record_success(&mut self, principal: &str) {
        self.principals.map.remove(principal);
    }

    /// Drops the entries that no longer matter.
    pub fn prune(&mut self, now_ms: u64) {
        self.principals.prune(now_ms);
        self.addresses.prune(now_ms);
    }

    /// The counters, for metrics.
    pub fn stats(&self) -> ThrottleStats {
        ThrottleStats {
            tracked_principals: self.principals.map.len(),
            tracked_addresses: self.addresses.map.len(),
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));

    fn refused_for(t: &mut LoginThrottle, p: &str, ip: Option<IpAddr>, now: u64) -> u64 {
        match t.check(p, ip, now) {
            ThrottleCheck::Allowed => 0,
            ThrottleCheck::Refused { retry_after_ms } => retry_after_ms,
        }
    }

    #[test]
    fn five_failures_block_for_30s_then_doubling() {
        let mut t = LoginThrottle::new(ThrottleConfig::default());
        for i in 0..4 {
            t.record_failure("dev", IP, 1_000 + i);
            assert_eq!(t.check("dev", IP, 1_000 + i), ThrottleCheck::Allowed);
        }
        t.record_failure("dev", IP, 1_004);
        assert_eq!(refused_for(&mut t, "dev", IP, 1_004), 30_000);
        assert_eq!(refused_for(&mut t, "dev", None, 20_000), 11_004);
        // Another principal from the same address is not blocked.
        assert_eq!(t.check("other", IP, 1_005), ThrottleCheck::Allowed);
        assert_eq!(t.check("dev", IP, 31_004), ThrottleCheck::Allowed);
        // Five more: 60 s this time.
        for i in 0..5 {
            t.record_failure("dev", IP, 40_000 + i);
        }
        assert_eq!(refused_for(&mut t, "dev", IP, 40_004), 60_000);
        let stats = t.stats();
        assert_eq!(stats.failures, 10);
        assert_eq!(stats.lockouts, 2);
        assert_eq!(stats.refusals, 3);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let mut t = LoginThrottle::new(ThrottleConfig::default());
        for i in 0..20 {
            t.record_failure("dev", None, i * 20_000);
        }
        assert_eq!(t.check("dev", None, 400_000), ThrottleCheck::Allowed);
    }

    #[test]
    fn success_clears_the_principal() {
        let mut t = LoginThrottle::new(ThrottleConfig::default());
        for i in 0..4 {
            t.record_failure("dev", IP, i);
        }
        t.record_success("dev");
        for i in 0..4 {
            t.record_failure("dev", IP, 10 + i);
        }
        assert_eq!(t.check("dev", IP, 20), ThrottleCheck::Allowed);
    }

    #[test]
    fn backoff_is_capped() {
        let mut t = LoginThrottle::new(ThrottleConfig::default());
        let mut now = 0;
        for _ in 0..10 {
            for _ in 0..5 {
                t.record_failure("dev", None, now);
            }
            let wait = refused_for(&mut t, "dev", None, now);
            assert!(wait <= 15 * 60_000);
            now += wait;
        }
        assert_eq!(refused_for(&mut t, "dev", None, now - 1), 1);
        // Quiet for the cap: forgotten, the next block is 30 s again.
        now += 15 * 60_000 + 60_000;
        for _ in 0..5 {
            t.record_failure("dev", None, now);
        }
        assert_eq!(refused_for(&mut t, "dev", None, now), 30_000);
    }

    #[test]
    fn address_spraying_blocks_the_address_and_ipv6_counts_per_64() {
        let mut t = LoginThrottle::new(ThrottleConfig::default());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        for i in 0..50u64 {
            let ip = if i % 2 == 0 { a } else { b };
            t.record_failure(&format!("user{i}"), Some(ip), i);
        }
        assert_eq!(refused_for(&mut t, "fresh", Some(a), 60), 30_000 + 49 - 60);
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(t.check("fresh", Some(other), 60), ThrottleCheck::Allowed);
        // IPv4-mapped counts as IPv4.
        assert_eq!(
            address_key("::ffff:192.0.2.1".parse().unwrap()),
            IP.unwrap()
        );
    }

    #[test]
    fn memory_is_bounded() {
        let config = ThrottleConfig {
            max_entries: 100,
            ..ThrottleConfig::default()
        };
        let mut t = LoginThrottle::new(config);
        for i in 0..1000u64 {
            t.record_failure(&format!("p{i}"), None, i);
        }
        let stats = t.stats();
        assert_eq!(stats.tracked_principals, 100);
        assert_eq!(stats.untracked, 900);
        // Once expired, entries are pruned and new keys are tracked again.
        t.record_failure("late", None, 10_000_000);
        assert_eq!(t.stats().tracked_principals, 1);
        t.prune(20_000_000);
        assert_eq!(t.stats().tracked_principals, 0);
    }
}
