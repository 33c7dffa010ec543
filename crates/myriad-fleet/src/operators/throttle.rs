//! Operator login throttling, in memory: per user name and per client
//! address, after [`LoginLimits::max_failures`] failures in a row a key is
//! locked out for 1 s, doubling with each further failure up to 15 min.
//! A locked-out login is refused without checking the password. A success
//! clears the user name's failures (not the address's: one valid account
//! must not let an address reset its count while guessing others).
//!
//! Each table keeps at most [`LoginLimits::max_keys`] keys; past it the key
//! touched longest ago is evicted. IPv6 addresses count per /64.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};

/// How operator logins are throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures in a row of one user name before it is locked out (default 5).
    pub max_failures: u32,
    /// Failures in a row from one address before it is locked out (default 20).
    pub max_failures_per_ip: u32,
    /// The first lockout, ms (default 1 s); each further failure doubles it.
    pub first_lockout_ms: u64,
    /// The longest lockout, ms (default 15 min). A key quiet that long starts over.
    pub max_lockout_ms: u64,
    /// Most keys per table (default 65,536), the oldest evicted past it.
    pub max_keys: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            max_failures: 5,
            max_failures_per_ip: 20,
            first_lockout_ms: 1_000,
            max_lockout_ms: 15 * 60_000,
            max_keys: 65_536,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: u64,
    locked_until: u64,
    /// Its place in the eviction order.
    touched: u64,
}

#[derive(Debug)]
struct Table<K> {
    threshold: u32,
    map: HashMap<K, Entry>,
    order: BTreeMap<u64, K>,
    clock: u64,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(threshold: u32) -> Self {
        Table {
            threshold: threshold.max(1),
            map: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
        }
    }

    fn wait(&self, key: &K, now: u64) -> u64 {
        self.map
            .get(key)
            .map_or(0, |e| e.locked_until.saturating_sub(now))
    }

    fn fail(&mut self, key: K, now: u64, limits: &LoginLimits) {
        self.clock += 1;
        let touched = self.clock;
        let entry = match self.map.get_mut(&key) {
            Some(entry) => {
                self.order.remove(&entry.touched);
                entry
            }
            None => {
                while self.map.len() >= limits.max_keys.max(1) {
                    match self.order.pop_first() {
                        Some((_, old)) => {
                            self.map.remove(&old);
                        }
                        None => break,
                    }
                }
                self.map.entry(key.clone()).or_insert(Entry {
                    failures: 0,
                    last_failure: now,
                    locked_until: 0,
                    touched,
                })
            }
        };
        if now.saturating_sub(entry.last_failure) >= limits.max_lockout_ms {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        entry.touched = touched;
        if entry.failures >= self.threshold {
            let doublings = (entry.failures - self.threshold).min(40);
            let lockout = limits
                .first_lockout_ms
                .saturating_mul(1u64 << doublings)
                .min(limits.max_lockout_ms);
            entry.locked_until = now.saturating_add(lockout);
        }
        self.order.insert(touched, key);
    }

    fn clear(&mut self, key: &K) {
        if let Some(entry) = self.map.remove(key) {
            self.order.remove(&entry.touched);
        }
    }
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

/// Counts failed operator logins per user name and per address (see the
/// [module documentation](self)). Sans-IO: times are unix ms.
#[derive(Debug)]
pub struct LoginThrottle {
    limits: LoginLimits,
    users: Table<String>,
    addresses: Table<IpAddr>,
}

impl LoginThrottle {
    /// An empty throttle.
    pub fn new(limits: LoginLimits) -> Self {
        LoginThrottle {
            limits,
            users: Table::new(limits.max_failures),
            addresses: Table::new(limits.max_failures_per_ip),
        }
    }

    /// `None` if a login of `username` from `ip` may be checked now, else
    /// how long it is locked out, ms.
    pub fn check(&self, username: &str, ip: Option<IpAddr>, now: u64) -> Option<u64> {
        let by_user = self.users.wait(&username.to_owned(), now);
        let by_ip = ip.map_or(0, |ip| self.addresses.wait(&address_key(ip), now));
        let wait = by_user.max(by_ip);
        (wait > 0).then_some(wait)
    }

    /// Records a failed login (unknown user, wrong password, disabled user).
    pub fn failure(&mut self, username: &str, ip: Option<IpAddr>, now: u64) {
        let limits = self.limits;
        self.users.fail(username.to_owned(), now, &limits);
        if let Some(ip) = ip {
            self.addresses.fail(address_key(ip), now, &limits);
        }
    }

    /// Records a successful login: clears `username`'s failures.
    pub fn success(&mut self, username: &str) {
        self.users.clear(&username.to_owned());
    }

    /// Keys tracked now: (user names, addresses).
    pub fn tracked(&self) -> (usize, usize) {
        (self.users.map.len(), self.addresses.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, n]))
    }

    #[test]
    fn locks_after_max_failures_and_doubles() {
        let mut t = LoginThrottle::new(LoginLimits::default());
        for i in 0..4 {
            t.failure("alice", ip(1), 1_000 + i);
            assert_eq!(t.check("alice", ip(1), 1_000 + i), None);
        }
        t.failure("alice", ip(1), 2_000);
        assert_eq!(t.check("alice", ip(1), 2_000), Some(1_000));
        // Another address is refused too: the user name is locked.
        assert_eq!(t.check("alice", ip(2), 2_500), Some(500));
        assert_eq!(t.check("alice", ip(1), 3_000), None);
        t.failure("alice", ip(1), 3_000);
        assert_eq!(t.check("alice", ip(1), 3_000), Some(2_000));
        t.failure("alice", ip(1), 5_000);
        assert_eq!(t.check("alice", ip(1), 5_000), Some(4_000));
        // Capped at 15 minutes.
        for n in 0..30 {
            t.failure("alice", ip(1), 6_000 + n);
        }
        assert_eq!(t.check("alice", ip(1), 6_029), Some(15 * 60_000));
        // Another user elsewhere is not locked; at this address it is (35 failures).
        assert_eq!(t.check("bob", ip(9), 6_029), None);
        assert!(t.check("bob", ip(1), 6_029).is_some());
        t.success("alice");
        assert_eq!(t.check("alice", ip(9), 6_030), None);
    }

    #[test]
    fn address_limit_covers_every_user() {
        let mut t = LoginThrottle::new(LoginLimits::default());
        for n in 0..19 {
            t.failure(&format!("u{n}"), ip(7), 1_000);
        }
        assert_eq!(t.check("fresh", ip(7), 1_000), None);
        t.failure("u19", ip(7), 1_000);
        assert_eq!(t.check("fresh", ip(7), 1_000), Some(1_000));
        assert_eq!(t.check("fresh", ip(8), 1_000), None);
        // A success clears the user, not the address.
        t.success("fresh");
        assert_eq!(t.check("fresh", ip(7), 1_000), Some(1_000));
    }

    #[test]
    fn ipv6_counts_per_64_and_quiet_keys_start_over() {
        let mut t = LoginThrottle::new(LoginLimits::default());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..20 {
            t.failure("x", Some(a), 0);
        }
        assert!(t.check("y", Some(b), 0).is_some());
        // 15 minutes quiet: the next failure counts from one again.
        let later = 15 * 60_000 + 10;
        t.failure("x", Some(a), later);
        assert_eq!(t.check("x", None, later + 1), None);
    }

    #[test]
    fn tables_are_bounded_oldest_evicted() {
        let limits = LoginLimits {
            max_keys: 3,
            ..LoginLimits::default()
        };
        let mut t = LoginThrottle::new(limits);
        for _ in 0..5 {
            t.failure("old", None, 0);
        }
        assert!(t.check("old", None, 0).is_some());
        for name in ["a", "b", "c"] {
            t.failure(name, None, 0);
        }
        assert_eq!(t.tracked().0, 3);
        assert_eq!(t.check("old", None, 0), None);
    }
}
