//! A sensor's firmware on the device SDK: store-and-forward telemetry, a command handler and
//! shadow sync on one MQTT connection.
//!
//! ```text
//! cargo run -p myriad-agent --features client --example sensor -- 127.0.0.1 1883 sensor-1 secret /tmp/sensor-1
//! ```
//!
//! - every second a temperature point goes to the spool (`send_points` returns once it is on
//!   disk) and from there to `devices/sensor-1/telemetry`, also across broker outages;
//! - the command `set_interval` (`{"ms": 500}`) changes the period and is answered in the
//!   command service's reply form;
//! - the shadow's desired `interval_ms` is applied the same way and reported back.

use std::time::Duration;

use myriad_agent::client::{ClientBuilder, ClientConfig, ConnState, Qos};
use myriad_agent::fs::RealFs;
use myriad_agent::shadow::{Action, ShadowSync};
use myriad_agent::spool::{MetricValue, Point, Spool, SpoolConfig};
use myriad_agent::telemetry::{Telemetry, TelemetryConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, host, port, id, password, dir] = &args[..] else {
        return Err("usage: sensor HOST PORT DEVICE_ID PASSWORD STATE_DIR".into());
    };
    let mut config = ClientConfig::new(host.clone(), port.parse()?, id.clone());
    config.credentials = Some((id.clone(), password.clone()));
    let mut builder = ClientBuilder::new(config);
    let mut commands = builder.subscribe(&format!("$commands/{id}/+"), Qos::AtLeastOnce, 16)?;
    let mut shadow_in = builder.subscribe(&format!("$shadow/{id}/+/+"), Qos::AtLeastOnce, 16)?;
    let cancel = CancellationToken::new();
    let (client, connection) = builder.start(cancel.clone())?;

    let spool = Spool::open(RealFs, std::path::Path::new(dir), SpoolConfig::default())?;
    let (telemetry, pump) = Telemetry::start(
        client.clone(),
        spool,
        TelemetryConfig::new(id),
        cancel.clone(),
    )?;
    let mut shadow = ShadowSync::new(id)?;
    let mut state = client.watch_state();
    let mut interval = Duration::from_secs(1);
    let mut tick = tokio::time::interval(interval);

    loop {
        let mut actions = Vec::new();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let ts_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as u64;
                let temp = 20.0 + (ts_ms % 1000) as f64 / 1000.0;
                let point = Point { ts_ms, metrics: vec![("temp".into(), MetricValue::F64(temp))] };
                telemetry.send_points(&[point]).await?;
            }
            Ok(()) = state.changed() => {
                if let ConnState::Up { .. } = *state.borrow_and_update() {
                    actions = shadow.on_connected(ts_nonce());
                }
            }
            Some(m) = shadow_in.recv() => {
                actions = shadow.on_message(&m.topic, &m.payload).unwrap_or_default();
            }
            Some(m) = commands.recv() => {
                // MQTT 5: reply to the Response Topic, echoing the Correlation Data.
                let ms = serde_json::from_slice::<Value>(&m.payload).ok()
                    .and_then(|v| v["ms"].as_u64());
                let reply = match ms {
                    Some(ms) if m.topic.ends_with("/set_interval") && ms >= 100 => {
                        interval = Duration::from_millis(ms);
                        tick = tokio::time::interval(interval);
                        json!({"status": "succeeded", "result": {"interval_ms": ms}})
                    }
                    _ => json!({"status": "failed", "result": "expected set_interval {\"ms\": >= 100}"}),
                };
                if let Some(topic) = m.response_topic.clone() {
                    client.publish_reply(topic, reply.to_string(), m.correlation_data.clone()).await?;
                }
            }
        }
        for action in actions {
            match action {
                Action::Publish { topic, payload } => {
                    client.publish(topic, payload, Qos::AtLeastOnce).await?;
                }
                Action::Apply(fields) => {
                    if let Some(ms) = fields.get("interval_ms").and_then(Value::as_u64) {
                        interval = Duration::from_millis(ms.max(100));
                        tick = tokio::time::interval(interval);
                    }
                    let done = json!({"interval_ms": interval.as_millis() as u64});
                    for a in shadow.report(done.as_object().cloned().unwrap_or_default())? {
                        if let Action::Publish { topic, payload } = a {
                            client.publish(topic, payload, Qos::AtLeastOnce).await?;
                        }
                    }
                }
                Action::Rejected { code, message, .. } => eprintln!("shadow: {code} {message}"),
            }
        }
    }
    cancel.cancel();
    let _ = tokio::join!(connection, pump);
    Ok(())
}

fn ts_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}
