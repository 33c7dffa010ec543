//! TLS settings of a listener: the server's certificate chain and key, the
//! CAs client certificates are checked against, read from PEM files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;

use super::client_trust::{ClientTrust, ClientVerifier};
use crate::config::{ClientCertPolicy, ListenerConfig};

/// Counter of TLS handshakes, labelled `listener` (the listener's
/// configured address, as in the certificate expiry gauge; `api` for the
/// HTTP API), `result` (`ok`, `failed`) and, for failures, `reason` (see
/// [`failure_reason`]).
pub const TLS_HANDSHAKES_TOTAL: &str = "myriad_tls_handshakes_total";

/// Counts one finished handshake on the MQTT listener `listener`.
pub(super) fn count_handshake(listener: &str, outcome: Result<(), &std::io::Error>) {
    let listener = listener.to_owned();
    match outcome {
        Ok(()) => metrics::counter!(
            TLS_HANDSHAKES_TOTAL,
            "listener" => listener,
            "result" => "ok"
        )
        .increment(1),
        Err(error) => metrics::counter!(
            TLS_HANDSHAKES_TOTAL,
            "listener" => listener,
            "result" => "failed",
            "reason" => failure_reason(error)
        )
        .increment(1),
    }
}

/// Why a handshake failed, as a small fixed set: `client_certificate` (none
/// presented where required, or one that does not verify or is revoked),
/// `alpn` (no protocol in common), `incompatible` (no common version or
/// cipher suite), `malformed` (not TLS, or broken TLS, or more than 96 KiB
/// received without a whole record or handshake message), `alert_received`
/// (the client refused ours), `closed` (the client went away), `timeout`
/// (not finished within `connect_timeout_secs`) and `other`.
pub fn failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    if error.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    if let Some(super::transport::TlsReceiveError::TooLarge { .. }) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<super::transport::TlsReceiveError>())
    {
        return "malformed";
    }
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => "closed",
            _ => "other",
        };
    };
    match tls {
        E::InvalidCertificate(_) | E::NoCertificatesPresented | E::InvalidCertRevocationList(_) => {
            "client_certificate"
        }
        E::NoApplicationProtocol => "alpn",
        E::PeerIncompatible(_) => "incompatible",
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::DecryptError
        | E::PeerMisbehaved(_) => "malformed",
        E::AlertReceived(_) => "alert_received",
        _ => "other",
    }
}

/// ALPN protocol names a TLS listener accepts. A client offering none is
/// let in; one offering only others is refused (as AWS IoT Core does).
const ALPN: &[&[u8]] = &[b"mqtt"];

/// ALPN protocol names the HTTP API over TLS accepts (see [`TlsSettings::load_with_alpn`]).
pub const HTTP_ALPN: &[&[u8]] = &[b"http/1.1"];

/// Why a listener's TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which setting (`cert`, `key`, `client_ca`).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, ...).
    #[error("{0}")]
    Rustls(String),
}

/// A TLS listener's current settings; [`TlsSettings::reload`] swaps in
/// freshly read files, and [`TlsSettings::set_client_trust`] new trust,
/// without touching connections already made.
#[derive(Debug)]
pub struct TlsSettings {
    listener: ListenerConfig,
    alpn: &'static [&'static [u8]],
    trust: RwLock<Arc<ClientTrust>>,
    current: RwLock<Built>,
}

/// A listener's rustls configuration and its client-certificate verifier.
#[derive(Debug, Clone)]
struct Built {
    config: Arc<rustls::ServerConfig>,
    verifier: Option<Arc<ClientVerifier>>,
}

/// Reads a lock whose writers never panic while holding it (a poisoned one is used as is).
fn read_lock<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(value) => value.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Replaces the value behind `lock`.
fn write_lock<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut slot) => *slot = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

impl TlsSettings {
    /// Reads the files `listener` names.
    pub fn load(listener: &ListenerConfig) -> Result<TlsSettings, TlsSetupError> {
        TlsSettings::load_with_alpn(listener, ALPN)
    }

    /// Like [`TlsSettings::load`], accepting the ALPN protocols `alpn`
    /// instead of `mqtt` (the HTTP API uses [`HTTP_ALPN`]).
    pub fn load_with_alpn(
        listener: &ListenerConfig,
        alpn: &'static [&'static [u8]],
    ) -> Result<TlsSettings, TlsSetupError> {
        let trust = Arc::new(ClientTrust::default());
        Ok(TlsSettings {
            listener: listener.clone(),
            alpn,
            current: RwLock::new(build(listener, alpn, &trust)?),
            trust: RwLock::new(trust),
        })
    }

    /// The settings new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        read_lock(&self.current).config
    }

    /// Whether a client certificate `chain` (end entity first) would be
    /// accepted by a new connection now; false for a listener that asks
    /// for no certificates. For re-checking live connections after the
    /// trust changed (a CA removed, a CRL or pin revoked).
    pub fn client_certificate_verifies(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return false;
        };
        match read_lock(&self.current).verifier {
            Some(verifier) => verifier
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
                .is_ok(),
            None => false,
        }
    }

    /// Reads the files again; on error the settings in force stay.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let trust = read_lock(&self.trust);
        let fresh = build(&self.listener, self.alpn, &trust)?;
        write_lock(&self.current, fresh);
        Ok(())
    }

    /// Trusts `trust` from the next connection on, beside the listener's
    /// own `client_ca` (a listener with `client_certs = "none"` asks for no
    /// certificate and ignores it). Reads the listener's files again; on
    /// error the settings in force stay.
    pub fn set_client_trust(&self, trust: ClientTrust) -> Result<(), TlsSetupError> {
        let trust = Arc::new(trust);
        let fresh = build(&self.listener, self.alpn, &trust)?;
        write_lock(&self.trust, trust);
        write_lock(&self.current, fresh);
        Ok(())
    }

    /// The listener these settings belong to.
    pub fn listener(&self) -> &ListenerConfig {
        &self.listener
    }
}

/// The rustls configuration `listener` describes (TLS 1.2 and 1.3),
/// accepting the ALPN protocols `alpn` and trusting `trust` for client
/// certificates beside the listener's own files (see [`super::client_trust`]).
fn build(
    listener: &ListenerConfig,
    alpn: &[&[u8]],
    trust: &ClientTrust,
) -> Result<Built, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let (builder, verifier) = match listener.client_certs {
        ClientCertPolicy::None => (builder.with_no_client_auth(), None),
        policy => {
            let verifier = Arc::new(client_verifier(listener, policy, trust, provider)?);
            (
                builder.with_client_cert_verifier(verifier.clone()),
                Some(verifier),
            )
        }
    };
    let cert_path = required(&listener.cert, "cert")?;
    let key_path = required(&listener.key, "key")?;
    let chain = certificates(cert_path, "cert")?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| file_error("key", key_path, e))?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError::Rustls(format!("cert and key: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Built {
        config: Arc::new(config),
        verifier,
    })
}

/// The client-certificate verifier of `listener`: its `client_ca` and
/// `client_crl` files plus `trust`.
fn client_verifier(
    listener: &ListenerConfig,
    policy: ClientCertPolicy,
    trust: &ClientTrust,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<ClientVerifier, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    if let Some(ca_path) = &listener.client_ca {
        for cert in certificates(ca_path, "client_ca")? {
            roots
                .add(cert)
                .map_err(|e| file_error("client_ca", ca_path, e))?;
        }
    }
    for ca in &trust.cas {
        // A registered CA rustls cannot use is skipped, not fatal: the
        // registry checked it when it was added.
        let _ = roots.add(ca.clone());
    }
    let mut crls = match &listener.client_crl {
        Some(path) => CertificateRevocationListDer::pem_file_iter(path)
            .map_err(|e| file_error("client_crl", path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error("client_crl", path, e))?,
        None => Vec::new(),
    };
    crls.extend(trust.crls.iter().cloned());
    let algorithms = provider.signature_verification_algorithms;
    let chains = if roots.is_empty() {
        None
    } else {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .with_crls(crls)
            // A CA without a CRL is trusted without one; a CA with one
            // always knows its certificates' status.
            .allow_unknown_revocation_status()
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsSetupError::Rustls(format!("client certificate CAs: {e}")))?;
        Some(verifier)
    };
    Ok(ClientVerifier {
        chains,
        pins: trust.pins.clone(),
        mandatory: policy == ClientCertPolicy::Require,
        algorithms,
    })
}

/// The certificates in the PEM file at `path` (at least one).
fn certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no CERTIFICATE block in the file"));
    }
    Ok(certs)
}

/// The path of a setting validation has made sure is there.
fn required<'a>(path: &'a Option<PathBuf>, what: &'static str) -> Result<&'a Path, TlsSetupError> {
    path.as_deref().ok_or_else(|| TlsSetupError::File {
        what,
        path: PathBuf::new(),
        reason: "not set".to_owned(),
    })
}

fn file_error(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsSetupError {
    TlsSetupError::File {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}
