//! The Myriad MQTT broker.
//!
//! - [`core`]: the sans-IO broker state machine (sessions, QoS flows,
//!   subscriptions, retained messages, wills, expiry).
//! - [`shell`]: the tokio shell: TCP listener, one task per connection, and
//!   the task that drives the core.
//! - [`config`]: limits and policies.
//! - [`websocket`]: MQTT over WebSocket, sans-IO (upgrade and framing).
//! - `fuzz` (feature `fuzz`): the session-engine fuzz harness.

pub mod config;
pub mod core;
#[cfg(feature = "fuzz")]
pub mod fuzz;
pub mod hooks;
pub mod shell;
pub mod trace;
pub mod watchdog;
pub mod websocket;

pub use config::BrokerConfig;
pub use core::{Broker, ConnId, ConnectionLoss, Output, SessionId};
