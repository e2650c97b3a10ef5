//! `/alerts`: what the monitoring rules raised, and acknowledging it. Alerts are opened and
//! resolved only by evaluation (ingest and the offline sweep), never through these routes.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{AlertFilter, AlertRow, MonitoringStore, OPEN, RESOLVED};
use crate::app::AppState;
use crate::auth::{Member, Role};
use crate::clock::to_millis;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiQuery, IdPath, PageParams};
use crate::http::{time, ListResponse};
use crate::ids::{AlertId, DeviceId};
use herd_domain::status::Severity;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_alerts)).routes(routes!(get_alert)).routes(routes!(acknowledge_alert))
}

/// An alert: one (device, rule) breach from when it opened until it resolved.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AlertDto {
    pub id: String,
    pub device_id: String,
    pub device_name: String,
    /// Null once the rule has been deleted.
    pub rule_id: Option<String>,
    /// The rule's name, metric, operator, threshold and severity when the alert opened.
    pub rule_name: String,
    #[schema(value_type = herd_domain::status::Metric)]
    pub metric: String,
    #[schema(value_type = herd_domain::status::Operator)]
    pub operator: String,
    pub threshold: f64,
    #[schema(value_type = herd_domain::status::Severity)]
    pub severity: String,
    /// `open` or `resolved`.
    #[schema(value_type = herd_domain::status::AlertStatus)]
    pub status: String,
    /// The value that opened the alert (minutes offline for `offline` rules).
    pub value: f64,
    /// The latest breaching value.
    pub last_value: f64,
    /// How many samples breached while the alert was open.
    pub breach_count: i64,
    /// When the first breaching sample was recorded (for `offline`: when the sweep found it).
    pub breached_at: DateTime<Utc>,
    pub last_breach_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The user (or, for API tokens, the token) that acknowledged it.
    pub acknowledged_by: Option<String>,
}

impl From<AlertRow> for AlertDto {
    fn from(row: AlertRow) -> Self {
        Self {
            id: row.id.to_string(),
            device_id: row.device_id.to_string(),
            device_name: row.device_name,
            rule_id: row.rule_id.map(|id| id.to_string()),
            rule_name: row.rule_name,
            metric: row.metric.to_string(),
            operator: row.operator.to_string(),
            threshold: row.threshold,
            severity: row.severity.to_string(),
            status: row.status.to_string(),
            value: row.value,
            last_value: row.last_value,
            breach_count: row.breach_count,
            breached_at: time(row.breached_at),
            last_breach_at: time(row.last_breach_at),
            created_at: time(row.created_at),
            updated_at: time(row.updated_at),
            resolved_at: row.resolved_at.map(time),
            acknowledged_at: row.acknowledged_at.map(time),
            acknowledged_by: row.acknowledged_by,
        }
    }
}

/// Filters of `GET /alerts`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(crate) struct AlertListParams {
    /// `open` or `resolved`.
    pub status: Option<String>,
    /// `info`, `warning` or `critical`.
    pub severity: Option<String>,
    /// Only this device's alerts.
    pub device_id: Option<String>,
    /// Only alerts opened at or after this time (RFC 3339).
    #[serde(default, deserialize_with = "crate::http::bounded_time::optional")]
    pub since: Option<DateTime<Utc>>,
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// The tenant's alerts, newest first.
#[utoipa::path(get, path = "/alerts", operation_id = "listAlerts", tag = "monitoring", security(("apiToken" = []), ("sessionToken" = [])), params(AlertListParams),
    responses((status = 200, body = ListResponse<AlertDto>)))]
pub(crate) async fn list_alerts(
    member: Member,
    ApiQuery(params): ApiQuery<AlertListParams>,
) -> Result<Json<ListResponse<AlertDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let page = PageParams { limit: params.limit, cursor: params.cursor.clone() }.page()?;
    let mut errors = FieldErrors::new();
    if let Some(status) = &params.status {
        if status != OPEN && status != RESOLVED {
            errors.add("status", "must be open or resolved");
        }
    }
    if let Some(severity) = &params.severity {
        if severity.parse::<Severity>().is_err() {
            errors.add("severity", "must be info, warning or critical");
        }
    }
    let device_id = match &params.device_id {
        None => None,
        Some(text) => match text.parse::<DeviceId>() {
            Ok(id) => Some(id),
            Err(_) => {
                errors.add("deviceId", "must be a device id (UUID)");
                None
            }
        },
    };
    errors.finish()?;
    let filter =
        AlertFilter { status: params.status, severity: params.severity, device_id, since: params.since.map(to_millis) };
    let rows = MonitoringStore::new(scope).list_alerts(&filter, &page).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |r| r.id, AlertDto::from)))
}

/// One alert.
#[utoipa::path(get, path = "/alerts/{id}", operation_id = "getAlert", tag = "monitoring", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "alert id")), responses((status = 200, body = AlertDto)))]
async fn get_alert(member: Member, IdPath(id): IdPath<AlertId>) -> Result<Json<AlertDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = MonitoringStore::new(scope).get_alert(id).await?.ok_or_else(|| ApiError::not_found("alert"))?;
    Ok(Json(row.into()))
}

/// Acknowledge an alert (operator and above). Idempotent: the first acknowledgement is kept.
/// It does not resolve the alert; only the metric coming back within the threshold does.
#[utoipa::path(post, path = "/alerts/{id}/acknowledge", operation_id = "acknowledgeAlert", tag = "monitoring", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "alert id")), responses((status = 200, body = AlertDto)))]
pub(crate) async fn acknowledge_alert(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<AlertId>,
) -> Result<Json<AlertDto>, ApiError> {
    let scope = member.require(Role::Operator)?;
    let by = match member.user_id {
        Some(user_id) => user_id.to_string(),
        None => member.token_id.to_string(),
    };
    let row = MonitoringStore::new(scope)
        .acknowledge(id, &by, to_millis(clock.now()))
        .await?
        .ok_or_else(|| ApiError::not_found("alert"))?;
    Ok(Json(row.into()))
}
