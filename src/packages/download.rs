//! Package downloads, for members (`GET /packages/{id}/download`), for the devices a package
//! targets (`GET /devices/self/packages/{id}/download`) and by signed link
//! (`GET /downloads/packages/{id}?expires=…&signature=…`, handed out by the two `download-url`
//! routes; see `signed`): the artifact streamed from the blob store with single HTTP ranges
//! (206, or 416 with `Content-Range: bytes */size`), a strong `ETag` (the SHA-256),
//! `If-None-Match` (304), `If-Range`, and the whole artifact's digest in `Digest` and
//! `Repr-Digest` (RFC 9530), so a device can resume an interrupted download and check what it
//! got. Every device path decides what a device may download in one place, [`device_package`].

use std::ops::Range;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::signed::DownloadSigner;
use super::store::{self, PackageRow};
use crate::auth::{DeviceAuth, Member, Role};
use crate::blobs::{BlobError, BlobStore};
use crate::clock::Clock;
use crate::http::error::ApiError;
use crate::http::extract::{ApiQuery, IdPath};
use crate::store::Db;
use herd_domain::ids::PackageId;

/// The package `id` as far as `device` may download it: it exists in the device's tenant, its
/// `targetModels` is empty or names the device's model, and a rollout sent it to the device
/// (notified or later); else 404, exactly as for a missing
/// package. Every device route that reads or hands out a package goes through here.
pub(crate) async fn device_package(device: &DeviceAuth, id: PackageId) -> Result<PackageRow, ApiError> {
    let row = store::get(&device.scope, id)
        .await?
        .filter(|row| row.targets(device.device.model.as_deref()))
        .ok_or_else(|| ApiError::not_found("package"))?;
    // Only a device that a rollout sent the package (notified or later) may fetch it.
    if !crate::rollouts::store::device_may_download(&device.scope, device.device_id, id).await? {
        return Err(ApiError::not_found("package"));
    }
    Ok(row)
}

/// Download a package's artifact (viewer and up). Supports `Range` (one range), `If-Range`,
/// `If-None-Match`; see the device route for the headers.
#[utoipa::path(get, path = "/packages/{id}/download", operation_id = "downloadPackage", tag = "packages", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "package id")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the requested range"), (status = 304, description = "the ETag matched"),
        (status = 416, description = "the range is not within the artifact")))]
pub(super) async fn member_download(
    State(blobs): State<BlobStore>,
    member: Member,
    IdPath(id): IdPath<PackageId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("package"))?;
    serve(&blobs, &row, &headers, CachePolicy::Private).await
}

/// Download a package's artifact (device token): only a package that a rollout sent the
/// device (notified or later) and whose `targetModels` is empty or names the device's model
/// (else 404). `ETag` is `"<sha256>"`; resume with
/// `Range: bytes=<have>-` and `If-Range: <ETag>`; check the whole file against `Repr-Digest`.
#[utoipa::path(get, path = "/devices/self/packages/{id}/download", operation_id = "downloadOwnPackage", tag = "packages", security(("deviceToken" = [])),
    params(("id" = String, Path, description = "package id")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the requested range"), (status = 304, description = "the ETag matched"),
        (status = 416, description = "the range is not within the artifact")))]
pub(super) async fn device_download(
    State(blobs): State<BlobStore>,
    device: DeviceAuth,
    IdPath(id): IdPath<PackageId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = device_package(&device, id).await?;
    serve(&blobs, &row, &headers, CachePolicy::Private).await
}

/// A short-lived download link.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DownloadUrlDto {
    /// `/downloads/packages/{id}?expires=…&signature=…`, under `HERD_PUBLIC_URL` when that is
    /// set, else a path and query to resolve against the server the caller talks to. It needs
    /// no `Authorization` header.
    pub url: String,
    /// When the link stops working (`HERD_DOWNLOAD_URL_TTL` from now, rounded up to a minute).
    pub expires_at: DateTime<Utc>,
}

fn link(
    signer: &DownloadSigner,
    tenant: herd_domain::ids::TenantId,
    row: &PackageRow,
    clock: &dyn Clock,
) -> DownloadUrlDto {
    let signed = signer.sign(tenant, row, clock.now().timestamp());
    DownloadUrlDto {
        url: signed.url,
        expires_at: DateTime::from_timestamp(signed.expires, 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
    }
}

/// A signed link to a package's artifact (viewer and up), valid for `HERD_DOWNLOAD_URL_TTL`.
#[utoipa::path(get, path = "/packages/{id}/download-url", operation_id = "createPackageDownloadUrl", tag = "packages", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "package id")),
    responses((status = 200, body = DownloadUrlDto)))]
pub(super) async fn member_download_url(
    State(signer): State<Arc<DownloadSigner>>,
    State(clock): State<Arc<dyn Clock>>,
    member: Member,
    IdPath(id): IdPath<PackageId>,
) -> Result<Json<DownloadUrlDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("package"))?;
    Ok(Json(link(&signer, scope.tenant_id(), &row, clock.as_ref())))
}

/// A signed link to a package's artifact (device token), for a package the device may download
/// (else 404), valid for `HERD_DOWNLOAD_URL_TTL`; a CDN or proxy in front of herd can serve it.
#[utoipa::path(get, path = "/devices/self/packages/{id}/download-url", operation_id = "createOwnPackageDownloadUrl", tag = "packages", security(("deviceToken" = [])),
    params(("id" = String, Path, description = "package id")),
    responses((status = 200, body = DownloadUrlDto)))]
pub(super) async fn device_download_url(
    State(signer): State<Arc<DownloadSigner>>,
    State(clock): State<Arc<dyn Clock>>,
    device: DeviceAuth,
    IdPath(id): IdPath<PackageId>,
) -> Result<Json<DownloadUrlDto>, ApiError> {
    let row = device_package(&device, id).await?;
    Ok(Json(link(&signer, device.scope.tenant_id(), &row, clock.as_ref())))
}

/// `?expires=&signature=` of a signed link.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SignedLinkParams {
    /// Unix seconds after which the link is refused.
    pub expires: Option<String>,
    /// base64url HMAC-SHA256 (see `docs/packages.md`).
    pub signature: Option<String>,
}

fn refused() -> ApiError {
    ApiError::Forbidden("this download link is not valid; ask herd for a new one".into())
}

/// Download a package's artifact by a signed link (no `Authorization`): the same ranges and
/// headers as the other download routes, with `Cache-Control: public, max-age=<seconds left>`.
/// An expired, altered or foreign link, or one whose package is gone, is 403 and sends no byte.
#[utoipa::path(get, path = "/downloads/packages/{id}", operation_id = "downloadPackageBySignedUrl", tag = "packages",
    params(("id" = String, Path, description = "package id"), SignedLinkParams),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "the requested range"), (status = 304, description = "the ETag matched"),
        (status = 403, description = "the link expired or is not valid"),
        (status = 416, description = "the range is not within the artifact")))]
pub(super) async fn signed_download(
    State(db): State<Db>,
    State(blobs): State<BlobStore>,
    State(signer): State<Arc<DownloadSigner>>,
    State(clock): State<Arc<dyn Clock>>,
    IdPath(id): IdPath<PackageId>,
    ApiQuery(params): ApiQuery<SignedLinkParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let expires = params.expires.as_deref().and_then(|e| e.parse::<i64>().ok()).ok_or_else(refused)?;
    let signature = params.signature.as_deref().ok_or_else(refused)?;
    let now = clock.now().timestamp();
    if expires <= now {
        return Err(ApiError::Forbidden("this download link has expired; ask herd for a new one".into()));
    }
    let row = store::find_for_signed_link(&db, id, |tenant, row| signer.verify(tenant, row, expires, signature))
        .await?
        .ok_or_else(refused)?;
    serve(&blobs, &row, &headers, CachePolicy::PublicFor(expires - now)).await
}

/// What `Cache-Control` a download answer carries.
#[derive(Debug, Clone, Copy)]
enum CachePolicy {
    /// A bearer-token download: `private, no-cache`.
    Private,
    /// A signed link: `public, max-age=<seconds>` (until the link expires).
    PublicFor(i64),
}

/// What a `Range` header asks for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// No (usable) range: the whole artifact.
    All,
    /// One satisfiable range (end exclusive).
    Part(Range<u64>),
    /// A range that starts past the end.
    Unsatisfiable,
}

/// Parses one `bytes=` range against `size`. Anything else (another unit, several ranges, bad
/// syntax) is answered with the whole artifact, as RFC 9110 allows.
fn wanted(range: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::All;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // A suffix: the last n bytes.
        let Ok(n) = last.parse::<u64>() else {
            return Wanted::All;
        };
        if n == 0 || size == 0 {
            return Wanted::Unsatisfiable;
        }
        return Wanted::Part(size.saturating_sub(n)..size);
    }
    let Ok(start) = first.parse::<u64>() else {
        return Wanted::All;
    };
    let end = if last.is_empty() {
        size
    } else {
        match last.parse::<u64>() {
            Ok(last) if last >= start => last.saturating_add(1).min(size),
            _ => return Wanted::All,
        }
    };
    if start >= size {
        return Wanted::Unsatisfiable;
    }
    Wanted::Part(start..end)
}

/// Whether an `If-None-Match` value lists `etag` (or is `*`); weak comparison, as RFC 9110 says.
fn none_match(value: &str, etag: &str) -> bool {
    value.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

async fn serve(
    blobs: &BlobStore,
    row: &PackageRow,
    headers: &HeaderMap,
    cache: CachePolicy,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", row.sha256);
    let cache_control = match cache {
        CachePolicy::Private => HeaderValue::from_static("private, no-cache"),
        CachePolicy::PublicFor(seconds) => {
            HeaderValue::from_str(&format!("public, max-age={}", seconds.max(0))).map_err(ApiError::internal)?
        }
    };
    let digest = hex::decode(&row.sha256).map_err(ApiError::internal)?;
    let digest = base64::engine::general_purpose::STANDARD.encode(digest);
    let size = u64::try_from(row.size).unwrap_or(0);
    let common = |response: &mut Response| -> Result<(), ApiError> {
        let h = response.headers_mut();
        h.insert(header::ETAG, HeaderValue::from_str(&etag).map_err(ApiError::internal)?);
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::CACHE_CONTROL, cache_control.clone());
        Ok(())
    };
    if let Some(value) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        if none_match(value, &etag) {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            common(&mut response)?;
            return Ok(response);
        }
    }
    // If-Range: the range only while the artifact is the one the client has (strong ETag; a
    // date never matches, since packages carry no Last-Modified).
    let range_allowed =
        headers.get(header::IF_RANGE).is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == etag.as_str()));
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).filter(|_| range_allowed);
    let part = match wanted(range, size) {
        Wanted::All => None,
        Wanted::Part(part) => Some(part),
        Wanted::Unsatisfiable => {
            let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            common(&mut response)?;
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).map_err(ApiError::internal)?,
            );
            return Ok(response);
        }
    };
    let blob = match blobs.get(&row.blob_key, part.clone()).await {
        Ok(blob) => blob,
        Err(BlobError::NotFound) => return Err(ApiError::not_found("package")),
        Err(BlobError::RangeNotSatisfiable { size }) => {
            return Err(ApiError::internal(anyhow::anyhow!("the stored artifact has {size} bytes, not {}", row.size)))
        }
        Err(other) => return Err(ApiError::internal(anyhow::Error::from(other))),
    };
    let mut response = Body::from_stream(blob.stream).into_response();
    common(&mut response)?;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&row.content_type).map_err(ApiError::internal)?);
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Whatever type an uploader named, a browser never runs the artifact as a page of herd's.
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&format!("attachment; filename=\"{}-{}\"", row.name, row.version))
            .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
    );
    h.insert(
        HeaderName::from_static("digest"),
        HeaderValue::from_str(&format!("sha-256={digest}")).map_err(ApiError::internal)?,
    );
    h.insert(
        HeaderName::from_static("repr-digest"),
        HeaderValue::from_str(&format!("sha-256=:{digest}:")).map_err(ApiError::internal)?,
    );
    match part {
        None => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(blob.size));
        }
        Some(part) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(part.end - part.start));
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {}-{}/{}", part.start, part.end - 1, blob.size))
                    .map_err(ApiError::internal)?,
            );
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::{wanted, Wanted};

    #[test]
    fn ranges_parse_as_rfc_9110_says() {
        assert_eq!(wanted(None, 10), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-0"), 10), Wanted::Part(0..1));
        assert_eq!(wanted(Some("bytes=2-5"), 10), Wanted::Part(2..6));
        assert_eq!(wanted(Some("bytes=5-"), 10), Wanted::Part(5..10));
        assert_eq!(wanted(Some("bytes=5-100"), 10), Wanted::Part(5..10));
        assert_eq!(wanted(Some("bytes=-3"), 10), Wanted::Part(7..10));
        assert_eq!(wanted(Some("bytes=-30"), 10), Wanted::Part(0..10));
        assert_eq!(wanted(Some("bytes=10-"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-1,4-5"), 10), Wanted::All);
        assert_eq!(wanted(Some("bytes=5-2"), 10), Wanted::All);
        assert_eq!(wanted(Some("items=0-1"), 10), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
    }
}
