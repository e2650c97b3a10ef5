//! Keeps HTTP/1 keep-alive connections honest when a request is answered before its body was
//! read to the end: 401 from an auth extractor, 415, 413 (the rest of a body over the limit),
//! 404/405, a 422 on the query string, a timeout. Nothing else in herd needs to think about it.
//!
//! Why: when a handler drops a request body before its end, hyper tries one more read of what
//! has already arrived and, if the body is still not finished, closes the connection after the
//! response. It says `Connection: close` only if it noticed before writing the response head,
//! and it usually has not: the head goes out as soon as the handler returns, and the dropped
//! body is seen on the next turn. The client then pools a connection the server is closing,
//! and its next request on it fails (`hyper::Error(IncompleteMessage)` in reqwest).
//!
//! [`finish_unread_body`] hands every body the handler did not finish back to the middleware,
//! which reads and discards up to [`DRAIN_LIMIT`] more bytes within [`DRAIN_TIME`] (then the
//! connection stays usable), or else answers with `Connection: close` (then the client knows).
//! It must stay the outermost layer, so that it sees every answer, including timeouts and panics.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Version};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use http_body::{Frame, SizeHint};
use tokio::sync::oneshot;

/// The most of an unread body the server reads to keep a connection: small refused requests
/// (a device's JSON) keep their connection; an upload refused as too large does not.
pub(crate) const DRAIN_LIMIT: u64 = 64 * 1024;

/// The longest the server waits for that remainder; a client that is slower loses the connection.
pub(crate) const DRAIN_TIME: Duration = Duration::from_secs(1);

/// Middleware: drains what the handler left of the request body, or marks the answer
/// `Connection: close`. HTTP/2 is left alone: there an unread body resets only its stream.
pub(crate) async fn finish_unread_body(request: Request, next: Next) -> Response {
    if request.version() > Version::HTTP_11 || request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let (give_back, mut unread) = oneshot::channel();
    let body = Body::new(ReturnUnread { inner: body, finished: false, give_back: Some(give_back) });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    // Nothing comes back if the body was read to its end, or if something still holds it (none
    // of herd's handlers keep a body past their answer).
    if let Ok(rest) = unread.try_recv() {
        if !discard(rest).await {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Reads and throws away the rest of a body; `true` if it ended within the limits.
async fn discard(body: Body) -> bool {
    if body.size_hint().lower() > DRAIN_LIMIT {
        return false;
    }
    let read_to_end = async {
        let mut left = DRAIN_LIMIT;
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(bytes) => match left.checked_sub(bytes.len() as u64) {
                    Some(rest) => left = rest,
                    None => return false,
                },
                Err(_) => return false,
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, read_to_end).await.unwrap_or(false)
}

/// A request body that, dropped before its end, sends itself back to [`finish_unread_body`].
struct ReturnUnread {
    inner: Body,
    /// The inner body said it ended (or failed: then hyper has given up on the connection).
    finished: bool,
    give_back: Option<oneshot::Sender<Body>>,
}

impl HttpBody for ReturnUnread {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ReturnUnread {
    fn drop(&mut self) {
        if self.finished || self.inner.is_end_stream() {
            return;
        }
        if let Some(give_back) = self.give_back.take() {
            let _ = give_back.send(std::mem::take(&mut self.inner));
        }
    }
}
