//! The connection loop: accepts TCP connections and serves HTTP/1.1 on them with hyper,
//! bounded the way a stranger cannot exhaust (after mini-redis's `MAX_CONNECTIONS`):
//!
//! - at most `HERD_MAX_CONNECTIONS` connections are served at once; beyond that the loop stops
//!   accepting (new connections wait in the kernel's listen queue) and says so in the log;
//! - a client must send a request's headers within `HERD_HEADER_READ_TIMEOUT` (and begin the
//!   next request on a kept-alive connection within it too), or the connection is closed;
//! - a connection on which no byte moves either way for `HERD_IDLE_TIMEOUT` is closed
//!   ([`IdleTimeout`]: a body sent a byte a minute, an answer nobody reads).
//!
//! Each request carries `ConnectInfo<SocketAddr>` (the peer), as `axum::serve` would give it.
//! At shutdown the loop stops accepting, asks every connection to finish its request, and
//! waits for them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::shutdown::CancellationToken;

/// File descriptors kept for everything but client connections (database, files, webhooks).
const RESERVED_FILE_DESCRIPTORS: u64 = 128;

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Raises the soft limit on open files to the hard limit (a default soft limit of 256 or 1024
/// would otherwise cap connections far below what the machine can serve), and answers how many
/// connections fit in it. Failures are logged: the server still runs, with what it has.
pub(crate) fn raise_open_file_limit(max_connections: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit (RLIMIT_NOFILE)");
            match rlimit::getrlimit(rlimit::Resource::NOFILE) {
                Ok((soft, _)) => soft,
                Err(_) => return max_connections,
            }
        }
    };
    let fits = usize::try_from(limit.saturating_sub(RESERVED_FILE_DESCRIPTORS).max(1)).unwrap_or(usize::MAX);
    if fits < max_connections {
        tracing::warn!(
            open_file_limit = limit,
            max_connections = fits,
            configured = max_connections,
            "the open-file limit allows fewer connections than HERD_MAX_CONNECTIONS; serving at most max_connections"
        );
        fits
    } else {
        max_connections
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains the connections.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let mut at_cap = false;
    loop {
        // A slot first, then a connection: beyond the cap nothing is accepted.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached (HERD_MAX_CONNECTIONS): new connections wait until one closes"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot?,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        if at_cap {
            at_cap = false;
            tracing::info!("below the connection limit again");
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors (EMFILE) or a connection reset before it was
                    // accepted: say so, breathe, and carry on.
                    tracing::error!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = http.serve_connection(TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout)), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection that fails with `TimedOut` once no byte has moved either way for `idle`.
///
/// Activity only records an `Instant`; the one timer is re-armed lazily when it fires early,
/// so a busy connection costs no timer operations per read or write. hyper keeps reading a
/// busy connection to notice a client that left, so the timer also runs while a handler works:
/// `Settings` therefore requires the idle timeout to outlast the request timeout and the
/// event stream's keep-alive interval.
pub(crate) struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> IdleTimeout<S> {
    pub(crate) fn new(inner: S, idle: Duration) -> Self {
        let now = Instant::now();
        Self { inner, idle, last_activity: now, timer: Box::pin(tokio::time::sleep_until(now + idle)) }
    }

    /// True once the connection has been idle for `idle`; otherwise the timer is armed to wake
    /// this task when it might be.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_activity + self.idle;
            if Instant::now() >= deadline {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    fn timed_out() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "the connection was idle too long")
    }

    /// What a write's poll becomes: bytes written count as activity; a write that cannot
    /// proceed past the idle deadline fails.
    fn after_write(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(Self::timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let fits = raise_open_file_limit(usize::MAX);
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        // Linux caps an infinite hard limit at fs.nr_open; any other hard limit is reached.
        assert!(soft == hard || hard == rlimit::INFINITY, "soft {soft}, hard {hard}");
        assert_eq!(fits as u64, soft.saturating_sub(RESERVED_FILE_DESCRIPTORS).max(1));
        assert_eq!(raise_open_file_limit(10), 10, "a smaller configured cap is kept");
    }

    #[tokio::test]
    async fn an_idle_connection_times_out_and_activity_keeps_it_open() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = IdleTimeout::new(server, Duration::from_millis(300));
        let mut client = client;
        // Activity every 100 ms keeps it open well past the idle time.
        for _ in 0..6 {
            client.write_all(b"x").await.unwrap();
            let mut byte = [0u8; 1];
            server.read_exact(&mut byte).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut byte = [0u8; 1];
        let error = tokio::time::timeout(Duration::from_secs(10), server.read(&mut byte)).await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
