//! The HTTP webhook sink: outputs are sent to a URL as JSON, either a whole batch as one
//! JSON array per request (the default) or one request per record (`per_record = true`,
//! up to `concurrency` requests in flight).
//!
//! # Outcomes of a request
//!
//! - 2xx: committed.
//! - 408, 429, 5xx, a connection error, a timeout (`timeout_ms`, the whole exchange): a
//!   failure, retried by the sink with exponential backoff and jitter (`retry.min_ms` up to
//!   `retry.max_ms`, each delay drawn from its upper half) for at most `retry.attempts`
//!   attempts; then the write fails as transient and the worker retries the batch later.
//!   Each re-sent request is counted in `myriad_pipeline_sink_retries_total`.
//! - Any other status (4xx, 3xx: redirects are not followed): the records are refused and
//!   dead-lettered with the status and the first [`MAX_REASON_BODY_BYTES`] of the body.
//!
//! At most [`MAX_RESPONSE_BYTES`] of a response body are read.
//!
//! # Circuit breaker
//!
//! After `breaker.failures` consecutive failed requests the breaker opens (logged, gauge
//! `myriad_pipeline_breaker_open` = 1, `myriad_pipeline_breaker_opened_total`): requests
//! fail at once, without reaching the server, as transient errors, so the worker backs off.
//! After `breaker.cooldown_ms` one probe request goes through (half open): its success
//! closes the breaker, its failure opens it for another cool-down. See [`Breaker`].
//!
//! # Idempotency
//!
//! With `key = [...]`, each request carries `Idempotency-Key`: per record, the record's key
//! ([`super::key`]); per batch, a digest of the batch's record keys ([`super::key::digest`]),
//! the same for a batch the worker retries. After a crash, batches may be cut differently:
//! a receiver that must drop redeliveries should use `per_record = true` or dedupe on the
//! key fields inside the body. Without `key`, no header: at least once.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use tokio::sync::Semaphore;

use super::key::{KeyFields, digest};
use super::sink::{Pending, SinkError, Verdict};

/// The longest URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// The most configured headers.
pub const MAX_HEADERS: usize = 32;
/// The longest configured header (name and value), in bytes.
pub const MAX_HEADER_BYTES: usize = 4096;
/// The most bytes of a response body read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The most bytes of a response body quoted in a dead letter's reason.
pub const MAX_REASON_BODY_BYTES: usize = 256;
/// The longest `timeout_ms`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The largest `concurrency`.
pub const MAX_CONCURRENCY: usize = 256;
/// The longest `retry.min_ms`.
pub const MAX_RETRY_MIN: Duration = Duration::from_secs(60);
/// The longest `retry.max_ms`.
pub const MAX_RETRY_MAX: Duration = Duration::from_secs(600);
/// The most `retry.attempts`.
pub const MAX_ATTEMPTS: u32 = 100;
/// The largest `breaker.failures`.
pub const MAX_BREAKER_FAILURES: u32 = 1000;
/// The longest `breaker.cooldown_ms`.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(3600);

/// `sink = { type = "http", ... }`, checked by [`HttpSinkConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSinkConfig {
    /// `http://` or `https://` URL.
    pub url: String,
    /// `POST` (default), `PUT` or `PATCH`.
    pub method: String,
    /// Extra request headers (`Content-Type: application/json` unless given here).
    pub headers: Vec<(String, String)>,
    /// One request per record instead of one per batch.
    pub per_record: bool,
    /// The whole exchange of one request at most.
    pub timeout: Duration,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// The first retry delay.
    pub retry_min: Duration,
    /// The longest retry delay.
    pub retry_max: Duration,
    /// Attempts per request within one write (1: no retry by the sink).
    pub retry_attempts: u32,
    /// Consecutive failed requests that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe.
    pub breaker_cooldown: Duration,
    /// The fields of the `Idempotency-Key` (empty: no header).
    pub key: KeyFields,
}

impl HttpSinkConfig {
    /// Defaults for `url`: POST, a batch per request, 10 s timeout, 4 in flight, retries
    /// from 100 ms to 10 s with 3 attempts, a breaker opening after 5 failures for 5 s.
    pub fn new(url: &str) -> HttpSinkConfig {
        HttpSinkConfig {
            url: url.to_string(),
            method: "POST".into(),
            headers: Vec::new(),
            per_record: false,
            timeout: Duration::from_secs(10),
            concurrency: 4,
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            retry_attempts: 3,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            key: KeyFields::default(),
        }
    }

    /// Checks the settings; the error starts with the key at fault (`url: ...`,
    /// `retry.max_ms: ...`).
    pub fn validate(&self) -> Result<(), String> {
        if self.url.is_empty() || self.url.len() > MAX_URL_BYTES {
            return Err(format!("url: must be 1 ..= {MAX_URL_BYTES} bytes"));
        }
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => {
                return Err(format!(
                    "url: {:?} must be an http:// or https:// URL",
                    self.url
                ));
            }
            Err(error) => return Err(format!("url: {error}")),
        }
        if !matches!(self.method.as_str(), "POST" | "PUT" | "PATCH") {
            return Err(format!(
                "method: {:?} must be POST, PUT or PATCH",
                self.method
            ));
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(format!("headers: at most {MAX_HEADERS}"));
        }
        for (name, value) in &self.headers {
            let key = format!("headers.{name}");
            if name.len() + value.len() > MAX_HEADER_BYTES {
                return Err(format!("{key}: longer than {MAX_HEADER_BYTES} bytes"));
            }
            let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
                return Err(format!("{key}: not a valid header name"));
            };
            if matches!(
                parsed.as_str(),
                "content-length" | "host" | "transfer-encoding" | "connection" | "idempotency-key"
            ) {
                return Err(format!("{key}: set by the sink"));
            }
            if HeaderValue::from_str(value).is_err() {
                return Err(format!("{key}: the value must be visible ASCII"));
            }
        }
        let ms = |d: Duration| d.as_millis();
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(format!(
                "timeout_ms: {} is out of range (1 ..= {})",
                ms(self.timeout),
                ms(MAX_TIMEOUT)
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "concurrency: {} is out of range (1 ..= {MAX_CONCURRENCY})",
                self.concurrency
            ));
        }
        if self.retry_min.is_zero() || self.retry_min > MAX_RETRY_MIN {
            return Err(format!(
                "retry.min_ms: {} is out of range (1 ..= {})",
                ms(self.retry_min),
                ms(MAX_RETRY_MIN)
            ));
        }
        if self.retry_max < self.retry_min || self.retry_max > MAX_RETRY_MAX {
            return Err(format!(
                "retry.max_ms: {} is out of range (retry.min_ms ..= {})",
                ms(self.retry_max),
                ms(MAX_RETRY_MAX)
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.retry_attempts) {
            return Err(format!(
                "retry.attempts: {} is out of range (1 ..= {MAX_ATTEMPTS})",
                self.retry_attempts
            ));
        }
        if !(1..=MAX_BREAKER_FAILURES).contains(&self.breaker_failures) {
            return Err(format!(
                "breaker.failures: {} is out of range (1 ..= {MAX_BREAKER_FAILURES})",
                self.breaker_failures
            ));
        }
        if self.breaker_cooldown.is_zero() || self.breaker_cooldown > MAX_COOLDOWN {
            return Err(format!(
                "breaker.cooldown_ms: {} is out of range (1 ..= {})",
                ms(self.breaker_cooldown),
                ms(MAX_COOLDOWN)
            ));
        }
        Ok(())
    }
}

/// A circuit breaker (sans-IO: the caller passes the time).
///
/// Closed: requests go; `failures` consecutive failures open it. Open: requests are refused
/// until `cooldown` has passed, then it is half open: one probe goes, the others are
/// refused; the probe's success closes it, its failure opens it again.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    state: BreakerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl Breaker {
    /// A closed breaker opening after `threshold` consecutive failures for `cooldown`.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            state: BreakerState::Closed,
        }
    }

    /// Whether a request may go now (in half-open state, only the one probe).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probing: true } => false,
            BreakerState::HalfOpen { probing: false } => {
                self.state = BreakerState::HalfOpen { probing: true };
                true
            }
        }
    }

    /// A request succeeded (the server answered, even with a refusal). `true`: the breaker
    /// was not closed and now is.
    pub fn success(&mut self) -> bool {
        self.failures = 0;
        let was_closed = self.state == BreakerState::Closed;
        self.state = BreakerState::Closed;
        !was_closed
    }

    /// A request failed at `now`. `true`: the breaker opened (or opened again).
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        match self.state {
            BreakerState::Closed if self.failures < self.threshold => false,
            BreakerState::Closed | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::Open {
                    until: now + self.cooldown,
                };
                true
            }
            // A request sent before the breaker opened: it stays open as it is.
            BreakerState::Open { .. } => false,
        }
    }

    /// Whether the breaker is open or half open.
    pub fn is_open(&self) -> bool {
        self.state != BreakerState::Closed
    }
}

/// What became of one request, after the sink's retries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Refused(String),
    Failed(String),
}

/// What the concurrent requests of one sink share.
struct Shared {
    config: HttpSinkConfig,
    pipeline: String,
    client: reqwest::Client,
    method: Method,
    headers: HeaderMap,
    breaker: Mutex<Breaker>,
    permits: Semaphore,
    retries: metrics::Counter,
    breaker_open: metrics::Gauge,
    breaker_opened: metrics::Counter,
    requests: [metrics::Counter; 3],
}

/// The first `max` bytes of `body` as one line of text.
fn excerpt(body: &[u8], max: usize) -> String {
    let cut = &body[..body.len().min(max)];
    String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Shared {
    fn allow(&self) -> bool {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow(Instant::now())
    }

    fn record(&self, outcome: &Outcome) {
        let mut breaker = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Outcome::Ok | Outcome::Refused(_) => {
                if breaker.success() {
                    self.breaker_open.set(0.0);
                    tracing::info!(pipeline = %self.pipeline, url = %self.config.url, "HTTP sink: circuit breaker closed");
                }
            }
            Outcome::Failed(error) => {
                if breaker.failure(Instant::now()) {
                    self.breaker_open.set(1.0);
                    self.breaker_opened.increment(1);
                    tracing::warn!(pipeline = %self.pipeline, url = %self.config.url, %error,
                        cooldown_ms = self.config.breaker_cooldown.as_millis() as u64,
                        "HTTP sink: circuit breaker open");
                }
            }
        }
        let index = match outcome {
            Outcome::Ok => 0,
            Outcome::Refused(_) => 1,
            Outcome::Failed(_) => 2,
        };
        self.requests[index].increment(1);
    }

    /// One exchange.
    async fn attempt(&self, body: Bytes, key: Option<&str>) -> Outcome {
        let mut request = self
            .client
            .request(self.method.clone(), self.config.url.as_str())
            .headers(self.headers.clone())
            .body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                let error = if error.is_timeout() {
                    format!("no answer within {} ms", self.config.timeout.as_millis())
                } else {
                    std::error::Error::source(&error)
                        .map(|s| format!("{error}: {s}"))
                        .unwrap_or_else(|| error.to_string())
                };
                return Outcome::Failed(format!("HTTP {}: {error}", self.config.url));
            }
        };
        let status = response.status();
        // Read at most MAX_RESPONSE_BYTES; a body cut short or failing is no verdict of
        // its own (the status is).
        let mut body = Vec::new();
        while body.len() < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_RESPONSE_BYTES - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let text = excerpt(&body, MAX_REASON_BODY_BYTES);
        if status.is_success() {
            Outcome::Ok
        } else if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            Outcome::Failed(format!("HTTP {}: {status}: {text}", self.config.url))
        } else {
            Outcome::Refused(format!("sink: HTTP {status}: {text}"))
        }
    }

    /// One request with the sink's retries (backoff with jitter), within the breaker.
    async fn send(&self, body: Bytes, key: Option<&str>) -> Outcome {
        let _permit = self.permits.acquire().await;
        let mut delay = self.config.retry_min;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if !self.allow() {
                return Outcome::Failed(format!("HTTP {}: circuit breaker open", self.config.url));
            }
            let outcome = self.attempt(body.clone(), key).await;
            self.record(&outcome);
            match outcome {
                Outcome::Failed(error) if attempts < self.config.retry_attempts => {
                    let wait = jitter(delay);
                    tracing::debug!(pipeline = %self.pipeline, %error, retry_in_ms = wait.as_millis() as u64, "HTTP sink: retrying");
                    self.retries.increment(1);
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(self.config.retry_max);
                }
                other => return other,
            }
        }
    }
}

/// A delay drawn from the upper half of `delay` ("equal jitter").
fn jitter(delay: Duration) -> Duration {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX).max(1);
    let half = ms / 2;
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    Duration::from_millis(ms - half + random % (half + 1))
}

/// An open HTTP sink.
pub(crate) struct HttpSink {
    shared: Option<Arc<Shared>>,
    config: HttpSinkConfig,
    pipeline: String,
    /// Per record: sequence numbers committed by an earlier attempt at the batch being
    /// retried (not sent again). Cleared when a write succeeds.
    committed: HashSet<u64>,
}

impl HttpSink {
    /// A sink for pipeline `name` (the client is built at the first write).
    pub(crate) fn new(config: &HttpSinkConfig, name: &str) -> HttpSink {
        HttpSink {
            shared: None,
            config: config.clone(),
            pipeline: name.to_string(),
            committed: HashSet::new(),
        }
    }

    fn shared(&mut self) -> Result<Arc<Shared>, SinkError> {
        if let Some(shared) = &self.shared {
            return Ok(shared.clone());
        }
        let config = &self.config;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(config.concurrency)
            .build()
            .map_err(|e| SinkError::Transient(format!("HTTP client: {e}")))?;
        let method = Method::from_bytes(config.method.as_bytes())
            .map_err(|e| SinkError::Transient(format!("HTTP method: {e}")))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &config.headers {
            // Checked by `validate`; a bad one is skipped rather than trusted.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        let name = self.pipeline.clone();
        let requests = ["ok", "refused", "failed"].map(|outcome| {
            metrics::counter!("myriad_pipeline_http_requests_total", "pipeline" => name.clone(), "outcome" => outcome)
        });
        let shared = Arc::new(Shared {
            config: config.clone(),
            pipeline: name.clone(),
            client,
            method,
            headers,
            breaker: Mutex::new(Breaker::new(
                config.breaker_failures,
                config.breaker_cooldown,
            )),
            permits: Semaphore::new(config.concurrency),
            retries: metrics::counter!("myriad_pipeline_sink_retries_total", "pipeline" => name.clone()),
            breaker_open: metrics::gauge!("myriad_pipeline_breaker_open", "pipeline" => name.clone()),
            breaker_opened: metrics::counter!("myriad_pipeline_breaker_opened_total", "pipeline" => name),
            requests,
        });
        shared.breaker_open.set(0.0);
        self.shared = Some(shared.clone());
        Ok(shared)
    }

    /// Sends `batch`: one request, or one per record (concurrently, within the limit).
    pub(crate) async fn write(&mut self, batch: &[Pending]) -> Result<Vec<Verdict>, SinkError> {
        let shared = self.shared()?;
        let mut verdicts = vec![Verdict::Committed; batch.len()];
        // (index, key) of the records to send.
        let mut send: Vec<(usize, Option<String>)> = Vec::with_capacity(batch.len());
        for (i, item) in batch.iter().enumerate() {
            match self.config.key.render(&item.output) {
                None => send.push((i, None)),
                Some(Ok(key)) => send.push((i, Some(key))),
                Some(Err(reason)) => verdicts[i] = Verdict::Refused(format!("sink: {reason}")),
            }
        }
        if send.is_empty() {
            return Ok(verdicts);
        }
        if !self.config.per_record {
            let mut body = Vec::from(&b"["[..]);
            for (n, (i, _)) in send.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(batch[*i].output.to_string().as_bytes());
            }
            body.push(b']');
            let key = (!self.config.key.is_empty())
                .then(|| digest(send.iter().map(|(_, k)| k.as_deref().unwrap_or(""))));
            return match shared.send(Bytes::from(body), key.as_deref()).await {
                Outcome::Ok => Ok(verdicts),
                Outcome::Refused(reason) => {
                    for (i, _) in &send {
                        verdicts[*i] = Verdict::Refused(reason.clone());
                    }
                    Ok(verdicts)
                }
                Outcome::Failed(error) => Err(SinkError::Transient(error)),
            };
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, key) in send {
            if self.committed.contains(&batch[i].seq) {
                continue;
            }
            let shared = shared.clone();
            let body = Bytes::from(batch[i].output.to_string());
            tasks.spawn(async move { (i, shared.send(body, key.as_deref()).await) });
        }
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            let (i, outcome) = match joined {
                Ok(done) => done,
                Err(error) => {
                    failure.get_or_insert(format!("HTTP request task: {error}"));
                    continue;
                }
            };
            match outcome {
                Outcome::Ok => {
                    self.committed.insert(batch[i].seq);
                }
                Outcome::Refused(reason) => verdicts[i] = Verdict::Refused(reason),
                Outcome::Failed(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        if let Some(error) = failure {
            // Refusals are found again on the retry; commits are remembered.
            return Err(SinkError::Transient(error));
        }
        self.committed.clear();
        Ok(verdicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_failures_and_probes_after_cooldown() {
        let t0 = Instant::now();
        let cooldown = Duration::from_secs(5);
        let mut b = Breaker::new(3, cooldown);
        assert!(b.allow(t0));
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        // A success resets the count.
        assert!(!b.success());
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert!(b.failure(t0), "the third consecutive failure opens");
        assert!(b.is_open());
        assert!(!b.allow(t0 + cooldown - Duration::from_millis(1)));
        // Half open: one probe, the others wait.
        assert!(b.allow(t0 + cooldown));
        assert!(!b.allow(t0 + cooldown));
        // The probe fails: open for another cool-down.
        let t1 = t0 + cooldown;
        assert!(b.failure(t1));
        assert!(!b.allow(t1 + Duration::from_secs(1)));
        assert!(b.allow(t1 + cooldown));
        assert!(b.success(), "the probe's success closes it");
        assert!(!b.is_open());
        assert!(b.allow(t1 + cooldown));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        for ms in [1u64, 2, 100, 10_000] {
            for _ in 0..100 {
                let j = jitter(Duration::from_millis(ms)).as_millis() as u64;
                assert!(j >= ms - ms / 2 && j <= ms, "{ms}: {j}");
            }
        }
    }

    #[test]
    fn excerpts_are_bounded_single_lines() {
        assert_eq!(excerpt(b"bad\nvalue", 100), "bad value");
        assert_eq!(
            excerpt(&[b'a'; 1000], MAX_REASON_BODY_BYTES).len(),
            MAX_REASON_BODY_BYTES
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        assert_eq!(
            HttpSinkConfig::new("http://127.0.0.1:1/x").validate(),
            Ok(())
        );
        let bad = |f: &dyn Fn(&mut HttpSinkConfig)| {
            let mut c = HttpSinkConfig::new("http://127.0.0.1:1/x");
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(&|c| c.url = "ftp://x/".into()).starts_with("url:"));
        assert!(bad(&|c| c.url = "not a url".into()).starts_with("url:"));
        assert!(
            bad(&|c| c.url = format!("http://h/{}", "a".repeat(MAX_URL_BYTES))).starts_with("url:")
        );
        assert!(bad(&|c| c.method = "GET".into()).starts_with("method:"));
        assert!(
            bad(&|c| c.headers = vec![("bad name".into(), "v".into())])
                .starts_with("headers.bad name:")
        );
        assert!(
            bad(&|c| c.headers = vec![("Host".into(), "v".into())]).starts_with("headers.Host:")
        );
        assert!(
            bad(&|c| c.headers = vec![("x".into(), "a".repeat(MAX_HEADER_BYTES))])
                .starts_with("headers.x:")
        );
        let many: Vec<(String, String)> = (0..=MAX_HEADERS)
            .map(|i| (format!("x-{i}"), "v".into()))
            .collect();
        assert!(bad(&|c| c.headers = many.clone()).starts_with("headers:"));
        assert!(bad(&|c| c.timeout = Duration::ZERO).starts_with("timeout_ms:"));
        assert!(
            bad(&|c| c.timeout = MAX_TIMEOUT + Duration::from_millis(1)).starts_with("timeout_ms:")
        );
        assert!(bad(&|c| c.concurrency = 0).starts_with("concurrency:"));
        assert!(bad(&|c| c.concurrency = MAX_CONCURRENCY + 1).starts_with("concurrency:"));
        assert!(bad(&|c| c.retry_min = Duration::ZERO).starts_with("retry.min_ms:"));
        assert!(
            bad(&|c| {
                c.retry_min = MAX_RETRY_MIN + Duration::from_millis(1);
                c.retry_max = MAX_RETRY_MAX;
            })
            .starts_with("retry.min_ms:")
        );
        assert!(
            bad(&|c| c.retry_max = MAX_RETRY_MAX + Duration::from_millis(1))
                .starts_with("retry.max_ms:")
        );
        assert!(bad(&|c| c.retry_attempts = 0).starts_with("retry.attempts:"));
        assert!(
            bad(&|c| c.breaker_failures = MAX_BREAKER_FAILURES + 1)
                .starts_with("breaker.failures:")
        );
        assert!(bad(&|c| c.breaker_cooldown = Duration::ZERO).starts_with("breaker.cooldown_ms:"));
        assert!(bad(&|c| c.retry_max = Duration::from_millis(1)).starts_with("retry.max_ms:"));
        assert!(bad(&|c| c.retry_attempts = MAX_ATTEMPTS + 1).starts_with("retry.attempts:"));
        assert!(bad(&|c| c.breaker_failures = 0).starts_with("breaker.failures:"));
        assert!(
            bad(&|c| c.breaker_cooldown = MAX_COOLDOWN + Duration::from_millis(1))
                .starts_with("breaker.cooldown_ms:")
        );
    }
}
