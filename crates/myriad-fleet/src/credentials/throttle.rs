//! Login throttling: refuse logins for a while after repeated failures,
//! per (principal, source address) and per source address, before
//! spending Argon2 on them. Attempts still being checked count as
//! failures until they end, so a burst of simultaneous guesses is cut at
//! the limit instead of all being hashed.

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
    /// Per principal (username) *and* source address: default 5 failures
    /// in 60 s, then 30 s doubling up to 15 min. Keyed by the pair so that
    /// someone who knows a device id cannot lock the real device out from
    /// another address.
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
    /// Attempts begun ([`LoginThrottle::begin`]) and not yet ended.
    pending: u32,
}

impl Entry {
    fn new(now: u64) -> Entry {
        Entry {
            window_start: now,
            failures: 0,
            blocked_until: 0,
            strikes: 0,
            last_failure: now,
            pending: 0,
        }
    }

    /// Failures still counting in the window at `now`.
    fn live_failures(&self, limits: &ThrottleLimits, now: u64) -> u32 {
        if now >= self.window_start.saturating_add(limits.window_ms) {
            0
        } else {
            self.failures
        }
    }

    fn expired(&self, limits: &ThrottleLimits, now: u64) -> bool {
        self.pending == 0
            && now >= self.blocked_until
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

    /// Makes room for a new key if the table is full; false if there is none.
    fn room_for(&mut self, key: &K, now: u64, max_entries: usize) -> bool {
        if !self.map.contains_key(key) && self.map.len() >= max_entries {
            if self
                .last_prune
                .is_none_or(|at| now.saturating_sub(at) >= 1_000)
            {
                self.prune(now);
            }
            if self.map.len() >= max_entries {
                return false;
            }
        }
        true
    }

    /// Whether an attempt for `key` may go ahead (`0`) or how long it must
    /// wait: blocked, or failures plus attempts in flight at the limit.
    fn wait_for(&self, key: &K, now: u64) -> u64 {
        let Some(entry) = self.map.get(key) else {
            return 0;
        };
        let blocked = entry.blocked_until.saturating_sub(now);
        if blocked > 0 {
            return blocked;
        }
        let busy = entry
            .live_failures(&self.limits, now)
            .saturating_add(entry.pending);
        if busy >= self.limits.max_failures {
            IN_FLIGHT_RETRY_MS
        } else {
            0
        }
    }

    /// Counts an attempt in flight for `key`; false if it could not be
    /// tracked (table full).
    fn begin(&mut self, key: K, now: u64, max_entries: usize) -> bool {
        if !self.room_for(&key, now, max_entries) {
            return false;
        }
        let entry = self.map.entry(key).or_insert_with(|| Entry::new(now));
        entry.pending = entry.pending.saturating_add(1);
        true
    }

    /// Ends an attempt counted by [`Self::begin`].
    fn end(&mut self, key: &K) {
        if let Some(entry) = self.map.get_mut(key) {
            entry.pending = entry.pending.saturating_sub(1);
        }
    }

    /// Records a failure; `None` if the key could not be tracked, else
    /// whether it started a block.
    fn fail(&mut self, key: K, now: u64, max_entries: usize) -> Option<bool> {
        if !self.room_for(&key, now, max_entries) {
            return None;
        }
        let limits = self.limits;
        let entry = self.map.entry(key).or_insert_with(|| Entry::new(now));
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

/// How long a login refused because too many attempts of its key are in
/// flight is told to wait, ms.
pub const IN_FLIGHT_RETRY_MS: u64 = 1_000;

/// The key of the per-principal table: user name and source address.
type PrincipalKey = (String, Option<IpAddr>);

/// # Rules
///
/// For each (principal, source address) pair and each source address, failures are
/// counted in a window ([`ThrottleLimits::window_ms`], starting at the
/// first failure). The failure that brings the count to
/// [`ThrottleLimits::max_failures`] blocks the key for
/// [`ThrottleLimits::backoff_ms`]; each further block of the same key
/// doubles that, up to [`ThrottleLimits::max_backoff_ms`]. A blocked
/// login is refused without checking the password ([`ThrottleCheck`] says
/// for how long). Attempts begun with [`LoginThrottle::begin`] and not yet
/// ended count as failures while they run: with `max_failures` attempts of
/// a key in flight, the next is refused (retry after
/// [`IN_FLIGHT_RETRY_MS`]). A successful login clears its (principal,
/// address) record (not its address's: many devices may share one NAT
/// address). A principal is counted per address so that failures from one
/// address never lock it out at another. A key forgets
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
    principals: Table<PrincipalKey>,
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

/// The per-principal key: the user name and the address's key.
fn principal_key(principal: &str, ip: Option<IpAddr>) -> PrincipalKey {
    (principal.to_string(), ip.map(address_key))
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
        let key = principal_key(principal, ip);
        let by_principal = self
            .principals
            .map
            .get(&key)
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

    /// Like [`Self::check`], and if allowed counts the attempt as in flight
    /// (for the principal at this address and for the address) until
    /// [`Self::end`] (the caller must call it exactly once, whatever the
    /// outcome). Refused as well when failures plus attempts in flight of a
    /// key reach its `max_failures`. A refusal is counted in
    /// [`ThrottleStats::refusals`].
    pub fn begin(&mut self, principal: &str, ip: Option<IpAddr>, now_ms: u64) -> ThrottleCheck {
        let key = principal_key(principal, ip);
        let by_principal = self.principals.wait_for(&key, now_ms);
        let by_address = ip.map_or(0, |ip| self.addresses.wait_for(&address_key(ip), now_ms));
        let wait = by_principal.max(by_address);
        if wait > 0 {
            self.stats.refusals += 1;
            return ThrottleCheck::Refused {
                retry_after_ms: wait,
            };
        }
        if !self.principals.begin(key, now_ms, self.max_entries) {
            self.stats.untracked += 1;
        }
        if let Some(ip) = ip
            && !self
                .addresses
                .begin(address_key(ip), now_ms, self.max_entries)
        {
            self.stats.untracked += 1;
        }
        ThrottleCheck::Allowed
    }

    /// Ends an attempt allowed by [`Self::begin`]: `Some(true)` it
    /// succeeded ([`Self::record_success`]), `Some(false)` it failed
    /// ([`Self::record_failure`]), `None` it was abandoned (client gone,
    /// server busy) and counts as neither.
    pub fn end(
        &mut self,
        principal: &str,
        ip: Option<IpAddr>,
        succeeded: Option<bool>,
        now_ms: u64,
    ) {
        let key = principal_key(principal, ip);
        self.principals.end(&key);
        if let Some(ip) = ip {
            self.addresses.end(&address_key(ip));
        }
        match succeeded {
            Some(true) => self.record_success(principal, ip),
            Some(false) => self.record_failure(principal, ip, now_ms),
            None => {}
        }
    }

    /// Records a failed login (wrong password, unknown or disabled
    /// principal).
    pub fn record_failure(&mut self, principal: &str, ip: Option<IpAddr>, now_ms: u64) {
        self.stats.failures += 1;
        let results = [
            self.principals
                .fail(principal_key(principal, ip), now_ms, self.max_entries),
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

    /// Records a successful login: clears the failures and blocks of the
    /// principal at this address (attempts still in flight stay counted).
    pub fn record_success(&mut self, principal: &str, ip: Option<IpAddr>) {
        let key = principal_key(principal, ip);
        if let Some(entry) = self.principals.map.get_mut(&key) {
            if entry.pending == 0 {
                self.principals.map.remove(&key);
            } else {
                let pending = entry.pending;
                *entry = Entry::new(0);
                entry.pending = pending;
            }
        }
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
        assert_eq!(refused_for(&mut t, "dev", IP, 20_000), 11_004);
        // The same principal from another address is not blocked.
        let elsewhere = Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7)));
        assert_eq!(t.check("dev", elsewhere, 20_000), ThrottleCheck::Allowed);
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
    fn attempts_in_flight_count_until_they_end() {
        let mut t = LoginThrottle::new(ThrottleConfig::default());
        let elsewhere = Some(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7)));
        // 300 simultaneous attempts: only max_failures (5) go ahead.
        let allowed = (0..300)
            .filter(|_| t.begin("dev", IP, 1_000) == ThrottleCheck::Allowed)
            .count();
        assert_eq!(allowed, 5);
        assert_eq!(
            t.begin("dev", IP, 1_000),
            ThrottleCheck::Refused {
                retry_after_ms: IN_FLIGHT_RETRY_MS
            }
        );
        // The real device at its own address is not held up.
        assert_eq!(t.begin("dev", elsewhere, 1_000), ThrottleCheck::Allowed);
        t.end("dev", elsewhere, Some(true), 1_001);
        // The five fail: a block, and nothing left in flight.
        for _ in 0..5 {
            t.end("dev", IP, Some(false), 1_002);
        }
        assert_eq!(refused_for(&mut t, "dev", IP, 1_003), 29_999);
        assert_eq!(t.check("dev", elsewhere, 1_003), ThrottleCheck::Allowed);
        // Abandoned attempts free their place without counting.
        let mut t = LoginThrottle::new(ThrottleConfig::default());
        for _ in 0..5 {
            assert_eq!(t.begin("dev", IP, 0), ThrottleCheck::Allowed);
        }
        for _ in 0..5 {
            t.end("dev", IP, None, 1);
        }
        assert_eq!(t.begin("dev", IP, 2), ThrottleCheck::Allowed);
        t.end("dev", IP, None, 3);
        assert_eq!(t.stats().failures, 0);
        t.prune(10_000_000);
        assert_eq!(t.stats().tracked_principals, 0);
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
        t.record_success("dev", IP);
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
