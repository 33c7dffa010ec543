//! The device layer plugged into a running broker.
//!
//! - [`auth::FleetAuthenticator`]: checks every CONNECT against the registry
//!   (Argon2 hashes, a cache of verified passwords, login throttling) and
//!   gives each connection the ACL of its principal;
//! - [`presence::PresenceService`]: turns the broker's lifecycle events into
//!   device presence, published on `$events/presence/{id}` and stored;
//! - [`shadows::ShadowService`]: answers `$shadow/{id}/...` requests through
//!   an in-process client, and the HTTP API's shadow calls;
//! - [`commands::CommandService`]: cloud-to-device commands (priority
//!   classes, breakers, rate limits, offline queue, fan-out);
//! - [`certs::CertificateService`]: device certificates and CAs, the trust
//!   the TLS listeners get from the registry, revocation;
//! - [`ota::OtaService`]: firmware artifacts and rollouts (`$ota/{id}/notify`,
//!   `$ota/{id}/progress`);
//! - [`devices::DeviceAdmin`]: operator actions that reach a device's live
//!   connection (disable, new password, kick) and device deletion.
//!
//! The store is synchronous (redb): point reads are made inline (they take
//! microseconds); commits (which wait for `fsync`) never run on the event
//! loop: shadows on their writer thread, presence and command records on
//! the blocking pool or the command log's thread. Password hashing runs on
//! the blocking pool, bounded by [`auth::PasswordChecks`].

pub mod auth;
pub mod certs;
pub mod commands;
pub mod devices;
pub mod ota;
pub mod presence;
pub mod shadows;
pub mod telemetry;
pub mod telemetry_labels;

use std::time::{SystemTime, UNIX_EPOCH};

/// The current time in unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
