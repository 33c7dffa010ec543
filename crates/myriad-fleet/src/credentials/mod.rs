//! Passwords: Argon2id hashes, a cache of recent successful checks, and
//! login throttling.
//!
//! - [`hash_password`] / [`verify_password`]: Argon2id PHC strings
//!   (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) with [`HashParams`]
//!   (OWASP's m = 19 MiB, t = 2, p = 1 by default). [`check_phc`] vets a
//!   PHC string given by an operator (bulk import) so that a hash with
//!   absurd costs cannot stall the broker at login.
//! - [`VerifiedCache`]: an Argon2 check costs tens of milliseconds of CPU;
//!   after a restart 15,000 devices reconnecting would cost minutes of CPU.
//!   The cache remembers, per principal, a keyed BLAKE3 tag of (principal,
//!   PHC string, password) under a random per-process key, so a repeated
//!   login with the same password against the same stored hash is a
//!   microsecond check. A new password means a new PHC string, so the old
//!   entry no longer matches.
//! - [`LoginThrottle`]: refuses logins for a while after repeated failures
//!   per (principal, source address) and per source address, without
//!   checking the password; attempts in flight count until they end.
//!
//! Clear passwords are never stored; types that hold one ([`Secret`])
//! print `"***"` in `Debug`.
//!
//! Everything is sans-IO: times are unix milliseconds passed in by the
//! caller. Argon2 is CPU-bound: async callers run [`hash_password`] and
//! [`verify_password`] on a blocking thread (`spawn_blocking`), and look up
//! the cache before and update it after, without holding its lock across
//! the check.
//!
//! # A login, end to end
//!
//! What the broker's authenticate hook does with these pieces and the
//! store (single-threaded here for brevity):
//!
//! ```
//! use std::net::IpAddr;
//! use myriad_fleet::acl::Principal;
//! use myriad_fleet::credentials::*;
//! use myriad_fleet::registry::{DeviceId, NewDevice};
//! use myriad_fleet::store::FleetStore;
//!
//! fn login(
//!     store: &FleetStore,
//!     cache: &mut VerifiedCache,
//!     throttle: &mut LoginThrottle,
//!     (username, password, ip, now): (&str, &str, Option<IpAddr>, u64),
//! ) -> Result<Option<Principal>, Box<dyn std::error::Error>> {
//!     if let ThrottleCheck::Refused { .. } = throttle.check(username, ip, now) {
//!         return Ok(None); // no Argon2 spent
//!     }
//!     let granted = match store.login_record(username)? {
//!         Some(record) if record.enabled => match &record.password_hash {
//!             Some(phc) => cache.verify(username, phc, password)?.then_some(record.principal),
//!             None => None,
//!         },
//!         _ => None,
//!     };
//!     match &granted {
//!         Some(_) => throttle.record_success(username, ip),
//!         None => throttle.record_failure(username, ip, now),
//!     }
//!     Ok(granted)
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let store = FleetStore::open(dir.path())?;
//! store.create_device(&NewDevice::new(DeviceId::new("pump-1")?), 0)?;
//! store.put_credential("pump-1", &hash_password("s3cret", &HashParams::INSECURE_FAST)?)?;
//! let mut cache = VerifiedCache::new(DEFAULT_CACHE_CAPACITY)?;
//! let mut throttle = LoginThrottle::new(ThrottleConfig::default());
//! let ip = Some("192.0.2.1".parse()?);
//! let who = login(&store, &mut cache, &mut throttle, ("pump-1", "s3cret", ip, 1_000))?;
//! assert_eq!(who, Some(Principal::Device(DeviceId::new("pump-1")?)));
//! // The reconnect is answered by the cache.
//! login(&store, &mut cache, &mut throttle, ("pump-1", "s3cret", ip, 2_000))?;
//! assert_eq!(cache.hits(), 1);
//! for now in 3_000..3_005 {
//!     assert_eq!(login(&store, &mut cache, &mut throttle, ("pump-1", "guess", ip, now))?, None);
//! }
//! // Blocked now, even with the right password.
//! assert_eq!(login(&store, &mut cache, &mut throttle, ("pump-1", "s3cret", ip, 3_010))?, None);
//! # Ok(())
//! # }
//! ```
//!
//! An unknown login name costs no Argon2 run, so response times tell
//! whether a name exists; device ids are rarely secret, but a deployment
//! that cares can verify against a dummy hash for unknown names.

mod cache;
mod hash;
mod secret;
mod throttle;

pub use cache::{DEFAULT_CACHE_CAPACITY, VerifiedCache};
pub use hash::{
    CredentialError, HashParams, MAX_PASSWORD_LEN, PhcLimits, check_phc, hash_password,
    verify_password,
};
pub use secret::Secret;
pub use throttle::{
    IN_FLIGHT_RETRY_MS, LoginThrottle, ThrottleCheck, ThrottleConfig, ThrottleLimits, ThrottleStats,
};
