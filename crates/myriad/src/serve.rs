//! `myriad serve`: load the config, bind the listeners, run until a signal.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::ServeArgs;
use crate::config::{ApiTlsConfig, CommitMode, Config, LogFormat, StoreBackend, StoreConfig};
use crate::observe;
use crate::platform::Platform;
use crate::supervise::{self, Essential};
use myriad_broker::config::ListenerKind;
use myriad_broker::shell::tls::TlsSettings;
use myriad_broker::shell::{CommitPolicy, Persistence};
use myriad_store::{EmbeddedOptions, EmbeddedStore};

/// How long the broker may take to stop after an essential task panicked.
const ESSENTIAL_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs `myriad serve` until a signal stops it; `log_format` (the
/// command line's) overrides the config's.
pub fn run(args: ServeArgs, log_format: Option<LogFormat>) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.mqtt.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.store.data_dir = data_dir;
    }
    if let Some(api_listen) = args.api_listen {
        config.api.listen = api_listen;
    }
    // Built before the async runtime: the OTLP HTTP client blocks.
    let otel = observe::otel::provider(&config.tracing)?;
    observe::logging::init(
        log_format.unwrap_or(config.log.format),
        config.log.filter.as_deref(),
        otel.as_ref(),
    );
    supervise::log_panics();
    let prometheus = observe::metrics::install()?;
    let persistence = open_store(&config.store)?;
    let runtime = match config.runtime.threads {
        // One event loop handles sockets in the order they became ready, so
        // packets arriving on different connections reach the broker core in
        // arrival order (as in Mosquitto); the core is one task either way.
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        threads => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
    }
    .context("cannot start the async runtime")?;
    let tracer = otel.as_ref().map(|provider| {
        Arc::new(observe::otel::OtelPublishTracer::new(provider))
            as Arc<dyn myriad_broker::trace::PublishTracer>
    });
    let batch_tracer = otel.as_ref().map(|provider| {
        Arc::new(observe::otel::OtelBatchTracer::new(provider))
            as Arc<dyn myriad_pipeline::runtime::BatchTracer>
    });
    let outcome = runtime.block_on(async move {
        // Handlers are in place before anyone learns the server is up, so a
        // signal sent right after the listening line still shuts down cleanly.
        let signals = Signals::register()?;
        let listeners = myriad_broker::shell::bind_all(&config.mqtt).await?;
        let mut addresses = Vec::new();
        for listener in listeners.iter() {
            let address = listener.local_addr()?;
            info!(%address, kind = ?listener.kind(), "MQTT listener bound");
            addresses.push((listener.kind(), address));
        }
        // The line scripts wait for names the first listener.
        let Some(&(_, address)) = addresses.first() else {
            anyhow::bail!("no MQTT listener configured (mqtt.listen, mqtt.listeners)");
        };
        let mqtt_tls = listeners.tls_settings();
        let mut tls_settings = mqtt_tls.clone();
        let api_tls = match &config.api.tls {
            Some(tls) if config.api.enabled => {
                let settings = Arc::new(load_api_tls(tls)?);
                tls_settings.push(settings.clone());
                Some(settings)
            }
            _ => None,
        };
        for tls in &tls_settings {
            record_certificate_expiry(tls);
        }
        if config.debug.heap_profiling {
            observe::profiling::set_heap_profiling(true)
                .await
                .context("cannot switch the heap profiler on (debug.heap_profiling)")?;
        }
        let shutdown = CancellationToken::new();
        let mut essential = Essential::default();
        essential.spawn("signal handler", signals.cancel_on_signal(shutdown.clone()));
        #[cfg(unix)]
        if !tls_settings.is_empty() {
            let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("cannot handle SIGHUP")?;
            essential.spawn(
                "TLS reload",
                reload_tls_on_hangup(hangups, tls_settings.clone()),
            );
        }
        let mut stdout = std::io::stdout();
        let (handle, events) = myriad_broker::shell::channel();
        let (platform, mut hooks) = Platform::start(&config, &handle, &mut essential)?;
        let telemetry = platform.telemetry.clone();
        platform
            .certs
            .attach(mqtt_tls)
            .context("cannot load the registered CAs for the TLS listeners")?;
        hooks.tracer = tracer;
        essential.spawn(
            "metrics upkeep",
            observe::metrics::upkeep(prometheus.clone()),
        );
        let watchdog =
            observe::spawn_watchdog(&config.watchdog, &handle, &shutdown, &mut essential);
        // The manager sets the batch tracer on each (and on those put over the API).
        let pipelines = crate::pipelines::build(
            &config.pipelines,
            &config.store.data_dir,
            config.telemetry.enabled,
        )?;
        // The broker stops after the pipelines drained (their last acknowledgements).
        let (pipeline_manager, broker_shutdown) = crate::pipelines::manager::Manager::start(
            pipelines,
            &handle,
            platform.store.clone(),
            config.store.data_dir.clone(),
            batch_tracer.clone(),
            telemetry.clone(),
            &shutdown,
        )?;
        let listeners_bound = Arc::new(AtomicBool::new(false));
        if config.api.enabled {
            let token = api_token(&config)?;
            let api_listener = TcpListener::bind(&config.api.listen)
                .await
                .with_context(|| format!("cannot listen on {} (api.listen)", config.api.listen))?;
            let api_address = api_listener.local_addr()?;
            info!(address = %api_address, tls = api_tls.is_some(), "HTTP API listener bound");
            if api_tls.is_some() {
                writeln!(stdout, "HTTP API (tls) listening on {api_address}")?;
            } else {
                writeln!(stdout, "HTTP API listening on {api_address}")?;
            }
            let observer = observe::metrics::Observer::new(
                prometheus.clone(),
                observe::metrics::Sources {
                    broker: handle.clone(),
                    auth: platform.auth.clone(),
                    presence: platform.presence.clone(),
                    commands: platform.commands.clone(),
                    shadows: platform.shadows.clone(),
                },
                listeners_bound.clone(),
            );
            let reload_settings = tls_settings.clone();
            let tls_reload: myriad_api::TlsReloader =
                Arc::new(move || reload_tls(&reload_settings));
            let sampler = Arc::new(crate::console::Sampler::default());
            essential.spawn(
                "overview sampler",
                sampler.clone().run(
                    crate::console::Sources {
                        broker: handle.clone(),
                        presence: platform.presence.clone(),
                        store: platform.store.clone(),
                        watchdog: watchdog.clone(),
                        metrics: prometheus.clone(),
                        bus: platform.events.clone(),
                    },
                    shutdown.clone(),
                ),
            );
            let console = myriad_api::Console::new(
                platform.events.clone(),
                platform.journal.clone(),
                handle.clone(),
            )
            .with_overview(sampler)
            .with_max_event_streams(config.api.event_streams())
            .with_shutdown(shutdown.clone());
            let profiler = observe::profiling::Profiler::new(observe::profiling::TaskSources {
                broker: handle.clone(),
                presence: platform.presence.clone(),
                services: essential.census(),
                pipelines: pipeline_manager.clone(),
            });
            let mut api_state = platform.api_state(
                token,
                tls_reload,
                pipeline_manager,
                config
                    .api
                    .operators(myriad_fleet::credentials::HashParams::OWASP),
                api_tls.is_some(),
                console,
            )?;
            api_state.debug = Some(Arc::new(profiler));
            let router = myriad_api::observed_router(
                api_state,
                Arc::new(observer),
                myriad_api::ObserveOptions {
                    metrics_require_token: config.metrics.require_token,
                },
            );
            let api_shutdown = shutdown.clone();
            let api_limits = config.api.limits();
            let api_tls = api_tls.map(|settings| myriad_api::ApiTls {
                config: Arc::new(move || settings.current()),
                on_handshake: Arc::new(count_api_handshake),
            });
            essential.spawn("HTTP API", async move {
                let served = match api_tls {
                    Some(tls) => {
                        myriad_api::serve_router_tls(
                            api_listener,
                            router,
                            api_shutdown,
                            api_limits,
                            tls,
                        )
                        .await
                    }
                    None => {
                        myriad_api::serve_router_with(
                            api_listener,
                            router,
                            api_shutdown,
                            api_limits,
                        )
                        .await
                    }
                };
                if let Err(error) = served {
                    tracing::error!(%error, "the HTTP API stopped");
                }
            });
        }
        listeners_bound.store(true, Ordering::Release);
        for (kind, other) in addresses.iter().skip(1) {
            writeln!(stdout, "MQTT ({}) listening on {other}", kind_name(*kind))?;
        }
        // Last: the line scripts wait for means everything is up.
        writeln!(stdout, "MQTT listening on {address}")?;
        stdout.flush()?;
        let broker = myriad_broker::shell::run(
            config.mqtt,
            persistence,
            hooks,
            listeners,
            broker_shutdown,
            handle,
            events,
        );
        tokio::pin!(broker);
        tokio::select! {
            outcome = &mut broker => outcome?,
            (task, message) = essential.failure() => {
                // The panic itself was logged by the hook. Stop as for a
                // signal (bounded), then exit non-zero.
                tracing::error!(task, "an essential task panicked; stopping");
                shutdown.cancel();
                if tokio::time::timeout(ESSENTIAL_STOP_GRACE, &mut broker).await.is_err() {
                    tracing::warn!("the broker did not stop in time");
                }
                anyhow::bail!("the {task} panicked: {message}");
            }
        }
        if let Some(telemetry) = telemetry {
            // The broker has stopped: no more device messages; seal before exiting.
            telemetry.stop().await;
        }
        Ok(())
    });
    drop(runtime);
    if let Some(provider) = otel
        && let Err(error) = provider.shutdown()
    {
        tracing::warn!(%error, "cannot flush the last spans");
    }
    outcome
}

/// The operators' bearer token: `api.token`, else `MYRIAD_API_TOKEN`, else
/// a random one written to `{store.data_dir}/api-token` (readable by the
/// owner only), where `myriad ctl` finds it.
fn api_token(config: &Config) -> Result<String> {
    if let Some(token) = &config.api.token {
        return Ok(token.clone());
    }
    if let Ok(token) = std::env::var("MYRIAD_API_TOKEN")
        && token.len() >= 16
    {
        return Ok(token);
    }
    let path = config.store.data_dir.join("api-token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.len() >= 16 {
            return Ok(existing.to_string());
        }
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the API token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(&config.store.data_dir)?;
    write_private(&path, &token)
        .with_context(|| format!("cannot write the API token to {}", path.display()))?;
    info!(path = %path.display(), "generated an API token");
    Ok(token)
}

/// Writes `text` to a file only its owner can read.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    myriad_store::write_secret_file(
        path,
        format!("{text}\n").as_bytes(),
        myriad_store::Existing::Replace,
    )
}

/// Opens the configured store (none for `memory`).
fn open_store(config: &StoreConfig) -> Result<Option<Persistence>> {
    if config.backend == StoreBackend::Memory {
        return Ok(None);
    }
    let store = EmbeddedStore::open(
        &config.data_dir,
        EmbeddedOptions {
            fsync: config.fsync,
        },
    )
    .with_context(|| {
        format!(
            "cannot open the store in {} (store.data_dir)",
            config.data_dir.display()
        )
    })?;
    let report = store.open_report();
    info!(data_dir = %config.data_dir.display(), ?report, "store opened");
    let policy = match config.commit {
        CommitMode::PerAck => CommitPolicy::PerEvent,
        CommitMode::Group => CommitPolicy::Group {
            window: config.group_window(),
        },
    };
    Ok(Some(Persistence {
        store: Box::new(store),
        policy,
    }))
}

/// The name of a listener kind as the config spells it.
fn kind_name(kind: ListenerKind) -> &'static str {
    kind.name()
}

/// The label value of the HTTP API in [`TLS_CERT_EXPIRY`] and
/// `myriad_tls_handshakes_total` (`listener="api"`).
const API_LISTENER_LABEL: &str = "api";

/// Reads `[api.tls]`'s files; an error names the key.
fn load_api_tls(tls: &ApiTlsConfig) -> Result<TlsSettings> {
    use myriad_broker::shell::tls::{HTTP_ALPN, TlsSetupError};
    TlsSettings::load_with_alpn(&tls.listener(API_LISTENER_LABEL), HTTP_ALPN).map_err(|error| {
        match error {
            TlsSetupError::File { what, path, reason } => anyhow::anyhow!(
                "invalid value for api.tls.{what}: {}: {reason}",
                path.display()
            ),
            TlsSetupError::Rustls(reason) => {
                anyhow::anyhow!("invalid value for api.tls (cert, key): {reason}")
            }
        }
    })
}

/// Counts one TLS handshake of the HTTP API in
/// `myriad_tls_handshakes_total{listener="api"}`.
fn count_api_handshake(outcome: std::result::Result<(), &std::io::Error>) {
    use myriad_broker::shell::tls::{TLS_HANDSHAKES_TOTAL, failure_reason};
    match outcome {
        Ok(()) => metrics::counter!(
            TLS_HANDSHAKES_TOTAL,
            "listener" => API_LISTENER_LABEL,
            "result" => "ok"
        )
        .increment(1),
        Err(error) => metrics::counter!(
            TLS_HANDSHAKES_TOTAL,
            "listener" => API_LISTENER_LABEL,
            "result" => "failed",
            "reason" => failure_reason(error)
        )
        .increment(1),
    }
}

/// Gauge of when a TLS listener's server certificate expires (Unix seconds),
/// labelled with the listener's address (`api` for the HTTP API).
pub const TLS_CERT_EXPIRY: &str = "myriad_tls_certificate_expiry_timestamp_seconds";

/// Sets [`TLS_CERT_EXPIRY`] for `tls`'s leaf certificate (logged if unreadable).
fn record_certificate_expiry(tls: &TlsSettings) {
    let listener = tls.listener();
    let Some(path) = &listener.cert else {
        return;
    };
    let not_after = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|pem| {
            let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| e.to_string())?;
            let cert = pem.parse_x509().map_err(|e| e.to_string())?;
            Ok(cert.validity().not_after.timestamp())
        });
    match not_after {
        Ok(at) => {
            metrics::gauge!(TLS_CERT_EXPIRY, "listener" => listener.listen.clone()).set(at as f64)
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the certificate's expiry")
        }
    }
}

/// Reads every TLS listener's certificate, key and CAs again on each SIGHUP.
/// Connections already made keep what they negotiated; a file that does not
/// load leaves that listener's settings as they were.
#[cfg(unix)]
async fn reload_tls_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    settings: Vec<Arc<TlsSettings>>,
) {
    while hangups.recv().await.is_some() {
        reload_tls(&settings);
    }
}

/// Reads every TLS listener's certificate, key and CAs again (on SIGHUP and
/// `POST /api/v1/tls/reload`), logging each outcome. A listener whose
/// files do not load keeps its settings in force; the others reload.
fn reload_tls(settings: &[Arc<TlsSettings>]) -> Vec<myriad_api::TlsReloadOutcome> {
    settings
        .iter()
        .map(|tls| {
            let listen = &tls.listener().listen;
            let result = tls.reload();
            match &result {
                Ok(()) => {
                    record_certificate_expiry(tls);
                    info!(%listen, "TLS certificates reloaded");
                }
                Err(error) => tracing::error!(
                    %listen,
                    %error,
                    "TLS reload failed; the previous certificates stay in force"
                ),
            }
            myriad_api::TlsReloadOutcome {
                listener: listen.clone(),
                result,
            }
        })
        .collect()
}

/// SIGTERM and Ctrl-C, registered up front.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// Cancels `shutdown` on the first signal.
    async fn cancel_on_signal(self, shutdown: CancellationToken) {
        #[cfg(unix)]
        {
            let Signals {
                mut terminate,
                mut interrupt,
            } = self;
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = self;
            let _ = tokio::signal::ctrl_c().await;
        }
        info!("shutting down");
        shutdown.cancel();
    }
}
