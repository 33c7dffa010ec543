//! A bounded cache of successful password checks (see the
//! [module documentation](super)).

use std::collections::HashMap;
use std::fmt;

use super::hash::{CredentialError, verify_password};

/// Default number of principals a [`VerifiedCache`] remembers.
pub const DEFAULT_CACHE_CAPACITY: usize = 100_000;

/// Remembers, per principal, a keyed BLAKE3 tag of (principal, PHC string,
/// password) for the last successful check, so that the next login with
/// the same password against the same stored hash skips Argon2.
///
/// - The key is random per process and never leaves it: the tags are
///   useless outside this process's memory, and nothing is persisted.
/// - A changed password is a new PHC string (new salt), so the old tag no
///   longer matches; [`VerifiedCache::forget`] drops an entry at once (on
///   password change, device deletion or disablement).
/// - A wrong password does not evict the principal's entry.
/// - Bounded: two generations of at most `capacity / 2` entries each. New
///   entries go into the young one; when it is full it becomes the old one
///   and the previous old one is dropped; a hit in the old generation
///   moves the entry back to the young one. So recently used principals
///   stay, with O(1) work per operation (an approximation of LRU).
///
/// Not thread-safe by itself: put it behind a mutex, and do not hold the
/// lock across the Argon2 check ([`VerifiedCache::check`], then
/// [`super::verify_password`] unlocked, then [`VerifiedCache::remember`]).
pub struct VerifiedCache {
    key: [u8; 32],
    half: usize,
    young: HashMap<String, blake3::Hash>,
    old: HashMap<String, blake3::Hash>,
    hits: u64,
    misses: u64,
}

impl fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("hits", &self.hits)
            .field("misses", &self.misses)
            .finish_non_exhaustive()
    }
}

impl VerifiedCache {
    /// An empty cache for about `capacity` principals (at least 2), keyed
    /// with 32 random bytes from the operating system.
    pub fn new(capacity: usize) -> Result<Self, CredentialError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| CredentialError::Hash(format!("no random key for the cache: {e}")))?;
        Ok(Self::with_key(capacity, key))
    }

    /// An empty cache with a given key (for tests).
    pub fn with_key(capacity: usize, key: [u8; 32]) -> Self {
        VerifiedCache {
            key,
            half: (capacity / 2).max(1),
            young: HashMap::new(),
            old: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    fn tag(&self, principal: &str, phc: &str, password: &str) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(&(principal.len() as u64).to_le_bytes());
        hasher.update(principal.as_bytes());
        hasher.update(&(phc.len() as u64).to_le_bytes());
        hasher.update(phc.as_bytes());
        hasher.update(password.as_bytes());
        hasher.finalize()
    }

    /// Whether `password` was verified against `phc` for `principal`
    /// recently (a hit). A miss says nothing about the password: run
    /// [`super::verify_password`]. Counts hits and misses.
    pub fn check(&mut self, principal: &str, phc: &str, password: &str) -> bool {
        let tag = self.tag(principal, phc, password);
        // `blake3::Hash` compares in constant time.
        let hit = if self.young.get(principal) == Some(&tag) {
            true
        } else if self.old.get(principal) == Some(&tag) {
            if let Some((key, tag)) = self.old.remove_entry(principal) {
                self.insert(key, tag);
            }
            true
        } else {
            false
        };
        if hit {
            self.hits += 1;
        } else {
            self.misses += 1;
        }
        hit
    }

    /// Records that `password` verified against `phc` for `principal`.
    /// Call only after a successful check.
    pub fn remember(&mut self, principal: &str, phc: &str, password: &str) {
        let tag = self.tag(principal, phc, password);
        self.old.remove(principal);
        self.insert(principal.to_string(), tag);
    }

    fn insert(&mut self, principal: String, tag: blake3::Hash) {
        if self.young.len() >= self.half && !self.young.contains_key(&principal) {
            self.old = std::mem::take(&mut self.young);
            self.old.remove(&principal);
        }
        self.young.insert(principal, tag);
    }

    /// Checks `password` for `principal`: from the cache if it can, else
    /// with Argon2 ([`super::verify_password`]), remembering a success.
    pub fn verify(
        &mut self,
        principal: &str,
        phc: &str,
        password: &str,
    ) -> Result<bool, CredentialError> {
        if self.check(principal, phc, password) {
            return Ok(true);
        }
        let ok = verify_password(phc, password)?;
        if ok {
            self.remember(principal, phc, password);
        }
        Ok(ok)
    }

    /// Drops the entry of `principal` (password changed, device deleted or
    /// disabled).
    pub fn forget(&mut self, principal: &str) {
        self.young.remove(principal);
        self.old.remove(principal);
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most entries held at once.
    pub fn capacity(&self) -> usize {
        self.half * 2
    }

    /// Checks answered from the cache, since creation.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Checks the cache could not answer, since creation.
    pub fn misses(&self) -> u64 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{HashParams, hash_password};

    #[test]
    fn second_login_is_a_hit_and_a_new_password_is_not() {
        let mut cache = VerifiedCache::new(100).unwrap();
        let phc = hash_password("pw1", &HashParams::INSECURE_FAST).unwrap();
        assert!(cache.verify("dev1", &phc, "pw1").unwrap());
        assert_eq!((cache.hits(), cache.misses()), (0, 1));
        assert!(cache.verify("dev1", &phc, "pw1").unwrap());
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
        // Wrong password: a miss, then Argon2 says no; the entry stays.
        assert!(!cache.verify("dev1", &phc, "pw2").unwrap());
        assert!(cache.check("dev1", &phc, "pw1"));
        // Same password, another principal: no hit.
        assert!(!cache.check("dev2", &phc, "pw1"));
        // Password changed: new PHC string, the old password no longer hits.
        let phc2 = hash_password("pw2", &HashParams::INSECURE_FAST).unwrap();
        assert!(!cache.check("dev1", &phc2, "pw1"));
        assert!(!cache.verify("dev1", &phc2, "pw1").unwrap());
        assert!(cache.verify("dev1", &phc2, "pw2").unwrap());
        cache.forget("dev1");
        assert!(!cache.check("dev1", &phc2, "pw2"));
        assert!(format!("{cache:?}").starts_with("VerifiedCache { len: 0"));
    }

    /// A reconnect storm of 15,000 devices whose passwords were checked
    /// before: cache hits only, no Argon2.
    #[test]
    fn reconnect_storm_of_15000_is_cheap() {
        let mut cache = VerifiedCache::new(DEFAULT_CACHE_CAPACITY).unwrap();
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        let names: Vec<String> = (0..15_000).map(|i| format!("dev-{i:05}")).collect();
        for name in &names {
            cache.remember(name, phc, "device-password");
        }
        let start = std::time::Instant::now();
        for name in &names {
            assert!(cache.check(name, phc, "device-password"));
        }
        let elapsed = start.elapsed();
        println!("15,000 cached logins checked in {elapsed:?}");
        assert_eq!(cache.hits(), 15_000);
    }

    #[test]
    fn bounded_and_keeps_recently_used() {
        let mut cache = VerifiedCache::with_key(10, [7; 32]);
        cache.remember("keep", "phc", "pw");
        for i in 0..1000 {
            cache.remember(&format!("p{i}"), "phc", "pw");
            assert!(cache.len() <= 10);
            // A principal used all the time stays.
            assert!(cache.check("keep", "phc", "pw"), "lost at {i}");
        }
        assert!(!cache.check("p0", "phc", "pw"));
        assert!(cache.check("p999", "phc", "pw"));
    }
}
