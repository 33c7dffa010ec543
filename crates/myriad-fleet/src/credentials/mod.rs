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
//!   per principal and per source address, without checking the password.
//!
//! Clear passwords are never stored; types that hold one ([`Secret`])
//! print `"***"` in `Debug`.
//!
//! Everything is sans-IO: times are unix milliseconds passed in by the
//! caller. Argon2 is CPU-bound: async callers run [`hash_password`] and
//! [`verify_password`] on a blocking thread (`spawn_blocking`), and look up
//! the cache before and update it after, without holding its lock across
//! the check.

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
pub use throttle::{LoginThrottle, ThrottleCheck, ThrottleConfig, ThrottleLimits, ThrottleStats};
