//! The download phase's ceiling: one file served by a plain static route, and the client side of
//! big bodies (uploading a file, downloading with a streaming client).
//!
//! `herd-bench static-serve --file F --addr 127.0.0.1:0` answers `GET /file` with the file's bytes
//! (200, `Content-Length`, no ranges, no authentication, no database) through hyper's HTTP/1.1
//! server, reading the file with tokio in chunks of [`READ_CHUNK`] bytes, the reads herd's local
//! blob store makes. It prints `listening on <addr>` as its first line on stdout and serves until
//! it is killed. The phase runs it as a child process ([`StaticServer`]), so its CPU is not the
//! load generator's.
//!
//! [`FileBody`] streams a file as an HTTP body without holding it in memory; the static server
//! answers with it and the phase uploads the artifact with it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Bytes read from the file per body chunk: herd's local blob store reads 64 KiB at a time too.
pub const READ_CHUNK: usize = 64 * 1024;

/// The path the static server serves its file on.
pub const FILE_PATH: &str = "/file";

/// A file (from its current position) as an HTTP body of exactly `remaining` bytes, read in
/// chunks of [`READ_CHUNK`]; a file shorter than that is an error, never a short body.
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    /// The chunk being read, kept while the read is pending.
    chunk: Option<BytesMut>,
}

impl FileBody {
    /// Opens `path` and streams all of it.
    pub async fn open(path: &Path) -> Result<FileBody> {
        let file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata().await.with_context(|| format!("reading {}", path.display()))?.len();
        Ok(FileBody { file, remaining: size, chunk: None })
    }

    /// The bytes still to be sent.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let wanted = usize::try_from(this.remaining).unwrap_or(usize::MAX).min(READ_CHUNK);
        let mut chunk = this.chunk.take().unwrap_or_else(|| BytesMut::zeroed(wanted));
        let mut buffer = ReadBuf::new(&mut chunk[..]);
        match Pin::new(&mut this.file).poll_read(cx, &mut buffer) {
            Poll::Pending => {
                this.chunk = Some(chunk);
                Poll::Pending
            }
            Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
            Poll::Ready(Ok(())) => {
                let read = buffer.filled().len();
                if read == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file ended before its size",
                    ))));
                }
                chunk.truncate(read);
                this.remaining -= read as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The static server's answer to one request: the file for `GET /file`, 404 for anything else.
enum StaticBody {
    File(FileBody),
    Empty,
}

impl Body for StaticBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            StaticBody::File(file) => Pin::new(file).poll_frame(cx),
            StaticBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            StaticBody::File(file) => file.is_end_stream(),
            StaticBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            StaticBody::File(file) => file.size_hint(),
            StaticBody::Empty => SizeHint::with_exact(0),
        }
    }
}

async fn answer(
    file: &Path,
    request: &hyper::Request<Incoming>,
) -> Result<hyper::Response<StaticBody>, std::io::Error> {
    if request.method() != Method::GET || request.uri().path() != FILE_PATH {
        let mut response = hyper::Response::new(StaticBody::Empty);
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    }
    let body = FileBody::open(file).await.map_err(std::io::Error::other)?;
    let length = body.remaining();
    let mut response = hyper::Response::new(StaticBody::File(body));
    response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(length));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(response)
}

/// Serves `file` on `listener` until the task is dropped: one hyper HTTP/1.1 connection task per
/// accepted connection, keep-alive.
pub async fn serve(listener: TcpListener, file: PathBuf) -> Result<()> {
    let file: std::sync::Arc<Path> = file.into();
    loop {
        let (stream, _) = listener.accept().await.context("accepting a connection")?;
        let _ = stream.set_nodelay(true);
        let file = std::sync::Arc::clone(&file);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let file = std::sync::Arc::clone(&file);
                async move { answer(&file, &request).await }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// `herd-bench static-serve`: binds `addr`, prints `listening on <addr>` on stdout and serves
/// `file` until killed.
pub async fn run(file: PathBuf, addr: SocketAddr) -> Result<()> {
    let metadata = std::fs::metadata(&file).with_context(|| format!("--file {}", file.display()))?;
    if !metadata.is_file() {
        bail!("--file {} is not a file", file.display());
    }
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    println!("listening on {bound}");
    use std::io::Write as _;
    std::io::stdout().flush().context("writing to stdout")?;
    serve(listener, file).await
}

/// The address in the static server's first line (`listening on 127.0.0.1:PORT`).
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.trim().strip_prefix("listening on ")?.trim().parse().ok()
}

/// `herd-bench static-serve` as a child process; killed when dropped.
pub struct StaticServer {
    child: Child,
    addr: SocketAddr,
}

impl StaticServer {
    /// Starts `binary static-serve --file <file> --addr 127.0.0.1:0` and waits for its address.
    pub async fn start(binary: &Path, file: &Path) -> Result<StaticServer> {
        let mut child = Command::new(binary)
            .arg("static-serve")
            .arg("--file")
            .arg(file)
            .args(["--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} static-serve", binary.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("static-serve has no stdout"))?;
        let mut server = StaticServer { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        // A blocking read on its own thread: killing the child (the guard, on timeout) ends it.
        let first_line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        });
        let line = match tokio::time::timeout(Duration::from_secs(30), first_line).await {
            Ok(joined) => joined.context("static-serve reader task")?.context("reading static-serve's stdout")?,
            Err(_) => bail!("static-serve printed no address within 30 s"),
        };
        server.addr = parse_listening_line(&line)
            .ok_or_else(|| anyhow!("static-serve printed {line:?}, not `listening on <addr>`"))?;
        Ok(server)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// Opens one HTTP/1.1 connection whose requests carry bodies of type `B`.
pub async fn connect<B>(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<B>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {addr}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// A request for `path` on `addr` with an optional bearer token and body.
pub fn request<B>(
    addr: SocketAddr,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: B,
) -> Result<hyper::Request<B>> {
    let mut builder = hyper::Request::builder().method(method).uri(path).header(HOST, addr.to_string());
    if let Some(token) = bearer {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(body).with_context(|| format!("building request {path}"))
}

/// Uploads `file` as the body of `POST path` (streamed from disk, with `Content-Length`) and
/// answers the status and the whole (small) response body.
pub async fn upload_file(addr: SocketAddr, path: &str, bearer: &str, file: &Path) -> Result<(StatusCode, Bytes)> {
    let body = FileBody::open(file).await?;
    let length = body.remaining();
    let mut sender = connect::<FileBody>(addr).await?;
    let mut request = request(addr, Method::POST, path, Some(bearer), body)?;
    request.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(length));
    request.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    sender.ready().await.context("upload connection")?;
    let response = sender.send_request(request).await.with_context(|| format!("POST {path}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.with_context(|| format!("POST {path}: reading the answer"))?;
    Ok((status, body.to_bytes()))
}

/// Sends a small request without a body on a fresh connection (probes, lookups).
pub async fn get_small(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Result<(StatusCode, Bytes)> {
    let mut sender = connect::<Full<Bytes>>(addr).await?;
    let request = request(addr, Method::GET, path, bearer, Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await.with_context(|| format!("GET {path}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.with_context(|| format!("GET {path}: reading the answer"))?;
    Ok((status, body.to_bytes()))
}

/// A connection ready to download once.
pub type DownloadConnection = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_address_line() {
        assert_eq!(
            parse_listening_line("listening on 127.0.0.1:4321\n"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4321)))
        );
        assert_eq!(parse_listening_line("listening on nowhere"), None);
        assert_eq!(parse_listening_line("127.0.0.1:4321"), None);
    }
}
