//! The device layer: what a fleet operator works with every day.
//!
//! Everything here is sans-IO except [`store`]: the broker shell and the
//! HTTP API call into these types; they never touch a socket.
//!
//! - [`registry`]: devices, application clients, search and paging;
//! - [`credentials`]: Argon2 password hashes and login throttling;
//! - [`acl`]: the device topic namespace and who may publish/subscribe where;
//! - [`presence`]: online/offline state with ordered versions;
//! - [`shadow`]: desired / reported / delta documents with versions;
//! - [`commands`]: cloud-to-device commands (classes, breakers, limits);
//! - [`import`]: streaming bulk provisioning from CSV or JSON lines;
//! - [`telemetry`]: parsing device telemetry messages (JSON, CBOR) into samples;
//! - [`operators`]: operator users, roles, sessions, API tokens, login throttling, audit log;
//! - [`lineproto`]: InfluxDB line protocol for bulk telemetry writes;
//! - [`events`]: live change events for the web console (a broadcast bus, per-device rings);
//! - [`store`]: the embedded (redb) store for all of the above;
//! - `fuzz` (feature `fuzz`): the fuzz harness of the telemetry parsers (`fuzz/`, replayed by
//!   `tests/fuzz_corpus.rs`).

pub mod acl;
pub mod certs;
pub mod commands;
pub mod credentials;
pub mod events;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod import;
pub mod lineproto;
pub mod metrics;
pub mod operators;
pub mod presence;
pub mod registry;
pub mod service;
pub mod shadow;
pub mod store;
pub mod telemetry;
