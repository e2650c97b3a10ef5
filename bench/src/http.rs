//! The harness's HTTP client: one HTTP/1.1 keep-alive connection per simulated worker.
//!
//! hyper's connection-level API is used on purpose instead of a pooled client: a worker owns its
//! connection, sends one request at a time and reconnects only when the server closed it, so the
//! measured latency is the server's plus loopback, with no pool or retry logic in between. This
//! module knows nothing about herd's API; callers build [`Request`]s.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST};
pub use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A request to send; cheap to clone (the body and token are shared).
#[derive(Debug, Clone)]
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// Path and query, e.g. `/devices/connect`.
    pub path: String,
    /// Sent as `Authorization: Bearer <token>` when present.
    pub bearer: Option<Arc<str>>,
    /// A JSON body (sent with `Content-Type: application/json`), or none at all.
    pub body: Option<Bytes>,
    /// Sent as the `Cookie` header when present (the console's session).
    pub cookie: Option<Arc<str>>,
}

impl Request {
    /// A request without credential or body.
    pub fn new(method: Method, path: impl Into<String>) -> Request {
        Request { method, path: path.into(), bearer: None, body: None, cookie: None }
    }

    /// Adds a bearer token.
    pub fn bearer(mut self, token: Arc<str>) -> Request {
        self.bearer = Some(token);
        self
    }

    /// Adds a `Cookie` header (`name=value` pairs, as a browser sends them).
    pub fn cookie(mut self, cookie: Arc<str>) -> Request {
        self.cookie = Some(cookie);
        self
    }

    /// Adds a JSON body already serialized.
    pub fn json_bytes(mut self, body: Bytes) -> Request {
        self.body = Some(body);
        self
    }

    /// Adds a JSON body.
    pub fn json(self, body: &serde_json::Value) -> Request {
        self.json_bytes(Bytes::from(body.to_string()))
    }

    fn to_hyper(&self, host: &HeaderValue) -> Result<hyper::Request<Full<Bytes>>> {
        let mut builder =
            hyper::Request::builder().method(self.method.clone()).uri(self.path.as_str()).header(HOST, host.clone());
        if let Some(token) = &self.bearer {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(cookie) = &self.cookie {
            builder = builder.header(COOKIE, cookie.as_ref());
        }
        let body = match &self.body {
            Some(body) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                body.clone()
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(body)).with_context(|| format!("building request {} {}", self.method, self.path))
    }
}

/// A response with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// The body, fully read.
    pub body: Bytes,
}

impl Response {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("response body is not JSON: {}", self.excerpt()))
    }

    /// The start of the body, for error messages.
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut excerpt: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            excerpt.push('…');
        }
        excerpt
    }
}

/// One keep-alive HTTP/1.1 connection to the server, reopened when the server closes it.
pub struct Connection {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    /// A connection to `addr`; the TCP connection is opened by the first request.
    pub fn new(addr: SocketAddr) -> Result<Connection> {
        let host = HeaderValue::from_str(&addr.to_string()).context("socket address as Host")?;
        Ok(Connection { addr, host, sender: None })
    }

    /// Sends `request` and reads the whole response.
    pub async fn send(&mut self, request: &Request) -> Result<Response> {
        if self.sender.as_ref().is_none_or(|sender| sender.is_closed()) {
            self.sender = Some(open(self.addr).await?);
        }
        let sender = self.sender.as_mut().ok_or_else(|| anyhow!("connection to {} not open", self.addr))?;
        let hyper_request = request.to_hyper(&self.host)?;
        let result = async {
            sender.ready().await?;
            let response = sender.send_request(hyper_request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Response { status, body })
        }
        .await;
        result.map_err(|error| {
            // The connection is unusable after a transport error; the next request reconnects.
            self.sender = None;
            anyhow!("{} {}: {error}", request.method, request.path)
        })
    }
}

async fn open(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
    // The connection task ends when the server closes the socket or the sender is dropped; its
    // errors also surface on the sender, which is where they are reported.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request on a fresh connection (setup calls, probes).
pub async fn send_once(addr: SocketAddr, request: &Request) -> Result<Response> {
    Connection::new(addr)?.send(request).await
}
