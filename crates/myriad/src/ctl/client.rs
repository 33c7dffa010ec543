//! Sends [`ApiRequest`]s over HTTP(S) with a blocking client.

use std::fs::File;
use std::time::Duration;

use anyhow::Context;
use std::path::Path;

use ureq::Agent;
use ureq::http::{Request, request::Builder};
use ureq::tls::{RootCerts, TlsConfig};

use super::error::CtlError;
use super::request::{ApiBody, ApiRequest};

/// Largest answer read, in bytes.
const MAX_ANSWER: u64 = 256 * 1024 * 1024;
/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one platform's API.
pub struct Client {
    agent: Agent,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of the API at `base` (`http://host:port`), sending
    /// `token` as `Authorization: Bearer` when there is one.
    pub fn new(base: &str, token: Option<String>) -> Self {
        Client::build(base, token, None)
    }

    /// Like [`Client::new`], trusting for `https://` only the CA
    /// certificates in the PEM file at `ca_path`.
    pub fn with_ca(base: &str, token: Option<String>, ca_path: &Path) -> Result<Self, CtlError> {
        let pem = std::fs::read(ca_path)
            .with_context(|| format!("reading --cacert {}", ca_path.display()))?;
        let mut roots = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            let item = item.with_context(|| format!("reading --cacert {}", ca_path.display()))?;
            if let ureq::tls::PemItem::Certificate(cert) = item {
                roots.push(cert);
            }
        }
        if roots.is_empty() {
            return Err(anyhow::anyhow!(
                "--cacert {}: no CERTIFICATE block in the file",
                ca_path.display()
            )
            .into());
        }
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&roots))
            .build();
        Ok(Client::build(base, token, Some(tls)))
    }

    fn build(base: &str, token: Option<String>, tls: Option<TlsConfig>) -> Self {
        let mut config = Agent::config_builder();
        if let Some(tls) = tls {
            config = config.tls_config(tls);
        }
        let agent = config
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            // Redirects would resend the token and cannot replay a streamed
            // file: show them as errors instead.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(format!("myriad-ctl/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client {
            agent,
            base: base.to_string(),
            token,
        }
    }

    /// Sends a `GET` `request` and copies a `2xx` answer's body to `out` as it arrives (no size
    /// limit: for streamed exports); the bytes copied, or the error.
    pub fn stream_to(
        &self,
        request: &ApiRequest,
        out: &mut impl std::io::Write,
    ) -> Result<u64, CtlError> {
        let url = request.url(&self.base);
        let mut builder = Request::builder().method(request.method.as_str()).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let mut response = self
            .agent
            .run(build(builder, (), &url)?)
            .map_err(|source| CtlError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_ANSWER)
                .read_to_string()
                .with_context(|| format!("reading the answer of {url}"))?;
            return Err(CtlError::from_response(status, &body));
        }
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        Ok(std::io::copy(&mut reader, out)
            .with_context(|| format!("copying the answer of {url}"))?)
    }

    /// Sends `request`; the body of a `2xx` answer, or the error.
    pub fn send(&self, request: &ApiRequest) -> Result<String, CtlError> {
        let url = request.url(&self.base);
        let mut builder = Request::builder()
            .method(request.method.as_str())
            .uri(&url)
            .header("accept", "application/json");
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let sent = match &request.body {
            ApiBody::Empty => self.agent.run(build(builder, (), &url)?),
            ApiBody::Json(value) => {
                let body = serde_json::to_vec(value).context("encoding the request body")?;
                let builder = builder.header("content-type", "application/json");
                self.agent.run(build(builder, body, &url)?)
            }
            ApiBody::Bytes { data, content_type } => {
                let builder = builder.header("content-type", *content_type);
                self.agent.run(build(builder, data.clone(), &url)?)
            }
            ApiBody::Upload { path } => {
                let file =
                    File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let total = file.metadata().map(|m| m.len()).unwrap_or(0);
                // `Expect: 100-continue`: a server that refuses the upload from its headers
                // (413 too large, 429 busy, 400 bad label) answers before the body is sent,
                // and the answer is read instead of a broken pipe ("unreachable").
                let builder = builder
                    .header("content-type", "application/octet-stream")
                    .header("content-length", total.to_string())
                    .header("expect", "100-continue");
                let body = ProgressReader::new(file, total);
                self.agent.run(build(
                    builder,
                    ureq::SendBody::from_owned_reader(body),
                    &url,
                )?)
            }
            ApiBody::File { path, content_type } => {
                let file =
                    File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let builder = builder.header("content-type", *content_type);
                self.agent.run(build(builder, file, &url)?)
            }
        };
        let mut response = sent.map_err(|source| CtlError::Unreachable {
            url: url.clone(),
            source,
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .with_context(|| format!("reading the answer of {url}"))?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(CtlError::from_response(status, &body))
        }
    }
}

fn build<B>(builder: Builder, body: B, url: &str) -> Result<Request<B>, CtlError> {
    builder.body(body).map_err(|e| {
        CtlError::Other(anyhow::anyhow!(
            "cannot build a request for {url} (check --api and the token): {e}"
        ))
    })
}

/// A reader that draws `uploaded x of y MiB (p%)` on standard error as it is read, when
/// standard error is a terminal (nothing otherwise), and ends the line at the end.
struct ProgressReader<R> {
    inner: R,
    total: u64,
    done: u64,
    shown_percent: Option<u64>,
    draw: bool,
}

impl<R> ProgressReader<R> {
    fn new(inner: R, total: u64) -> Self {
        use std::io::IsTerminal;
        ProgressReader {
            inner,
            total,
            done: 0,
            shown_percent: None,
            draw: std::io::stderr().is_terminal(),
        }
    }
}

impl<R: std::io::Read> std::io::Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        let percent = (self.done * 100)
            .checked_div(self.total)
            .unwrap_or(100)
            .min(100);
        if self.draw && self.shown_percent != Some(percent) {
            self.shown_percent = Some(percent);
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let bar = "#".repeat((percent / 4) as usize);
            eprint!(
                "\ruploading [{bar:<25}] {:.1} of {:.1} MiB ({percent}%)",
                mib(self.done),
                mib(self.total)
            );
            if n == 0 || percent == 100 {
                eprintln!();
            }
        }
        Ok(n)
    }
}
