//! Authentication of MQTT clients against the registry.
//!
//! User name rules (documented in docs/topics.md):
//! - a device logs in with its device id as user name *and* as client
//!   identifier, and its password;
//! - an application client logs in with user name `app:{app_id}` and any
//!   client identifier;
//! - without a user name, or with one the registry does not know, a client
//!   is anonymous: let in only when `allow_anonymous` is set, and then kept
//!   out of the platform's namespaces ([`AnonymousAcl`]). A registered
//!   device or app with a wrong password is always refused.
//!
//! A TLS client whose certificate names a device (its CN, or a URI SAN:
//! [`CertificateIdentity`]) logs in as that device without a password when
//! it sends no user name or the device id as user name; the client id must
//! be the device id. The listener has verified the certificate already (a
//! registered CA issued it, or it is pinned); here it must name a
//! registered, enabled device, and if its fingerprint is registered it
//! must be registered active for that device. A certificate naming no
//! registered device is refused, or, with `allow_anonymous`, let in as an
//! anonymous client (as an unknown user name is). A password sent along is
//! not checked. A certificate naming no device, with a user name, leaves
//! the decision to the password (an app client on a listener that
//! requires certificates). Every certificate login is counted in
//! `myriad_certificate_logins_total{result, reason}`.
//!
//! Password checks are bounded ([`PasswordChecks`]): at most
//! `max_concurrent` Argon2 runs at once on the blocking pool, at most
//! `max_queued` logins waiting for one; a login arriving when the queue is
//! full is refused with CONNACK 0x88 Server unavailable (3.1.1: 0x03)
//! without hashing and without counting as a failure. The throttle counts
//! attempts in flight per (user name, source address) and per address, so
//! a burst of simultaneous guesses is cut at the failure limit (0x9F
//! Connection rate exceeded; 3.1.1: 0x03) before any queueing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use myriad_broker::hooks::{
    Acl, AuthDecision, Authenticator, BoxFuture, CertificateDer, ConnectInfo,
};
use myriad_mqtt::ReasonCode;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::now_ms;
use crate::acl::{Principal, may_publish, may_subscribe};
use crate::certs::{CertificateIdentity, CertificateStatus, Fingerprint, ParsedCertificate};
use crate::credentials::{
    LoginThrottle, ThrottleCheck, ThrottleConfig, VerifiedCache, verify_password,
};
use crate::registry::DeviceId;
use crate::store::FleetStore;

/// App id -> (client id, weak handle on the ACL of that connection).
type AppLogins = HashMap<String, Vec<(String, Weak<PrincipalAcl>)>>;

/// Counter of logins with a certificate naming a device, labelled `result`
/// (`accepted`, `refused`) and, for refusals, `reason`.
pub const CERTIFICATE_LOGINS_TOTAL: &str = "myriad_certificate_logins_total";

/// The ACL of a device connection that logged in with a certificate,
/// holding the chain it presented. The broker keeps it as long as the
/// connection lives, so the chain is freed with the connection; the
/// authenticator keeps only a weak handle (`CertLogins`).
#[derive(Debug)]
pub struct CertifiedAcl {
    acl: PrincipalAcl,
    chain: Vec<CertificateDer<'static>>,
}

impl Acl for CertifiedAcl {
    fn may_publish(&self, topic: &str) -> bool {
        self.acl.may_publish(topic)
    }
    fn may_publish_message(&self, topic: &str, retain: bool, response_topic: Option<&str>) -> bool {
        self.acl.may_publish_message(topic, retain, response_topic)
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        self.acl.may_subscribe(filter)
    }
    fn device(&self) -> Option<&str> {
        self.acl.device()
    }
}

/// Device id -> weak handle on the [`CertifiedAcl`] of its latest
/// certificate login. Handles of ended connections are dropped whenever
/// the map reaches `prune_at` (then set to twice the live entries, at
/// least [`CertLogins::MIN_PRUNE_AT`]), so it holds at most about twice
/// the live certificate logins; a dead handle holds no chain.
#[derive(Default)]
struct CertLogins {
    by_device: HashMap<String, Weak<CertifiedAcl>>,
    prune_at: usize,
}

impl CertLogins {
    const MIN_PRUNE_AT: usize = 1024;

    fn insert(&mut self, device: String, acl: &Arc<CertifiedAcl>) {
        if self.by_device.len() >= self.prune_at.max(Self::MIN_PRUNE_AT) {
            self.by_device.retain(|_, acl| acl.strong_count() > 0);
            self.prune_at = self.by_device.len() * 2;
        }
        self.by_device.insert(device, Arc::downgrade(acl));
    }

    fn live(&self) -> impl Iterator<Item = (&String, Arc<CertifiedAcl>)> {
        self.by_device
            .iter()
            .filter_map(|(device, acl)| acl.upgrade().map(|acl| (device, acl)))
    }
}

/// The prefix of application clients' user names.
pub const APP_USERNAME_PREFIX: &str = "app:";

/// The ACL of one connection: its principal's rights.
#[derive(Debug)]
pub struct PrincipalAcl(pub Principal);

/// Whether the platform acts on messages published to `topic`
/// (`$shadow/{id}/update`, `$shadow/{id}/get`, `$shadow/{id}/delete`, `$commands/request`,
/// `$commands/{id}/reply/...`), so a retained copy would be acted on again
/// after every restart.
pub fn is_platform_request(topic: &str) -> bool {
    let mut levels = topic.split('/');
    matches!(
        (levels.next(), levels.next(), levels.next(), levels.next()),
        (Some("$commands"), Some("request"), None, _)
            | (Some("$commands"), Some(_), Some("reply"), _)
            | (
                Some("$shadow"),
                Some(_),
                Some("update" | "get" | "delete"),
                None
            )
    )
}

/// The topic where applications request commands over MQTT; the platform
/// publishes its answer to the request's Response Topic.
pub const COMMAND_REQUEST_TOPIC: &str = "$commands/request";

impl Acl for PrincipalAcl {
    fn may_publish(&self, topic: &str) -> bool {
        may_publish(&self.0, topic)
    }
    /// On top of [`may_publish`]: a request on `$commands/request` may name
    /// as Response Topic only a topic the client may publish to itself (the
    /// platform publishes its answer there on the client's behalf).
    ///
    /// And a platform request topic ([`is_platform_request`]) refuses the
    /// retain flag: a retained request would be applied again at every
    /// restart.
    fn may_publish_message(&self, topic: &str, retain: bool, response_topic: Option<&str>) -> bool {
        if !may_publish(&self.0, topic) || (retain && is_platform_request(topic)) {
            return false;
        }
        match response_topic {
            Some(answer_to) if topic == COMMAND_REQUEST_TOPIC => may_publish(&self.0, answer_to),
            _ => true,
        }
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        may_subscribe(&self.0, filter)
    }
    fn device(&self) -> Option<&str> {
        match &self.0 {
            Principal::Device(id) => Some(id.as_str()),
            _ => None,
        }
    }
}

/// Topic prefixes that belong to devices and the platform.
const PLATFORM_PREFIXES: [&str; 5] = ["$shadow/", "$commands/", "$ota/", "$events/", "devices/"];

/// What anonymous clients may do: publish outside the device and platform
/// namespaces (`devices/`, `$shadow/`, `$commands/`, `$ota/`, `$events/`),
/// so they cannot impersonate a device, and subscribe to any filter not
/// naming those namespaces. `#` and `+/...` are granted, but messages on
/// `devices/...` (and the `$` namespaces, which they never match) are
/// withheld at delivery, retained ones included: an anonymous client never
/// reads device data.
#[derive(Debug)]
pub struct AnonymousAcl;

impl AnonymousAcl {
    fn outside_platform(name: &str) -> bool {
        !PLATFORM_PREFIXES.iter().any(|p| name.starts_with(p))
    }
}

impl Acl for AnonymousAcl {
    fn may_publish(&self, topic: &str) -> bool {
        AnonymousAcl::outside_platform(topic)
    }
    fn may_receive(&self, topic: &str) -> bool {
        AnonymousAcl::outside_platform(topic)
    }
    fn filters_deliveries(&self) -> bool {
        true
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        AnonymousAcl::outside_platform(filter)
    }
}

/// Counters of the authenticator, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AuthStats {
    /// Logins accepted.
    pub accepted: u64,
    /// Logins refused for bad or missing credentials.
    pub bad_credentials: u64,
    /// Logins refused without checking because of too many failures.
    pub throttled: u64,
    /// Logins refused because the device is disabled.
    pub disabled: u64,
    /// Logins refused because the password-check queue was full.
    pub busy: u64,
    /// Argon2 verifications run (cache misses that got a slot).
    pub hashed: u64,
}

/// Bounds on password verification (config `auth.max_concurrent_password_checks`
/// and `auth.password_check_queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordChecks {
    /// Argon2 verifications running at once (at least 1). Default 4.
    pub max_concurrent: usize,
    /// Logins waiting for a verification slot; one more is refused with
    /// 0x88 Server unavailable. Default 64.
    pub max_queued: usize,
}

impl Default for PasswordChecks {
    fn default() -> Self {
        PasswordChecks {
            max_concurrent: 4,
            max_queued: 64,
        }
    }
}

/// What a password verification found.
enum Verified {
    Yes,
    No,
    /// The queue of checks was full: not checked.
    Busy,
}

/// Checks CONNECTs against the registry. See the module docs.
pub struct FleetAuthenticator {
    store: Arc<FleetStore>,
    allow_anonymous: bool,
    /// The one ACL every anonymous connection shares (no allocation each).
    anonymous: Arc<AnonymousAcl>,
    state: Mutex<AuthState>,
    /// Slots for Argon2 runs.
    slots: Arc<Semaphore>,
    /// Logins waiting for a slot now.
    waiting: AtomicUsize,
    max_queued: usize,
    /// The connections of each app client (by app id): client id and a
    /// weak handle on the ACL given at login. The broker holds that ACL
    /// as long as the connection lives, so a handle that still upgrades
    /// is a live connection (see [`FleetAuthenticator::app_connections`]).
    app_logins: Mutex<AppLogins>,
    /// Where certificates name their device.
    identity: CertificateIdentity,
    /// Device id -> its live connection's certificate, for re-checking it
    /// when a certificate, CA or CRL is revoked.
    cert_logins: Mutex<CertLogins>,
}

/// A login attempt counted in flight by the throttle; ended exactly once
/// (dropped unfinished, e.g. the client went away: abandoned).
struct Attempt<'a> {
    auth: &'a FleetAuthenticator,
    username: &'a str,
    ip: Option<IpAddr>,
    ended: bool,
}

impl Attempt<'_> {
    fn end(mut self, succeeded: Option<bool>) {
        self.ended = true;
        self.auth
            .state()
            .throttle
            .end(self.username, self.ip, succeeded, now_ms());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.auth
                .state()
                .throttle
                .end(self.username, self.ip, None, now_ms());
        }
    }
}

/// Decrements the waiting count when a queued login leaves the queue.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct AuthState {
    cache: VerifiedCache,
    throttle: LoginThrottle,
    stats: AuthStats,
}

impl FleetAuthenticator {
    /// An authenticator reading `store`; anonymous clients are let in
    /// (unrestricted) only if `allow_anonymous`.
    pub fn new(
        store: Arc<FleetStore>,
        allow_anonymous: bool,
        throttle: ThrottleConfig,
        cache: VerifiedCache,
        checks: PasswordChecks,
    ) -> FleetAuthenticator {
        FleetAuthenticator {
            store,
            allow_anonymous,
            anonymous: Arc::new(AnonymousAcl),
            state: Mutex::new(AuthState {
                cache,
                throttle: LoginThrottle::new(throttle),
                stats: AuthStats::default(),
            }),
            slots: Arc::new(Semaphore::new(checks.max_concurrent.max(1))),
            waiting: AtomicUsize::new(0),
            max_queued: checks.max_queued,
            app_logins: Mutex::new(HashMap::new()),
            identity: CertificateIdentity::default(),
            cert_logins: Mutex::new(CertLogins::default()),
        }
    }

    /// Takes device names from certificates the `identity` way (the
    /// default is the subject CN).
    pub fn with_certificate_identity(mut self, identity: CertificateIdentity) -> Self {
        self.identity = identity;
        self
    }

    /// Where certificates name their device.
    pub fn certificate_identity(&self) -> &CertificateIdentity {
        &self.identity
    }

    fn cert_logins(&self) -> MutexGuard<'_, CertLogins> {
        self.cert_logins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The certificate chains of the live connections that logged in with
    /// one, by device id.
    pub fn certificate_logins(&self) -> Vec<(String, Vec<CertificateDer<'static>>)> {
        self.cert_logins()
            .live()
            .map(|(device, acl)| (device.clone(), acl.chain.clone()))
            .collect()
    }

    /// The fingerprint of the certificate `device`'s live connection logged
    /// in with, if it did.
    pub fn certificate_login(&self, device: &str) -> Option<Fingerprint> {
        let acl = self.cert_logins().by_device.get(device)?.upgrade()?;
        acl.chain.first().map(|der| Fingerprint::of(der))
    }

    fn state(&self) -> MutexGuard<'_, AuthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters so far.
    pub fn stats(&self) -> AuthStats {
        self.state().stats
    }

    fn app_logins(&self) -> MutexGuard<'_, AppLogins> {
        self.app_logins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a connection of app client `app` (dropping the handles of
    /// its connections that ended, so the list follows the live ones).
    fn app_logged_in(&self, app: &str, client_id: &str, acl: &Arc<PrincipalAcl>) {
        let mut logins = self.app_logins();
        logins.retain(|_, list| {
            list.retain(|(_, acl)| acl.strong_count() > 0);
            !list.is_empty()
        });
        logins
            .entry(app.to_string())
            .or_default()
            .push((client_id.to_string(), Arc::downgrade(acl)));
    }

    /// The client ids of app client `app`'s live connections, forgotten
    /// here (the caller closes them: the app was changed or deleted).
    pub fn app_connections(&self, app: &str) -> Vec<String> {
        self.app_logins()
            .remove(app)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, acl)| acl.strong_count() > 0)
            .map(|(client_id, _)| client_id)
            .collect()
    }

    /// A slot for one Argon2 run, shared with device logins (at most
    /// `auth.max_concurrent_password_checks` at once): waits in the bounded
    /// queue (`auth.password_check_queue`), `None` when it is full. Hold the
    /// permit until the hash is done (move it into the blocking task).
    pub async fn password_check_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let _queued = Queued(&self.waiting);
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Forgets cached verifications of `principal` (its password changed or it was removed).
    pub fn forget(&self, principal: &str) {
        self.state().cache.forget(principal);
    }

    async fn decide(&self, info: ConnectInfo<'_>) -> AuthDecision {
        if let Some(decision) = self.decide_certificate(&info) {
            return decision;
        }
        let Some(username) = info.username else {
            return if !self.allow_anonymous {
                AuthDecision::Deny(ReasonCode::NotAuthorized)
            } else if self.is_device_id(info.client_id) {
                AuthDecision::Deny(ReasonCode::ClientIdentifierNotValid)
            } else {
                AuthDecision::Allow(Some(self.anonymous.clone()))
            };
        };
        let ip = Some(info.peer.ip());
        let now = now_ms();
        let check = self.state().throttle.begin(username, ip, now);
        if let ThrottleCheck::Refused { .. } = check {
            self.state().stats.throttled += 1;
            debug!(username, peer = %info.peer, "login throttled");
            return AuthDecision::Deny(ReasonCode::ConnectionRateExceeded);
        }
        let attempt = Attempt {
            auth: self,
            username,
            ip,
            ended: false,
        };
        // Devices log in by their id, apps by `app:{id}`; ids are one
        // namespace, so the bare name finds at most one principal.
        let app_login = username.strip_prefix(APP_USERNAME_PREFIX);
        let record = match self.store.login_record(app_login.unwrap_or(username)) {
            Ok(record) => record,
            Err(error) => {
                warn!(%error, username, "cannot read the registry during login");
                return AuthDecision::Deny(ReasonCode::ServerUnavailable);
            }
        };
        let record =
            record.filter(|r| matches!(r.principal, Principal::Device(_)) == app_login.is_none());
        let Some(record) = record else {
            return self.unknown(attempt, info.client_id);
        };
        let password = info.password.and_then(|p| std::str::from_utf8(p).ok());
        let (Some(phc), Some(password)) = (record.password_hash, password) else {
            return self.failed(attempt);
        };
        match self.verify(username, &phc, password.to_owned()).await {
            Verified::Yes => {}
            Verified::No => return self.failed(attempt),
            Verified::Busy => {
                self.state().stats.busy += 1;
                debug!(username, peer = %info.peer, "password checks busy");
                return AuthDecision::Deny(ReasonCode::ServerUnavailable);
            }
        }
        match &record.principal {
            // A device's session is its own: the client id must be its id.
            Principal::Device(device) if info.client_id != device.as_str() => {
                return AuthDecision::Deny(ReasonCode::ClientIdentifierNotValid);
            }
            Principal::Device(_) => {}
            // ... and no other login may take it (resume its session, read
            // its queued commands, or kick it off).
            _ if self.is_device_id(info.client_id) => {
                attempt.end(None);
                return AuthDecision::Deny(ReasonCode::ClientIdentifierNotValid);
            }
            _ => {}
        }
        if !record.enabled {
            self.state().stats.disabled += 1;
            return AuthDecision::Deny(ReasonCode::NotAuthorized);
        }
        let principal = record.principal;
        attempt.end(Some(true));
        self.state().stats.accepted += 1;
        let acl = Arc::new(PrincipalAcl(principal));
        if let Some(app) = app_login {
            self.app_logged_in(app, info.client_id, &acl);
        }
        AuthDecision::Allow(Some(acl))
    }

    /// Checks `password` against `phc`: from the cache, or with Argon2 on
    /// the blocking pool once a slot is free (waiting in the bounded queue;
    /// [`Verified::Busy`] when it is full).
    async fn verify(&self, principal: &str, phc: &str, password: String) -> Verified {
        if self.state().cache.check(principal, phc, &password) {
            return Verified::Yes;
        }
        let Some(permit) = self.password_check_slot().await else {
            return Verified::Busy;
        };
        self.state().stats.hashed += 1;
        let owned_phc = phc.to_owned();
        // The permit moves into the blocking task: the slot stays taken
        // until Argon2 is done, even if this login is abandoned meanwhile.
        let checked = tokio::task::spawn_blocking(move || {
            let ok = verify_password(&owned_phc, &password).unwrap_or(false);
            drop(permit);
            (ok, password)
        })
        .await;
        match checked {
            Ok((true, password)) => {
                self.state().cache.remember(principal, phc, &password);
                Verified::Yes
            }
            _ => Verified::No,
        }
    }

    /// A user name the registry does not know: with anonymous access on,
    /// the client is let in as anonymous (as a broker without a password
    /// file would); otherwise it is a failed login.
    fn unknown(&self, attempt: Attempt<'_>, client_id: &str) -> AuthDecision {
        if self.allow_anonymous {
            attempt.end(None);
            if self.is_device_id(client_id) {
                return AuthDecision::Deny(ReasonCode::ClientIdentifierNotValid);
            }
            return AuthDecision::Allow(Some(self.anonymous.clone()));
        }
        self.failed(attempt)
    }

    /// Whether `client_id` is a registered device's id: that client id
    /// belongs to the device's own login alone. A registry that cannot be
    /// read answers yes (refusing is the safe side).
    fn is_device_id(&self, client_id: &str) -> bool {
        let Ok(id) = DeviceId::new(client_id) else {
            return false;
        };
        match self.store.get_device(&id) {
            Ok(found) => found.is_some(),
            Err(error) => {
                warn!(%error, client_id, "cannot read the registry during login");
                true
            }
        }
    }

    /// The decision on a client whose certificate names a device, or
    /// `None` when the certificate (or its absence) leaves it to the user
    /// name and password (see the module docs).
    fn decide_certificate(&self, info: &ConnectInfo<'_>) -> Option<AuthDecision> {
        let end_entity = info.certificates.first()?;
        let cert = match ParsedCertificate::from_der(end_entity) {
            Ok(cert) => cert,
            Err(error) => {
                debug!(%error, peer = %info.peer, "unreadable client certificate");
                return info
                    .username
                    .is_none()
                    .then(|| self.cert_names_nobody(info, "no_identity"));
            }
        };
        let named = match (self.identity.device_name(&cert), info.username) {
            (Ok(named), None) => named,
            (Ok(named), Some(username)) if username == named => named,
            (_, Some(_)) => return None,
            (Err(error), None) => {
                debug!(%error, peer = %info.peer, "client certificate names no device");
                return Some(self.cert_names_nobody(info, "no_identity"));
            }
        };
        let device = match DeviceId::new(named) {
            Ok(id) => self.store.get_device(&id),
            Err(_) => Ok(None),
        };
        let device = match device {
            Ok(Some(device)) => device,
            Ok(None) => return Some(self.cert_names_nobody(info, "unregistered")),
            Err(error) => {
                warn!(%error, "cannot read the registry during login");
                return Some(cert_refused(info, "store", ReasonCode::ServerUnavailable));
            }
        };
        if !device.enabled {
            self.state().stats.disabled += 1;
            return Some(cert_refused(info, "disabled", ReasonCode::NotAuthorized));
        }
        if info.client_id != named {
            return Some(cert_refused(
                info,
                "client_id",
                ReasonCode::ClientIdentifierNotValid,
            ));
        }
        match self.store.device_certificate(&cert.fingerprint) {
            Ok(Some(pinned)) if pinned.device != device.id => {
                return Some(cert_refused(
                    info,
                    "other_device",
                    ReasonCode::NotAuthorized,
                ));
            }
            Ok(Some(pinned)) if pinned.status == CertificateStatus::Revoked => {
                return Some(cert_refused(info, "revoked", ReasonCode::NotAuthorized));
            }
            // Active and this device's; not registered: a trusted CA issued it.
            Ok(_) => {}
            Err(error) => {
                warn!(%error, "cannot read the registry during login");
                return Some(cert_refused(info, "store", ReasonCode::ServerUnavailable));
            }
        }
        self.state().stats.accepted += 1;
        metrics::counter!(CERTIFICATE_LOGINS_TOTAL, "result" => "accepted").increment(1);
        let acl = Arc::new(CertifiedAcl {
            acl: PrincipalAcl(Principal::Device(device.id)),
            chain: info
                .certificates
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
        });
        self.cert_logins().insert(named.to_owned(), &acl);
        Some(AuthDecision::Allow(Some(acl)))
    }

    /// A certificate that names no registered device, without a user name:
    /// refused (`reason`), or anonymous when anonymous clients are allowed
    /// (as a user name the registry does not know is), counted as
    /// `result="anonymous"`.
    fn cert_names_nobody(&self, info: &ConnectInfo<'_>, reason: &'static str) -> AuthDecision {
        if !self.allow_anonymous {
            return cert_refused(info, reason, ReasonCode::NotAuthorized);
        }
        if self.is_device_id(info.client_id) {
            return cert_refused(info, "client_id", ReasonCode::ClientIdentifierNotValid);
        }
        metrics::counter!(CERTIFICATE_LOGINS_TOTAL, "result" => "anonymous", "reason" => reason)
            .increment(1);
        AuthDecision::Allow(Some(self.anonymous.clone()))
    }

    fn failed(&self, attempt: Attempt<'_>) -> AuthDecision {
        attempt.end(Some(false));
        self.state().stats.bad_credentials += 1;
        AuthDecision::Deny(ReasonCode::BadUserNameOrPassword)
    }
}

/// Refuses a certificate login with `code`, counted under `reason`.
fn cert_refused(info: &ConnectInfo<'_>, reason: &'static str, code: ReasonCode) -> AuthDecision {
    debug!(peer = %info.peer, client_id = info.client_id, reason, "certificate login refused");
    metrics::counter!(CERTIFICATE_LOGINS_TOTAL, "result" => "refused", "reason" => reason)
        .increment(1);
    AuthDecision::Deny(code)
}

impl Authenticator for FleetAuthenticator {
    fn authenticate<'a>(&'a self, info: ConnectInfo<'a>) -> BoxFuture<'a, AuthDecision> {
        Box::pin(self.decide(info))
    }
}

#[cfg(test)]
mod cert_login_tests {
    use super::*;

    fn acl(device: &str) -> Arc<CertifiedAcl> {
        Arc::new(CertifiedAcl {
            acl: PrincipalAcl(Principal::Device(DeviceId::new(device).expect("id"))),
            chain: vec![CertificateDer::from(vec![1u8; 600])],
        })
    }

    #[test]
    fn ended_certificate_logins_are_dropped_and_the_map_stays_bounded() {
        let mut logins = CertLogins::default();
        let kept: Vec<_> = (0..10).map(|i| acl(&format!("live-{i}"))).collect();
        for (i, acl) in kept.iter().enumerate() {
            logins.insert(format!("live-{i}"), acl);
        }
        // 100,000 logins whose connections ended at once.
        for i in 0..100_000 {
            logins.insert(format!("gone-{i}"), &acl(&format!("gone-{i}")));
        }
        assert!(
            logins.by_device.len() <= 2 * CertLogins::MIN_PRUNE_AT + 10,
            "{} handles kept",
            logins.by_device.len()
        );
        let mut live: Vec<String> = logins.live().map(|(d, _)| d.clone()).collect();
        live.sort();
        let mut expected: Vec<String> = (0..10).map(|i| format!("live-{i}")).collect();
        expected.sort();
        assert_eq!(live, expected);
    }
}
