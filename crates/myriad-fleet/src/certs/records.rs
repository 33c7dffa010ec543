//! What the registry keeps of a certificate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::registry::DeviceId;

/// The SHA-256 fingerprint of a certificate's DER encoding; written as 64
/// lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of the certificate `der`.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(myriad_broker::shell::client_trust::fingerprint(der))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A fingerprint that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a certificate fingerprint is 64 hex digits (SHA-256), optionally with ':' between bytes")]
pub struct FingerprintError;

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(text: &str) -> Result<Fingerprint, FingerprintError> {
        let digits: Vec<u8> = text.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(FingerprintError);
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(digits.chunks(2)) {
            let hex = std::str::from_utf8(pair).map_err(|_| FingerprintError)?;
            *slot = u8::from_str_radix(hex, 16).map_err(|_| FingerprintError)?;
        }
        Ok(Fingerprint(out))
    }
}

/// Whether a registered device certificate may log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateStatus {
    /// It logs its device in.
    Active,
    /// It was revoked: refused, even if a trusted CA issued it. The record
    /// stays until the certificate expires.
    Revoked,
}

/// A device certificate pinned in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// Its SHA-256 fingerprint (the key).
    pub fingerprint: Fingerprint,
    /// The device it logs in.
    pub device: DeviceId,
    /// Active or revoked.
    pub status: CertificateStatus,
    /// The subject, as text (`CN=...`).
    pub subject: String,
    /// The issuer, as text.
    pub issuer: String,
    /// The serial number, hex.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// When it was registered (Unix ms).
    pub created_at: u64,
    /// When it was revoked (Unix ms).
    pub revoked_at: Option<u64>,
}

impl DeviceCertificate {
    /// Whether it logs its device in at `now` (Unix seconds).
    pub fn usable_at(&self, now_secs: i64) -> bool {
        self.status == CertificateStatus::Active
            && self.not_before <= now_secs
            && now_secs <= self.not_after
    }
}

/// A certificate authority registered for device certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateAuthority {
    /// The SHA-256 fingerprint of its certificate (the key).
    pub fingerprint: Fingerprint,
    /// The subject, as text.
    pub subject: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// When it was registered (Unix ms).
    pub created_at: u64,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Its current revocation list, DER, if one was given.
    pub crl: Option<Vec<u8>>,
    /// How many serial numbers that list revokes.
    pub crl_revoked: u64,
    /// When the list was last set (Unix ms).
    pub crl_updated_at: Option<u64>,
}
