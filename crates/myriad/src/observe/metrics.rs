//! The Prometheus side of `/metrics`: the recorder every crate's
//! `metrics::` calls land in, and the collection at scrape time of the
//! numbers other parts keep themselves (broker snapshot, census,
//! authenticator, presence, process and allocator).
//!
//! Names follow Prometheus conventions (`_total` counters, units in
//! names); labels are small fixed sets, never device ids. The full list
//! is in docs/observability.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use myriad_api::{BoxFuture, Observability, Readiness};
use myriad_broker::core::observe::CloseReason;
use myriad_broker::shell::BrokerHandle;
use myriad_broker::shell::snapshot::BrokerSnapshot;
use myriad_fleet::service::auth::FleetAuthenticator;
use myriad_fleet::service::commands::CommandService;
use myriad_fleet::service::presence::PresenceService;

use super::process;

/// Buckets of every `_seconds` histogram: 50 µs to 2.5 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5,
];

/// How long a scrape waits for the broker's snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

const QOS: [&str; 3] = ["0", "1", "2"];

/// Installs the Prometheus recorder as the process's `metrics` recorder and
/// returns the handle that renders it. Call once, early.
pub fn install() -> Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .context("cannot configure the metrics histograms")?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("a metrics recorder is already installed")?;
    describe();
    Ok(handle)
}

/// Keeps the recorder's histograms compact between scrapes.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    loop {
        ticks.tick().await;
        handle.run_upkeep();
    }
}

/// HELP texts.
fn describe() {
    describe_counter!(
        myriad_broker::shell::tls::TLS_HANDSHAKES_TOTAL,
        "TLS handshakes on MQTT listeners (by address) and the HTTP API (`api`), by result and (failed) reason."
    );
    describe_counter!(
        myriad_broker::shell::ws::WS_UPGRADES_TOTAL,
        "WebSocket upgrades on ws/wss listeners, by result and (refused) reason."
    );
    describe_counter!(
        myriad_broker::shell::ws::WS_FRAMES_REFUSED_TOTAL,
        "WebSocket connections closed for a refused frame, by reason."
    );
    describe_gauge!(
        crate::serve::TLS_CERT_EXPIRY,
        "When a TLS listener's server certificate expires, Unix seconds (days left: (x - time()) / 86400)."
    );
    use myriad_broker::shell::snapshot::STORE_COMMIT_SECONDS;
    use myriad_broker::watchdog::task as dog;
    use myriad_fleet::metrics as fleet;
    describe_gauge!(
        "myriad_connections_current",
        "Open network MQTT connections (past CONNECT)."
    );
    describe_counter!(
        "myriad_connections_opened_total",
        "Connections accepted (CONNACK success), network and in-process."
    );
    describe_counter!(
        "myriad_connections_closed_total",
        "Connections closed, by reason."
    );
    describe_gauge!(
        "myriad_connection_tasks",
        "Live connection tasks (handshaking or serving)."
    );
    describe_gauge!(
        "myriad_connection_tasks_registered",
        "Live connection tasks registered with a session."
    );
    describe_counter!(
        "myriad_connection_tasks_spawned_total",
        "Connection tasks spawned."
    );
    describe_counter!(
        "myriad_connections_refused_total",
        "Sockets closed as soon as accepted because mqtt.max_connections were open."
    );
    describe_gauge!(
        "myriad_sessions_online",
        "Sessions with a connection (network and in-process)."
    );
    describe_gauge!(
        "myriad_sessions_offline_persistent",
        "Persistent sessions kept without a connection."
    );
    describe_counter!(
        "myriad_messages_received_total",
        "PUBLISH packets received from clients, by QoS."
    );
    describe_counter!(
        "myriad_messages_received_bytes_total",
        "Payload bytes received from clients, by QoS."
    );
    describe_counter!(
        "myriad_messages_sent_total",
        "PUBLISH packets sent to clients, by QoS."
    );
    describe_counter!(
        "myriad_messages_sent_bytes_total",
        "Payload bytes sent to clients, by QoS."
    );
    describe_counter!(
        "myriad_messages_internal_total",
        "Messages published by the platform's own services."
    );
    describe_counter!(
        "myriad_messages_dropped_total",
        "Messages dropped before delivery, by reason."
    );
    describe_counter!(
        "myriad_publishes_held_total",
        "QoS 1 PUBLISH packets held unacknowledged while a connected subscriber's queue was full."
    );
    describe_counter!(
        "myriad_publishes_denied_total",
        "PUBLISH packets refused by an ACL."
    );
    describe_counter!(
        "myriad_subscriptions_denied_total",
        "Subscriptions refused by an ACL."
    );
    describe_counter!(
        "myriad_traces_continued_total",
        "Routed messages whose W3C trace context was continued."
    );
    describe_gauge!("myriad_retained_messages", "Retained messages.");
    describe_gauge!("myriad_subscriptions", "Subscriptions across all sessions.");
    describe_gauge!(
        "myriad_inflight_messages",
        "QoS 1/2 messages sent and not yet acknowledged."
    );
    describe_gauge!(
        "myriad_queued_messages",
        "Messages waiting in session queues."
    );
    describe_gauge!(
        "myriad_queued_bytes",
        "Bytes (payload + topic) waiting in session queues."
    );
    describe_histogram!(STORE_COMMIT_SECONDS, "Latency of broker store commits.");
    describe_counter!(
        "myriad_auth_accepted_total",
        "MQTT logins accepted by the device layer."
    );
    describe_counter!(
        "myriad_auth_failures_total",
        "MQTT logins refused, by reason."
    );
    describe_gauge!("myriad_devices_online", "Registered devices online.");
    describe_counter!(
        fleet::PRESENCE_CHANGES_TOTAL,
        "Presence changes of registered devices, by new state."
    );
    describe_counter!(
        fleet::COMMANDS_TOTAL,
        "Commands that reached a status, by class and status."
    );
    describe_histogram!(
        fleet::COMMAND_DURATION_SECONDS,
        "Seconds from command acceptance to a final status, by class."
    );
    describe_gauge!(fleet::COMMANDS_ACTIVE, "Commands not final.");
    describe_gauge!(fleet::COMMANDS_IN_FLIGHT, "Commands sent and not final.");
    describe_gauge!(
        fleet::COMMANDS_QUEUED,
        "L1 commands waiting in offline devices' queues."
    );
    describe_gauge!(
        fleet::COMMAND_BREAKER_STATE,
        "Command class breaker state: 0 closed, 1 half-open, 2 open."
    );
    describe_gauge!(
        "myriad_process_resident_memory_bytes",
        "Resident set size of the process."
    );
    describe_gauge!(
        "myriad_process_open_sockets",
        "Open sockets of the process."
    );
    describe_gauge!(
        "myriad_allocator_allocated_bytes",
        "Bytes allocated through jemalloc."
    );
    describe_gauge!(
        "myriad_allocator_active_bytes",
        "Bytes in jemalloc's active pages."
    );
    describe_gauge!(
        "myriad_allocator_resident_bytes",
        "Bytes in jemalloc's resident pages."
    );
    describe_gauge!("myriad_allocator_mapped_bytes", "Bytes mapped by jemalloc.");
    describe_gauge!(
        "myriad_runtime_tasks_alive",
        "Tasks alive in the async runtime."
    );
    describe_gauge!(
        dog::ALERT_GAUGE,
        "1 while a leak watchdog alert of this kind stands."
    );
    describe_counter!(
        dog::ALERTS_TOTAL,
        "Leak watchdog checks that raised an alert, by kind."
    );
    describe_counter!(dog::CHECKS_TOTAL, "Leak watchdog checks run.");
    describe_gauge!(
        dog::TASK_DEVIATION,
        "Deviation of registered connection tasks from online sessions (0..1)."
    );
}

/// The numbers read at scrape time.
pub struct Sources {
    /// The running broker.
    pub broker: BrokerHandle,
    /// The MQTT authenticator.
    pub auth: Arc<FleetAuthenticator>,
    /// Device presence.
    pub presence: Arc<PresenceService>,
    /// Cloud-to-device commands.
    pub commands: Arc<CommandService>,
    /// Device shadows.
    pub shadows: Arc<myriad_fleet::service::shadows::ShadowService>,
}

/// What `/metrics` and `/readyz` answer with.
pub struct Observer {
    prometheus: PrometheusHandle,
    sources: Sources,
    listeners_bound: Arc<AtomicBool>,
}

impl Observer {
    /// Renders `prometheus` after collecting from `sources`; ready once
    /// `listeners_bound` is set.
    pub fn new(
        prometheus: PrometheusHandle,
        sources: Sources,
        listeners_bound: Arc<AtomicBool>,
    ) -> Observer {
        Observer {
            prometheus,
            sources,
            listeners_bound,
        }
    }

    async fn collect(&self) {
        let snapshot = tokio::time::timeout(SNAPSHOT_TIMEOUT, self.sources.broker.snapshot()).await;
        if let Ok(Ok(snapshot)) = snapshot {
            record_broker(&snapshot);
        }
        let census = self.sources.broker.census().counts();
        gauge!("myriad_connection_tasks").set(census.tasks as f64);
        gauge!("myriad_connection_tasks_registered").set(census.registered as f64);
        counter!("myriad_connection_tasks_spawned_total").absolute(census.spawned);
        counter!("myriad_connections_refused_total").absolute(census.refused);
        let auth = self.sources.auth.stats();
        counter!("myriad_auth_accepted_total").absolute(auth.accepted);
        counter!("myriad_auth_password_hashes_total").absolute(auth.hashed);
        for (reason, count) in [
            ("bad_credentials", auth.bad_credentials),
            ("throttled", auth.throttled),
            ("disabled", auth.disabled),
            ("busy", auth.busy),
        ] {
            counter!("myriad_auth_failures_total", "reason" => reason).absolute(count);
        }
        let shadows = self.sources.shadows.stats();
        counter!("myriad_shadow_updates_stored_total").absolute(shadows.updates);
        counter!("myriad_shadow_commits_total").absolute(shadows.commits);
        gauge!("myriad_devices_online").set(self.sources.presence.online_count() as f64);
        record_commands(&self.sources.commands);
        record_process();
    }
}

impl Observability for Observer {
    fn render_metrics(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            self.collect().await;
            self.prometheus.render()
        })
    }

    fn readiness(&self) -> Readiness {
        Readiness {
            // The broker's core stops when its store fails.
            store_open: self.sources.broker.is_running(),
            listeners_bound: self.listeners_bound.load(Ordering::Acquire),
            cluster_joined: None,
        }
    }
}

fn record_broker(s: &BrokerSnapshot) {
    let t = &s.traffic;
    gauge!("myriad_connections_current").set(s.network_sessions as f64);
    counter!("myriad_connections_opened_total").absolute(t.connections_opened);
    for reason in CloseReason::ALL {
        counter!("myriad_connections_closed_total", "reason" => reason.as_str())
            .absolute(t.closed(reason));
    }
    for (i, qos) in QOS.iter().enumerate() {
        counter!("myriad_messages_received_total", "qos" => *qos).absolute(t.messages_in[i]);
        counter!("myriad_messages_received_bytes_total", "qos" => *qos).absolute(t.bytes_in[i]);
        counter!("myriad_messages_sent_total", "qos" => *qos).absolute(t.messages_out[i]);
        counter!("myriad_messages_sent_bytes_total", "qos" => *qos).absolute(t.bytes_out[i]);
    }
    counter!("myriad_messages_internal_total").absolute(t.messages_internal);
    counter!("myriad_traces_continued_total").absolute(t.traces_continued);
    for (reason, count) in [
        ("queue_full", s.stats.messages_dropped),
        ("too_large", s.stats.messages_too_large),
        ("expired", s.stats.messages_expired),
        ("slow_consumer", s.dropped_qos0_slow),
    ] {
        counter!("myriad_messages_dropped_total", "reason" => reason).absolute(count);
    }
    counter!("myriad_publishes_denied_total").absolute(s.stats.publishes_denied);
    counter!("myriad_publishes_held_total").absolute(s.stats.publishes_held);
    counter!("myriad_subscriptions_denied_total").absolute(s.stats.subscriptions_denied);
    let l = &s.levels;
    gauge!("myriad_sessions_online").set(l.sessions_online as f64);
    gauge!("myriad_sessions_offline_persistent").set(l.sessions_offline as f64);
    gauge!("myriad_retained_messages").set(l.retained as f64);
    gauge!("myriad_subscriptions").set(l.subscriptions as f64);
    gauge!("myriad_inflight_messages").set(l.inflight as f64);
    gauge!("myriad_queued_messages").set(l.queued as f64);
    gauge!("myriad_queued_bytes").set(l.queued_bytes as f64);
}

fn record_commands(commands: &CommandService) {
    use myriad_fleet::metrics as fleet;
    let stats = commands.stats();
    gauge!(fleet::COMMANDS_ACTIVE).set(stats.active as f64);
    gauge!(fleet::COMMANDS_IN_FLIGHT).set(stats.in_flight as f64);
    gauge!(fleet::COMMANDS_QUEUED).set(stats.queued_l1 as f64);
    for (class, breaker) in commands.breakers().classes {
        fleet::breaker_state(class, breaker.state);
    }
}

fn record_process() {
    if let Some(rss) = process::resident_bytes() {
        gauge!("myriad_process_resident_memory_bytes").set(rss as f64);
    }
    if let Some(sockets) = process::open_sockets() {
        gauge!("myriad_process_open_sockets").set(sockets as f64);
    }
    if let Some(a) = process::allocator_stats() {
        gauge!("myriad_allocator_allocated_bytes").set(a.allocated as f64);
        gauge!("myriad_allocator_active_bytes").set(a.active as f64);
        gauge!("myriad_allocator_resident_bytes").set(a.resident as f64);
        gauge!("myriad_allocator_mapped_bytes").set(a.mapped as f64);
    }
    let runtime = tokio::runtime::Handle::current().metrics();
    gauge!("myriad_runtime_tasks_alive").set(runtime.num_alive_tasks() as f64);
}
