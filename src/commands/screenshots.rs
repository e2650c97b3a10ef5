//! Screenshots: the image a device uploads as the result of a `screenshot` command, kept in the
//! blob store under `t/<tenant>/screenshots/<command>/<device>/<sha256>` (one prefix per
//! execution, so replacing one never deletes a blob another execution uses), and read back by
//! operators. The upload is streamed to the store with a size limit and must start with the
//! signature of the format its `Content-Type` names.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::Stream;

use super::conflict;
use super::device::DeviceCommandDto;
use super::store::{self, Transition};
use crate::auth::{DeviceAuth, Member, Role};
use crate::blobs::{BlobError, BlobStore};
use crate::clock::{to_millis, Clock};
use crate::config::Settings;
use crate::http::error::ApiError;
use crate::http::extract::{IdPath, IdsPath};
use herd_domain::ids::{CommandId, DeviceId};
use herd_domain::status::{CommandState, CommandType};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG: &[u8] = b"\xff\xd8\xff";

/// Upload the screenshot a `screenshot` command asked for (device token), while the command is
/// delivered or running: the body is the image, `Content-Type: image/png` or `image/jpeg`, at
/// most `HERD_SCREENSHOT_MAX_BYTES`. Then report the result. A second upload replaces the first.
#[utoipa::path(put, path = "/devices/self/commands/{id}/screenshot", operation_id = "uploadScreenshot", tag = "commands", security(("deviceToken" = [])),
    params(("id" = String, Path, description = "command id")),
    request_body(content = Vec<u8>, content_type = "image/png"),
    responses((status = 200, body = DeviceCommandDto)))]
pub(super) async fn upload_screenshot(
    State(clock): State<Arc<dyn Clock>>,
    State(blobs): State<BlobStore>,
    State(settings): State<Arc<Settings>>,
    device: DeviceAuth,
    IdPath(id): IdPath<CommandId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<DeviceCommandDto>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (content_type, signature): (&str, &[u8]) = match content_type.split(';').next().map(str::trim) {
        Some(t) if t.eq_ignore_ascii_case("image/png") => ("image/png", PNG),
        Some(t) if t.eq_ignore_ascii_case("image/jpeg") => ("image/jpeg", JPEG),
        _ => return Err(ApiError::UnsupportedMediaType("expected Content-Type: image/png or image/jpeg".into())),
    };
    // Refused before a byte of the body is read: not this device's, not a screenshot, or over.
    let scope = &device.scope;
    let row = store::execution(scope, id, device.device_id).await?.ok_or_else(|| ApiError::not_found("command"))?;
    if row.command_type != CommandType::Screenshot {
        return Err(ApiError::Conflict("only a screenshot command takes a screenshot".into()));
    }
    if !matches!(row.state, CommandState::Delivered | CommandState::Running) {
        return Err(conflict("upload a screenshot for", row.state));
    }
    let limit = settings.screenshot_max_bytes;
    if let Some(length) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        if length > limit as u64 {
            return Err(ApiError::PayloadTooLarge(limit));
        }
    }
    let mismatch = Arc::new(AtomicBool::new(false));
    let checked = SignatureCheck::new(body.into_data_stream(), signature, mismatch.clone());
    let prefix = format!("t/{}/screenshots/{}/{}", scope.tenant_id(), id, device.device_id);
    let stored = match blobs.put_stream(&prefix, checked, limit as u64).await {
        Ok(stored) => stored,
        Err(BlobError::TooLarge { .. }) => return Err(ApiError::PayloadTooLarge(limit)),
        Err(BlobError::Body(_)) if mismatch.load(Ordering::Relaxed) => {
            return Err(ApiError::invalid("body", format!("the body is not a {content_type} image")))
        }
        Err(BlobError::Body(detail)) => return Err(ApiError::BadRequest(format!("the upload failed: {detail}"))),
        Err(other) => return Err(ApiError::internal(anyhow::Error::from(other))),
    };
    let size = i64::try_from(stored.size).unwrap_or(i64::MAX);
    let now = to_millis(clock.now());
    let (transition, orphan) = store::attach(scope, id, device.device_id, &stored.key, content_type, size, now).await?;
    let row = match transition {
        Transition::Done(row) | Transition::Unchanged(row) => *row,
        Transition::NotFound => return Err(ApiError::not_found("command")),
        // Finished while the body streamed in: the image is not kept.
        Transition::Conflict(state) => {
            let _ = blobs.delete(&stored.key).await;
            return Err(conflict("upload a screenshot for", state));
        }
    };
    if let Some(orphan) = orphan {
        if let Err(error) = blobs.delete(&orphan).await {
            tracing::warn!(%error, key = orphan, "cannot delete a replaced screenshot");
        }
    }
    Ok(Json(DeviceCommandDto::new(row)?))
}

/// The screenshot a device uploaded for a command (viewer and up): the image itself.
#[utoipa::path(get, path = "/devices/{id}/commands/{commandId}/screenshot", operation_id = "getScreenshot", tag = "commands", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id"), ("commandId" = String, Path, description = "command id")),
    responses((status = 200, content_type = "image/png", body = Vec<u8>)))]
pub(crate) async fn get_screenshot(
    State(blobs): State<BlobStore>,
    member: Member,
    IdsPath(device_id, command_id): IdsPath<DeviceId, CommandId>,
) -> Result<Response, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = store::execution(scope, command_id, device_id).await?.ok_or_else(|| ApiError::not_found("command"))?;
    let (Some(key), Some(content_type)) = (row.attachment_key, row.attachment_type) else {
        return Err(ApiError::not_found("screenshot"));
    };
    let blob = match blobs.get(&key, None).await {
        Ok(blob) => blob,
        Err(BlobError::NotFound) => return Err(ApiError::not_found("screenshot")),
        Err(other) => return Err(ApiError::internal(anyhow::Error::from(other))),
    };
    let mut response = Body::from_stream(blob.stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(&content_type).map_err(ApiError::internal)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(blob.size));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'"));
    Ok(response)
}

/// Passes a body through, failing it (and setting `mismatch`) unless its first bytes are
/// `signature`.
struct SignatureCheck<S> {
    inner: S,
    signature: &'static [u8],
    seen: Vec<u8>,
    mismatch: Arc<AtomicBool>,
}

impl<S> SignatureCheck<S> {
    fn new(inner: S, signature: &'static [u8], mismatch: Arc<AtomicBool>) -> Self {
        Self { inner, signature, seen: Vec::with_capacity(signature.len()), mismatch }
    }
}

impl<S, E> Stream for SignatureCheck<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if this.seen.len() < this.signature.len() {
                    let wanted = this.signature.len() - this.seen.len();
                    this.seen.extend_from_slice(&chunk[..wanted.min(chunk.len())]);
                    if !this.signature.starts_with(&this.seen) {
                        this.mismatch.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err("the image's signature does not match its type".into())));
                    }
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.to_string()))),
            Poll::Ready(None) if this.seen.len() < this.signature.len() => {
                this.mismatch.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err("the image is shorter than its format's signature".into())))
            }
            other => other.map(|item| item.map(|result| result.map_err(|e| e.to_string()))),
        }
    }
}
