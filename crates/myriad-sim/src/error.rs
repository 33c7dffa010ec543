//! The simulator's error type.

use std::net::SocketAddr;

use myriad_mqtt::{DecodeError, EncodeError, PacketType, ReasonCode};

/// Everything that can go wrong in a simulation run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A socket operation failed.
    #[error("I/O error talking to {addr}: {source}")]
    Io {
        /// The broker address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The broker sent bytes the codec refused.
    #[error("bad packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded (a bad option value, most likely).
    #[error("cannot encode a packet: {0}")]
    Encode(#[from] EncodeError),
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
    /// The broker refused the connection in CONNACK.
    #[error("connection refused: {0:?}")]
    Refused(ReasonCode),
    /// A subscription was refused in SUBACK.
    #[error("subscription to {filter} refused: {code:?}")]
    SubscribeRefused {
        /// The refused filter.
        filter: String,
        /// The SUBACK code.
        code: ReasonCode,
    },
    /// The broker sent a packet that does not fit the exchange.
    #[error("unexpected {0:?} from the broker")]
    Unexpected(PacketType),
    /// The broker did not answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The arguments do not describe a runnable scenario.
    #[error("invalid arguments: {0}")]
    Args(String),
    /// The tokio runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// Reading /proc failed or gave unexpected text.
    #[error("cannot read /proc/{pid}/{file}: {reason}")]
    Proc {
        /// The process.
        pid: u32,
        /// The file under /proc/PID.
        file: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The final report could not be written.
    #[error("cannot write the report: {0}")]
    Report(String),
    /// An HTTP exchange with the platform's API failed (transport or protocol).
    #[error("HTTP error talking to {addr}: {reason}")]
    Http {
        /// The API address.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The API answered a setup request with an unexpected status.
    #[error("{what}: HTTP {status}: {body}")]
    Api {
        /// The request, e.g. `POST /api/v1/devices/import`.
        what: String,
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = SimError> = std::result::Result<T, E>;
