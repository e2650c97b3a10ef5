//! Software packages (OTA artifacts, issue 12 part 1): operators upload an APK, a firmware
//! image or another file (`POST /packages`, the body streamed into the blob store under
//! `t/<tenant>/packages/<sha256>`, metadata in query parameters), list, read and delete them;
//! members and the devices a rollout sent a package download them with HTTP range requests
//! (`download`), directly or by a short-lived signed link a CDN can serve (`signed`). A
//! package's `versionCode` is monotonic per name (see the store). Rollouts, which send packages
//! to devices, are in `rollouts`. The upload and downloads are transfers (`http::transfer`):
//! bounded by `HERD_TRANSFER_TIMEOUT`, not the request timeout.

mod download;
mod signed;

pub(crate) use signed::DownloadSigner;

pub(crate) use herd_store::packages as store;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::{Member, Role};
use crate::blobs::{BlobError, BlobStore};
use crate::clock::{to_millis, Clock};
use crate::config::Settings;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiQuery, IdPath, PageParams};
use crate::http::{time, ListResponse};
use herd_domain::ids::PackageId;
use herd_domain::status::PackageKind;
use store::{Created, NewPackage, PackageRow};

/// Longest package name, version, target model.
const MAX_NAME: usize = 128;
const MAX_VERSION: usize = 64;
const MAX_MODELS: usize = 100;
const MAX_NOTES: usize = 4096;

/// The operators' package routes (those bounded by the request timeout).
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_packages))
        .routes(routes!(get_package, delete_package))
        .routes(routes!(download::member_download_url))
}

/// The operators' transfers (bounded by `HERD_TRANSFER_TIMEOUT`, see `http::transfer`): the
/// upload and the download; and the signed-link download, which needs no token at all.
pub(crate) fn transfer_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .routes(routes!(download::member_download))
        .routes(routes!(download::signed_download))
}

/// Devices' package routes.
pub(crate) fn device_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(download::device_download_url))
}

/// Devices' package transfers.
pub(crate) fn device_transfer_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(download::device_download))
}

/// A software package.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PackageDto {
    pub id: String,
    pub kind: PackageKind,
    pub name: String,
    pub version: String,
    /// Monotonic per name: a newer package of the name has a higher one.
    pub version_code: i64,
    /// Device models it is for; empty: any model.
    pub target_models: Vec<String>,
    pub notes: Option<String>,
    /// SHA-256 of the artifact, lowercase hex (also its `ETag`).
    pub sha256: String,
    pub size: i64,
    pub content_type: String,
    /// Where members download it; devices use `/devices/self/packages/{id}/download`. A
    /// short-lived link without a token: `GET /packages/{id}/download-url`.
    pub download_url: String,
    /// The member token that uploaded it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

impl PackageDto {
    fn new(row: PackageRow) -> Self {
        Self {
            download_url: format!("/packages/{}/download", row.id),
            id: row.id.to_string(),
            kind: row.kind,
            name: row.name,
            version: row.version,
            version_code: row.version_code,
            target_models: row.target_models.0,
            notes: row.notes,
            sha256: row.sha256,
            size: row.size,
            content_type: row.content_type,
            created_by: row.created_by,
            created_at: time(row.created_at),
        }
    }
}

/// `POST /packages` query: the package's metadata (the body is the artifact itself).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UploadParams {
    /// `apk`, `firmware` or `file`.
    pub kind: Option<String>,
    /// 1–128 characters of `A-Z a-z 0-9 . _ -` (an APK's application id, say).
    pub name: Option<String>,
    /// Shown to people, e.g. `2.4.1` (1–64 printable characters, no spaces).
    pub version: Option<String>,
    /// A non-negative integer above every existing package of the name's.
    pub version_code: Option<String>,
    /// Comma-separated device models it is for (absent or empty: any model).
    pub target_models: Option<String>,
    /// Release notes, at most 4096 characters.
    pub notes: Option<String>,
}

struct Metadata {
    kind: PackageKind,
    name: String,
    version: String,
    version_code: i64,
    target_models: Vec<String>,
    notes: Option<String>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl UploadParams {
    /// Every field checked at once; a 422 names each bad one.
    fn parse(&self) -> Result<Metadata, ApiError> {
        let mut errors = FieldErrors::new();
        let kind = match self.kind.as_deref().map(str::parse::<PackageKind>) {
            Some(Ok(kind)) => Some(kind),
            _ => {
                errors.add("kind", "must be apk, firmware or file");
                None
            }
        };
        let name = self.name.clone().unwrap_or_default();
        if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(is_name_char) {
            errors.add("name", format!("must be 1 to {MAX_NAME} characters of A-Z a-z 0-9 . _ -"));
        }
        let version = self.version.clone().unwrap_or_default();
        if version.is_empty() || version.len() > MAX_VERSION || !version.chars().all(|c| c.is_ascii_graphic()) {
            errors.add("version", format!("must be 1 to {MAX_VERSION} printable characters without spaces"));
        }
        let version_code = match self.version_code.as_deref().map(|v| v.trim().parse::<i64>()) {
            Some(Ok(code)) if code >= 0 => code,
            _ => {
                errors.add("versionCode", "must be a non-negative integer");
                0
            }
        };
        let target_models: Vec<String> = self
            .target_models
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        if target_models.len() > MAX_MODELS
            || target_models.iter().any(|m| m.len() > MAX_NAME || m.chars().any(char::is_control))
        {
            errors
                .add("targetModels", format!("must list at most {MAX_MODELS} models of at most {MAX_NAME} characters"));
        }
        let notes = self.notes.clone().filter(|n| !n.is_empty());
        if notes.as_ref().is_some_and(|n| n.chars().count() > MAX_NOTES) {
            errors.add("notes", format!("must be at most {MAX_NOTES} characters"));
        }
        errors.finish()?;
        let mut deduplicated = Vec::with_capacity(target_models.len());
        for model in target_models {
            if !deduplicated.contains(&model) {
                deduplicated.push(model);
            }
        }
        Ok(Metadata {
            kind: kind.unwrap_or(PackageKind::File),
            name,
            version,
            version_code,
            target_models: deduplicated,
            notes,
        })
    }
}

/// Upload a package (operator and up). The body is the artifact, streamed to the blob store
/// (at most `HERD_PACKAGE_MAX_BYTES`, else 413); the metadata are query parameters, checked
/// before a byte of the body is read. `Content-Type` is kept and sent back on downloads
/// (default `application/octet-stream`). 409 when `versionCode` is not above every existing
/// package of the name's. An upload that fails midway stores nothing.
#[utoipa::path(post, path = "/packages", operation_id = "uploadPackage", tag = "packages", security(("apiToken" = []), ("sessionToken" = [])),
    params(UploadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = PackageDto)))]
async fn upload(
    State(clock): State<Arc<dyn Clock>>,
    State(blobs): State<BlobStore>,
    State(settings): State<Arc<Settings>>,
    member: Member,
    ApiQuery(params): ApiQuery<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<PackageDto>), ApiError> {
    let content_type = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => Some(""),
    };
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let artifact = Artifact { content_type, length, bytes: body.into_data_stream() };
    let package = receive_upload(clock.as_ref(), &blobs, &settings, &member, &params, artifact).await?;
    Ok((StatusCode::CREATED, Json(package)))
}

/// The bytes of an upload and what is known of them before they are read.
pub(crate) struct Artifact<'a, S> {
    /// The artifact's media type as the uploader gave it (`None`: `application/octet-stream`).
    pub content_type: Option<&'a str>,
    /// Its length, when the uploader announced it (a longer one is refused before reading).
    pub length: Option<u64>,
    /// The bytes, streamed into the blob store (never held whole in memory).
    pub bytes: S,
}

/// An upload as `POST /packages` and the console's upload form make it: the member's role and
/// the metadata are checked before a byte of the artifact is read, then the artifact is
/// streamed to the blob store (at most `HERD_PACKAGE_MAX_BYTES`, hashed on the way) and the
/// package recorded; an upload refused or failed midway stores nothing.
pub(crate) async fn receive_upload<S, E>(
    clock: &dyn Clock,
    blobs: &BlobStore,
    settings: &Settings,
    member: &Member,
    params: &UploadParams,
    artifact: Artifact<'_, S>,
) -> Result<PackageDto, ApiError>
where
    S: futures::Stream<Item = Result<axum::body::Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let scope = member.require(Role::Operator)?;
    let meta = params.parse()?;
    let content_type = match artifact.content_type {
        None => "application/octet-stream".to_string(),
        Some(t) if !t.trim().is_empty() && !t.trim_start().to_ascii_lowercase().starts_with("multipart/") => {
            t.trim().to_string()
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(
                "send the artifact itself as the body (e.g. application/octet-stream), not a form".into(),
            ))
        }
    };
    let limit = settings.package_max_bytes;
    if artifact.length.is_some_and(|length| length > limit) {
        return Err(too_large(limit));
    }
    // Refused before the body is read when it cannot be accepted (checked again on insert).
    if let Some(highest) = store::highest_version_code(scope, &meta.name).await? {
        if highest >= meta.version_code {
            return Err(version_conflict(highest, &meta.name));
        }
    }
    let prefix = format!("t/{}/packages", scope.tenant_id());
    let stored = match blobs.put_stream(&prefix, artifact.bytes, limit).await {
        Ok(stored) => stored,
        Err(BlobError::TooLarge { .. }) => return Err(too_large(limit)),
        Err(BlobError::Body(detail)) => return Err(ApiError::BadRequest(format!("the upload failed: {detail}"))),
        Err(other) => return Err(ApiError::internal(anyhow::Error::from(other))),
    };
    let new = NewPackage {
        kind: meta.kind,
        name: &meta.name,
        version: &meta.version,
        version_code: meta.version_code,
        target_models: &meta.target_models,
        notes: meta.notes.as_deref(),
        sha256: &stored.sha256,
        size: i64::try_from(stored.size).unwrap_or(i64::MAX),
        blob_key: &stored.key,
        content_type: &content_type,
        created_by: &member.token_id.to_string(),
    };
    let outcome = store::create(scope, &new, to_millis(clock.now())).await;
    match outcome {
        Ok(Created::Created(row)) => Ok(PackageDto::new(*row)),
        Ok(Created::VersionNotAbove(highest)) => {
            forget_blob(blobs, scope, &stored.key).await;
            Err(version_conflict(highest, &meta.name))
        }
        Err(error) => {
            forget_blob(blobs, scope, &stored.key).await;
            Err(error.into())
        }
    }
}

fn version_conflict(highest: i64, name: &str) -> ApiError {
    ApiError::Conflict(format!("versionCode must be above {highest}, the highest of the packages named {name}"))
}

fn too_large(limit: u64) -> ApiError {
    ApiError::PayloadTooLarge(usize::try_from(limit).unwrap_or(usize::MAX))
}

/// Deletes a blob that no package of the tenant uses (an upload that was refused after its
/// body was stored; content that another package has is kept).
async fn forget_blob(blobs: &BlobStore, scope: &herd_store::TenantScope, key: &str) {
    match store::blob_in_use(scope, key).await {
        Ok(false) => {
            if let Err(error) = blobs.delete(key).await {
                tracing::warn!(%error, key, "cannot delete an unused package blob");
            }
        }
        Ok(true) => {}
        Err(error) => tracing::warn!(%error, key, "cannot tell whether a package blob is in use"),
    }
}

/// `?name=`, `limit`, `cursor`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PackageListParams {
    /// Only packages of this name.
    pub name: Option<String>,
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// The tenant's packages, oldest first (viewer and up).
#[utoipa::path(get, path = "/packages", operation_id = "listPackages", tag = "packages", security(("apiToken" = []), ("sessionToken" = [])),
    params(PackageListParams), responses((status = 200, body = ListResponse<PackageDto>)))]
pub(crate) async fn list_packages(
    member: Member,
    ApiQuery(params): ApiQuery<PackageListParams>,
) -> Result<Json<ListResponse<PackageDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let page = PageParams { limit: params.limit, cursor: params.cursor.clone() }.page()?;
    let rows = store::list(scope, params.name.as_deref(), &page).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |row| row.id, PackageDto::new)))
}

/// One package (viewer and up).
#[utoipa::path(get, path = "/packages/{id}", operation_id = "getPackage", tag = "packages", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "package id")), responses((status = 200, body = PackageDto)))]
pub(crate) async fn get_package(member: Member, IdPath(id): IdPath<PackageId>) -> Result<Json<PackageDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("package"))?;
    Ok(Json(PackageDto::new(row)))
}

/// Delete a package (operator and up), and its artifact unless another package of the tenant
/// has the same content. 409 while a ready, running or paused rollout sends it.
#[utoipa::path(delete, path = "/packages/{id}", operation_id = "deletePackage", tag = "packages", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "package id")), responses((status = 204)))]
pub(crate) async fn delete_package(
    State(clock): State<Arc<dyn Clock>>,
    State(blobs): State<BlobStore>,
    member: Member,
    IdPath(id): IdPath<PackageId>,
) -> Result<StatusCode, ApiError> {
    let scope = member.require(Role::Operator)?;
    if crate::rollouts::store::package_in_use(scope, id).await? {
        return Err(ApiError::Conflict(
            "a ready, running or paused rollout sends this package: cancel it first".into(),
        ));
    }
    let (row, shared) =
        store::delete(scope, id, to_millis(clock.now())).await?.ok_or_else(|| ApiError::not_found("package"))?;
    if !shared {
        if let Err(error) = blobs.delete(&row.blob_key).await {
            tracing::warn!(%error, key = row.blob_key, "cannot delete a deleted package's blob");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
