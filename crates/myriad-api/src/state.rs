//! What every handler shares.

use std::sync::Arc;

use myriad_fleet::credentials::HashParams;
use myriad_fleet::operators::{AuditLog, Operators};
use myriad_fleet::service::auth::FleetAuthenticator;
use myriad_fleet::service::certs::CertificateService;
use myriad_fleet::service::commands::CommandService;
use myriad_fleet::service::devices::DeviceAdmin;
use myriad_fleet::service::ota::OtaService;
use myriad_fleet::service::presence::PresenceService;
use myriad_fleet::service::shadows::ShadowService;
use myriad_fleet::service::telemetry::TelemetryService;
use myriad_fleet::store::FleetStore;

use crate::pipelines::PipelineControl;

use crate::routes::tls::TlsReloader;

/// The services the API works on, its bootstrap bearer token and the operator accounts. Cheap to clone
/// (every service is behind an `Arc`).
#[derive(Clone)]
pub struct ApiState {
    /// The registry, credentials, shadows and presence records.
    pub store: Arc<FleetStore>,
    /// Device shadows (shared with the MQTT side).
    pub shadows: Arc<ShadowService>,
    /// Cloud-to-device commands.
    pub commands: Arc<CommandService>,
    /// Who is online.
    pub presence: Arc<PresenceService>,
    /// The MQTT authenticator, told to forget cached logins when a
    /// password changes or a principal goes away.
    pub auth: Arc<FleetAuthenticator>,
    /// Operations that reach a device's live connection (disable, new
    /// password, kick) and device deletion.
    pub devices: Arc<DeviceAdmin>,
    /// Device certificates and CAs.
    pub certs: Arc<CertificateService>,
    /// Device telemetry (`None` when disabled: its routes answer 503).
    pub telemetry: Option<Arc<TelemetryService>>,
    /// Firmware artifacts and rollouts.
    pub ota: Arc<OtaService>,
    /// Argon2 costs for passwords set through the API.
    pub hash_params: HashParams,
    /// The bearer token every `/api/v1` request must carry. Empty refuses
    /// every request.
    pub token: String,
    /// Reloads every TLS listener's files (`POST /api/v1/tls/reload`).
    pub tls_reload: TlsReloader,
    /// The pipelines: their status, and changes over the API.
    pub pipelines: Arc<dyn PipelineControl>,
    /// Operator users, login sessions and API tokens.
    pub operators: Arc<Operators>,
    /// The audit log's writer.
    pub audit: AuditLog,
    /// Whether the session cookie is marked `Secure` (the API is served over TLS).
    pub secure_cookies: bool,
    /// The console's data routes: event bus, device journal, overview, broker queries.
    pub console: crate::console::Console,
    /// Heap and CPU profilers and task counts for `/debug` (`None`: those routes answer 503).
    pub debug: Option<std::sync::Arc<dyn crate::debug::Debugging>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("store", &self.store)
            .field("hash_params", &self.hash_params)
            .field("token", &"***")
            .finish_non_exhaustive()
    }
}
