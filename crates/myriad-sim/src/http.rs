//! A minimal HTTP/1.1 client for the platform's API (hyper, one keep-alive
//! connection per [`HttpClient`], one request at a time).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::{Result, SimError};

/// An API response: status and whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The `Retry-After` header in seconds, if any.
    pub retry_after: Option<f64>,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// The body as text (lossy), cut to `max` bytes, for error messages.
    pub fn body_text(&self, max: usize) -> String {
        let cut = &self.body[..self.body.len().min(max)];
        String::from_utf8_lossy(cut).into_owned()
    }
}

/// One keep-alive HTTP/1.1 connection to the API, with the bearer token.
///
/// The connection is opened lazily and opened again after any transport
/// error, so a caller simply retries.
#[derive(Debug)]
pub struct HttpClient {
    addr: SocketAddr,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpClient {
    /// A client for the API at `addr`, authenticating with `token` if given.
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Result<HttpClient> {
        let bad = |reason: String| SimError::Http { addr, reason };
        let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| bad(e.to_string()))?;
        let auth = token
            .map(|token| HeaderValue::from_str(&format!("Bearer {token}")))
            .transpose()
            .map_err(|_| bad("the token is not a valid header value".to_owned()))?;
        Ok(HttpClient {
            addr,
            host,
            auth,
            sender: None,
        })
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        let addr = self.addr;
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| SimError::Io { addr, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| SimError::Io { addr, source })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SimError::Http {
                addr,
                reason: e.to_string(),
            })?;
        // The connection future ends when the connection closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(self.sender.insert(sender))
    }

    /// Sends one request and reads the whole response. A JSON body is sent
    /// with `content_type`; `None` sends no body.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Response> {
        let addr = self.addr;
        let http = |e: &dyn std::fmt::Display| SimError::Http {
            addr,
            reason: e.to_string(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        if let Some(auth) = &self.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let request = match body {
            Some((bytes, content_type)) => builder
                .header(CONTENT_TYPE, content_type)
                .body(Full::new(bytes)),
            None => builder.body(Full::new(Bytes::new())),
        }
        .map_err(|e| http(&e))?;
        let sender = match self.sender.as_mut() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        let result = async {
            sender.ready().await.map_err(|e| http(&e))?;
            let response = sender.send_request(request).await.map_err(|e| http(&e))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| http(&e))?
                .to_bytes();
            Ok(Response {
                status,
                retry_after,
                body,
            })
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}
