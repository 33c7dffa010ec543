//! Operator accounts for the HTTP API and the console: users with roles
//! (admin, operator, viewer) and Argon2id passwords (the same
//! [`crate::credentials`] code as device passwords), API tokens (`myr_` +
//! 32 random bytes, stored as a BLAKE3 hash), login sessions (a random
//! 32-byte id in a cookie, stored hashed, with a CSRF token and an
//! expiry), login throttling and an append-only audit log.
//!
//! - [`model`]: the records and their limits;
//! - [`service`]: [`Operators`], users, sessions and tokens in memory,
//!   written through to the fleet store;
//! - [`throttle`]: [`LoginThrottle`], lockouts after failed logins;
//! - [`audit`]: [`AuditLog`], the batched writer of the audit log.
//!
//! Everything survives a restart (tables `operator_*` of `fleet.redb`); a
//! damaged stored record is skipped with a warning, never fatal.

pub mod audit;
pub mod model;
pub mod service;
pub mod throttle;

pub use audit::AuditLog;
pub use model::*;
pub use service::{
    NewSession, OperatorError, Operators, OperatorsConfig, SessionInfo, secret_key, secrets_equal,
};
pub use throttle::{LoginLimits, LoginThrottle};
