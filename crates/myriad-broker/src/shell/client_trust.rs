//! Client certificates a TLS listener trusts beyond its own `client_ca`:
//! the CAs and revocation lists the layer above registers at run time, and
//! device certificates pinned by fingerprint ([`PinnedCertificates`]).
//!
//! A listener with `client_certs = "optional"` or `"require"` accepts a
//! client certificate when
//! 1. its chain verifies against the listener's `client_ca` or one of the
//!    [`ClientTrust::cas`] (and no CRL of the listener's `client_crl` or
//!    [`ClientTrust::crls`] revokes it; a CA without a CRL is trusted
//!    without one), or
//! 2. no CA knows its issuer and its SHA-256 fingerprint is pinned
//!    ([`PinnedCertificates::is_pinned`]; a self-signed device certificate,
//!    say). A certificate a CA refuses for any other reason (revoked,
//!    expired, bad signature) is refused even if pinned.
//!
//! Either way the client proves it holds the certificate's key in the
//! handshake. Which device a certificate logs in as is the
//! [`crate::hooks::Authenticator`]'s decision, from
//! [`crate::hooks::ConnectInfo::certificates`].

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Answers whether a certificate is pinned to a device. Called during the
/// TLS handshake, on the connection's task: keep it a quick lookup.
pub trait PinnedCertificates: Send + Sync + fmt::Debug {
    /// Whether the end-entity certificate whose DER has this SHA-256
    /// `fingerprint` is pinned and may be used at `now` (not revoked, within
    /// its validity period).
    fn is_pinned(&self, fingerprint: &[u8; 32], now: UnixTime) -> bool;
}

/// Trust the layer above adds to every MQTT TLS listener that asks for
/// client certificates (see the [module documentation](self)).
#[derive(Debug, Clone, Default)]
pub struct ClientTrust {
    /// CA certificates (DER) whose issued certificates are accepted.
    pub cas: Vec<CertificateDer<'static>>,
    /// Revocation lists (DER), each applying to the CA that signed it.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Pinned device certificates.
    pub pins: Option<Arc<dyn PinnedCertificates>>,
}

/// The SHA-256 fingerprint of a certificate's DER encoding.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The client-certificate verifier of one listener: CA chains first, then
/// pinned fingerprints.
#[derive(Debug)]
pub(super) struct ClientVerifier {
    /// Verifies chains against the listener's and the registered CAs;
    /// `None` when there is no CA at all.
    pub(super) chains: Option<Arc<dyn ClientCertVerifier>>,
    /// Pinned certificates, if the layer above keeps any.
    pub(super) pins: Option<Arc<dyn PinnedCertificates>>,
    /// Whether a client without a certificate is refused.
    pub(super) mandatory: bool,
    /// Signature algorithms for the handshake's CertificateVerify.
    pub(super) algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.chains {
            Some(chains) => chains.root_hint_subjects(),
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let by_chain = match &self.chains {
            Some(chains) => chains.verify_client_cert(end_entity, intermediates, now),
            None => Err(unknown.clone()),
        };
        match (by_chain, &self.pins) {
            (Err(error), Some(pins)) if error == unknown => {
                if pins.is_pinned(&fingerprint(end_entity), now) {
                    Ok(ClientCertVerified::assertion())
                } else {
                    Err(error)
                }
            }
            (outcome, _) => outcome,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
