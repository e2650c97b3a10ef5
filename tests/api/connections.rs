//! Connections: a request the server refuses without reading its body must not break the
//! keep-alive connection it came on (devices reuse connections, and so do HTTP clients' pools).
//! Each case is sent over a raw socket, so what the server does with the connection is seen
//! directly instead of through a client's pool: after the refusal, either the answer said
//! `Connection: close`, or a second request on the same socket gets a whole, valid answer.

use std::time::Duration as StdDuration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{engine_tests, ADMIN_TOKEN};

/// Larger than what the server has buffered when a handler gives up on a body, so the server
/// cannot finish it in passing; smaller than what it promises to read and throw away.
const UNREAD_BODY: usize = 60 * 1024;

/// Bounds a read that never completes; no outcome depends on it.
const STUCK: StdDuration = StdDuration::from_secs(30);

/// One HTTP/1.1 request as bytes.
fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: herd.test\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn says_close(&self) -> bool {
        self.headers.iter().any(|(name, value)| {
            name == "connection" && value.split(',').any(|token| token.trim().eq_ignore_ascii_case("close"))
        })
    }
}

/// Reads one response (every answer here has a `Content-Length`); bytes after it stay in `buffer`.
async fn read_reply(socket: &mut (impl AsyncRead + Unpin), buffer: &mut Vec<u8>) -> Result<Reply, String> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(STUCK, socket.read(&mut chunk))
            .await
            .map_err(|_| "no response".to_string())?
            .map_err(|error| format!("reading the response head: {error}"))?;
        if n == 0 {
            return Err(format!("the connection closed after {} bytes of a response head", buffer.len()));
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).ok_or(format!("{status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .ok_or(format!("a response without Content-Length: {head}"))?;
    while buffer.len() < head_end + length {
        let n = tokio::time::timeout(STUCK, socket.read(&mut chunk))
            .await
            .map_err(|_| "no response body".to_string())?
            .map_err(|error| format!("reading the response body: {error}"))?;
        if n == 0 {
            return Err("the connection closed inside a response body".into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Ok(Reply { status, headers, body })
}

engine_tests! {
    async fn a_refused_request_leaves_its_connection_usable_or_says_close(app) {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let admin = ("Authorization", bearer.as_str());
        let json = ("Content-Type", "application/json");
        let padding = vec![b' '; UNREAD_BODY];
        let mut shape_error = br#"{"name": 42}"#.to_vec();
        shape_error.extend_from_slice(&padding);
        let too_large = vec![b' '; 2 * app.settings.body_limit];
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("401: no token", request("POST", "/devices", &[json], &padding), 401),
            (
                "415: wrong content type",
                request("POST", "/devices", &[admin, ("Content-Type", "text/plain")], &padding),
                415,
            ),
            ("422: invalid query, body unread", request("GET", "/devices?limit=0", &[admin, json], &padding), 422),
            ("422: JSON of the wrong shape", request("POST", "/devices", &[admin, json], &shape_error), 422),
            // Refused once the limit is read, with a megabyte still to come.
            ("413: body too large", request("POST", "/devices", &[admin, json], &too_large), 413),
        ];
        let mut broken = Vec::new();
        for (case, bytes, status) in cases {
            if let Err(error) = refuse_then_reuse(app.address, &bytes, status).await {
                broken.push(format!("{case}: {error}"));
            }
        }
        assert!(broken.is_empty(), "{broken:#?}");
    }
}

/// Sends one request that must be refused with `status`, then, unless the answer said
/// `Connection: close`, a second request on the same socket that must be answered in full.
async fn refuse_then_reuse(address: std::net::SocketAddr, bytes: &[u8], status: u16) -> Result<(), String> {
    let (mut reader, mut writer) = TcpStream::connect(address).await.expect("connect").into_split();
    let mut buffer = Vec::new();
    // Written while the answer is read: the server may answer before it reads anything.
    let (written, reply) =
        tokio::join!(tokio::time::timeout(STUCK, writer.write_all(bytes)), read_reply(&mut reader, &mut buffer));
    let reply = reply?;
    if reply.status != status {
        return Err(format!("answered {} instead of {status}: {}", reply.status, String::from_utf8_lossy(&reply.body)));
    }
    if reply.says_close() {
        return Ok(());
    }
    written
        .map_err(|_| "kept the connection but stopped reading it".to_string())?
        .map_err(|error| format!("kept the connection but stopped reading it: {error}"))?;
    let next = async {
        writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: herd.test\r\n\r\n").await.map_err(|e| e.to_string())?;
        read_reply(&mut reader, &mut buffer).await
    };
    let next = next
        .await
        .map_err(|error| format!("answered without Connection: close, then the next request failed: {error}"))?;
    let health: serde_json::Value =
        serde_json::from_slice(&next.body).map_err(|error| format!("the next answer: {error}"))?;
    if next.status != 200 || health["status"] != "ok" {
        return Err(format!("the next answer was {} {health}", next.status));
    }
    Ok(())
}
