//! Device certificates and certificate authorities at run time: what the
//! API registers and revokes, the trust handed to the MQTT TLS listeners,
//! and closing live connections whose certificate no longer verifies.
//!
//! - A device certificate is pinned to its device by fingerprint; it must
//!   name that device (`CertificateIdentity`), must not be a CA and must
//!   not have expired. Pinned certificates need no CA (self-signed ones
//!   work).
//! - A registered CA (with an optional CRL) is trusted by every MQTT TLS
//!   listener that asks for client certificates, beside its own
//!   `client_ca`; any certificate it issued that names a registered device
//!   logs that device in.
//! - Revoking a device certificate keeps it refused (even if a CA issued
//!   it) and closes the device's connection if it logged in with it
//!   (DISCONNECT 0x87, no will). Removing a CA or giving it a new CRL
//!   re-checks every live certificate login against the new trust and
//!   closes those that no longer verify.
//!
//! Store commits and the re-checks run on the blocking pool.

use std::sync::{Arc, Mutex, MutexGuard};

use myriad_broker::core::evict::Eviction;
use myriad_broker::hooks::{CertificateDer, CertificateRevocationListDer, UnixTime};
use myriad_broker::shell::BrokerHandle;
use myriad_broker::shell::client_trust::{ClientTrust, PinnedCertificates};
use myriad_broker::shell::tls::{TlsSettings, TlsSetupError};
use myriad_mqtt::ReasonCode;
use tracing::{info, warn};

use super::auth::FleetAuthenticator;
use super::now_ms;
use crate::certs::{
    CertificateAuthority, CertificateError, CertificateStatus, DeviceCertificate, Fingerprint,
    ParsedCa, ParsedCertificate,
};
use crate::registry::DeviceId;
use crate::store::{FleetStore, FleetStoreError};

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertServiceError {
    /// The PEM is not acceptable (the API answers 400).
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// The registry refused or failed (not found, conflict, I/O).
    #[error(transparent)]
    Store(#[from] FleetStoreError),
    /// A TLS listener could not take the new trust (the old one stays).
    #[error("a TLS listener cannot use the registered CAs: {0}")]
    Listener(#[from] TlsSetupError),
    /// The blocking task failed.
    #[error("the store task failed")]
    Stopped,
}

/// Pinned certificates, looked up in the registry during TLS handshakes.
#[derive(Debug)]
struct RegistryPins(Arc<FleetStore>);

impl PinnedCertificates for RegistryPins {
    fn is_pinned(&self, fingerprint: &[u8; 32], now: UnixTime) -> bool {
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        match self.0.device_certificate(&Fingerprint(*fingerprint)) {
            Ok(Some(cert)) => cert.usable_at(now),
            Ok(None) => false,
            Err(error) => {
                warn!(%error, "cannot read pinned certificates during a TLS handshake");
                false
            }
        }
    }
}

/// The registry's CAs, their CRLs and its pins, as the listeners take them.
/// A CA record that cannot be read (disk damage) is logged and left out,
/// so it never stops start-up.
fn trust_from(store: &Arc<FleetStore>) -> Result<ClientTrust, CertServiceError> {
    let mut trust = ClientTrust {
        pins: Some(Arc::new(RegistryPins(store.clone()))),
        ..ClientTrust::default()
    };
    let (cas, damaged) = store.readable_certificate_authorities()?;
    for error in damaged {
        warn!(%error, "a registered CA cannot be read and is not trusted");
    }
    for ca in cas {
        trust.cas.push(CertificateDer::from(ca.der));
        if let Some(crl) = ca.crl {
            trust.crls.push(CertificateRevocationListDer::from(crl));
        }
    }
    Ok(trust)
}

/// Gives every one of `listeners` the registry's current trust.
fn hand_trust_to(
    store: &Arc<FleetStore>,
    listeners: &[Arc<TlsSettings>],
) -> Result<(), CertServiceError> {
    let trust = trust_from(store)?;
    for listener in listeners {
        listener.set_client_trust(trust.clone())?;
    }
    Ok(())
}

/// See the module docs.
pub struct CertificateService {
    store: Arc<FleetStore>,
    auth: Arc<FleetAuthenticator>,
    broker: BrokerHandle,
    /// The MQTT TLS listeners the trust goes to.
    listeners: Mutex<Vec<Arc<TlsSettings>>>,
}

impl std::fmt::Debug for CertificateService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateService").finish_non_exhaustive()
    }
}

fn now_secs() -> i64 {
    (now_ms() / 1000) as i64
}

impl CertificateService {
    /// The service over `store`, closing connections through `broker`.
    pub fn new(
        store: Arc<FleetStore>,
        auth: Arc<FleetAuthenticator>,
        broker: BrokerHandle,
    ) -> CertificateService {
        CertificateService {
            store,
            auth,
            broker,
            listeners: Mutex::new(Vec::new()),
        }
    }

    fn listeners(&self) -> MutexGuard<'_, Vec<Arc<TlsSettings>>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the registry's trust to `listeners` (the MQTT TLS ones) now
    /// and after every change. Blocks on the store: call at start-up.
    pub fn attach(&self, listeners: Vec<Arc<TlsSettings>>) -> Result<(), CertServiceError> {
        *self.listeners() = listeners;
        self.apply_trust()
    }

    fn apply_trust(&self) -> Result<(), CertServiceError> {
        let listeners = self.listeners().clone();
        hand_trust_to(&self.store, &listeners)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&FleetStore) -> Result<T, CertServiceError> + Send + 'static,
    ) -> Result<T, CertServiceError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|_| CertServiceError::Stopped)?
    }

    /// Pins the certificate in `pem` to `device` (see the module docs). An
    /// unknown device is reported before anything wrong with the PEM.
    pub async fn add_device_certificate(
        &self,
        device: &DeviceId,
        pem: &str,
    ) -> Result<DeviceCertificate, CertServiceError> {
        let id = device.clone();
        self.blocking(move |store| match store.get_device(&id)? {
            Some(_) => Ok(()),
            None => Err(FleetStoreError::DeviceNotFound(id).into()),
        })
        .await?;
        let now = now_secs();
        let parsed = ParsedCertificate::device_from_pem(pem, now)?;
        self.auth
            .certificate_identity()
            .check_names(&parsed, device.as_str())?;
        let cert = DeviceCertificate {
            fingerprint: parsed.fingerprint,
            device: device.clone(),
            status: CertificateStatus::Active,
            subject: parsed.subject,
            issuer: parsed.issuer,
            serial: parsed.serial,
            not_before: parsed.not_before,
            not_after: parsed.not_after,
            created_at: now_ms(),
            revoked_at: None,
        };
        let stored = cert.clone();
        self.blocking(move |store| Ok(store.add_device_certificate(&stored, now)?))
            .await?;
        info!(device = %device, fingerprint = %cert.fingerprint, "device certificate registered");
        Ok(cert)
    }

    /// The certificates registered for `device`.
    pub async fn device_certificates(
        &self,
        device: &DeviceId,
    ) -> Result<Vec<DeviceCertificate>, CertServiceError> {
        let device = device.clone();
        self.blocking(move |store| Ok(store.device_certificates(&device)?))
            .await
    }

    /// Revokes `device`'s certificate `fingerprint` and closes the device's
    /// connection if it logged in with it; returns the record and whether
    /// a connection was closed.
    pub async fn revoke_device_certificate(
        &self,
        device: &DeviceId,
        fingerprint: Fingerprint,
    ) -> Result<(DeviceCertificate, bool), CertServiceError> {
        let id = device.clone();
        let cert = self
            .blocking(move |store| {
                Ok(store.revoke_device_certificate(&id, &fingerprint, now_ms())?)
            })
            .await?;
        info!(device = %device, %fingerprint, "device certificate revoked");
        let closed = self.auth.certificate_login(device.as_str()) == Some(fingerprint)
            && self.close(device.as_str()).await;
        Ok((cert, closed))
    }

    /// Registers the CA in `ca_pem`, with the revocation list in `crl_pem`
    /// if given, and trusts it on every listener.
    pub async fn add_ca(
        &self,
        ca_pem: &str,
        crl_pem: Option<&str>,
    ) -> Result<CertificateAuthority, CertServiceError> {
        let parsed = ParsedCa::from_pem(ca_pem, now_secs())?;
        let crl = crl_pem.map(|pem| parsed.crl_from_pem(pem)).transpose()?;
        let now = now_ms();
        let ParsedCa(cert) = parsed;
        let ca = CertificateAuthority {
            fingerprint: cert.fingerprint,
            subject: cert.subject,
            not_before: cert.not_before,
            not_after: cert.not_after,
            created_at: now,
            crl_revoked: crl.as_ref().map_or(0, |crl| crl.revoked),
            crl_updated_at: crl.as_ref().map(|_| now),
            crl: crl.map(|crl| crl.der),
            der: cert.der,
        };
        let stored = ca.clone();
        self.blocking(move |store| Ok(store.add_certificate_authority(&stored)?))
            .await?;
        info!(fingerprint = %ca.fingerprint, subject = %ca.subject, "CA registered");
        self.trust_changed().await?;
        Ok(ca)
    }

    /// Every registered CA.
    pub async fn cas(&self) -> Result<Vec<CertificateAuthority>, CertServiceError> {
        self.blocking(|store| Ok(store.certificate_authorities()?))
            .await
    }

    /// Gives CA `fingerprint` the revocation list in `crl_pem` (`None`
    /// removes it); live logins it now revokes are closed. Returns the CA
    /// and how many connections were closed.
    pub async fn set_crl(
        &self,
        fingerprint: Fingerprint,
        crl_pem: Option<&str>,
    ) -> Result<(CertificateAuthority, usize), CertServiceError> {
        let ca = self
            .blocking(move |store| {
                store.certificate_authority(&fingerprint)?.ok_or_else(|| {
                    FleetStoreError::CertificateNotFound(format!(
                        "no CA {fingerprint} is registered"
                    ))
                    .into()
                })
            })
            .await?;
        let crl = match crl_pem {
            Some(pem) => {
                let parsed = ParsedCa(ParsedCertificate::from_der(&ca.der)?);
                let crl = parsed.crl_from_pem(pem)?;
                Some((crl.der, crl.revoked))
            }
            None => None,
        };
        let ca = self
            .blocking(move |store| {
                Ok(store.set_certificate_authority_crl(&fingerprint, crl, now_ms())?)
            })
            .await?;
        info!(%fingerprint, revoked = ca.crl_revoked, "CA revocation list set");
        let closed = self.trust_changed().await?;
        Ok((ca, closed))
    }

    /// Removes CA `fingerprint`; live logins that no longer verify are
    /// closed. Returns the CA and how many connections were closed.
    pub async fn delete_ca(
        &self,
        fingerprint: Fingerprint,
    ) -> Result<(CertificateAuthority, usize), CertServiceError> {
        let ca = self
            .blocking(move |store| Ok(store.delete_certificate_authority(&fingerprint)?))
            .await?;
        info!(%fingerprint, "CA removed");
        let closed = self.trust_changed().await?;
        Ok((ca, closed))
    }

    /// Hands the new trust to the listeners, then closes the certificate
    /// logins that no listener would accept any more; returns how many.
    async fn trust_changed(&self) -> Result<usize, CertServiceError> {
        let listeners = self.listeners().clone();
        let store = self.store.clone();
        let auth = self.auth.clone();
        let stale =
            tokio::task::spawn_blocking(move || -> Result<Vec<String>, CertServiceError> {
                hand_trust_to(&store, &listeners)?;
                // Logins made from here on were checked with the new trust.
                Ok(auth
                    .certificate_logins()
                    .into_iter()
                    .filter(|(_, chain)| {
                        !listeners
                            .iter()
                            .any(|l| l.client_certificate_verifies(chain))
                    })
                    .map(|(device, _)| device)
                    .collect())
            })
            .await
            .map_err(|_| CertServiceError::Stopped)??;
        let mut closed = 0;
        for device in stale {
            if self.close(&device).await {
                closed += 1;
            }
        }
        Ok(closed)
    }

    /// Closes `device`'s connection: its certificate was revoked (0x87, no will).
    async fn close(&self, device: &str) -> bool {
        self.auth.forget(device);
        let eviction = Eviction {
            publish_will: false,
            ..Eviction::disconnect(device, ReasonCode::NotAuthorized)
        };
        match self.broker.evict(eviction).await {
            Ok(evicted) => evicted.disconnected,
            Err(_) => false,
        }
    }
}
