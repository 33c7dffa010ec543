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

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use myriad_broker::hooks::{Acl, AuthDecision, Authenticator, BoxFuture, ConnectInfo};
use myriad_mqtt::ReasonCode;
use tracing::{debug, warn};

use super::now_ms;
use crate::acl::{Principal, may_publish, may_subscribe};
use crate::credentials::{
    LoginThrottle, ThrottleCheck, ThrottleConfig, VerifiedCache, verify_password,
};
use crate::store::FleetStore;

/// The prefix of application clients' user names.
pub const APP_USERNAME_PREFIX: &str = "app:";

/// The ACL of one connection: its principal's rights.
#[derive(Debug)]
pub struct PrincipalAcl(pub Principal);

impl Acl for PrincipalAcl {
    fn may_publish(&self, topic: &str) -> bool {
        may_publish(&self.0, topic)
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        may_subscribe(&self.0, filter)
    }
}

/// Topic prefixes that belong to devices and the platform.
const PLATFORM_PREFIXES: [&str; 5] = ["$shadow/", "$commands/", "$ota/", "$events/", "devices/"];

/// What anonymous clients may do: publish outside the device and platform
/// namespaces (`devices/`, `$shadow/`, `$commands/`, `$ota/`, `$events/`),
/// so they cannot impersonate a device, and subscribe to any filter not
/// naming those namespaces. `#` and `+/...` are granted (`$` topics never
/// match them, but `devices/...` telemetry does): anonymous access is for
/// development; production sets `auth.allow_anonymous = false`.
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
}

/// Checks CONNECTs against the registry. See the module docs.
pub struct FleetAuthenticator {
    store: Arc<FleetStore>,
    allow_anonymous: bool,
    /// The one ACL every anonymous connection shares (no allocation each).
    anonymous: Arc<AnonymousAcl>,
    state: Mutex<AuthState>,
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
        }
    }

    fn state(&self) -> MutexGuard<'_, AuthState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters so far.
    pub fn stats(&self) -> AuthStats {
        self.state().stats
    }

    /// Forgets cached verifications of `principal` (its password changed or it was removed).
    pub fn forget(&self, principal: &str) {
        self.state().cache.forget(principal);
    }

    async fn decide(&self, info: ConnectInfo<'_>) -> AuthDecision {
        let Some(username) = info.username else {
            return if self.allow_anonymous {
                AuthDecision::Allow(Some(self.anonymous.clone()))
            } else {
                AuthDecision::Deny(ReasonCode::NotAuthorized)
            };
        };
        let ip = Some(info.peer.ip());
        let now = now_ms();
        let check = self.state().throttle.check(username, ip, now);
        if let ThrottleCheck::Refused { .. } = check {
            self.state().stats.throttled += 1;
            debug!(username, peer = %info.peer, "login throttled");
            return AuthDecision::Deny(ReasonCode::ConnectionRateExceeded);
        }
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
            return self.unknown(username, ip, now);
        };
        let password = info.password.and_then(|p| std::str::from_utf8(p).ok());
        let (Some(phc), Some(password)) = (record.password_hash, password) else {
            return self.failed(username, ip, now);
        };
        if !self.verify(username, &phc, password.to_owned()).await {
            return self.failed(username, ip, now);
        }
        if let Principal::Device(device) = &record.principal {
            // A device's session is its own: the client id must be its id.
            if info.client_id != device.as_str() {
                return AuthDecision::Deny(ReasonCode::ClientIdentifierNotValid);
            }
        }
        if !record.enabled {
            self.state().stats.disabled += 1;
            return AuthDecision::Deny(ReasonCode::NotAuthorized);
        }
        let principal = record.principal;
        let mut state = self.state();
        state.throttle.record_success(username);
        state.stats.accepted += 1;
        AuthDecision::Allow(Some(Arc::new(PrincipalAcl(principal))))
    }

    /// Checks `password` against `phc`: from the cache, or with Argon2 on the blocking pool.
    async fn verify(&self, principal: &str, phc: &str, password: String) -> bool {
        if self.state().cache.check(principal, phc, &password) {
            return true;
        }
        let owned_phc = phc.to_owned();
        let checked = tokio::task::spawn_blocking(move || {
            let ok = verify_password(&owned_phc, &password).unwrap_or(false);
            (ok, password)
        })
        .await;
        match checked {
            Ok((true, password)) => {
                self.state().cache.remember(principal, phc, &password);
                true
            }
            _ => false,
        }
    }

    /// A user name the registry does not know: with anonymous access on,
    /// the client is let in as anonymous (as a broker without a password
    /// file would); otherwise it is a failed login.
    fn unknown(&self, username: &str, ip: Option<IpAddr>, now: u64) -> AuthDecision {
        if self.allow_anonymous {
            return AuthDecision::Allow(Some(self.anonymous.clone()));
        }
        self.failed(username, ip, now)
    }

    fn failed(&self, username: &str, ip: Option<IpAddr>, now: u64) -> AuthDecision {
        let mut state = self.state();
        state.throttle.record_failure(username, ip, now);
        state.stats.bad_credentials += 1;
        AuthDecision::Deny(ReasonCode::BadUserNameOrPassword)
    }
}

impl Authenticator for FleetAuthenticator {
    fn authenticate<'a>(&'a self, info: ConnectInfo<'a>) -> BoxFuture<'a, AuthDecision> {
        Box::pin(self.decide(info))
    }
}
