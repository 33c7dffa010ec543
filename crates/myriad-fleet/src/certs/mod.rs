//! X.509 certificates in the device registry: device certificates pinned by
//! their SHA-256 fingerprint, and certificate authorities (with an optional
//! revocation list each) whose certificates identify devices.
//!
//! - [`parse`]: reading and checking the PEM an operator registers; every
//!   refusal says what is wrong ([`CertificateError`]);
//! - [`identity`]: which device a certificate names (its subject CN, or a
//!   URI subject alternative name, as configured);
//! - [`records`]: what the registry keeps ([`DeviceCertificate`],
//!   [`CertificateAuthority`]).
//!
//! How a login with a certificate is decided is in
//! [`crate::service::auth`]; registration, revocation and the trust handed
//! to the TLS listeners are in [`crate::service::certs`].

pub mod identity;
pub mod parse;
pub mod records;

pub use identity::CertificateIdentity;
pub use parse::{CertificateError, ParsedCa, ParsedCertificate, ParsedCrl};
pub use records::{
    CertificateAuthority, CertificateStatus, DeviceCertificate, Fingerprint, FingerprintError,
};

/// Most bytes of PEM accepted for one certificate or revocation list.
pub const MAX_PEM_BYTES: usize = 64 * 1024;

/// Most certificates (active, or revoked and not yet expired) one device
/// may have registered.
pub const MAX_CERTIFICATES_PER_DEVICE: usize = 16;

/// Most certificate authorities the registry keeps.
pub const MAX_CERTIFICATE_AUTHORITIES: usize = 64;
