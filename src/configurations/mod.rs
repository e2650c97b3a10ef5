//! Per-device display configuration (the seed's DeviceConfigurationsModule): resolution,
//! orientation, brightness, volume, screen on/off schedule and kiosk app.
//!
//! The operator sets the *desired* configuration (`PUT /devices/{id}/configuration`, versioned:
//! each write bumps `desiredVersion`, and a write naming the version it read is refused with 409
//! if someone wrote since). The device reads it (`GET /devices/self/configuration`) and reports
//! what it applied and for which version (`PUT /devices/self/configuration/reported`). The
//! operator's view shows both and whether they differ. A field left null in the desired
//! configuration is not managed: the device's own value stands and is never a difference.
//! `store` holds the SQL; this module does not touch settings, presence or telemetry.

pub(crate) use herd_store::configurations as store;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::{DeviceAuth, Member, Role};
use crate::clock::to_millis;
use crate::devices::store::DeviceStore;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, IdPath, Validate};
use crate::http::time;
use crate::ids::DeviceId;
use crate::store::StoreError;
use store::{ConfigurationError, ConfigurationRow, ConfigurationStore};

/// The operator's and the device's configuration routes.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_configuration, put_configuration))
}

/// The routes a device calls with its own token.
pub(crate) fn device_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_own_configuration)).routes(routes!(report_configuration))
}

const MAX_KIOSK_APP: usize = 255;

/// Screen orientation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Orientation {
    Landscape,
    Portrait,
    LandscapeReversed,
    PortraitReversed,
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// When the screen is on: from `onAt` to `offAt` (local `HH:MM` in the device's timezone
/// setting; `offAt` before `onAt` spans midnight), on `days` (default: every day).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ScreenSchedule {
    pub on_at: String,
    pub off_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<Vec<Weekday>>,
}

/// Display settings of a device. Every field is optional; null means "not managed".
/// This is both the wire format and the stored document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DisplayConfiguration {
    /// `WIDTHxHEIGHT` in pixels, e.g. `1920x1080`.
    pub resolution: Option<String>,
    pub orientation: Option<Orientation>,
    /// Percent, 0–100.
    pub brightness: Option<i64>,
    /// Percent, 0–100.
    pub volume: Option<i64>,
    pub screen_schedule: Option<ScreenSchedule>,
    /// The app kept in the foreground (an Android package name such as `com.example.signage`).
    pub kiosk_app: Option<String>,
}

impl DisplayConfiguration {
    fn check(&self, errors: &mut FieldErrors, prefix: &str) {
        if let Some(resolution) = &self.resolution {
            let valid = resolution.split_once('x').is_some_and(|(w, h)| {
                matches!((w.parse::<u32>(), h.parse::<u32>()), (Ok(w), Ok(h)) if (1..=16_384).contains(&w) && (1..=16_384).contains(&h))
            });
            if !valid {
                errors.add(format!("{prefix}resolution"), "must be WIDTHxHEIGHT in pixels, e.g. 1920x1080");
            }
        }
        for (name, value) in [("brightness", self.brightness), ("volume", self.volume)] {
            if value.is_some_and(|v| !(0..=100).contains(&v)) {
                errors.add(format!("{prefix}{name}"), "must be a percentage between 0 and 100");
            }
        }
        if let Some(schedule) = &self.screen_schedule {
            for (name, value) in [("onAt", &schedule.on_at), ("offAt", &schedule.off_at)] {
                if !is_clock_time(value) {
                    errors
                        .add(format!("{prefix}screenSchedule.{name}"), "must be a time of day as HH:MM (00:00–23:59)");
                }
            }
            if schedule.on_at == schedule.off_at {
                errors.add(format!("{prefix}screenSchedule.offAt"), "must differ from onAt");
            }
            if schedule.days.as_ref().is_some_and(Vec::is_empty) {
                errors.add(format!("{prefix}screenSchedule.days"), "must name at least one day (or be left out)");
            }
        }
        if let Some(app) = &self.kiosk_app {
            if app.len() > MAX_KIOSK_APP || !is_package_name(app) {
                errors.add(format!("{prefix}kioskApp"), "must be an Android package name such as com.example.signage");
            }
        }
    }

    /// The managed fields (non-null in `self`) whose value `reported` does not share.
    fn differences(&self, reported: &Value) -> Vec<String> {
        let Ok(Value::Object(desired)) = serde_json::to_value(self) else { return Vec::new() };
        desired
            .into_iter()
            .filter(|(_, value)| !value.is_null())
            .filter(|(name, value)| reported.get(name) != Some(value))
            .map(|(name, _)| name)
            .collect()
    }
}

fn is_clock_time(text: &str) -> bool {
    let Some((hours, minutes)) = text.split_once(':') else { return false };
    hours.len() == 2
        && minutes.len() == 2
        && hours.parse::<u8>().is_ok_and(|h| h < 24)
        && minutes.parse::<u8>().is_ok_and(|m| m < 60)
}

/// Java package naming: two or more dot-separated identifiers of letters, digits and `_`, each
/// starting with a letter.
fn is_package_name(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphabetic())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// `PUT /devices/{id}/configuration`: the whole desired configuration. Give `version` (the
/// `desiredVersion` you read) to refuse the write if someone else wrote since.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PutConfigurationDto {
    pub configuration: DisplayConfiguration,
    pub version: Option<i64>,
}

impl Validate for PutConfigurationDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        self.configuration.check(&mut errors, "configuration.");
        if self.version.is_some_and(|v| v < 0) {
            errors.add("version", "must not be negative");
        }
        errors.finish()
    }
}

/// `PUT /devices/self/configuration/reported`: what the device applied, for which desired
/// version.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReportConfigurationDto {
    pub version: i64,
    pub configuration: DisplayConfiguration,
}

impl Validate for ReportConfigurationDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        self.configuration.check(&mut errors, "configuration.");
        if self.version < 0 {
            errors.add("version", "must not be negative");
        }
        errors.finish()
    }
}

/// The operator's view: desired, reported, and whether they differ.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigurationStatusDto {
    pub device_id: String,
    pub desired: DisplayConfiguration,
    /// 0 until a configuration is first set; each `PUT` adds one.
    pub desired_version: i64,
    pub desired_at: Option<DateTime<Utc>>,
    /// Null until the device first reports.
    pub reported: Option<DisplayConfiguration>,
    pub reported_version: Option<i64>,
    pub reported_at: Option<DateTime<Utc>>,
    /// True when the device reported the current desired version and every managed field
    /// matches.
    pub in_sync: bool,
    /// The managed fields whose reported value differs from the desired one.
    pub differences: Vec<String>,
}

impl ConfigurationStatusDto {
    fn new(device_id: DeviceId, row: Option<ConfigurationRow>) -> Result<Self, ApiError> {
        let Some(row) = row else {
            return Ok(Self {
                device_id: device_id.to_string(),
                desired: DisplayConfiguration::default(),
                desired_version: 0,
                desired_at: None,
                reported: None,
                reported_version: None,
                reported_at: None,
                in_sync: false,
                differences: Vec::new(),
            });
        };
        let desired: DisplayConfiguration = parse_stored(&row.desired)?;
        let reported: Option<Value> = row.reported.as_deref().map(serde_json::from_str).transpose().map_err(stored)?;
        let differences = match &reported {
            Some(reported) => desired.differences(reported),
            None => desired.differences(&Value::Object(Default::default())),
        };
        let in_sync = row.reported_version == Some(row.desired_version) && differences.is_empty();
        Ok(Self {
            device_id: device_id.to_string(),
            desired,
            desired_version: row.desired_version,
            desired_at: (row.desired_version > 0).then(|| time(row.desired_at)),
            reported: reported.map(serde_json::from_value).transpose().map_err(stored)?,
            reported_version: row.reported_version,
            reported_at: row.reported_at.map(time),
            in_sync,
            differences,
        })
    }
}

/// What a device reads: the configuration to apply and its version.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DesiredConfigurationDto {
    pub version: i64,
    pub configuration: DisplayConfiguration,
    pub updated_at: Option<DateTime<Utc>>,
}

fn parse_stored<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    serde_json::from_str(text).map_err(stored)
}

fn stored(error: serde_json::Error) -> ApiError {
    ApiError::internal(anyhow::anyhow!("unreadable stored configuration: {error}"))
}

fn conflict(error: ConfigurationError) -> ApiError {
    match error {
        ConfigurationError::VersionConflict(current) => ApiError::Conflict(format!(
            "the configuration was changed by someone else (current version {current}); read it again and retry"
        )),
        ConfigurationError::UnknownVersion { reported, current } => ApiError::Conflict(format!(
            "version {reported} of the configuration was never issued; the desired version is {current}"
        )),
        ConfigurationError::Store(error) => error.into(),
    }
}

/// A device's desired and reported configuration.
#[utoipa::path(get, path = "/devices/{id}/configuration", operation_id = "getDeviceConfiguration", tag = "configurations", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id")), responses((status = 200, body = ConfigurationStatusDto)))]
pub(crate) async fn get_configuration(
    member: Member,
    IdPath(id): IdPath<DeviceId>,
) -> Result<Json<ConfigurationStatusDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    DeviceStore::new(scope).get(id).await?.ok_or_else(|| ApiError::not_found("device"))?;
    let row = ConfigurationStore::new(scope).get(id).await?;
    Ok(Json(ConfigurationStatusDto::new(id, row)?))
}

/// Set a device's desired configuration (operator and above). 409 if `version` is given and is
/// not the current desired version.
#[utoipa::path(put, path = "/devices/{id}/configuration", operation_id = "setDeviceConfiguration", tag = "configurations", security(("apiToken" = []), ("sessionToken" = [])),
    request_body = PutConfigurationDto, params(("id" = String, Path, description = "device id")),
    responses((status = 200, body = ConfigurationStatusDto)))]
pub(crate) async fn put_configuration(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<DeviceId>,
    ApiJson(body): ApiJson<PutConfigurationDto>,
) -> Result<Json<ConfigurationStatusDto>, ApiError> {
    let scope = member.require(Role::Operator)?;
    DeviceStore::new(scope).get(id).await?.ok_or_else(|| ApiError::not_found("device"))?;
    let desired = serde_json::to_string(&body.configuration).map_err(ApiError::internal)?;
    let row = ConfigurationStore::new(scope)
        .put_desired(id, body.version, &desired, to_millis(clock.now()))
        .await
        .map_err(conflict)?;
    Ok(Json(ConfigurationStatusDto::new(id, Some(row))?))
}

/// The calling device's desired configuration (device token).
#[utoipa::path(get, path = "/devices/self/configuration", operation_id = "getOwnConfiguration", tag = "configurations", security(("deviceToken" = [])),
    responses((status = 200, body = DesiredConfigurationDto)))]
async fn get_own_configuration(device: DeviceAuth) -> Result<Json<DesiredConfigurationDto>, ApiError> {
    let row = ConfigurationStore::new(&device.scope).get(device.device_id).await?;
    Ok(Json(match row {
        Some(row) => DesiredConfigurationDto {
            version: row.desired_version,
            configuration: parse_stored(&row.desired)?,
            updated_at: (row.desired_version > 0).then(|| time(row.desired_at)),
        },
        None => {
            DesiredConfigurationDto { version: 0, configuration: DisplayConfiguration::default(), updated_at: None }
        }
    }))
}

/// The calling device reports the configuration it applied (device token). 409 for a version
/// that was never issued.
#[utoipa::path(put, path = "/devices/self/configuration/reported", operation_id = "reportOwnConfiguration", tag = "configurations", security(("deviceToken" = [])),
    request_body = ReportConfigurationDto, responses((status = 200, body = ConfigurationStatusDto)))]
async fn report_configuration(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    device: DeviceAuth,
    ApiJson(body): ApiJson<ReportConfigurationDto>,
) -> Result<Json<ConfigurationStatusDto>, ApiError> {
    let reported = serde_json::to_string(&body.configuration).map_err(ApiError::internal)?;
    let row = ConfigurationStore::new(&device.scope)
        .report(device.device_id, body.version, &reported, to_millis(clock.now()))
        .await
        .map_err(|error| match &error {
            ConfigurationError::Store(StoreError::Other(sqlx::Error::Database(db)))
                if db.is_foreign_key_violation() =>
            {
                ApiError::Unauthorized("this device no longer exists".into())
            }
            _ => conflict(error),
        })?;
    Ok(Json(ConfigurationStatusDto::new(device.device_id, Some(row))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_only_name_managed_fields() {
        let desired = DisplayConfiguration { brightness: Some(80), volume: Some(10), ..Default::default() };
        let reported = serde_json::json!({ "brightness": 80, "volume": 20, "orientation": "portrait" });
        assert_eq!(desired.differences(&reported), vec!["volume".to_string()]);
        assert!(DisplayConfiguration::default().differences(&reported).is_empty());
    }

    #[test]
    fn checks_name_the_field() {
        let mut errors = FieldErrors::new();
        let bad = DisplayConfiguration {
            resolution: Some("1920*1080".into()),
            brightness: Some(101),
            screen_schedule: Some(ScreenSchedule { on_at: "24:00".into(), off_at: "7:00".into(), days: None }),
            kiosk_app: Some("signage".into()),
            ..Default::default()
        };
        bad.check(&mut errors, "configuration.");
        match errors.finish() {
            Err(ApiError::Validation(errors)) => {
                let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(
                    fields,
                    [
                        "configuration.resolution",
                        "configuration.brightness",
                        "configuration.screenSchedule.onAt",
                        "configuration.screenSchedule.offAt",
                        "configuration.kioskApp"
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(is_clock_time("07:30") && !is_clock_time("7:30") && !is_clock_time("23:60"));
        assert!(is_package_name("com.example.signage") && !is_package_name("com..x") && !is_package_name("1a.b"));
    }
}
