//! Why a device went offline.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a device went offline. The snake_case names ([`Self::as_str`]) are
/// stable: they appear in events, in the API and in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// The client sent DISCONNECT (`client_disconnect`).
    ClientDisconnect,
    /// The connection broke: reset, EOF without DISCONNECT (`network_loss`).
    NetworkLoss,
    /// Nothing arrived within 1.5 keep-alive periods (`keep_alive_timeout`).
    KeepAliveTimeout,
    /// The client broke the protocol (`protocol_error`).
    ProtocolError,
    /// Another connection with the same client id took over (`takeover`).
    Takeover,
    /// The server shut down cleanly (`server_shutdown`).
    ServerShutdown,
    /// The server stopped without recording the disconnect (crash); found
    /// at the next start (`server_restart`).
    ServerRestart,
    /// An operator or the platform closed the connection (`kicked`).
    Kicked,
    /// Credentials were rejected (`auth_failed`).
    AuthFailed,
    /// The device was disabled or deleted (`disabled`).
    Disabled,
    /// The client could not keep up with its outbound queue (`slow_consumer`).
    SlowConsumer,
}

impl DisconnectReason {
    /// Every reason, in declaration order.
    pub const ALL: [DisconnectReason; 11] = [
        DisconnectReason::ClientDisconnect,
        DisconnectReason::NetworkLoss,
        DisconnectReason::KeepAliveTimeout,
        DisconnectReason::ProtocolError,
        DisconnectReason::Takeover,
        DisconnectReason::ServerShutdown,
        DisconnectReason::ServerRestart,
        DisconnectReason::Kicked,
        DisconnectReason::AuthFailed,
        DisconnectReason::Disabled,
        DisconnectReason::SlowConsumer,
    ];

    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientDisconnect => "client_disconnect",
            DisconnectReason::NetworkLoss => "network_loss",
            DisconnectReason::KeepAliveTimeout => "keep_alive_timeout",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::Takeover => "takeover",
            DisconnectReason::ServerShutdown => "server_shutdown",
            DisconnectReason::ServerRestart => "server_restart",
            DisconnectReason::Kicked => "kicked",
            DisconnectReason::AuthFailed => "auth_failed",
            DisconnectReason::Disabled => "disabled",
            DisconnectReason::SlowConsumer => "slow_consumer",
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`DisconnectReason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown disconnect reason {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for DisconnectReason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, UnknownReason> {
        DisconnectReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_match_serde() {
        for reason in DisconnectReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(reason.as_str().parse::<DisconnectReason>(), Ok(reason));
        }
        assert_eq!(
            DisconnectReason::KeepAliveTimeout.as_str(),
            "keep_alive_timeout"
        );
        assert!("nope".parse::<DisconnectReason>().is_err());
    }
}
