//! The sinks: where a pipeline's outputs go. The worker hands a sink a whole batch; the sink
//! either commits it and says, per record, whether it was committed or refused (a refused
//! record goes to the dead-letter file with the reason), or fails the batch with a
//! [`SinkError`]: a transient error is retried with backoff (the whole batch again, so a sink
//! must tolerate seeing a record twice), `Stopped` ends the pipeline.
//!
//! Adding a sink: a variant of [`super::SinkConfig`], a struct here (or in its own module)
//! with an `async fn write(&mut self, batch: &[Pending]) -> Result<Vec<Verdict>, SinkError>`,
//! and an arm in [`Sink::open`] and [`Sink::write`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use myriad_broker::shell::internal::InternalClient;
use myriad_broker::shell::{BrokerHandle, BrokerStopped};
use myriad_mqtt::{PacketProperties, Publish, QoS};
use serde_json::Value;

use super::SinkConfig;
use super::file::{OutputFormat, RotatingFile};
use super::http::HttpSink;
use super::nats::NatsSink;
use super::postgres::PostgresSink;
use super::template::TopicTemplate;
use crate::topic::TopicFilter;

/// An output waiting in the batcher, then in a sink's batch.
pub(crate) struct Pending {
    /// The source message's sequence number (the worker reports it done).
    pub seq: u64,
    /// When the worker received it (unix ms; for the per-record deadline).
    pub received_ms: i64,
    /// The rule's output.
    pub output: Value,
    /// The source message's topic (for dead letters).
    pub topic: String,
    /// The source message's payload (for dead letters).
    pub payload: Bytes,
    /// The trace context the source message carried (for the batch span).
    pub trace: Option<super::trace::TraceParent>,
}

/// What became of one record of a batch the sink wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Committed: the source message may be acknowledged.
    Committed,
    /// Refused for good (bad type, constraint, no topic): dead-lettered with this reason.
    Refused(String),
}

/// Why a sink did not write a batch.
#[derive(Debug)]
pub(crate) enum SinkError {
    /// Worth retrying (I/O error, peer down, timeout): the whole batch is written again.
    Transient(String),
    /// The sink can no longer work (the broker stopped under an MQTT sink).
    Stopped,
}

/// An open sink.
pub(crate) enum Sink {
    File(FileSink),
    Mqtt(MqttSink),
    Postgres(Box<PostgresSink>),
    Nats(NatsSink),
    Http(HttpSink),
}

impl Sink {
    /// Opens the sink `config` describes for pipeline `name`.
    pub(crate) async fn open(
        config: &SinkConfig,
        name: &str,
        broker: &BrokerHandle,
    ) -> Result<Sink, BrokerStopped> {
        Ok(match config {
            SinkConfig::File(file) => Sink::File(FileSink {
                file: Arc::new(Mutex::new(RotatingFile::new(file.clone()))),
                format: file.format.clone(),
            }),
            SinkConfig::Mqtt { topic } => Sink::Mqtt(MqttSink {
                client: broker
                    .connect_internal(&format!("pipeline/{name}/sink"))
                    .await?,
                topic: topic.clone(),
                source_filter: None,
            }),
            SinkConfig::Postgres(pg) => Sink::Postgres(Box::new(PostgresSink::new(pg))),
            SinkConfig::Nats(nats) => Sink::Nats(NatsSink::new(nats, name)),
            SinkConfig::Http(http) => Sink::Http(HttpSink::new(http, name)),
        })
    }

    /// Writes `batch`: one verdict per record, in order, or an error for the whole batch.
    pub(crate) async fn write(&mut self, batch: &[Pending]) -> Result<Vec<Verdict>, SinkError> {
        match self {
            Sink::File(sink) => sink.write(batch).await,
            Sink::Mqtt(sink) => sink.write(batch).await,
            Sink::Postgres(sink) => sink.write(batch).await,
            Sink::Nats(sink) => sink.write(batch).await,
            Sink::Http(sink) => sink.write(batch).await,
        }
    }

    /// Refuses outputs whose topic `filter` (the rule's FROM) matches, when this is an
    /// MQTT republish sink (a loop); other sinks are unaffected.
    pub(crate) fn guard_loops(&mut self, filter: &TopicFilter) {
        if let Sink::Mqtt(sink) = self {
            sink.source_filter = Some(filter.clone());
        }
    }

    /// The sink's kind as configured (`file`, `mqtt`, `postgres`, `nats`, `http`).
    pub(crate) fn config_kind(&self) -> &'static str {
        match self {
            Sink::File(_) => "file",
            Sink::Mqtt(_) => "mqtt",
            Sink::Postgres(_) => "postgres",
            Sink::Nats(_) => "nats",
            Sink::Http(_) => "http",
        }
    }

    /// What the sink is called in logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Sink::File(_) => "file sink",
            Sink::Mqtt(_) => "MQTT sink",
            Sink::Postgres(_) => "PostgreSQL sink",
            Sink::Nats(_) => "NATS sink",
            Sink::Http(_) => "HTTP sink",
        }
    }
}

/// Appends `bytes` to `file` off the event loop.
pub(crate) async fn append(file: &Arc<Mutex<RotatingFile>>, bytes: Vec<u8>) -> std::io::Result<()> {
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        file.lock()
            .unwrap_or_else(|e| e.into_inner())
            .append(&bytes)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// JSON lines or CSV rows appended to a rotating file, fsynced per batch.
pub(crate) struct FileSink {
    file: Arc<Mutex<RotatingFile>>,
    format: OutputFormat,
}

impl FileSink {
    async fn write(&mut self, batch: &[Pending]) -> Result<Vec<Verdict>, SinkError> {
        let mut bytes = Vec::new();
        let mut verdicts = Vec::with_capacity(batch.len());
        for item in batch {
            match self.format.encode(&item.output) {
                Ok(line) => {
                    bytes.extend_from_slice(&line);
                    verdicts.push(Verdict::Committed);
                }
                Err(reason) => verdicts.push(Verdict::Refused(format!("sink: {reason}"))),
            }
        }
        if !bytes.is_empty() {
            append(&self.file, bytes)
                .await
                .map_err(|error| SinkError::Transient(error.to_string()))?;
        }
        Ok(verdicts)
    }
}

/// Republishes each output on this broker at QoS 1, to the topic its template renders: the
/// whole batch at once, then every PUBACK awaited (one store commit covers many).
pub(crate) struct MqttSink {
    client: InternalClient,
    topic: TopicTemplate,
    /// The rule's FROM filter: an output whose topic it matches is refused, since
    /// republishing it would feed the pipeline its own output without end.
    source_filter: Option<TopicFilter>,
}

impl MqttSink {
    async fn write(&mut self, batch: &[Pending]) -> Result<Vec<Verdict>, SinkError> {
        let mut verdicts = Vec::with_capacity(batch.len());
        let mut publishes = Vec::with_capacity(batch.len());
        for item in batch {
            let target = match self.topic.render(&item.output) {
                Ok(target) => target,
                Err(reason) => {
                    verdicts.push(Some(Verdict::Refused(format!("sink: {reason}"))));
                    continue;
                }
            };
            if let Some(filter) = &self.source_filter
                && filter.matches(&target)
            {
                verdicts.push(Some(Verdict::Refused(format!(
                    "sink: topic {target:?} matches the rule's FROM filter {:?}: \
                     republishing it would loop",
                    filter.as_str()
                ))));
                continue;
            }
            verdicts.push(None);
            publishes.push(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: target.into(),
                packet_id: 0,
                payload: Bytes::from(item.output.to_string()),
                properties: PacketProperties::new(),
            });
        }
        let acks = match self.client.publish_confirmed_many(publishes).await {
            Ok(acks) => acks,
            Err(BrokerStopped) => return Err(SinkError::Stopped),
        };
        let mut acks = acks.into_iter();
        Ok(verdicts
            .into_iter()
            .map(|verdict| {
                verdict.unwrap_or_else(|| match acks.next() {
                    Some(ack) if !ack.reason_code.is_error() => Verdict::Committed,
                    Some(ack) => Verdict::Refused(format!(
                        "sink: the broker refused the message ({:?})",
                        ack.reason_code
                    )),
                    None => Verdict::Refused("sink: no acknowledgement".to_owned()),
                })
            })
            .collect())
    }
}
