//! The device's side of software updates (device token): the updates it has been sent, its
//! reports along `notified → downloading → downloaded → installing → installed | failed`, and
//! the inventory of what it has installed (rollouts skip devices that already have a version).
//! The protocol a device follows is in docs/device-protocol.md ("Software updates").

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::engine;
use super::store::{self, DeviceUpdate, Report, Reported};
use crate::app::AppState;
use crate::auth::{DeviceAuth, Member, Role};
use crate::clock::to_millis;
use crate::devices::store::DeviceStore;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, IdPath, Validate};
use crate::http::time;
use crate::packages::store as packages;
use herd_domain::ids::{DeviceId, RolloutId};
use herd_domain::status::{RolloutState, UpdateState};

/// Most updates one list answers (a device rarely has more than one open).
const MAX_LISTED: i64 = 50;
/// Most packages a device may list as installed.
const MAX_INSTALLED: usize = 500;
const MAX_REASON: usize = 1024;

/// The routes a device calls with its own token.
pub(crate) fn device_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(own_updates))
        .routes(routes!(own_update, report_update))
        .routes(routes!(set_installed))
}

/// The package an update installs.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdatePackageDto {
    pub id: String,
    pub name: String,
    pub version: String,
    pub version_code: i64,
    /// Lowercase hex; the device must refuse bytes that do not hash to it.
    pub sha256: String,
    pub size: i64,
    /// Where the device downloads it with its token (ranges, `If-Range`, `Repr-Digest`).
    pub download_url: String,
}

/// One of the device's updates.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceUpdateDto {
    pub rollout_id: String,
    pub state: UpdateState,
    pub reason: Option<String>,
    pub progress: Option<i64>,
    /// The rollout's state: a device whose rollout was cancelled while it downloads may stop.
    pub rollout_state: RolloutState,
    /// Null when the package has been deleted since.
    pub package: Option<UpdatePackageDto>,
    pub notified_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

async fn update_dto(scope: &herd_store::TenantScope, row: DeviceUpdate) -> Result<DeviceUpdateDto, ApiError> {
    let package = packages::get(scope, row.package_id).await?.map(|p| UpdatePackageDto {
        download_url: format!("/devices/self/packages/{}/download", p.id),
        id: p.id.to_string(),
        name: p.name,
        version: p.version,
        version_code: p.version_code,
        sha256: p.sha256,
        size: p.size,
    });
    Ok(DeviceUpdateDto {
        rollout_id: row.rollout_id.to_string(),
        state: row.state,
        reason: row.reason,
        progress: row.progress,
        rollout_state: row.rollout_state,
        package,
        notified_at: row.notified_at.map(time),
        updated_at: time(row.updated_at),
    })
}

/// `GET /devices/self/updates`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeviceUpdatesDto {
    /// The device's open updates (notified up to installing), newest rollout first.
    pub items: Vec<DeviceUpdateDto>,
}

/// The calling device's open updates: what it has been sent and not yet finished.
#[utoipa::path(get, path = "/devices/self/updates", operation_id = "listOwnUpdates", tag = "updates", security(("deviceToken" = [])),
    responses((status = 200, body = DeviceUpdatesDto)))]
async fn own_updates(device: DeviceAuth) -> Result<Json<DeviceUpdatesDto>, ApiError> {
    let rows = store::for_device(&device.scope, device.device_id, true, MAX_LISTED).await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(update_dto(&device.scope, row).await?);
    }
    Ok(Json(DeviceUpdatesDto { items }))
}

/// One of the calling device's updates (404 for a rollout that did not send it the package).
#[utoipa::path(get, path = "/devices/self/updates/{rolloutId}", operation_id = "getOwnUpdate", tag = "updates", security(("deviceToken" = [])),
    params(("rolloutId" = String, Path, description = "rollout id")),
    responses((status = 200, body = DeviceUpdateDto)))]
async fn own_update(device: DeviceAuth, IdPath(id): IdPath<RolloutId>) -> Result<Json<DeviceUpdateDto>, ApiError> {
    let row = store::device_update(&device.scope, device.device_id, id)
        .await?
        .filter(|row| !matches!(row.state, UpdateState::Pending | UpdateState::Skipped))
        .ok_or_else(|| ApiError::not_found("update"))?;
    Ok(Json(update_dto(&device.scope, row).await?))
}

/// A device's report on an update.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UpdateReportDto {
    /// `downloading`, `downloaded`, `installing`, `installed` or `failed`.
    pub state: UpdateState,
    /// Percent done (of the download while downloading), 0–100.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub progress: Option<i64>,
    /// Why it failed (required with `failed`, at most 1024 characters).
    #[serde(default)]
    pub reason: Option<String>,
}

impl Validate for UpdateReportDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        if !matches!(
            self.state,
            UpdateState::Downloading
                | UpdateState::Downloaded
                | UpdateState::Installing
                | UpdateState::Installed
                | UpdateState::Failed
        ) {
            errors.add("state", "must be downloading, downloaded, installing, installed or failed");
        }
        if self.progress.is_some_and(|p| !(0..=100).contains(&p)) {
            errors.add("progress", "must be a percentage from 0 to 100");
        }
        match &self.reason {
            Some(reason) if reason.chars().count() > MAX_REASON => {
                errors.add("reason", format!("must be at most {MAX_REASON} characters"));
            }
            Some(reason) if reason.trim().is_empty() => errors.add("reason", "must not be empty"),
            None if self.state == UpdateState::Failed => errors.add("reason", "is required when the update failed"),
            _ => {}
        }
        errors.finish()
    }
}

/// Report an update's progress or outcome. A report may only move forward along
/// `notified → downloading → downloaded → installing → installed` (steps may be left out), or
/// to `failed`; the same state again updates `progress`. Anything else answers 409 with the
/// current state. `installed` records the package's version as the device's; `failed` counts
/// toward the rollout's failure threshold at once (herd may pause the rollout).
#[utoipa::path(post, path = "/devices/self/updates/{rolloutId}", operation_id = "reportUpdateStatus", tag = "updates", security(("deviceToken" = [])),
    params(("rolloutId" = String, Path, description = "rollout id")), request_body = UpdateReportDto,
    responses((status = 200, body = DeviceUpdateDto)))]
async fn report_update(
    State(state): State<AppState>,
    device: DeviceAuth,
    IdPath(id): IdPath<RolloutId>,
    ApiJson(body): ApiJson<UpdateReportDto>,
) -> Result<Json<DeviceUpdateDto>, ApiError> {
    let now = to_millis(state.clock.now());
    let scope = &device.scope;
    let current =
        store::device_update(scope, device.device_id, id).await?.ok_or_else(|| ApiError::not_found("update"))?;
    let package = packages::get(scope, current.package_id).await?;
    let report = Report {
        to: body.state,
        progress: body.progress,
        reason: body.reason.as_deref(),
        installed: package.as_ref().map(|p| (p.name.as_str(), p.version_code, p.version.as_str())),
    };
    let row = match store::report(scope, device.device_id, id, &report, now).await? {
        Reported::Moved(_, row) => {
            if body.state == UpdateState::Failed {
                engine::advance(&state, scope, id, now).await?;
            }
            row
        }
        Reported::Unchanged(row) => row,
        Reported::NotFound => return Err(ApiError::not_found("update")),
        Reported::Conflict(from) => {
            return Err(ApiError::Conflict(format!(
                "cannot report {} for an update that is {}",
                body.state.as_str(),
                from.as_str()
            )))
        }
    };
    Ok(Json(update_dto(scope, *row).await?))
}

/// One installed package.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct InstalledPackageDto {
    /// The package name (an app's application id), as packages are named in herd.
    pub name: String,
    #[schema(minimum = 0)]
    pub version_code: i64,
    #[serde(default)]
    pub version: Option<String>,
}

/// `PUT /devices/self/packages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct InstalledPackagesDto {
    pub packages: Vec<InstalledPackageDto>,
}

impl Validate for InstalledPackagesDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        if self.packages.len() > MAX_INSTALLED {
            errors.add("packages", format!("must list at most {MAX_INSTALLED} packages"));
        }
        for (i, package) in self.packages.iter().enumerate() {
            if package.name.is_empty()
                || package.name.len() > 128
                || !package.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                errors.add(format!("packages[{i}].name"), "must be 1 to 128 characters of A-Z a-z 0-9 . _ -");
            }
            if package.version_code < 0 {
                errors.add(format!("packages[{i}].versionCode"), "must not be negative");
            }
            if package.version.as_ref().is_some_and(|v| v.is_empty() || v.len() > 64) {
                errors.add(format!("packages[{i}].version"), "must be 1 to 64 characters");
            }
            if self.packages[..i].iter().any(|p| p.name == package.name) {
                errors.add(format!("packages[{i}].name"), "is listed twice");
            }
        }
        errors.finish()
    }
}

/// Tell herd what the device has installed (replaces the previous list). Rollouts skip a
/// device that has the package's version code, or a newer one unless they allow downgrades.
/// Devices send it at start and after installing anything outside herd.
#[utoipa::path(put, path = "/devices/self/packages", operation_id = "setInstalledPackages", tag = "updates", security(("deviceToken" = [])),
    request_body = InstalledPackagesDto, responses((status = 204)))]
async fn set_installed(
    State(state): State<AppState>,
    device: DeviceAuth,
    ApiJson(body): ApiJson<InstalledPackagesDto>,
) -> Result<StatusCode, ApiError> {
    let packages: Vec<(String, i64, Option<String>)> =
        body.packages.into_iter().map(|p| (p.name, p.version_code, p.version)).collect();
    store::set_installed(&device.scope, device.device_id, &packages, to_millis(state.clock.now())).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /devices/{id}/packages`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct InstalledListDto {
    pub items: Vec<InstalledItemDto>,
}

/// A package a device has, as it reported or as a rollout installed it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstalledItemDto {
    pub name: String,
    pub version_code: i64,
    pub version: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// What a device has installed (viewer and up).
#[utoipa::path(get, path = "/devices/{id}/packages", operation_id = "listInstalledPackages", tag = "updates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id")), responses((status = 200, body = InstalledListDto)))]
pub(super) async fn installed_packages(
    member: Member,
    IdPath(id): IdPath<DeviceId>,
) -> Result<Json<InstalledListDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    if DeviceStore::new(scope).get(id).await?.is_none() {
        return Err(ApiError::not_found("device"));
    }
    let items = store::installed(scope, id)
        .await?
        .into_iter()
        .map(|p| InstalledItemDto {
            name: p.name,
            version_code: p.version_code,
            version: p.version,
            updated_at: time(p.updated_at),
        })
        .collect();
    Ok(Json(InstalledListDto { items }))
}
