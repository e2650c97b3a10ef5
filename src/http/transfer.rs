//! The bound of artifact transfers (package uploads and downloads, screenshot uploads), which
//! replaces the request timeout on their routes: a 2 GiB upload cannot finish in
//! `HERD_REQUEST_TIMEOUT`, but it must not hold a connection forever either.
//!
//! - The whole exchange, request body and response body, ends at `HERD_TRANSFER_TIMEOUT`: a
//!   handler still working then is answered 503; a response body still streaming is cut off (a
//!   device resumes with `Range`).
//! - The request body may not stall: no byte for `HERD_REQUEST_TIMEOUT` (shorter than the
//!   connection's idle timeout, which `Settings` requires) fails the body, the handler stores
//!   nothing, and the answer is a 408 problem saying so, whatever the handler made of the
//!   failed body.
//!
//! A response body's stalls are the connection's idle timeout's business (`http::serve`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

/// The two bounds of a transfer route.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransferLimits {
    /// The longest the whole exchange may take.
    pub total: Duration,
    /// The longest the request body may go without a byte.
    pub stall: Duration,
}

/// Middleware of the transfer routes (see the module header).
pub(crate) async fn bound(State(limits): State<TransferLimits>, request: Request, next: Next) -> Response {
    let deadline = Instant::now() + limits.total;
    let stalled = Arc::new(AtomicBool::new(false));
    let overdue = Arc::new(AtomicBool::new(false));
    let stall = Stall {
        limit: limits.stall,
        timer: Box::pin(tokio::time::sleep(limits.stall)),
        armed: false,
        flag: stalled.clone(),
    };
    let request = request.map(|body| {
        Body::new(Bounded {
            inner: body,
            stall: Some(stall),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            overdue: Some(overdue.clone()),
        })
    });
    // The request body fails at the deadline too, and the handler may answer that failure
    // first: either way the answer is the timeout's.
    let response = match tokio::time::timeout_at(deadline, next.run(request)).await {
        Ok(response) if !overdue.load(Ordering::Relaxed) => response,
        _ => return ApiError::Timeout.into_response(),
    };
    if stalled.load(Ordering::Relaxed) {
        return ApiError::RequestTimeout(format!(
            "no byte of the request body arrived for {}; nothing was stored",
            humantime::format_duration(limits.stall)
        ))
        .into_response();
    }
    response.map(|body| {
        Body::new(Bounded {
            inner: body,
            stall: None,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            overdue: None,
        })
    })
}

/// A request body's stall bound: its timer runs from the handler's first read, and restarts
/// with every frame.
struct Stall {
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
    /// Raised when the bound fired.
    flag: Arc<AtomicBool>,
}

/// A body that fails at `deadline` (raising `overdue`) and, with a [`Stall`], when no frame
/// came for its limit.
struct Bounded {
    inner: Body,
    stall: Option<Stall>,
    deadline: Pin<Box<Sleep>>,
    overdue: Option<Arc<AtomicBool>>,
}

impl HttpBody for Bounded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Some(stall) = &mut this.stall {
            if !stall.armed {
                stall.armed = true;
                stall.timer.as_mut().reset(Instant::now() + stall.limit);
            }
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(stall) = &mut this.stall {
                stall.timer.as_mut().reset(Instant::now() + stall.limit);
            }
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            if let Some(overdue) = &this.overdue {
                overdue.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(Some(Err(axum::Error::new("the transfer took longer than HERD_TRANSFER_TIMEOUT"))));
        }
        if let Some(stall) = &mut this.stall {
            if stall.timer.as_mut().poll(cx).is_ready() {
                stall.flag.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(axum::Error::new(format!(
                    "no byte of the body arrived for {}",
                    humantime::format_duration(stall.limit)
                )))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
