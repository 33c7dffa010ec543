//! The NATS JetStream sink: each output is published, payload the output JSON, to the
//! subject its template renders (`readings.${device}`), and counts as committed once
//! JetStream acknowledged it (the PubAck: the stream stored it). A batch is published
//! whole, then its acks are awaited: up to a batch of publishes in flight (at most
//! [`MAX_ACKS_IN_FLIGHT`]: a larger batch awaits those acks before publishing on).
//!
//! # Exactly once with `key`
//!
//! With `key = ["device", "seq"]` each message carries the header `Nats-Msg-Id` = the
//! record's key ([`super::key`]): JetStream drops a message whose id it saw within the
//! stream's `duplicate_window` (2 minutes by default) and acks it as a duplicate (counted in
//! `myriad_pipeline_sink_duplicates_total`). A batch retried after a transient error, or
//! redelivered by the broker after a crash or kill -9, then leaves each message in the stream
//! once, as long as the redelivery comes within the window. Without `key` there is no id:
//! at least once, duplicates possible.
//!
//! # Errors
//!
//! - The server down or unreachable, an ack not arriving within `ack_timeout_ms`: transient
//!   (the worker retries the batch with backoff; the client reconnects by itself).
//! - No stream captures the subject (JetStream answers "no responders"): a configuration
//!   error that the sink cannot check at start-up (subjects depend on the records), so it is
//!   transient with a log line naming the subject: the pipeline holds its records (the
//!   source stops acknowledging, backpressure) until someone creates the stream. The sink
//!   never creates streams.
//! - A subject the template cannot render, a key it cannot make, a message past the
//!   server's `max_payload`, or a JetStream error refusing the message itself (e.g. past
//!   the stream's `max_msg_size`): that record is refused (dead letter).

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;

use super::key::KeyFields;
use super::sink::{Pending, SinkError, Verdict};
use super::template::TopicTemplate;

/// The longest server URL, in bytes.
pub const MAX_URL_BYTES: usize = 1024;
/// The default time to wait for a message's PubAck.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishes whose PubAck is awaited at most (a larger batch waits for these acks before
/// publishing on; the client's own limit is set to this).
pub const MAX_ACKS_IN_FLIGHT: usize = 4096;
/// The longest `ack_timeout_ms`.
pub const MAX_ACK_TIMEOUT: Duration = Duration::from_secs(300);

/// `sink = { type = "nats", ... }`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSinkConfig {
    /// The server: `nats://host:port` (or `tls://`).
    pub url: String,
    /// The subject template.
    pub subject: TopicTemplate,
    /// The fields of the `Nats-Msg-Id` (empty: no id, at least once).
    pub key: KeyFields,
    /// How long to wait for each PubAck (and to hand a publish to the client).
    pub ack_timeout: Duration,
}

impl NatsSinkConfig {
    /// Checks the settings; the error starts with the key at fault (`url: ...`).
    pub fn new(
        url: &str,
        subject: &str,
        key: &[String],
        ack_timeout_ms: u64,
    ) -> Result<NatsSinkConfig, String> {
        if url.is_empty() || url.len() > MAX_URL_BYTES {
            return Err(format!("url: must be 1 ..= {MAX_URL_BYTES} bytes"));
        }
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            return Err(format!("url: {url:?} must start with nats:// or tls://"));
        }
        if let Err(error) = url.parse::<async_nats::ServerAddr>() {
            return Err(format!("url: {error}"));
        }
        let subject = TopicTemplate::parse_subject(subject).map_err(|e| format!("subject: {e}"))?;
        let key = KeyFields::new(key).map_err(|e| format!("key: {e}"))?;
        let ack_timeout = Duration::from_millis(ack_timeout_ms);
        if ack_timeout.is_zero() || ack_timeout > MAX_ACK_TIMEOUT {
            return Err(format!(
                "ack_timeout_ms: {ack_timeout_ms} is out of range (1 ..= {})",
                MAX_ACK_TIMEOUT.as_millis()
            ));
        }
        Ok(NatsSinkConfig {
            url: url.to_string(),
            subject,
            key,
            ack_timeout,
        })
    }
}

/// An open NATS sink: connects at its first write (and reconnects by itself after).
pub(crate) struct NatsSink {
    config: NatsSinkConfig,
    name: String,
    jetstream: Option<jetstream::Context>,
    duplicates: metrics::Counter,
}

/// Whether a JetStream error refuses the message itself (retrying cannot help).
fn refuses_message(error: &jetstream::context::PublishError) -> bool {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded
        | PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence => true,
        PublishErrorKind::Other => {
            // JetStream API errors 10054 (message size exceeds the stream's maximum).
            let text = error.to_string();
            text.contains("10054") || text.contains("exceeds maximum")
        }
        _ => false,
    }
}

impl NatsSink {
    /// A sink for pipeline `name`; nothing is connected yet.
    pub(crate) fn new(config: &NatsSinkConfig, name: &str) -> NatsSink {
        NatsSink {
            config: config.clone(),
            name: name.to_string(),
            jetstream: None,
            duplicates: metrics::counter!("myriad_pipeline_sink_duplicates_total", "pipeline" => name.to_string()),
        }
    }

    async fn context(&mut self) -> Result<jetstream::Context, SinkError> {
        if let Some(context) = &self.jetstream {
            return Ok(context.clone());
        }
        // `retry_on_initial_connect`: the client keeps trying in the background, so a server
        // down at start-up is one more transient error, not a failed pipeline.
        let client = async_nats::ConnectOptions::new()
            .name(format!("myriad pipeline {}", self.name))
            .retry_on_initial_connect()
            .connection_timeout(self.config.ack_timeout)
            .connect(self.config.url.as_str())
            .await
            .map_err(|e| SinkError::Transient(format!("NATS connect: {e}")))?;
        let context = jetstream::ContextBuilder::new()
            .timeout(self.config.ack_timeout)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .build(client);
        self.jetstream = Some(context.clone());
        Ok(context)
    }

    /// Awaits the PubAcks in `acks` (emptying it), refusing in `verdicts` what JetStream
    /// refused; a transient error for the rest.
    async fn await_acks(
        &self,
        acks: &mut Vec<(usize, String, PublishAckFuture)>,
        verdicts: &mut [Verdict],
    ) -> Result<(), SinkError> {
        for (i, subject, ack) in acks.drain(..) {
            match ack.await {
                Ok(ack) => {
                    if ack.duplicate {
                        self.duplicates.increment(1);
                    }
                }
                Err(error) if error.kind() == PublishErrorKind::StreamNotFound => {
                    return Err(SinkError::Transient(format!(
                        "no JetStream stream captures subject {subject}: create one (the sink does not)"
                    )));
                }
                Err(error) if refuses_message(&error) => {
                    verdicts[i] =
                        Verdict::Refused(format!("sink: JetStream refused the message: {error}"));
                }
                Err(error) => {
                    return Err(SinkError::Transient(format!(
                        "JetStream ack for {subject}: {error}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Publishes `batch` (up to [`MAX_ACKS_IN_FLIGHT`] messages ahead of their acks), then
    /// awaits every PubAck.
    pub(crate) async fn write(&mut self, batch: &[Pending]) -> Result<Vec<Verdict>, SinkError> {
        let jetstream = self.context().await?;
        let timeout = self.config.ack_timeout;
        let mut verdicts = vec![Verdict::Committed; batch.len()];
        let mut acks: Vec<(usize, String, PublishAckFuture)> = Vec::with_capacity(batch.len());
        for (i, item) in batch.iter().enumerate() {
            let subject = match self.config.subject.render(&item.output) {
                Ok(subject) => subject,
                Err(reason) => {
                    verdicts[i] = Verdict::Refused(format!("sink: {reason}"));
                    continue;
                }
            };
            let mut message = PublishMessage::build().payload(Bytes::from(item.output.to_string()));
            match self.config.key.render(&item.output) {
                None => {}
                Some(Ok(id)) => message = message.message_id(id),
                Some(Err(reason)) => {
                    verdicts[i] = Verdict::Refused(format!("sink: {reason}"));
                    continue;
                }
            }
            let sent =
                tokio::time::timeout(timeout, jetstream.send_publish(subject.clone(), message))
                    .await
                    .map_err(|_| {
                        SinkError::Transient(format!(
                            "NATS publish to {subject}: not handed to the client within {} ms",
                            timeout.as_millis()
                        ))
                    })?;
            match sent {
                Ok(ack) => {
                    acks.push((i, subject, ack));
                    if acks.len() >= MAX_ACKS_IN_FLIGHT {
                        self.await_acks(&mut acks, &mut verdicts).await?;
                    }
                }
                Err(error) if refuses_message(&error) => {
                    verdicts[i] =
                        Verdict::Refused(format!("sink: NATS refused the message: {error}"));
                }
                Err(error) => {
                    return Err(SinkError::Transient(format!(
                        "NATS publish to {subject}: {error}"
                    )));
                }
            }
        }
        self.await_acks(&mut acks, &mut verdicts).await?;
        Ok(verdicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_key() {
        let ok = NatsSinkConfig::new("nats://127.0.0.1:4222", "r.${d}", &[], 5000).unwrap();
        assert_eq!(ok.ack_timeout, Duration::from_secs(5));
        let err = |url: &str, subject: &str, key: &[&str], ms: u64| {
            let key: Vec<String> = key.iter().map(|s| s.to_string()).collect();
            NatsSinkConfig::new(url, subject, &key, ms).unwrap_err()
        };
        assert!(err("http://x:1", "a", &[], 1).starts_with("url:"));
        assert!(err("", "a", &[], 1).starts_with("url:"));
        assert!(
            err(
                &format!("nats://{}", "a".repeat(MAX_URL_BYTES)),
                "a",
                &[],
                1
            )
            .starts_with("url:")
        );
        assert!(err("nats://h:1", "a.*", &[], 1).starts_with("subject:"));
        assert!(err("nats://h:1", "a", &["x-y"], 1).starts_with("key:"));
        assert!(err("nats://h:1", "a", &[], 0).starts_with("ack_timeout_ms:"));
        assert!(err("nats://h:1", "a", &[], 300_001).starts_with("ack_timeout_ms:"));
        assert!(NatsSinkConfig::new("nats://h:1", "a", &[], 300_000).is_ok());
    }
}
