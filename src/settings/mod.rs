//! Per-device settings (the seed's DeviceSettingsModule): user-facing preferences — display
//! name, location, timezone, notes, tags — at `GET/PUT /devices/{id}/settings`.
//!
//! Location and tags are the device record's own fields (so `GET /devices?tag=` keeps working);
//! this module reads them from, and writes them through, [`DeviceStore`]. Display name,
//! timezone and notes live in `device_settings` (`store`). The settings document is versioned:
//! each `PUT` replaces it and bumps `version`; a `PUT` that names the `version` it read is
//! refused with 409 if someone wrote since. A `PATCH /devices/{id}` of location or tags does not
//! bump the settings version. This module does not touch presence, telemetry or configuration.

pub(crate) use herd_store::settings as store;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::{Member, Role, TenantScope};
use crate::clock::to_millis;
use crate::devices::store::{DevicePatch, DeviceRow, DeviceStore};
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, IdPath, Validate};
use crate::http::time;
use crate::ids::DeviceId;
use store::{SettingsError, SettingsFields, SettingsRow, SettingsStore};

/// `GET/PUT /devices/{id}/settings`.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_settings, put_settings))
}

const MAX_TEXT: usize = 200;
const MAX_NOTES: usize = 4000;
const MAX_TIMEZONE: usize = 64;

/// A device's user-facing preferences.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceSettingsDto {
    pub device_id: String,
    /// What people call the device; the device's `name` stays its registry name.
    pub display_name: Option<String>,
    pub location: Option<String>,
    /// An IANA time zone name, e.g. `Asia/Jerusalem`, or `UTC`.
    pub timezone: Option<String>,
    pub notes: Option<String>,
    pub tags: Vec<String>,
    /// 0 until the settings are first written; each `PUT` adds one.
    pub version: i64,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The whole settings document (absent fields are cleared). Give `version` (the one you read)
/// to refuse the write if someone else wrote since.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PutSettingsDto {
    pub display_name: Option<String>,
    pub location: Option<String>,
    pub timezone: Option<String>,
    pub notes: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub version: Option<i64>,
}

impl Validate for PutSettingsDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        errors.text("displayName", self.display_name.as_deref(), MAX_TEXT);
        errors.text("location", self.location.as_deref(), MAX_TEXT);
        if let Some(notes) = &self.notes {
            if notes.chars().count() > MAX_NOTES {
                errors.add("notes", format!("must be at most {MAX_NOTES} characters"));
            }
        }
        if let Some(timezone) = &self.timezone {
            if !is_timezone_name(timezone) {
                errors.add("timezone", "must be an IANA time zone name such as Europe/Berlin, or UTC");
            }
        }
        errors.tags("tags", &self.tags);
        if self.version.is_some_and(|v| v < 0) {
            errors.add("version", "must not be negative");
        }
        errors.finish()
    }
}

/// The shape of an IANA zone name (`Area/Location[/…]`, or `UTC`/`GMT`). Without a zone database
/// in the server this checks the form, not that the zone exists.
fn is_timezone_name(name: &str) -> bool {
    let well_formed = name.len() <= MAX_TIMEZONE
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'))
        && !name.contains("//")
        && !name.ends_with('/');
    well_formed && (name.contains('/') || matches!(name, "UTC" | "GMT"))
}

fn dto(device: DeviceRow, settings: Option<SettingsRow>) -> DeviceSettingsDto {
    let settings = settings.as_ref();
    DeviceSettingsDto {
        device_id: device.id.to_string(),
        display_name: settings.and_then(|s| s.display_name.clone()),
        location: device.location,
        timezone: settings.and_then(|s| s.timezone.clone()),
        notes: settings.and_then(|s| s.notes.clone()),
        tags: device.tags.0,
        version: settings.map_or(0, |s| s.version),
        updated_at: settings.map(|s| time(s.updated_at)),
    }
}

async fn device_in(scope: &TenantScope, id: DeviceId) -> Result<DeviceRow, ApiError> {
    DeviceStore::new(scope).get(id).await?.ok_or_else(|| ApiError::not_found("device"))
}

/// A device's settings.
#[utoipa::path(get, path = "/devices/{id}/settings", operation_id = "getDeviceSettings", tag = "settings", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id")), responses((status = 200, body = DeviceSettingsDto)))]
pub(crate) async fn get_settings(
    member: Member,
    IdPath(id): IdPath<DeviceId>,
) -> Result<Json<DeviceSettingsDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let device = device_in(scope, id).await?;
    let settings = SettingsStore::new(scope).get(id).await?;
    Ok(Json(dto(device, settings)))
}

/// Replace a device's settings (operator and above). 409 if `version` is given and is not the
/// current one.
#[utoipa::path(put, path = "/devices/{id}/settings", operation_id = "setDeviceSettings", tag = "settings", security(("apiToken" = []), ("sessionToken" = [])), request_body = PutSettingsDto,
    params(("id" = String, Path, description = "device id")), responses((status = 200, body = DeviceSettingsDto)))]
pub(crate) async fn put_settings(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<DeviceId>,
    ApiJson(body): ApiJson<PutSettingsDto>,
) -> Result<Json<DeviceSettingsDto>, ApiError> {
    let scope = member.require(Role::Operator)?;
    device_in(scope, id).await?;
    let now = to_millis(clock.now());
    let trim = |value: &Option<String>| value.as_deref().map(|v| v.trim().to_string());
    let fields =
        SettingsFields { display_name: trim(&body.display_name), timezone: trim(&body.timezone), notes: body.notes };
    let tags = herd_domain::tags::normalize(&body.tags);
    let patch = DevicePatch { location: Some(trim(&body.location)), tags: Some(tags), ..DevicePatch::default() };
    let (settings, device) =
        SettingsStore::new(scope).put(id, body.version, &fields, &patch, now).await.map_err(|error| match error {
            SettingsError::VersionConflict(current) => ApiError::Conflict(format!(
                "the settings were changed by someone else (current version {current}); read them again and retry"
            )),
            SettingsError::DeviceNotFound => ApiError::not_found("device"),
            SettingsError::Store(error) => error.into(),
        })?;
    Ok(Json(dto(device, Some(settings))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timezone_names() {
        for good in ["UTC", "Asia/Jerusalem", "America/Argentina/Buenos_Aires", "Etc/GMT+3"] {
            assert!(is_timezone_name(good), "{good}");
        }
        for bad in ["", "Jerusalem", "Asia//X", "Asia/", "/Asia", "Asia/Jeru salem", "../etc"] {
            assert!(!is_timezone_name(bad), "{bad}");
        }
    }
}
