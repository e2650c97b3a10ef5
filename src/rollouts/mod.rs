//! Staged rollouts (the seed's SoftwareUpdatesModule, issue 12 part 2): an operator sends one
//! package to a target (device ids, a tag, a model, or the whole tenant) in waves of cumulative
//! percentages, e.g. `[1, 10, 50, 100]`. A rollout is created `ready` with its devices spread
//! over the waves; `start` sends wave 0; each later wave starts once every device of the waves
//! so far has been notified (or skipped) and `soakSeconds` have passed, and only while every
//! started wave's failures stay at or under `failureThreshold` percent — above it, herd pauses
//! the rollout with a reason. Operators start, pause, resume and cancel.
//!
//! A device is *notified* with an `install_package` command (the heartbeat answer counts it in
//! `pendingCommands`; the long poll hands it out) and reports its update state through
//! `device` routes. Devices at or above the package's version code are skipped (a higher one
//! only when the rollout does not allow downgrades), as are devices of a model the package does
//! not target. An optional maintenance window holds a device's notification until its local
//! time (its settings' timezone, else UTC) is inside the window.
//!
//! `engine` holds that policy, `job` the job step ([`run_due`]); `store` (herd-store) the SQL, where every
//! transition is a conditional UPDATE so any number of instances make each once.

pub(crate) mod device;
pub(crate) mod engine;
mod job;

pub use engine::Advanced;
pub use job::run_due;

pub(crate) use herd_store::rollouts as store;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::{Member, Role};
use crate::clock::{to_millis, Clock};
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, OptionalJson, PageParams, Validate};
use crate::http::{time, ListResponse};
use crate::packages::store as packages;
use herd_domain::event::RolloutChange;
use herd_domain::ids::{DeviceId, PackageId, RolloutId};
use herd_domain::status::{RolloutState, UpdateState};
use store::{DeviceUpdateRow, Moved, NewRollout, RolloutRow, Target};

/// Most waves a rollout may have.
const MAX_WAVES: usize = 10;
/// Most device ids one rollout may name (larger fleets: a tag, a model or the tenant).
const MAX_TARGET_IDS: usize = 10_000;
/// Longest soak between waves.
const MAX_SOAK_SECONDS: i64 = 30 * 24 * 3600;
const DEFAULT_WAVES: [i64; 4] = [1, 10, 50, 100];
const DEFAULT_SOAK_SECONDS: i64 = 3600;
const DEFAULT_FAILURE_THRESHOLD: i64 = 10;
const MAX_NAME: usize = 200;
const MAX_REASON: usize = 1024;

/// The operators' rollout routes.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_rollout, list_rollouts))
        .routes(routes!(get_rollout))
        .routes(routes!(list_rollout_devices))
        .routes(routes!(start_rollout))
        .routes(routes!(pause_rollout))
        .routes(routes!(resume_rollout))
        .routes(routes!(cancel_rollout))
        .routes(routes!(device::installed_packages))
}

/// Which devices a rollout goes to: exactly one of `deviceIds`, `tag` and/or `model`, or
/// `all: true` (the whole tenant, said explicitly).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RolloutTargetDto {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

/// Local `HH:MM` times (24 h) in each device's timezone; `end` before `start` spans midnight.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct MaintenanceWindowDto {
    #[schema(example = "02:00")]
    pub start: String,
    #[schema(example = "05:00")]
    pub end: String,
}

/// `POST /rollouts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateRolloutDto {
    pub package_id: String,
    /// Shown to people (default: the package's name and version).
    #[serde(default)]
    pub name: Option<String>,
    pub target: RolloutTargetDto,
    /// Cumulative percentages of the targeted devices, strictly increasing, ending at 100
    /// (default `[1, 10, 50, 100]`; at most 10 waves).
    #[serde(default)]
    pub waves: Option<Vec<i64>>,
    /// How long a wave soaks (after all its devices were notified) before the next starts
    /// (default 3600, at most 30 days).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub soak_seconds: Option<i64>,
    /// Percent of a wave's devices (skipped ones left out) that may fail; more pauses the
    /// rollout (default 10; 0: the first failure pauses it).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    pub failure_threshold: Option<i64>,
    /// Send the package to devices that have a newer version code of it (default false: skip them).
    #[serde(default)]
    pub allow_downgrade: Option<bool>,
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindowDto>,
    /// Start at once (default false: the rollout waits, `ready`, for `POST /rollouts/{id}/start`).
    #[serde(default)]
    pub start: Option<bool>,
}

impl Validate for CreateRolloutDto {
    fn validate(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Parses `HH:MM` into minutes of the day.
fn minutes(text: &str) -> Option<i64> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some(h * 60 + m)
}

fn hhmm(minutes: i64) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

struct Parsed {
    package_id: PackageId,
    target: Target,
    waves: Vec<i64>,
    soak_ms: i64,
    failure_threshold: i64,
    window: Option<(i64, i64)>,
}

impl CreateRolloutDto {
    fn parse(&self) -> Result<Parsed, ApiError> {
        let mut errors = FieldErrors::new();
        let package_id = self.package_id.parse::<PackageId>().ok();
        if package_id.is_none() {
            errors.add("packageId", "must be a package id");
        }
        if self.name.as_ref().is_some_and(|n| n.trim().is_empty() || n.chars().count() > MAX_NAME) {
            errors.add("name", format!("must be 1 to {MAX_NAME} characters"));
        }
        let t = &self.target;
        let chosen = [t.device_ids.is_some(), t.tag.is_some() || t.model.is_some(), t.all.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        let mut target = None;
        if chosen != 1 || t.all == Some(false) {
            errors.add("target", "give exactly one of deviceIds, tag and/or model, or all: true");
        } else if let Some(ids) = &t.device_ids {
            let parsed: Result<Vec<DeviceId>, _> = ids.iter().map(|id| id.parse::<DeviceId>()).collect();
            match parsed {
                Ok(ids) if !ids.is_empty() && ids.len() <= MAX_TARGET_IDS => target = Some(Target::Devices(ids)),
                Ok(_) => errors.add("target.deviceIds", format!("must list 1 to {MAX_TARGET_IDS} device ids")),
                Err(_) => errors.add("target.deviceIds", "must list device ids"),
            }
        } else if t.all == Some(true) {
            target = Some(Target::Filter { tag: None, model: None });
        } else {
            let bad = |v: &Option<String>| v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 128);
            if bad(&t.tag) {
                errors.add("target.tag", "must be 1 to 128 characters");
            }
            if bad(&t.model) {
                errors.add("target.model", "must be 1 to 128 characters");
            }
            target = Some(Target::Filter { tag: t.tag.clone(), model: t.model.clone() });
        }
        let waves = self.waves.clone().unwrap_or_else(|| DEFAULT_WAVES.to_vec());
        let increasing = waves.windows(2).all(|w| w[0] < w[1]);
        if waves.is_empty()
            || waves.len() > MAX_WAVES
            || !increasing
            || waves.iter().any(|p| !(1..=100).contains(p))
            || waves.last() != Some(&100)
        {
            errors.add(
                "waves",
                format!("must be 1 to {MAX_WAVES} strictly increasing percentages from 1 to 100, the last 100"),
            );
        }
        let soak = self.soak_seconds.unwrap_or(DEFAULT_SOAK_SECONDS);
        if !(0..=MAX_SOAK_SECONDS).contains(&soak) {
            errors.add("soakSeconds", format!("must be 0 to {MAX_SOAK_SECONDS}"));
        }
        let threshold = self.failure_threshold.unwrap_or(DEFAULT_FAILURE_THRESHOLD);
        if !(0..=100).contains(&threshold) {
            errors.add("failureThreshold", "must be a percentage from 0 to 100");
        }
        let mut window = None;
        if let Some(w) = &self.maintenance_window {
            match (minutes(&w.start), minutes(&w.end)) {
                (Some(start), Some(end)) if start != end => window = Some((start, end)),
                (Some(_), Some(_)) => errors.add("maintenanceWindow", "start and end must differ"),
                (start, end) => {
                    if start.is_none() {
                        errors.add("maintenanceWindow.start", "must be a time HH:MM (24 h)");
                    }
                    if end.is_none() {
                        errors.add("maintenanceWindow.end", "must be a time HH:MM (24 h)");
                    }
                }
            }
        }
        errors.finish()?;
        match (package_id, target) {
            (Some(package_id), Some(target)) => {
                Ok(Parsed { package_id, target, waves, soak_ms: soak * 1000, failure_threshold: threshold, window })
            }
            _ => Err(ApiError::invalid("target", "is invalid")),
        }
    }
}

/// How many devices are in each update state.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateCounts {
    pub pending: i64,
    pub notified: i64,
    pub downloading: i64,
    pub downloaded: i64,
    pub installing: i64,
    pub installed: i64,
    pub failed: i64,
    pub skipped: i64,
    pub cancelled: i64,
}

impl UpdateCounts {
    pub(crate) fn add(&mut self, state: UpdateState, n: i64) {
        let slot = match state {
            UpdateState::Pending => &mut self.pending,
            UpdateState::Notified => &mut self.notified,
            UpdateState::Downloading => &mut self.downloading,
            UpdateState::Downloaded => &mut self.downloaded,
            UpdateState::Installing => &mut self.installing,
            UpdateState::Installed => &mut self.installed,
            UpdateState::Failed => &mut self.failed,
            UpdateState::Skipped => &mut self.skipped,
            UpdateState::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }
}

/// One wave of a rollout.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WaveDto {
    /// 0-based.
    pub index: i64,
    /// Cumulative percentage of the targeted devices this wave reaches.
    pub percent: i64,
    /// Devices in this wave.
    pub devices: i64,
    /// When it started (null: not yet).
    pub started_at: Option<DateTime<Utc>>,
    pub counts: UpdateCounts,
}

/// A rollout.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RolloutDto {
    pub id: String,
    pub package_id: String,
    pub name: String,
    pub target: RolloutTargetDto,
    pub state: RolloutState,
    /// Why it is paused (herd's words for an automatic pause, or the operator's).
    pub reason: Option<String>,
    /// The wave in progress (0-based; null while ready).
    pub current_wave: Option<i64>,
    pub waves: Vec<WaveDto>,
    pub soak_seconds: i64,
    pub failure_threshold: i64,
    pub allow_downgrade: bool,
    pub maintenance_window: Option<MaintenanceWindowDto>,
    /// Devices targeted when it was created.
    pub total: i64,
    /// Devices in each update state, all waves.
    pub counts: UpdateCounts,
    /// The member token that created it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl RolloutDto {
    fn new(row: RolloutRow, counts: &[(i64, UpdateState, i64)]) -> Self {
        let mut total_counts = UpdateCounts::default();
        let waves = row
            .waves
            .0
            .iter()
            .enumerate()
            .map(|(index, percent)| {
                let index = i64::try_from(index).unwrap_or(i64::MAX);
                let mut wave_counts = UpdateCounts::default();
                let mut devices = 0;
                for (_, state, n) in counts.iter().filter(|(wave, _, _)| *wave == index) {
                    wave_counts.add(*state, *n);
                    total_counts.add(*state, *n);
                    devices += n;
                }
                let started_at = usize::try_from(index).ok().and_then(|i| row.wave_times.0.get(i)).map(|t| time(*t));
                WaveDto { index, percent: *percent, devices, started_at, counts: wave_counts }
            })
            .collect();
        Self {
            id: row.id.to_string(),
            package_id: row.package_id.to_string(),
            name: row.name,
            target: serde_json::from_str(&row.target).unwrap_or_default(),
            state: row.state,
            reason: row.reason,
            current_wave: (row.current_wave >= 0).then_some(row.current_wave),
            waves,
            soak_seconds: row.soak_ms / 1000,
            failure_threshold: row.failure_threshold,
            allow_downgrade: row.allow_downgrade,
            maintenance_window: row
                .window_start
                .zip(row.window_end)
                .map(|(start, end)| MaintenanceWindowDto { start: hhmm(start), end: hhmm(end) }),
            total: row.total,
            counts: total_counts,
            created_by: row.created_by,
            created_at: time(row.created_at),
            started_at: row.started_at.map(time),
            finished_at: row.finished_at.map(time),
            updated_at: time(row.updated_at),
        }
    }
}

async fn dto(scope: &herd_store::TenantScope, row: RolloutRow) -> Result<RolloutDto, ApiError> {
    let counts = store::wave_counts(scope, row.id).await?;
    Ok(RolloutDto::new(row, &counts))
}

/// Create a rollout (operator and up): its devices are fixed now and spread over the waves
/// (a stable shuffle, so wave 0 samples the fleet). 404 for a package not in the tenant, 422
/// when the target matches no device.
#[utoipa::path(post, path = "/rollouts", operation_id = "createRollout", tag = "updates", security(("apiToken" = []), ("sessionToken" = [])),
    request_body = CreateRolloutDto, responses((status = 201, body = RolloutDto)))]
pub(crate) async fn create_rollout(
    State(state): State<AppState>,
    member: Member,
    ApiJson(body): ApiJson<CreateRolloutDto>,
) -> Result<(StatusCode, Json<RolloutDto>), ApiError> {
    let scope = member.require(Role::Operator)?;
    let parsed = body.parse()?;
    let package = packages::get(scope, parsed.package_id).await?.ok_or_else(|| ApiError::not_found("package"))?;
    let now = to_millis(state.clock.now());
    let name = body.name.clone().unwrap_or_else(|| format!("{} {}", package.name, package.version));
    let target_json = serde_json::to_string(&body.target).map_err(ApiError::internal)?;
    let new = NewRollout {
        package_id: package.id,
        name: name.trim(),
        target: &parsed.target,
        target_json: &target_json,
        waves: &parsed.waves,
        soak_ms: parsed.soak_ms,
        failure_threshold: parsed.failure_threshold,
        allow_downgrade: body.allow_downgrade.unwrap_or(false),
        window: parsed.window,
        created_by: &member.token_id.to_string(),
    };
    let row = store::create(scope, &new, now)
        .await?
        .ok_or_else(|| ApiError::invalid("target", "matches no device of the tenant"))?;
    let row = if body.start == Some(true) { start(&state, &member, row.id).await? } else { row };
    Ok((StatusCode::CREATED, Json(dto(scope, row).await?)))
}

/// `?state=`, `?packageId=`, `limit`, `cursor`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RolloutListParams {
    /// Only rollouts in this state.
    pub state: Option<String>,
    /// Only rollouts of this package.
    pub package_id: Option<String>,
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// The tenant's rollouts, oldest first (viewer and up).
#[utoipa::path(get, path = "/rollouts", operation_id = "listRollouts", tag = "updates", security(("apiToken" = []), ("sessionToken" = [])),
    params(RolloutListParams), responses((status = 200, body = ListResponse<RolloutDto>)))]
pub(crate) async fn list_rollouts(
    member: Member,
    ApiQuery(params): ApiQuery<RolloutListParams>,
) -> Result<Json<ListResponse<RolloutDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let page = PageParams { limit: params.limit, cursor: params.cursor.clone() }.page()?;
    let state = match params.state.as_deref().map(str::parse::<RolloutState>) {
        None => None,
        Some(Ok(state)) => Some(state),
        Some(Err(_)) => {
            return Err(ApiError::invalid("state", "must be ready, running, paused, completed or cancelled"))
        }
    };
    let package = match params.package_id.as_deref().map(str::parse::<PackageId>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return Err(ApiError::invalid("packageId", "must be a package id")),
    };
    let mut rows = store::list(scope, state, package, &page).await?;
    let more = rows.len() > page.limit as usize;
    rows.truncate(page.limit as usize);
    let last = rows.last().map(|row| row.id);
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(dto(scope, row).await?);
    }
    let mut list = ListResponse::from_rows(items, page.limit, |dto| dto.id.clone(), |dto| dto);
    list.next_cursor = if more { last.map(|id| crate::http::extract::encode_cursor(&id.to_string())) } else { None };
    Ok(Json(list))
}

/// One rollout with its waves' progress (viewer and up).
#[utoipa::path(get, path = "/rollouts/{id}", operation_id = "getRollout", tag = "updates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "rollout id")), responses((status = 200, body = RolloutDto)))]
pub(crate) async fn get_rollout(member: Member, IdPath(id): IdPath<RolloutId>) -> Result<Json<RolloutDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("rollout"))?;
    Ok(Json(dto(scope, row).await?))
}

/// One device's update in a rollout.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RolloutDeviceDto {
    pub device_id: String,
    pub wave: i64,
    pub state: UpdateState,
    /// Why it failed (the device's words) or was skipped or cancelled (herd's).
    pub reason: Option<String>,
    /// Percent, as the device last reported it.
    pub progress: Option<i64>,
    /// The `install_package` command that notified it.
    pub command_id: Option<String>,
    pub notified_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<DeviceUpdateRow> for RolloutDeviceDto {
    fn from(row: DeviceUpdateRow) -> Self {
        Self {
            device_id: row.device_id.to_string(),
            wave: row.wave,
            state: row.state,
            reason: row.reason,
            progress: row.progress,
            command_id: row.command_id.map(|id| id.to_string()),
            notified_at: row.notified_at.map(time),
            finished_at: row.finished_at.map(time),
            updated_at: time(row.updated_at),
        }
    }
}

/// `?state=`, `?wave=`, `limit`, `cursor`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RolloutDeviceParams {
    /// Only devices in this update state.
    pub state: Option<String>,
    /// Only devices of this wave (0-based).
    pub wave: Option<String>,
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// A rollout's devices with their update states, by device id (viewer and up).
#[utoipa::path(get, path = "/rollouts/{id}/devices", operation_id = "listRolloutDevices", tag = "updates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "rollout id"), RolloutDeviceParams),
    responses((status = 200, body = ListResponse<RolloutDeviceDto>)))]
pub(crate) async fn list_rollout_devices(
    member: Member,
    IdPath(id): IdPath<RolloutId>,
    ApiQuery(params): ApiQuery<RolloutDeviceParams>,
) -> Result<Json<ListResponse<RolloutDeviceDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let page = PageParams { limit: params.limit, cursor: params.cursor.clone() }.page()?;
    let state = match params.state.as_deref().map(str::parse::<UpdateState>) {
        None => None,
        Some(Ok(state)) => Some(state),
        Some(Err(_)) => return Err(ApiError::invalid("state", "must be an update state")),
    };
    let wave = match params.wave.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(wave)) if wave >= 0 => Some(wave),
        Some(_) => return Err(ApiError::invalid("wave", "must be a wave index (0 or more)")),
    };
    if store::get(scope, id).await?.is_none() {
        return Err(ApiError::not_found("rollout"));
    }
    let rows = store::devices(scope, id, state, wave, &page).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |row| row.device_id, RolloutDeviceDto::from)))
}

/// An operator's reason for a pause.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PauseDto {
    #[serde(default)]
    pub reason: Option<String>,
}

impl Validate for PauseDto {
    fn validate(&self) -> Result<(), ApiError> {
        if self.reason.as_ref().is_some_and(|r| r.chars().count() > MAX_REASON) {
            return Err(ApiError::invalid("reason", format!("must be at most {MAX_REASON} characters")));
        }
        Ok(())
    }
}

fn moved(outcome: Moved, what: &str) -> Result<RolloutRow, ApiError> {
    match outcome {
        Moved::Done(row) => Ok(*row),
        Moved::NotFound => Err(ApiError::not_found("rollout")),
        Moved::Conflict(state) => {
            Err(ApiError::Conflict(format!("cannot {what} a rollout that is {}", state.as_str())))
        }
    }
}

async fn start(state: &AppState, member: &Member, id: RolloutId) -> Result<RolloutRow, ApiError> {
    let scope = member.require(Role::Operator)?;
    let now = to_millis(state.clock.now());
    let by = member.token_id.to_string();
    moved(store::transition(scope, id, RolloutChange::Started, None, &by, now).await?, "start")?;
    // Wave 0 goes out now rather than at the job's next tick.
    engine::advance(state, scope, id, now).await?;
    store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("rollout"))
}

/// Start a ready rollout (operator and up): wave 0 is notified at once. 409 unless `ready`.
#[utoipa::path(post, path = "/rollouts/{id}/start", operation_id = "startRollout", tag = "updates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "rollout id")), responses((status = 200, body = RolloutDto)))]
pub(crate) async fn start_rollout(
    State(state): State<AppState>,
    member: Member,
    IdPath(id): IdPath<RolloutId>,
) -> Result<Json<RolloutDto>, ApiError> {
    let row = start(&state, &member, id).await?;
    Ok(Json(dto(member.require(Role::Operator)?, row).await?))
}

/// Pause a running rollout (operator and up): no further device is notified until it is
/// resumed; devices already notified go on. 409 unless `running`.
#[utoipa::path(post, path = "/rollouts/{id}/pause", operation_id = "pauseRollout", tag = "updates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "rollout id")), request_body(content = Option<PauseDto>),
    responses((status = 200, body = RolloutDto)))]
pub(crate) async fn pause_rollout(
    State(clock): State<Arc<dyn Clock>>,
    member: Member,
    IdPath(id): IdPath<RolloutId>,
    OptionalJson(body): OptionalJson<PauseDto>,
) -> Result<Json<RolloutDto>, ApiError> {
    let scope = member.require(Role::Operator)?;
    let reason = body.and_then(|b| b.reason).unwrap_or_else(|| "paused by an operator".into());
    let by = member.token_id.to_string();
    let outcome =
        store::transition(scope, id, RolloutChange::Paused, Some(&reason), &by, to_millis(clock.now())).await?;
    let row = moved(outcome, "pause")?;
    Ok(Json(dto(scope, row).await?))
}

/// Resume a paused rollout (operator and up). The failures so far are accepted: from now on
/// only failures reported after the resume count toward the threshold. 409 unless `paused`.
#[utoipa::path(post, path = "/rollouts/{id}/resume", operation_id = "resumeRollout", tag = "updates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "rollout id")), responses((status = 200, body = RolloutDto)))]
pub(crate) async fn resume_rollout(
    State(state): State<AppState>,
    member: Member,
    IdPath(id): IdPath<RolloutId>,
) -> Result<Json<RolloutDto>, ApiError> {
    let scope = member.require(Role::Operator)?;
    let now = to_millis(state.clock.now());
    let by = member.token_id.to_string();
    moved(store::transition(scope, id, RolloutChange::Resumed, None, &by, now).await?, "resume")?;
    engine::advance(&state, scope, id, now).await?;
    let row = store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("rollout"))?;
    Ok(Json(dto(scope, row).await?))
}

/// Cancel a rollout that is not finished (operator and up): devices not yet downloading are
/// `cancelled` and their undelivered `install_package` commands cancelled; devices already
/// downloading or installing may still report. 409 once completed or cancelled.
#[utoipa::path(post, path = "/rollouts/{id}/cancel", operation_id = "cancelRollout", tag = "updates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "rollout id")), responses((status = 200, body = RolloutDto)))]
pub(crate) async fn cancel_rollout(
    State(clock): State<Arc<dyn Clock>>,
    member: Member,
    IdPath(id): IdPath<RolloutId>,
) -> Result<Json<RolloutDto>, ApiError> {
    let scope = member.require(Role::Operator)?;
    let by = member.token_id.to_string();
    let row = moved(store::cancel(scope, id, &by, to_millis(clock.now())).await?, "cancel")?;
    Ok(Json(dto(scope, row).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_times_are_24h_hh_mm() {
        assert_eq!(minutes("00:00"), Some(0));
        assert_eq!(minutes("02:30"), Some(150));
        assert_eq!(minutes("23:59"), Some(1439));
        for bad in ["24:00", "2:30", "02:60", "0230", "", "ab:cd", "-1:00"] {
            assert_eq!(minutes(bad), None, "{bad}");
        }
        assert_eq!(hhmm(150), "02:30");
    }
}
