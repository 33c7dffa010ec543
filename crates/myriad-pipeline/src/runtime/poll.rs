//! The HTTP polling source (`source = { type = "http_poll", url, interval_ms, headers,
//! timeout_ms, max_response_bytes }`): GETs the URL every `interval_ms`; the response body,
//! a JSON array (each element a record) or NDJSON (each non-blank line a record), becomes
//! records with the topic `http/{pipeline}`.
//!
//! # Behaviour
//!
//! - A poll's records are handed to the pipeline as it takes them (at most `in_flight` not
//!   done); the next poll starts `interval_ms` after the last record of the previous one was
//!   handed out, so a slow sink slows polling.
//! - A failed poll (connection error, timeout, a status other than 2xx, a body larger than
//!   `max_response_bytes` or not JSON) is logged and counted (`retries` and the last error
//!   in the status; `myriad_pipeline_poll_requests_total{pipeline,outcome="failed"}`) and
//!   tried again after a backoff doubling from `interval_ms` (at least
//!   [`super::RETRY_MIN`]) up to [`MAX_BACKOFF`].
//! - An NDJSON line that is not one JSON value goes to the dead-letter file with the reason.
//! - The server has no acknowledgement: what one poll returned is handed out once. Records
//!   in flight when the process dies are lost unless the next poll returns them again, and
//!   a server that returns the same records twice gets them written twice (use a sink
//!   `key` for idempotency).
//!
//! # Limits
//!
//! | bound | value |
//! |---|---|
//! | `url` | [`super::http::MAX_URL_BYTES`], `http://` or `https://`, no redirects followed |
//! | `headers` | [`super::http::MAX_HEADERS`], each [`super::http::MAX_HEADER_BYTES`] |
//! | `interval_ms` | [`MIN_INTERVAL_MS`] ..= [`MAX_INTERVAL_MS`] |
//! | `timeout_ms` | 1 ..= [`super::http::MAX_TIMEOUT`] (default 10,000) |
//! | `max_response_bytes` | 1 ..= [`MAX_RESPONSE_BYTES`] (default 16 MiB); also the longest NDJSON line |
//! | JSON nesting of an array body | serde_json's recursion limit (128) |

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::window::Window;
use super::{Counters, Item, Outcome, RETRY_MIN, RuntimeError};
use crate::lines::{LineSplitter, json_error};
use crate::record;

/// The shortest `interval_ms`.
pub const MIN_INTERVAL_MS: u64 = 10;
/// The longest `interval_ms`: one day.
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// The largest `max_response_bytes`: 256 MiB.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// The longest wait after failed polls.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// `source = { type = "http_poll", ... }`, checked by [`HttpPollConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPollConfig {
    /// The URL polled with GET.
    pub url: String,
    /// Time between polls.
    pub interval_ms: u64,
    /// Extra request headers (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
    /// One request's whole exchange at most.
    pub timeout: Duration,
    /// The most bytes of a response body.
    pub max_response_bytes: usize,
}

impl HttpPollConfig {
    /// Checks the settings; the error starts with the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        // The URL and header rules are the HTTP sink's.
        let mut sink = super::http::HttpSinkConfig::new(&self.url);
        sink.headers = self.headers.clone();
        sink.timeout = self.timeout;
        sink.validate()?;
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&self.interval_ms) {
            return Err(format!(
                "interval_ms: {} is out of range ({MIN_INTERVAL_MS} ..= {MAX_INTERVAL_MS})",
                self.interval_ms
            ));
        }
        if !(1..=MAX_RESPONSE_BYTES).contains(&self.max_response_bytes) {
            return Err(format!(
                "max_response_bytes: {} is out of range (1 ..= {MAX_RESPONSE_BYTES})",
                self.max_response_bytes
            ));
        }
        Ok(())
    }
}

/// One poll: the records of the response, or why not.
async fn fetch(
    client: &reqwest::Client,
    config: &HttpPollConfig,
    headers: &HeaderMap,
) -> Result<Vec<(Bytes, Option<String>)>, String> {
    let mut response = client
        .get(&config.url)
        .headers(headers.clone())
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {} ms", config.timeout.as_millis())
            } else {
                std::error::Error::source(&e)
                    .map(|s| format!("{e}: {s}"))
                    .unwrap_or_else(|| e.to_string())
            }
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if response
        .content_length()
        .is_some_and(|n| n > config.max_response_bytes as u64)
    {
        return Err(format!(
            "response larger than {} bytes (max_response_bytes)",
            config.max_response_bytes
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > config.max_response_bytes {
            return Err(format!(
                "response larger than {} bytes (max_response_bytes)",
                config.max_response_bytes
            ));
        }
        body.extend_from_slice(&chunk);
    }
    records(&body, config.max_response_bytes)
}

/// A body's records: the elements of a JSON array, else its non-blank lines.
fn records(body: &[u8], max_line_bytes: usize) -> Result<Vec<(Bytes, Option<String>)>, String> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    if start.is_some_and(|i| body[i] == b'[') {
        let values: Vec<serde_json::Value> =
            serde_json::from_slice(body).map_err(|e| format!("not a JSON array: {e}"))?;
        return Ok(values
            .into_iter()
            .map(|v| (Bytes::from(v.to_string()), None))
            .collect());
    }
    let mut splitter = LineSplitter::new(max_line_bytes);
    let mut lines = Vec::new();
    splitter.push(body, &mut lines);
    lines.extend(splitter.finish());
    Ok(lines
        .into_iter()
        .map(|l| {
            let error = json_error(&l.bytes);
            (Bytes::from(l.bytes), error)
        })
        .collect())
}

/// Polls into the worker until `shutdown` (then the worker drains) or `hard`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_source(
    config: HttpPollConfig,
    pipeline: &str,
    topic: String,
    in_flight: usize,
    items: mpsc::Sender<Item>,
    mut done: mpsc::UnboundedReceiver<u64>,
    shutdown: &CancellationToken,
    hard: &CancellationToken,
    counters: Counters,
) -> Result<(), RuntimeError> {
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| RuntimeError::SourceEnded(format!("HTTP client: {e}")))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        // Checked by `validate`.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    let requests = ["ok", "failed"].map(|outcome| {
        metrics::counter!("myriad_pipeline_poll_requests_total", "pipeline" => pipeline.to_owned(), "outcome" => outcome)
    });
    let interval = Duration::from_millis(config.interval_ms);
    let mut backoff = interval.max(RETRY_MIN);
    let mut window: Window<()> = Window::new();
    let mut pending: VecDeque<(Bytes, Option<String>)> = VecDeque::new();
    let mut items = Some(items);
    let mut next_poll = Some(Instant::now());
    loop {
        let can_send = items.is_some() && !pending.is_empty() && window.len() < in_flight;
        let may_poll = items.is_some() && pending.is_empty();
        let mut stop = false;
        tokio::select! {
            biased;
            finished = done.recv() => {
                let Some(seq) = finished else {
                    return if shutdown.is_cancelled() {
                        Ok(())
                    } else {
                        Err(RuntimeError::SourceEnded("the worker stopped".to_owned()))
                    };
                };
                window.mark_reported(seq, &mut done);
                window.take_done();
                counters.lag(window.len());
            }
            () = hard.cancelled() => return Ok(()),
            () = shutdown.cancelled(), if items.is_some() => stop = true,
            permit = reserve(&items), if can_send => {
                let (Some(permit), Some((payload, error))) = (permit, pending.pop_front()) else {
                    return Err(RuntimeError::SourceEnded("the worker stopped".to_owned()));
                };
                let seq = window.push(());
                counters.records(Outcome::Received, 1);
                counters.lag(window.len());
                permit.send(Item {
                    seq,
                    topic: topic.clone(),
                    payload,
                    qos: record::QoS::AtLeastOnce,
                    user_properties: record::UserProperties::new(),
                    trace: None,
                    error,
                });
                if pending.is_empty() {
                    next_poll = Some(Instant::now() + interval);
                }
            }
            () = sleep_until(next_poll), if may_poll && next_poll.is_some() => {
                let fetched = tokio::select! {
                    fetched = fetch(&client, &config, &headers) => fetched,
                    () = shutdown.cancelled() => continue,
                };
                match fetched {
                    Ok(records) => {
                        requests[0].increment(1);
                        backoff = interval.max(RETRY_MIN);
                        if records.is_empty() {
                            next_poll = Some(Instant::now() + interval);
                        } else {
                            next_poll = None;
                            pending.extend(records);
                        }
                    }
                    Err(error) => {
                        requests[1].increment(1);
                        tracing::warn!(pipeline, url = %config.url, %error, retry_in_ms = backoff.as_millis() as u64, "http_poll source: poll failed");
                        counters.retry(&format!("poll {}: {error}", config.url));
                        next_poll = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF.max(interval));
                    }
                }
            }
        }
        if stop {
            // Take no more; the worker drains what it has and ends.
            items = None;
            pending.clear();
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A slot on the worker's channel (`None`: the worker is gone); never ready without one.
async fn reserve(items: &Option<mpsc::Sender<Item>>) -> Option<mpsc::Permit<'_, Item>> {
    match items {
        Some(sender) => sender.reserve().await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::records;

    #[test]
    fn an_array_or_lines_become_records() {
        let payloads = |body: &[u8]| -> Vec<(String, bool)> {
            records(body, 100)
                .unwrap()
                .into_iter()
                .map(|(p, e)| (String::from_utf8(p.to_vec()).unwrap(), e.is_some()))
                .collect()
        };
        let ok = |s: &str| (s.to_owned(), false);
        assert_eq!(
            payloads(b" [{\"a\":1}, 2, \"x\"]"),
            vec![ok("{\"a\":1}"), ok("2"), ok("\"x\"")]
        );
        assert_eq!(
            payloads(b"{\"a\":1}\n\nnope\n{\"b\":2}"),
            vec![ok("{\"a\":1}"), ("nope".into(), true), ok("{\"b\":2}")]
        );
        assert!(records(b"[1, 2", 100).is_err());
        assert!(records(b"", 100).unwrap().is_empty());
    }
}
