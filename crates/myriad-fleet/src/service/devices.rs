//! Operator actions on a device that must reach its live connection and
//! everything the platform keeps for it.
//!
//! - [`DeviceAdmin::revoke`]: a device disabled, its password changed, or
//!   an explicit kick: cached logins are forgotten and its open connection
//!   is closed (5.0: DISCONNECT with a reason code, see [`Revocation`]);
//! - [`DeviceAdmin::delete`]: the one place a device is deleted. Whatever
//!   the platform keeps for a device is removed here, so a device created
//!   again with the same id starts from nothing (see its documentation).

use std::sync::Arc;

use myriad_broker::core::evict::{Evicted, Eviction};
use myriad_broker::shell::{BrokerHandle, BrokerStopped};
use myriad_mqtt::{ByteString, ReasonCode};
use tracing::warn;

use super::auth::FleetAuthenticator;
use super::commands::CommandService;
use super::presence::PresenceService;
use crate::registry::{Device, DeviceId};
use crate::store::{FleetStore, FleetStoreError};

/// The reason the pending commands of a deleted device are cancelled with.
pub const DEVICE_DELETED: &str = "device_deleted";

/// Why a device's connection is closed. Presence records the disconnect
/// as `disabled` for [`Revocation::Disabled`] and [`Revocation::Deleted`]
/// (DISCONNECT 0x87 Not authorized), as `kicked` for the others
/// (DISCONNECT 0x98 Administrative action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// An operator asked for it; the device may reconnect at once.
    Kick,
    /// The device's password changed: it must log in with the new one.
    PasswordChanged,
    /// The device was disabled: it may not log in any more.
    Disabled,
    /// The device was deleted.
    Deleted,
}

impl Revocation {
    /// The reason code a 5.0 client gets in the DISCONNECT.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            Revocation::Kick | Revocation::PasswordChanged => ReasonCode::AdministrativeAction,
            Revocation::Disabled | Revocation::Deleted => ReasonCode::NotAuthorized,
        }
    }

    /// Whether the connection's will is published: yes for a kick or a
    /// password change (as after a network loss), no once the device has
    /// lost its rights (nothing more is published on its behalf).
    pub fn publishes_will(self) -> bool {
        matches!(self, Revocation::Kick | Revocation::PasswordChanged)
    }
}

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceAdminError {
    /// The registry failed, or has no such device.
    #[error(transparent)]
    Store(#[from] FleetStoreError),
    /// The store task failed.
    #[error("the store task failed")]
    Stopped,
}

/// The topic filters of `device`'s namespace whose retained messages go
/// with the device: everything under `devices/{id}`, `$shadow/{id}`,
/// `$commands/{id}`, `$ota/{id}`, and its events.
pub fn namespace_filters(device: &DeviceId) -> Vec<ByteString> {
    let id = device.as_str();
    [
        format!("devices/{id}/#"),
        format!("$shadow/{id}/#"),
        format!("$commands/{id}/#"),
        format!("$ota/{id}/#"),
        format!("$events/presence/{id}"),
        format!("$events/commands/{id}/#"),
        format!("$events/alarms/commands/{id}/#"),
    ]
    .into_iter()
    .map(ByteString::from)
    .collect()
}

/// Device operations that reach the broker. See the module docs.
pub struct DeviceAdmin {
    store: Arc<FleetStore>,
    auth: Arc<FleetAuthenticator>,
    presence: Arc<PresenceService>,
    commands: Arc<CommandService>,
    broker: BrokerHandle,
}

impl std::fmt::Debug for DeviceAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAdmin").finish_non_exhaustive()
    }
}

impl DeviceAdmin {
    /// Device operations over these services.
    pub fn new(
        store: Arc<FleetStore>,
        auth: Arc<FleetAuthenticator>,
        presence: Arc<PresenceService>,
        commands: Arc<CommandService>,
        broker: BrokerHandle,
    ) -> DeviceAdmin {
        DeviceAdmin {
            store,
            auth,
            presence,
            commands,
            broker,
        }
    }

    /// Forgets the cached logins of `device` and closes its open
    /// connection, if any, for `why`; true if a connection was closed.
    /// The caller has already changed the registry (disabled the device,
    /// stored the new password), so the device cannot log in again with
    /// what it had. A stopped broker has no connection to close.
    pub async fn revoke(&self, device: &DeviceId, why: Revocation) -> bool {
        self.auth.forget(device.as_str());
        let eviction = Eviction {
            publish_will: why.publishes_will(),
            ..Eviction::disconnect(device.as_str(), why.reason_code())
        };
        self.evict(eviction).await.disconnected
    }

    /// Closes every live connection of app client `app`: it was changed
    /// (its password, ACL or admin flag; 5.0 DISCONNECT 0x98
    /// Administrative action) or `deleted` (0x87 Not authorized); no will
    /// either way. Its cached logins are forgotten first, so it must log in
    /// again and gets its new rights. Returns how many connections were
    /// closed.
    pub async fn revoke_app(&self, app: &str, deleted: bool) -> usize {
        let reason = if deleted {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::AdministrativeAction
        };
        self.auth
            .forget(&format!("{}{app}", super::auth::APP_USERNAME_PREFIX));
        let mut closed = 0;
        for client_id in self.auth.app_connections(app) {
            let eviction = Eviction {
                publish_will: false,
                ..Eviction::disconnect(client_id.as_str(), reason)
            };
            if self.evict(eviction).await.disconnected {
                closed += 1;
            }
        }
        closed
    }

    /// Carries out `eviction`; nothing if the broker has stopped (the
    /// process is shutting down: no connection is left to close).
    async fn evict(&self, eviction: Eviction) -> Evicted {
        match self.broker.evict(eviction).await {
            Ok(evicted) => evicted,
            Err(BrokerStopped) => {
                warn!("the broker has stopped: nothing to evict");
                Evicted::default()
            }
        }
    }

    /// Closes the open connection of registered device `device` (an
    /// operator's kick, `kicked` in presence); true if it had one.
    pub async fn kick(&self, device: &DeviceId) -> Result<bool, DeviceAdminError> {
        let store = self.store.clone();
        let id = device.clone();
        let known = tokio::task::spawn_blocking(move || store.get_device(&id))
            .await
            .map_err(|_| DeviceAdminError::Stopped)??;
        if known.is_none() {
            return Err(FleetStoreError::DeviceNotFound(device.clone()).into());
        }
        Ok(self.revoke(device, Revocation::Kick).await)
    }

    /// Deletes `device` and everything the platform keeps for it. This
    /// is the one place a device is deleted; a feature that keeps
    /// something per device adds its cleanup here. In order:
    ///
    /// 1. the registry entry, its credential, shadow and presence record
    ///    (one store transaction, on the blocking pool): from here on the
    ///    device cannot log in;
    /// 2. its cached logins;
    /// 3. in the broker, one core event: its open connection (DISCONNECT
    ///    0x87, no will), its session with its subscriptions and queued
    ///    messages, and the retained messages of its namespace
    ///    ([`namespace_filters`]), committed with the broker's next store
    ///    commit (the broker's writer path, off the event loop);
    /// 4. its commands that are not final: `cancelled` with reason
    ///    `device_deleted`, stored (by the command log's writer) before
    ///    this returns;
    /// 5. its presence in memory (its offline event is published if the
    ///    broker's has not been yet).
    pub async fn delete(&self, device: &DeviceId) -> Result<Deleted, DeviceAdminError> {
        let store = self.store.clone();
        let id = device.clone();
        let removed = tokio::task::spawn_blocking(move || store.delete_device(&id))
            .await
            .map_err(|_| DeviceAdminError::Stopped)??;
        self.auth.forget(device.as_str());
        let evicted = self
            .evict(Eviction {
                client_id: device.as_str().into(),
                reason: Revocation::Deleted.reason_code(),
                publish_will: Revocation::Deleted.publishes_will(),
                discard_session: true,
                clear_retained: namespace_filters(device),
            })
            .await;
        let commands_cancelled = self.commands.cancel_device(device, DEVICE_DELETED).await;
        if let Some(event) = self.presence.forget(device)
            && super::presence::publish_event(&self.broker, &event)
                .await
                .is_err()
        {
            warn!("the broker has stopped: presence event not published");
        }
        Ok(Deleted {
            device: removed,
            evicted,
            commands_cancelled,
        })
    }
}

/// What [`DeviceAdmin::delete`] removed.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// The device as it was.
    pub device: Device,
    /// What the broker removed.
    pub evicted: Evicted,
    /// How many commands were cancelled.
    pub commands_cancelled: usize,
}
