//! The device's side of remote commands (device token): the long poll that hands commands out,
//! progress and result reports, and screenshot uploads. The protocol a device follows is in
//! docs/device-protocol.md ("Remote commands").

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::payload::CommandPayload;
use super::store::{self, ExecutionRow, Report, Transition};
use super::waiters::Waiters;
use super::{conflict, stored_json};
use crate::app::AppState;
use crate::auth::DeviceAuth;
use crate::clock::{to_millis, Clock};
use crate::config::Settings;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, OptionalJson, Validate};
use crate::http::time;
use crate::shutdown::CancellationToken;
use herd_domain::ids::CommandId;
use herd_domain::status::{CommandState, CommandType};

/// A delivered command not acknowledged (progress or result) for this long is handed out again.
pub(crate) const REDELIVER_AFTER: Duration = Duration::from_secs(60);
/// The longest `wait` a poll may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most commands one poll hands out (default 10).
const MAX_POLL_LIMIT: u32 = 100;
/// Largest result a device may report, as serialised JSON.
const MAX_RESULT: usize = 64 * 1024;
const MAX_ERROR: usize = 2048;
const MAX_MESSAGE: usize = 1024;

/// The routes a device calls with its own token.
pub(crate) fn device_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(poll))
        .routes(routes!(get_own_command))
        .routes(routes!(report_progress))
        .routes(routes!(report_result))
}

/// The device's transfers (bounded by `HERD_TRANSFER_TIMEOUT`, see `http::transfer`): the
/// screenshot upload.
pub(crate) fn device_transfer_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(super::screenshots::upload_screenshot))
}

/// `?wait=30s&limit=10`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PollParams {
    /// How long to wait for a command when none is waiting: `30s`, `500ms`, `1m` or seconds
    /// as a number; 0 (the default) answers at once; at most 60 s (and never past the server's
    /// request timeout).
    pub wait: Option<String>,
    /// Most commands to hand out (1–100, default 10).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

fn parse_wait(text: Option<&str>) -> Result<Duration, ApiError> {
    let Some(text) = text else { return Ok(Duration::ZERO) };
    let parsed = match text.parse::<u64>() {
        Ok(seconds) => Some(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text).ok(),
    };
    match parsed {
        Some(wait) if wait <= MAX_WAIT => Ok(wait),
        _ => Err(ApiError::invalid("wait", "must be a duration of at most 60s, such as 30s")),
    }
}

/// A command as its device sees it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceCommandDto {
    /// The command id: report progress and results under it.
    pub id: String,
    #[serde(rename = "type")]
    pub command_type: CommandType,
    #[schema(value_type = CommandPayload)]
    pub payload: Value,
    pub state: CommandState,
    pub queued_at: DateTime<Utc>,
    /// Report a result before this, or the command fails.
    pub result_due_by: Option<DateTime<Utc>>,
}

impl DeviceCommandDto {
    pub(super) fn new(row: ExecutionRow) -> Result<Self, ApiError> {
        let result_due_by = match row.state {
            CommandState::Delivered | CommandState::Running => row.due_at.map(time),
            _ => None,
        };
        Ok(Self {
            id: row.command_id.to_string(),
            command_type: row.command_type,
            payload: stored_json(&row.payload)?,
            state: row.state,
            queued_at: time(row.queued_at),
            result_due_by,
        })
    }
}

/// `{items}`: the commands handed out by a poll.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PollResponse {
    pub items: Vec<DeviceCommandDto>,
}

/// Fetch the commands waiting for the calling device (device token): each queued one becomes
/// `delivered`. With `wait`, an empty answer waits until a command is queued for the device
/// (on any instance) or `wait` runs out. A delivered command not acknowledged within 60 s is
/// handed out again (same id): acknowledge with `progress` or `result`.
#[utoipa::path(get, path = "/devices/self/commands", operation_id = "pollCommands", tag = "commands", security(("deviceToken" = [])), params(PollParams),
    responses((status = 200, body = PollResponse)))]
async fn poll(
    State(clock): State<Arc<dyn Clock>>,
    State(waiters): State<Arc<Waiters>>,
    State(settings): State<Arc<Settings>>,
    State(shutdown): State<CancellationToken>,
    device: DeviceAuth,
    ApiQuery(params): ApiQuery<PollParams>,
) -> Result<Json<PollResponse>, ApiError> {
    let wait = parse_wait(params.wait.as_deref())?;
    let limit = params.limit.unwrap_or(10);
    if !(1..=MAX_POLL_LIMIT).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 100"));
    }
    // The answer must leave before the request timeout turns it into a 503.
    let wait = wait.min(settings.request_timeout.saturating_sub(Duration::from_secs(1)));
    let deadline = tokio::time::Instant::now() + wait;
    let scope = &device.scope;
    let registration = waiters.register(scope.tenant_id(), device.device_id);
    loop {
        // Enabled before the check: a command queued after the check still wakes this poll.
        let notified = registration.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let turn = waiters.database_turn().await;
        let now = to_millis(clock.now());
        let redeliver_before = now - REDELIVER_AFTER.as_millis() as i64;
        if store::has_waiting(scope, device.device_id, now, redeliver_before).await? {
            let rows = store::deliver(scope, device.device_id, now, redeliver_before, i64::from(limit)).await?;
            if !rows.is_empty() {
                drop(turn);
                let items = rows.into_iter().map(DeviceCommandDto::new).collect::<Result<Vec<_>, _>>()?;
                return Ok(Json(PollResponse { items }));
            }
        }
        drop(turn);
        if tokio::time::Instant::now() >= deadline {
            return Ok(Json(PollResponse { items: Vec::new() }));
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => return Ok(Json(PollResponse { items: Vec::new() })),
            () = shutdown.cancelled() => return Ok(Json(PollResponse { items: Vec::new() })),
        }
    }
}

/// One of the calling device's commands (device token).
#[utoipa::path(get, path = "/devices/self/commands/{id}", operation_id = "getOwnCommand", tag = "commands", security(("deviceToken" = [])),
    params(("id" = String, Path, description = "command id")), responses((status = 200, body = DeviceCommandDto)))]
async fn get_own_command(
    device: DeviceAuth,
    IdPath(id): IdPath<CommandId>,
) -> Result<Json<DeviceCommandDto>, ApiError> {
    let row =
        store::execution(&device.scope, id, device.device_id).await?.ok_or_else(|| ApiError::not_found("command"))?;
    Ok(Json(DeviceCommandDto::new(row)?))
}

/// `POST /devices/self/commands/{id}/progress`: started, and how far.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ProgressDto {
    /// Percent, 0–100.
    #[schema(minimum = 0, maximum = 100)]
    pub progress: Option<i64>,
    /// What the device is doing (at most 1024 characters).
    pub message: Option<String>,
}

impl Validate for ProgressDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        if self.progress.is_some_and(|p| !(0..=100).contains(&p)) {
            errors.add("progress", "must be a percentage between 0 and 100");
        }
        if self.message.as_ref().is_some_and(|m| m.chars().count() > MAX_MESSAGE) {
            errors.add("message", format!("must be at most {MAX_MESSAGE} characters"));
        }
        errors.finish()
    }
}

/// The outcome a device reports.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Succeeded,
    Failed,
}

/// `POST /devices/self/commands/{id}/result`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ResultDto {
    pub status: Outcome,
    /// What the command produced (any JSON, at most 64 KiB serialised).
    pub result: Option<Value>,
    /// Why it failed (at most 2048 characters; only with `failed`).
    pub error: Option<String>,
}

impl Validate for ResultDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        if self.result.as_ref().is_some_and(|r| r.to_string().len() > MAX_RESULT) {
            errors.add("result", format!("must be at most {MAX_RESULT} bytes of JSON"));
        }
        if let Some(error) = &self.error {
            if matches!(self.status, Outcome::Succeeded) {
                errors.add("error", "only a failed command has an error");
            } else if error.chars().count() > MAX_ERROR {
                errors.add("error", format!("must be at most {MAX_ERROR} characters"));
            }
        }
        errors.finish()
    }
}

/// The device started the command, or reports progress (device token): `delivered → running`,
/// then progress updates while running. 409 once the command is final.
#[utoipa::path(post, path = "/devices/self/commands/{id}/progress", operation_id = "reportCommandProgress", tag = "commands", security(("deviceToken" = [])),
    params(("id" = String, Path, description = "command id")), request_body(content = Option<ProgressDto>),
    responses((status = 200, body = DeviceCommandDto)))]
async fn report_progress(
    State(clock): State<Arc<dyn Clock>>,
    device: DeviceAuth,
    IdPath(id): IdPath<CommandId>,
    OptionalJson(body): OptionalJson<ProgressDto>,
) -> Result<Json<DeviceCommandDto>, ApiError> {
    let body = body.unwrap_or_default();
    let report = Report::Progress { progress: body.progress, message: body.message.as_deref() };
    answer(
        store::report(&device.scope, id, device.device_id, &report, to_millis(clock.now())).await?,
        "report progress on",
    )
}

/// The device's result (device token): `delivered | running → succeeded | failed`. Sending the
/// same outcome again answers 200 and changes nothing; any other report on a final command is
/// a 409.
#[utoipa::path(post, path = "/devices/self/commands/{id}/result", operation_id = "reportCommandResult", tag = "commands", security(("deviceToken" = [])),
    params(("id" = String, Path, description = "command id")), request_body = ResultDto,
    responses((status = 200, body = DeviceCommandDto)))]
async fn report_result(
    State(clock): State<Arc<dyn Clock>>,
    device: DeviceAuth,
    IdPath(id): IdPath<CommandId>,
    ApiJson(body): ApiJson<ResultDto>,
) -> Result<Json<DeviceCommandDto>, ApiError> {
    let state = match body.status {
        Outcome::Succeeded => CommandState::Succeeded,
        Outcome::Failed => CommandState::Failed,
    };
    let result = body.result.as_ref().map(Value::to_string);
    let error = match (&body.error, body.status) {
        (Some(error), _) => Some(error.clone()),
        (None, Outcome::Failed) => Some("the device reported a failure".to_string()),
        (None, Outcome::Succeeded) => None,
    };
    let report = Report::Finished { state, result: result.as_deref(), error: error.as_deref() };
    answer(
        store::report(&device.scope, id, device.device_id, &report, to_millis(clock.now())).await?,
        "report a result on",
    )
}

fn answer(transition: Transition, what: &str) -> Result<Json<DeviceCommandDto>, ApiError> {
    match transition {
        Transition::Done(row) | Transition::Unchanged(row) => Ok(Json(DeviceCommandDto::new(*row)?)),
        Transition::NotFound => Err(ApiError::not_found("command")),
        Transition::Conflict(state) => Err(conflict(what, state)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_accepts_durations_and_seconds_up_to_a_minute() {
        assert_eq!(parse_wait(None).unwrap(), Duration::ZERO);
        assert_eq!(parse_wait(Some("30s")).unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait(Some("250ms")).unwrap(), Duration::from_millis(250));
        assert_eq!(parse_wait(Some("45")).unwrap(), Duration::from_secs(45));
        assert!(parse_wait(Some("61s")).is_err());
        assert!(parse_wait(Some("soon")).is_err());
    }
}
