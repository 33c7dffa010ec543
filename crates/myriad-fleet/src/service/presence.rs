//! Device presence from the broker's lifecycle events.
//!
//! Every session going online or offline whose client identifier is a
//! registered device updates the [`PresenceTracker`], is stored, and is
//! published (QoS 1) on `$events/presence/{id}` for applications. The
//! broker closes silent connections after 1.5 times their keep alive, so a
//! device whose socket is cut is offline within that time.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use myriad_broker::hooks::{Lifecycle, OfflineReason, Presence};
use myriad_broker::shell::BrokerHandle;
use myriad_mqtt::ReasonCode;
use tokio::sync::mpsc;
use tracing::warn;

use super::now_ms;
use crate::events::{EventSink, FleetEvent, PresenceChange};
use crate::presence::{
    ConnectInfo, DisconnectReason, PresenceEvent, PresenceRecord, PresenceTracker,
};
use crate::registry::{DeviceId, Page};
use crate::store::FleetStore;

/// Presence of every device, kept current by [`PresenceService::run`].
pub struct PresenceService {
    store: Arc<FleetStore>,
    tracker: Mutex<PresenceTracker>,
    events: EventSink,
}

impl PresenceService {
    /// Loads the stored presence. Devices recorded online cannot have kept
    /// their connection across a restart: they are marked offline
    /// (`server_restart`), and those events are returned for publishing.
    pub fn recover(
        store: Arc<FleetStore>,
    ) -> Result<(PresenceService, Vec<PresenceEvent>), crate::store::FleetStoreError> {
        let records = store.list_presence()?;
        let (tracker, events) = PresenceTracker::recover(records, now_ms());
        let service = PresenceService {
            store,
            tracker: Mutex::new(tracker),
            events: EventSink::default(),
        };
        for event in &events {
            service.save(&event.device);
        }
        Ok((service, events))
    }

    /// Where presence changes are reported live (the console's event bus).
    pub fn events(&self) -> &EventSink {
        &self.events
    }

    /// Reports `event` on the event bus.
    fn emit(&self, event: &PresenceEvent) {
        self.events.emit(|| {
            FleetEvent::Presence(PresenceChange {
                device: event.device.to_string(),
                online: event.online,
                at_ms: event.at,
                reason: event.reason.map(|r| r.as_str().to_owned()),
            })
        });
    }

    fn tracker(&self) -> MutexGuard<'_, PresenceTracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The presence record of `device`, if it was ever seen.
    pub fn get(&self, device: &DeviceId) -> Option<PresenceRecord> {
        self.tracker().get(device).cloned()
    }

    /// Whether `device` is connected now.
    pub fn is_online(&self, device: &DeviceId) -> bool {
        self.tracker().is_online(device)
    }

    /// How many devices are connected.
    pub fn online_count(&self) -> usize {
        self.tracker().online_count()
    }

    /// Connected devices in id order, after the cursor.
    pub fn list_online(&self, after: Option<&DeviceId>, limit: usize) -> Page<DeviceId> {
        self.tracker().list_online(after, limit)
    }

    /// Forgets a deleted device. If it is still recorded online (the
    /// broker's offline event for its closed connection has not been
    /// applied yet), returns its offline event (reason `disabled`) for the
    /// caller to publish; the broker's event then finds nothing to change.
    pub fn forget(&self, device: &DeviceId) -> Option<PresenceEvent> {
        let mut tracker = self.tracker();
        let event = tracker
            .get(device)
            .filter(|record| record.online)
            .map(|record| record.connection)
            .and_then(|conn| {
                tracker.disconnected(device, conn, now_ms(), DisconnectReason::Disabled)
            });
        tracker.forget(device);
        drop(tracker);
        if let Some(event) = &event {
            crate::metrics::presence_changed(false);
            self.emit(event);
        }
        event
    }

    /// Applies one lifecycle event and stores the record it changed; returns
    /// the presence event it caused.
    pub fn apply(&self, lifecycle: &Lifecycle) -> Option<PresenceEvent> {
        let event = self.observe(lifecycle)?;
        self.save(&event.device);
        Some(event)
    }

    /// Applies one lifecycle event to the tracker only; the caller stores
    /// the changed record (see [`PresenceService::save_batch`]).
    fn observe(&self, lifecycle: &Lifecycle) -> Option<PresenceEvent> {
        let now = now_ms();
        let event = match &lifecycle.presence {
            Presence::Online {
                conn,
                client_id,
                keep_alive,
                protocol,
                ..
            } => {
                let device = self.registered(client_id)?;
                let info = ConnectInfo {
                    address: lifecycle.peer,
                    protocol: protocol.level(),
                    keep_alive_secs: *keep_alive,
                };
                self.tracker().connected(&device, *conn, now, &info)
            }
            // The connection that took over is reported online right after
            // (same core step): the device never went offline.
            Presence::Offline {
                reason: OfflineReason::TakenOver,
                ..
            } => return None,
            Presence::Offline {
                conn,
                client_id,
                reason,
            } => {
                let device = DeviceId::new(client_id.to_string()).ok()?;
                self.tracker()
                    .disconnected(&device, *conn, now, disconnect_reason(*reason))?
            }
        };
        crate::metrics::presence_changed(event.online);
        self.emit(&event);
        Some(event)
    }

    /// Stores the current records of `devices` in one commit.
    fn save_batch(&self, devices: &[DeviceId]) {
        let records: Vec<PresenceRecord> = {
            let tracker = self.tracker();
            devices
                .iter()
                .filter_map(|device| tracker.get(device).cloned())
                .collect()
        };
        if let Err(error) = self.store.put_presence_batch(&records) {
            warn!(%error, records = records.len(), "cannot store presence");
        }
    }

    /// A registered device with this client id, if any.
    fn registered(&self, client_id: &str) -> Option<DeviceId> {
        let id = DeviceId::new(client_id).ok()?;
        match self.store.get_device(&id) {
            Ok(Some(_)) => Some(id),
            Ok(None) => None,
            Err(error) => {
                warn!(%error, device = %client_id, "cannot read the registry for presence");
                None
            }
        }
    }

    fn save(&self, device: &DeviceId) {
        let Some(record) = self.get(device) else {
            return;
        };
        if let Err(error) = self.store.put_presence(&record) {
            warn!(%error, device = %device.as_str(), "cannot store presence");
        }
    }

    /// Consumes lifecycle events until the broker stops, publishing each
    /// presence change on `$events/presence/{id}`.
    pub async fn run(
        self: Arc<Self>,
        mut lifecycle: mpsc::UnboundedReceiver<Lifecycle>,
        broker: BrokerHandle,
        recovered: Vec<PresenceEvent>,
    ) {
        for event in &recovered {
            if publish_event(&broker, event).await.is_err() {
                return;
            }
        }
        let mut batch = Vec::new();
        while let Some(first) = lifecycle.recv().await {
            // Whatever else is waiting joins this batch: one commit (one
            // fsync) for a connection storm instead of one per device.
            batch.extend(self.observe(&first));
            while batch.len() < PRESENCE_BATCH {
                match lifecycle.try_recv() {
                    Ok(event) => batch.extend(self.observe(&event)),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let devices: Vec<DeviceId> = batch.iter().map(|e| e.device.clone()).collect();
            let service = self.clone();
            // Off the runtime: a commit waits for the disk.
            if tokio::task::spawn_blocking(move || service.save_batch(&devices))
                .await
                .is_err()
            {
                warn!("presence store task failed");
            }
            for presence in batch.drain(..) {
                if publish_event(&broker, &presence).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl PresenceService {
    /// Moves `last_seen` of online devices while they stay connected:
    /// every `interval`, asks the broker which connections sent a packet
    /// since the previous sample (the core stamps each connection at every
    /// packet; nothing is written per packet) and stores the records that
    /// moved in one commit. A disconnect stores the record at once (its
    /// `last_seen` is the disconnect time). Ends when the broker stops.
    pub async fn run_last_seen(self: Arc<Self>, broker: BrokerHandle, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut since: Option<Instant> = None;
        loop {
            ticker.tick().await;
            let asked = Instant::now();
            let Ok(activity) = broker.activity(since).await else {
                return;
            };
            since = Some(asked);
            let (now, wall) = (Instant::now(), now_ms());
            let moved: Vec<DeviceId> = {
                let mut tracker = self.tracker();
                activity
                    .into_iter()
                    .filter_map(|a| {
                        let device = DeviceId::new(a.client_id.to_string()).ok()?;
                        let ago = now.saturating_duration_since(a.last_seen).as_millis() as u64;
                        tracker
                            .seen_on(&device, a.conn, wall.saturating_sub(ago))
                            .then_some(device)
                    })
                    .collect()
            };
            if moved.is_empty() {
                continue;
            }
            let service = self.clone();
            if tokio::task::spawn_blocking(move || service.save_batch(&moved))
                .await
                .is_err()
            {
                warn!("presence store task failed");
            }
        }
    }
}

/// Lifecycle events applied and stored together at most.
const PRESENCE_BATCH: usize = 1024;

/// Publishes `event` on `$events/presence/{id}` (QoS 1).
pub(crate) async fn publish_event(
    broker: &BrokerHandle,
    event: &PresenceEvent,
) -> Result<(), myriad_broker::shell::BrokerStopped> {
    let payload = match event.payload() {
        Ok(payload) => payload,
        Err(error) => {
            warn!(%error, "cannot encode a presence event");
            return Ok(());
        }
    };
    broker
        .publish_at_least_once(
            event.topic().into(),
            Bytes::from(payload),
            Default::default(),
        )
        .await
}

/// The device layer's name for why a session ended.
fn disconnect_reason(reason: OfflineReason) -> DisconnectReason {
    match reason {
        OfflineReason::ClientDisconnect | OfflineReason::ClientDisconnectWithWill => {
            DisconnectReason::ClientDisconnect
        }
        OfflineReason::NetworkLoss => DisconnectReason::NetworkLoss,
        OfflineReason::KeepAliveTimeout => DisconnectReason::KeepAliveTimeout,
        OfflineReason::ProtocolError(_) => DisconnectReason::ProtocolError,
        OfflineReason::TakenOver => DisconnectReason::Takeover,
        OfflineReason::ServerShutdown => DisconnectReason::ServerShutdown,
        // The device layer closes a disabled or deleted device's
        // connection with 0x87, anything else (kick, new password) with 0x98.
        OfflineReason::Kicked(ReasonCode::NotAuthorized) => DisconnectReason::Disabled,
        OfflineReason::Kicked(_) => DisconnectReason::Kicked,
    }
}
