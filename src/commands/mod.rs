//! Remote commands (the seed's RemoteControlModule): an operator sends a command to one device
//! (`POST /devices/{id}/commands`) or to many (`POST /commands`, by ids, tag, status or the whole
//! tenant); each targeted device gets an *execution* that moves
//! `queued → delivered → running → succeeded | failed`, or ends `expired` (not delivered before
//! `expiresAt`) or `cancelled` (by an operator, before delivery). A delivered execution that
//! reports no result within the command's timeout fails.
//!
//! Devices learn of commands from the heartbeat answer (`pendingCommands`) and fetch them with
//! a long poll (`GET /devices/self/commands?wait=30s`, see `device`), woken through `waiters`
//! (in process, and across instances by PostgreSQL `NOTIFY`). They report through
//! `POST /devices/self/commands/{id}/progress|result` and upload screenshots. `payload` holds
//! each type's schema and validation; `store` the SQL; `expiry` the job step ([`expire_due`]).

pub(crate) mod device;
mod expiry;
pub(crate) mod payload;
pub(crate) mod screenshots;
pub mod waiters;

pub use expiry::expire_due;

pub(crate) use herd_store::commands as store;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::{Member, Role};
use crate::clock::{to_millis, Clock};
use crate::devices::store::DeviceStore;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, IdsPath, PageParams, Validate};
use crate::http::{time, ListResponse};
use herd_domain::ids::{CommandId, DeviceId};
use herd_domain::status::{CommandState, CommandType, DeviceStatus};
use payload::CommandPayload;
use store::{CommandRow, ExecutionRow, NewCommand, Target, Transition};
use waiters::Waiters;

/// Default time a command waits for its device before it expires.
const DEFAULT_EXPIRY: i64 = 24 * 3600 * 1000;
/// Longest time a command may wait for its device.
const MAX_EXPIRY: i64 = 30 * 24 * 3600 * 1000;
/// Default time a delivered command has to report its result.
const DEFAULT_TIMEOUT_SECONDS: i64 = 3600;
const MAX_TIMEOUT_SECONDS: i64 = 7 * 24 * 3600;
/// Most device ids one bulk command may name (larger fleets: target a tag or the tenant).
const MAX_TARGET_IDS: usize = 10_000;

/// The operators' command routes.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send_to_device, list_device_commands))
        .routes(routes!(get_device_command))
        .routes(routes!(cancel_device_command))
        .routes(routes!(screenshots::get_screenshot))
        .routes(routes!(send_bulk, list_commands))
        .routes(routes!(get_command))
        .routes(routes!(list_executions))
        .routes(routes!(cancel_command))
}

/// `POST /devices/{id}/commands`: what to do, and for how long it may wait.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SendCommandDto {
    #[serde(rename = "type")]
    pub command_type: CommandType,
    /// The type's parameters (see `CommandPayload`); absent for types without any.
    #[schema(value_type = Option<CommandPayload>)]
    pub payload: Option<Value>,
    /// Not delivered by then, it expires (default: 24 hours from now; at most 30 days).
    #[serde(default, deserialize_with = "crate::http::bounded_time::optional")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Once delivered, how long the device has to report a result before the command fails
    /// (1 s – 7 days, default 3600).
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_seconds: Option<i64>,
}

impl Validate for SendCommandDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        check_timeout(&mut errors, self.timeout_seconds);
        errors.finish()
    }
}

fn check_timeout(errors: &mut FieldErrors, timeout: Option<i64>) {
    if timeout.is_some_and(|t| !(1..=MAX_TIMEOUT_SECONDS).contains(&t)) {
        errors.add("timeoutSeconds", format!("must be between 1 and {MAX_TIMEOUT_SECONDS} seconds"));
    }
}

/// Which devices a bulk command goes to: `deviceIds`, or `tag` and/or `status`, or `all`.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TargetDto {
    /// These devices (at most 10,000; ids that name no device of the tenant are ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ids: Option<Vec<String>>,
    /// Every device with this tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Every device with this presence status (with `tag`: both must hold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
    /// Every device of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

/// `POST /commands`: a command for many devices.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct BulkCommandDto {
    #[serde(rename = "type")]
    pub command_type: CommandType,
    #[schema(value_type = Option<CommandPayload>)]
    pub payload: Option<Value>,
    pub target: TargetDto,
    #[serde(default, deserialize_with = "crate::http::bounded_time::optional")]
    pub expires_at: Option<DateTime<Utc>>,
    #[schema(minimum = 1, maximum = 604800)]
    pub timeout_seconds: Option<i64>,
}

impl Validate for BulkCommandDto {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        check_timeout(&mut errors, self.timeout_seconds);
        let target = &self.target;
        let filtered = target.tag.is_some() || target.status.is_some();
        let all = target.all == Some(true);
        match (&target.device_ids, filtered, all) {
            (Some(_), true, _) | (Some(_), _, true) | (None, true, true) => {
                errors.add("target", "give deviceIds, or tag and/or status, or all: true (not several)")
            }
            (None, false, false) => errors.add("target", "give deviceIds, tag, status or all: true"),
            _ => {}
        }
        if target.all == Some(false) && !filtered && target.device_ids.is_none() {
            errors.add("target.all", "must be true when nothing else is targeted");
        }
        if let Some(ids) = &target.device_ids {
            if ids.is_empty() || ids.len() > MAX_TARGET_IDS {
                errors.add("target.deviceIds", format!("must list 1 to {MAX_TARGET_IDS} device ids"));
            }
            for (i, id) in ids.iter().enumerate() {
                if id.parse::<DeviceId>().is_err() {
                    errors.add(format!("target.deviceIds[{i}]"), "must be a device id");
                }
            }
        }
        if let Some(tag) = &target.tag {
            errors.tags("target.tag", std::slice::from_ref(tag));
        }
        errors.finish()
    }
}

/// How many of a command's executions are in each state.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StateCounts {
    pub queued: i64,
    pub delivered: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub expired: i64,
    pub cancelled: i64,
}

impl StateCounts {
    fn from_rows(rows: Vec<(CommandState, i64)>) -> Self {
        let mut counts = Self::default();
        for (state, n) in rows {
            *match state {
                CommandState::Queued => &mut counts.queued,
                CommandState::Delivered => &mut counts.delivered,
                CommandState::Running => &mut counts.running,
                CommandState::Succeeded => &mut counts.succeeded,
                CommandState::Failed => &mut counts.failed,
                CommandState::Expired => &mut counts.expired,
                CommandState::Cancelled => &mut counts.cancelled,
            } += n;
        }
        counts
    }
}

/// A command as sent: its target and, from `GET /commands/{id}`, counts by state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommandDto {
    pub id: String,
    #[serde(rename = "type")]
    pub command_type: CommandType,
    #[schema(value_type = CommandPayload)]
    pub payload: Value,
    pub target: TargetDto,
    /// How many devices it was queued for.
    pub total: i64,
    /// Executions by state (absent in lists; `GET /commands/{id}` has them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<StateCounts>,
    /// True when every execution is final (succeeded, failed, expired or cancelled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
    /// The member token that sent it.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub timeout_seconds: i64,
    pub cancelled_at: Option<DateTime<Utc>>,
}

impl CommandDto {
    fn new(row: CommandRow, counts: Option<StateCounts>) -> Result<Self, ApiError> {
        let done = counts.as_ref().map(|c| c.queued + c.delivered + c.running == 0);
        Ok(Self {
            id: row.id.to_string(),
            command_type: row.command_type,
            payload: stored_json(&row.payload)?,
            target: serde_json::from_str(&row.target).map_err(ApiError::internal)?,
            total: row.total,
            counts,
            done,
            created_by: row.created_by,
            created_at: time(row.created_at),
            expires_at: time(row.expires_at),
            timeout_seconds: row.timeout_ms / 1000,
            cancelled_at: row.cancelled_at.map(time),
        })
    }
}

fn stored_json(text: &str) -> Result<Value, ApiError> {
    serde_json::from_str(text).map_err(ApiError::internal)
}

/// An image a device uploaded as a command's result.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttachmentDto {
    /// `image/png` or `image/jpeg`.
    pub content_type: String,
    pub size: i64,
    /// Where to read it (viewer and up).
    pub url: String,
}

/// One device's execution of a command.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExecutionDto {
    pub command_id: String,
    pub device_id: String,
    #[serde(rename = "type")]
    pub command_type: CommandType,
    #[schema(value_type = CommandPayload)]
    pub payload: Value,
    pub state: CommandState,
    pub queued_at: DateTime<Utc>,
    /// Not delivered by then, it expires.
    pub expires_at: DateTime<Utc>,
    /// The last time it was handed to the device.
    pub delivered_at: Option<DateTime<Utc>>,
    /// How many times it was handed to the device (more than once: redelivered because the
    /// device did not acknowledge it).
    pub deliveries: i64,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// While delivered or running: the result is due by then, or the command fails.
    pub result_due_by: Option<DateTime<Utc>>,
    /// Percent, as last reported by the device.
    pub progress: Option<i64>,
    /// The device's last progress message.
    pub message: Option<String>,
    /// The device's result (JSON), when it reported one.
    pub result: Option<Value>,
    /// The device's error message, or why herd failed the command.
    pub error: Option<String>,
    /// The uploaded screenshot, if any.
    pub screenshot: Option<AttachmentDto>,
    pub updated_at: DateTime<Utc>,
}

impl ExecutionDto {
    fn new(row: ExecutionRow) -> Result<Self, ApiError> {
        let screenshot = match (row.attachment_type, row.attachment_size) {
            (Some(content_type), Some(size)) => Some(AttachmentDto {
                content_type,
                size,
                url: format!("/devices/{}/commands/{}/screenshot", row.device_id, row.command_id),
            }),
            _ => None,
        };
        Ok(Self {
            command_id: row.command_id.to_string(),
            device_id: row.device_id.to_string(),
            command_type: row.command_type,
            payload: stored_json(&row.payload)?,
            state: row.state,
            queued_at: time(row.queued_at),
            expires_at: time(row.expires_at),
            delivered_at: row.delivered_at.map(time),
            deliveries: row.deliveries,
            started_at: row.started_at.map(time),
            finished_at: row.finished_at.map(time),
            result_due_by: match row.state {
                CommandState::Delivered | CommandState::Running => row.due_at.map(time),
                _ => None,
            },
            progress: row.progress,
            message: row.message,
            result: row.result.as_deref().map(stored_json).transpose()?,
            error: row.error,
            screenshot,
            updated_at: time(row.updated_at),
        })
    }
}

/// A page of executions; `key` is the list's cursor column (a command or a device id).
fn execution_list(rows: Vec<ExecutionRow>, limit: u32, key: impl Fn(&ExecutionRow) -> String) -> ListResult {
    let keyed =
        rows.into_iter().map(|row| Ok((key(&row), ExecutionDto::new(row)?))).collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(ListResponse::from_rows(keyed, limit, |(key, _)| key.clone(), |(_, dto)| dto)))
}

type ListResult = Result<Json<ListResponse<ExecutionDto>>, ApiError>;

/// `?state=`, `limit`, `cursor`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExecutionListParams {
    /// Only executions in this state.
    pub state: Option<String>,
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /devices/{id}/commands`: the execution filters, and the order.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeviceCommandListParams {
    /// Only executions in this state.
    pub state: Option<String>,
    /// `oldest` (the default) or `newest` first. A cursor continues in the order that made it.
    pub order: Option<String>,
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

impl DeviceCommandListParams {
    /// The page, the state filter, and whether the newest come first.
    fn parse(self) -> Result<(herd_store::Page, Option<CommandState>, bool), ApiError> {
        let newest_first = match self.order.as_deref() {
            None | Some("oldest") => false,
            Some("newest") => true,
            Some(_) => return Err(ApiError::invalid("order", "must be oldest or newest")),
        };
        let (page, state) =
            ExecutionListParams { state: self.state, limit: self.limit, cursor: self.cursor }.parse()?;
        Ok((page, state, newest_first))
    }
}

impl ExecutionListParams {
    fn parse(&self) -> Result<(herd_store::Page, Option<CommandState>), ApiError> {
        let page = PageParams { limit: self.limit, cursor: self.cursor.clone() }.page()?;
        let state = match self.state.as_deref().map(str::parse::<CommandState>).transpose() {
            Ok(state) => state,
            Err(_) => {
                return Err(ApiError::invalid(
                    "state",
                    "must be queued, delivered, running, succeeded, failed, expired or cancelled",
                ))
            }
        };
        Ok((page, state))
    }
}

/// Computes `expiresAt` (checked against now) and the timeout in milliseconds.
fn lifetimes(
    now: i64,
    expires_at: Option<DateTime<Utc>>,
    timeout_seconds: Option<i64>,
) -> Result<(i64, i64), ApiError> {
    let expires_at = expires_at.map_or(now + DEFAULT_EXPIRY, to_millis);
    if expires_at <= now {
        return Err(ApiError::invalid("expiresAt", "must be in the future"));
    }
    if expires_at > now + MAX_EXPIRY {
        return Err(ApiError::invalid("expiresAt", "must be at most 30 days from now"));
    }
    Ok((expires_at, timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS) * 1000))
}

/// Send a command to one device (operator and up). It waits for the device until `expiresAt`:
/// a device that is offline now gets it when it comes back.
#[utoipa::path(post, path = "/devices/{id}/commands", operation_id = "sendDeviceCommand", tag = "commands", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id")), request_body = SendCommandDto,
    responses((status = 201, body = ExecutionDto)))]
pub(crate) async fn send_to_device(
    State(clock): State<Arc<dyn Clock>>,
    State(waiters): State<Arc<Waiters>>,
    member: Member,
    IdPath(device_id): IdPath<DeviceId>,
    ApiJson(body): ApiJson<SendCommandDto>,
) -> Result<(StatusCode, Json<ExecutionDto>), ApiError> {
    let scope = member.require(Role::Operator)?;
    let payload = payload::validate(body.command_type, body.payload)?;
    let now = to_millis(clock.now());
    let (expires_at, timeout_ms) = lifetimes(now, body.expires_at, body.timeout_seconds)?;
    if DeviceStore::new(scope).get(device_id).await?.is_none() {
        return Err(ApiError::not_found("device"));
    }
    let target = Target::Devices(vec![device_id]);
    let target_json = serde_json::json!({ "deviceIds": [device_id] }).to_string();
    let command = NewCommand {
        command_type: body.command_type,
        payload: &payload.to_string(),
        target: &target,
        target_json: &target_json,
        created_by: &member.token_id.to_string(),
        expires_at,
        timeout_ms,
    };
    // The device may be deleted between the check and the insert: then nothing is queued.
    let row =
        store::create(scope, &command, waiters.origin(), now).await?.ok_or_else(|| ApiError::not_found("device"))?;
    waiters.wake_device(device_id);
    let execution = store::execution(scope, row.id, device_id).await?.ok_or_else(|| ApiError::not_found("command"))?;
    Ok((StatusCode::CREATED, Json(ExecutionDto::new(execution)?)))
}

/// A device's commands, oldest first, or newest first with `order=newest` (viewer and up).
#[utoipa::path(get, path = "/devices/{id}/commands", operation_id = "listDeviceCommands", tag = "commands", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id"), DeviceCommandListParams),
    responses((status = 200, body = ListResponse<ExecutionDto>)))]
pub(crate) async fn list_device_commands(
    member: Member,
    IdPath(device_id): IdPath<DeviceId>,
    ApiQuery(params): ApiQuery<DeviceCommandListParams>,
) -> ListResult {
    let scope = member.require(Role::Viewer)?;
    let (page, state, newest_first) = params.parse()?;
    if DeviceStore::new(scope).get(device_id).await?.is_none() {
        return Err(ApiError::not_found("device"));
    }
    let rows = store::for_device(scope, device_id, state, &page, newest_first).await?;
    execution_list(rows, page.limit, |row| row.command_id.to_string())
}

/// One device's execution of a command (viewer and up).
#[utoipa::path(get, path = "/devices/{id}/commands/{commandId}", operation_id = "getDeviceCommand", tag = "commands", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id"), ("commandId" = String, Path, description = "command id")),
    responses((status = 200, body = ExecutionDto)))]
async fn get_device_command(
    member: Member,
    IdsPath(device_id, command_id): IdsPath<DeviceId, CommandId>,
) -> Result<Json<ExecutionDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = store::execution(scope, command_id, device_id).await?.ok_or_else(|| ApiError::not_found("command"))?;
    Ok(Json(ExecutionDto::new(row)?))
}

/// Cancel one device's execution while it is still queued (operator and up); 409 once it was
/// delivered.
#[utoipa::path(post, path = "/devices/{id}/commands/{commandId}/cancel", operation_id = "cancelDeviceCommand", tag = "commands", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id"), ("commandId" = String, Path, description = "command id")),
    responses((status = 200, body = ExecutionDto)))]
pub(crate) async fn cancel_device_command(
    State(clock): State<Arc<dyn Clock>>,
    member: Member,
    IdsPath(device_id, command_id): IdsPath<DeviceId, CommandId>,
) -> Result<Json<ExecutionDto>, ApiError> {
    let scope = member.require(Role::Operator)?;
    match store::cancel_one(scope, command_id, device_id, to_millis(clock.now())).await? {
        Transition::Done(row) | Transition::Unchanged(row) => Ok(Json(ExecutionDto::new(*row)?)),
        Transition::NotFound => Err(ApiError::not_found("command")),
        Transition::Conflict(state) => Err(conflict("cancel", state)),
    }
}

/// The 409 for a transition the execution's state does not allow.
pub(crate) fn conflict(what: &str, state: CommandState) -> ApiError {
    ApiError::Conflict(format!("cannot {what} a command that is {}", state.as_str()))
}

/// Send a command to many devices (operator and up): by `deviceIds`, `tag`, `status` or `all`.
/// One execution per device is created in one statement; `total` says how many. 422 when the
/// target matches no device.
#[utoipa::path(post, path = "/commands", operation_id = "sendBulkCommand", tag = "commands", security(("apiToken" = []), ("sessionToken" = [])),
    request_body = BulkCommandDto, responses((status = 201, body = CommandDto)))]
async fn send_bulk(
    State(clock): State<Arc<dyn Clock>>,
    State(waiters): State<Arc<Waiters>>,
    member: Member,
    ApiJson(body): ApiJson<BulkCommandDto>,
) -> Result<(StatusCode, Json<CommandDto>), ApiError> {
    let scope = member.require(Role::Operator)?;
    let payload = payload::validate(body.command_type, body.payload)?;
    let now = to_millis(clock.now());
    let (expires_at, timeout_ms) = lifetimes(now, body.expires_at, body.timeout_seconds)?;
    let target = match &body.target.device_ids {
        Some(ids) => Target::Devices(ids.iter().filter_map(|id| id.parse().ok()).collect()),
        None => Target::Filter { tag: body.target.tag.clone(), status: body.target.status },
    };
    let target_json = serde_json::to_string(&body.target).map_err(ApiError::internal)?;
    let command = NewCommand {
        command_type: body.command_type,
        payload: &payload.to_string(),
        target: &target,
        target_json: &target_json,
        created_by: &member.token_id.to_string(),
        expires_at,
        timeout_ms,
    };
    let row = store::create(scope, &command, waiters.origin(), now)
        .await?
        .ok_or_else(|| ApiError::invalid("target", "matches no device"))?;
    match &target {
        Target::Devices(ids) if ids.len() <= 64 => ids.iter().for_each(|id| waiters.wake_device(*id)),
        _ => waiters.wake_tenant(scope.tenant_id()),
    }
    let counts = StateCounts { queued: row.total, ..StateCounts::default() };
    Ok((StatusCode::CREATED, Json(CommandDto::new(row, Some(counts))?)))
}

/// The tenant's commands, oldest first (viewer and up); without counts.
#[utoipa::path(get, path = "/commands", operation_id = "listCommands", tag = "commands", security(("apiToken" = []), ("sessionToken" = [])), params(PageParams),
    responses((status = 200, body = ListResponse<CommandDto>)))]
async fn list_commands(
    member: Member,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListResponse<CommandDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let page = params.page()?;
    let rows = store::list(scope, &page).await?;
    let keyed =
        rows.into_iter().map(|row| Ok((row.id, CommandDto::new(row, None)?))).collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(ListResponse::from_rows(keyed, page.limit, |(id, _)| *id, |(_, dto)| dto)))
}

/// One command with its executions counted by state (viewer and up).
#[utoipa::path(get, path = "/commands/{id}", operation_id = "getCommand", tag = "commands", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "command id")), responses((status = 200, body = CommandDto)))]
async fn get_command(member: Member, IdPath(id): IdPath<CommandId>) -> Result<Json<CommandDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("command"))?;
    let counts = StateCounts::from_rows(store::counts(scope, id).await?);
    Ok(Json(CommandDto::new(row, Some(counts))?))
}

/// A command's executions, in device order (viewer and up); `state=failed` lists the failures.
#[utoipa::path(get, path = "/commands/{id}/executions", operation_id = "listCommandExecutions", tag = "commands", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "command id"), ExecutionListParams),
    responses((status = 200, body = ListResponse<ExecutionDto>)))]
async fn list_executions(
    member: Member,
    IdPath(id): IdPath<CommandId>,
    ApiQuery(params): ApiQuery<ExecutionListParams>,
) -> ListResult {
    let scope = member.require(Role::Viewer)?;
    let (page, state) = params.parse()?;
    if store::get(scope, id).await?.is_none() {
        return Err(ApiError::not_found("command"));
    }
    let rows = store::executions(scope, id, state, &page).await?;
    execution_list(rows, page.limit, |row| row.device_id.to_string())
}

/// Cancel every execution of a command that is still queued (operator and up); delivered ones
/// run on. Repeating it cancels nothing more.
#[utoipa::path(post, path = "/commands/{id}/cancel", operation_id = "cancelCommand", tag = "commands", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "command id")), responses((status = 200, body = CommandDto)))]
async fn cancel_command(
    State(clock): State<Arc<dyn Clock>>,
    member: Member,
    IdPath(id): IdPath<CommandId>,
) -> Result<Json<CommandDto>, ApiError> {
    let scope = member.require(Role::Operator)?;
    store::cancel_all(scope, id, to_millis(clock.now())).await?.ok_or_else(|| ApiError::not_found("command"))?;
    let row = store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("command"))?;
    let counts = StateCounts::from_rows(store::counts(scope, id).await?);
    Ok(Json(CommandDto::new(row, Some(counts))?))
}
