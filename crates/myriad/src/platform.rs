//! The device layer around the broker: registry store, authentication,
//! presence, shadows and commands, wired to the broker's hooks.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use myriad_broker::hooks::Lifecycle;
use myriad_broker::shell::{BrokerHandle, Hooks, ReceiptHook};
use myriad_fleet::credentials::{DEFAULT_CACHE_CAPACITY, ThrottleConfig, VerifiedCache};
use myriad_fleet::events::EventBus;
use myriad_fleet::events::journal::DeviceJournal;
use myriad_fleet::service::auth::FleetAuthenticator;
use myriad_fleet::service::certs::CertificateService;
use myriad_fleet::service::commands::CommandService;
use myriad_fleet::service::devices::DeviceAdmin;
use myriad_fleet::service::ota::OtaService;
use myriad_fleet::service::presence::PresenceService;
use myriad_fleet::service::shadows::ShadowService;
use myriad_fleet::service::telemetry::TelemetryService;
use myriad_fleet::shadow::ShadowLimits;
use myriad_fleet::store::FleetStore;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::{Config, StoreBackend};
use crate::supervise::Essential;

/// The device layer's services.
pub struct Platform {
    /// Registry, credentials, shadows and presence records.
    pub store: Arc<FleetStore>,
    /// CONNECT checks.
    pub auth: Arc<FleetAuthenticator>,
    /// Device presence.
    pub presence: Arc<PresenceService>,
    /// Device shadows.
    pub shadows: Arc<ShadowService>,
    /// Cloud-to-device commands.
    pub commands: Arc<CommandService>,
    /// Operations reaching live connections; device deletion.
    pub devices: Arc<DeviceAdmin>,
    /// Device certificates and CAs.
    pub certs: Arc<CertificateService>,
    /// Device telemetry (`None` when `telemetry.enabled = false`).
    pub telemetry: Option<Arc<TelemetryService>>,
    /// Firmware artifacts and rollouts.
    pub ota: Arc<OtaService>,
    /// The services' change events (the console's live updates).
    pub events: EventBus,
    /// Recent events per device and recent presence changes, fed from `events`.
    pub journal: Arc<DeviceJournal>,
    /// Kept alive while the platform runs (memory backend only).
    _scratch: Option<tempfile::TempDir>,
}

impl Platform {
    /// What the HTTP API needs, with the bootstrap `token`, what
    /// reloads the TLS listeners' files (`tls_reload`) and the operator
    /// accounts (loaded from the store here; `secure_cookies` when the API
    /// is served over TLS). Starts the audit log's writer task.
    pub fn api_state(
        &self,
        token: String,
        tls_reload: myriad_api::TlsReloader,
        pipelines: Arc<dyn myriad_api::pipelines::PipelineControl>,
        operators: myriad_fleet::operators::OperatorsConfig,
        secure_cookies: bool,
        console: myriad_api::Console,
    ) -> Result<myriad_api::ApiState> {
        let audit = myriad_fleet::operators::AuditLog::start(
            self.store.clone(),
            operators.audit_max_entries,
        );
        let operators = Arc::new(
            myriad_fleet::operators::Operators::open(self.store.clone(), operators)
                .context("cannot load the operator accounts from the fleet store")?,
        );
        Ok(myriad_api::ApiState {
            store: self.store.clone(),
            shadows: self.shadows.clone(),
            presence: self.presence.clone(),
            commands: self.commands.clone(),
            auth: self.auth.clone(),
            devices: self.devices.clone(),
            certs: self.certs.clone(),
            telemetry: self.telemetry.clone(),
            ota: self.ota.clone(),
            hash_params: myriad_fleet::credentials::HashParams::OWASP,
            token,
            tls_reload,
            pipelines,
            operators,
            audit,
            secure_cookies,
            console,
            debug: None,
        })
    }

    /// Opens the device layer's store and builds its services (their tasks
    /// run as `essential` ones); returns the hooks to give the broker.
    pub fn start(
        config: &Config,
        broker: &BrokerHandle,
        essential: &mut Essential,
    ) -> Result<(Platform, Hooks)> {
        let (dir, scratch) = match config.store.backend {
            StoreBackend::Embedded => (config.store.data_dir.clone(), None),
            StoreBackend::Memory => {
                let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
                (PathBuf::from(scratch.path()), Some(scratch))
            }
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {} (store.data_dir)", dir.display()))?;
        let store =
            Arc::new(FleetStore::open(&dir).with_context(|| {
                format!("cannot open the device registry in {}", dir.display())
            })?);
        let cache = VerifiedCache::new(DEFAULT_CACHE_CAPACITY)
            .context("cannot seed the credential cache")?;
        let auth = Arc::new(
            FleetAuthenticator::new(
                store.clone(),
                config.auth.allow_anonymous,
                ThrottleConfig::default(),
                cache,
                config.auth.password_checks(),
            )
            .with_certificate_identity(config.auth.certificate_identity()),
        );
        if config.auth.allow_anonymous {
            warn!(
                "anonymous MQTT clients are allowed (auth.allow_anonymous); turn it off in production"
            );
        }
        let (presence, recovered) =
            PresenceService::recover(store.clone()).context("cannot load device presence")?;
        if !recovered.is_empty() {
            info!(
                devices = recovered.len(),
                "devices online at the last stop marked offline"
            );
        }
        let presence = Arc::new(presence);
        let shadows = Arc::new(
            ShadowService::new(store.clone(), broker.clone(), ShadowLimits::default())
                .with_config(config.shadows),
        );
        let commands = CommandService::start(
            config.commands.clone(),
            store.clone(),
            broker.clone(),
            presence.clone(),
        )
        .context("cannot load commands")?;
        let (receipts_tx, receipts_rx) = mpsc::unbounded_channel();
        let command_task = commands.clone();
        essential.spawn("command service", async move {
            if command_task.run(receipts_rx).await.is_err() {
                info!("command service stopped with the broker");
            }
        });
        let (lifecycle_tx, lifecycle_rx) = mpsc::unbounded_channel::<Lifecycle>();
        essential.spawn(
            "presence service",
            presence
                .clone()
                .run(lifecycle_rx, broker.clone(), recovered),
        );
        essential.spawn(
            "last_seen sampler",
            presence.clone().run_last_seen(
                broker.clone(),
                std::time::Duration::from_secs(config.devices.last_seen_flush_secs),
            ),
        );
        let shadow_task = shadows.clone();
        essential.spawn("shadow service", async move {
            if shadow_task.run().await.is_err() {
                info!("shadow service stopped with the broker");
            }
        });
        let telemetry = if config.telemetry.enabled {
            let tdir = dir.join("telemetry");
            let service =
                TelemetryService::open(&tdir, config.store.fsync, config.telemetry.clone())
                    .with_context(|| {
                        format!("cannot open the telemetry store in {}", tdir.display())
                    })?;
            let service = Arc::new(service);
            Some(service)
        } else {
            None
        };
        let ota = Arc::new(
            OtaService::open(store.clone(), broker.clone(), &dir, config.ota.clone())
                .with_context(|| {
                    format!("cannot open the OTA store in {}", dir.join("ota").display())
                })?,
        );
        let ota_task = ota.clone();
        essential.spawn("OTA service", async move {
            if ota_task.run().await.is_err() {
                info!("OTA service stopped with the broker");
            }
        });
        // Live change events for the console; the journal listens from the start.
        let events = EventBus::default();
        let journal = Arc::new(DeviceJournal::default());
        essential.spawn("console journal", journal.clone().run(events.subscribe()));
        presence.events().attach(events.clone());
        shadows.events().attach(events.clone());
        commands.events().attach(events.clone());
        ota.events().attach(events.clone());
        let hooks = Hooks {
            authenticator: Some(auth.clone()),
            lifecycle: Some(lifecycle_tx),
            tracer: None,
            receipts: Some(ReceiptHook {
                prefix: "$commands/".to_string(),
                sender: receipts_tx,
            }),
            ingest: telemetry
                .clone()
                .map(|t| t as Arc<dyn myriad_broker::hooks::IngestSink>),
        };
        let devices = Arc::new(DeviceAdmin::new(
            store.clone(),
            auth.clone(),
            presence.clone(),
            commands.clone(),
            broker.clone(),
        ));
        let certs = Arc::new(CertificateService::new(
            store.clone(),
            auth.clone(),
            broker.clone(),
        ));
        let platform = Platform {
            store,
            auth,
            presence,
            shadows,
            commands,
            devices,
            certs,
            telemetry,
            ota,
            events,
            journal,
            _scratch: scratch,
        };
        Ok((platform, hooks))
    }
}
