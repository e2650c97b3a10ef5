//! `/monitoring-rules`: the tenant's monitoring rules (the seed's DeviceMonitorings) and their
//! wire types. Reading needs a viewer, changing an admin (DESIGN.md: "admin: … rules").

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{MonitoringStore, RuleRow, RuleSpec};
use crate::app::AppState;
use crate::auth::{Member, Role};
use crate::clock::to_millis;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, PageParams, Validate};
use crate::http::{time, ListResponse};
use crate::ids::{DeviceId, RuleId};
use herd_domain::status::{Metric, Operator, Severity};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_rules, create_rule)).routes(routes!(get_rule, update_rule, delete_rule))
}

const MAX_NAME: usize = 100;
const MAX_DEVICE_IDS: usize = 500;
/// The longest offline threshold: a year, in minutes.
const MAX_OFFLINE_MINUTES: f64 = 525_600.0;

/// A monitoring rule.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RuleDto {
    pub id: String,
    pub name: String,
    pub metric: Metric,
    pub operator: Operator,
    /// Percent for cpu/ram/storage, °C for temperature, minutes for offline.
    pub threshold: f64,
    pub severity: Severity,
    pub enabled: bool,
    /// Only these devices; absent or null: every device.
    pub device_ids: Option<Vec<String>>,
    /// Only devices with at least one of these tags; absent or null: every device.
    pub tags: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<RuleRow> for RuleDto {
    type Error = ApiError;

    fn try_from(row: RuleRow) -> Result<Self, ApiError> {
        let rule = row.to_rule();
        Ok(Self {
            id: row.id.to_string(),
            name: rule.name,
            metric: rule.metric,
            operator: rule.operator,
            threshold: rule.threshold,
            severity: rule.severity,
            enabled: rule.enabled,
            device_ids: rule.device_ids.map(|ids| ids.iter().map(ToString::to_string).collect()),
            tags: rule.tags,
            created_at: time(row.created_at),
            updated_at: time(row.updated_at),
        })
    }
}

/// A new rule. `enabled` defaults to true; give `deviceIds` or `tags` (not both) to scope it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateRuleDto {
    pub name: String,
    pub metric: Metric,
    pub operator: Operator,
    pub threshold: f64,
    pub severity: Severity,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub device_ids: Option<Vec<String>>,
    pub tags: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

impl Validate for CreateRuleDto {
    fn validate(&self) -> Result<(), ApiError> {
        let spec = PartialSpec {
            name: Some(&self.name),
            operator: Some(self.operator),
            threshold: Some(self.threshold),
            device_ids: Some(self.device_ids.as_deref()),
            tags: Some(self.tags.as_deref()),
        };
        let mut errors = FieldErrors::new();
        spec.check(&mut errors, self.metric, self.operator, self.threshold);
        errors.finish()
    }
}

/// A partial update: absent fields stay; `deviceIds`/`tags` set to null remove the scope.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateRuleDto {
    pub name: Option<String>,
    pub metric: Option<Metric>,
    pub operator: Option<Operator>,
    pub threshold: Option<f64>,
    pub severity: Option<Severity>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub device_ids: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub tags: Option<Option<Vec<String>>>,
}

/// Tells a present `null` (`Some(None)`) from an absent field (`None`, via `default`).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<Vec<String>>>, D::Error> {
    Option::<Vec<String>>::deserialize(deserializer).map(Some)
}

impl Validate for UpdateRuleDto {
    /// Field-level checks only; the combination (operator for `offline`, threshold range of the
    /// metric) is checked against the merged rule in the handler.
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        if let Some(name) = &self.name {
            errors.text("name", Some(name), MAX_NAME);
        }
        if let Some(Some(ids)) = &self.device_ids {
            check_device_ids(&mut errors, ids);
        }
        if let Some(Some(tags)) = &self.tags {
            check_tags(&mut errors, tags);
        }
        errors.finish()
    }
}

/// The fields of a rule that the checks look at; `None` where a patch leaves a field alone.
struct PartialSpec<'a> {
    name: Option<&'a str>,
    operator: Option<Operator>,
    threshold: Option<f64>,
    device_ids: Option<Option<&'a [String]>>,
    tags: Option<Option<&'a [String]>>,
}

impl PartialSpec<'_> {
    /// Checks the given fields, with the merged metric, operator and threshold for the rules
    /// that span fields; errors name the fields the request gave.
    fn check(&self, errors: &mut FieldErrors, metric: Metric, operator: Operator, threshold: f64) {
        if let Some(name) = self.name {
            errors.text("name", Some(name), MAX_NAME);
        }
        if let Some(Some(ids)) = self.device_ids {
            check_device_ids(errors, ids);
        }
        if let Some(Some(tags)) = self.tags {
            check_tags(errors, tags);
        }
        if matches!((self.device_ids, self.tags), (Some(Some(_)), Some(Some(_)))) {
            errors.add("tags", "give deviceIds or tags, not both");
        }
        let threshold_field = if self.threshold.is_some() { "threshold" } else { "metric" };
        let (low, high) = match metric {
            Metric::Cpu | Metric::Ram | Metric::Storage => (0.0, 100.0),
            Metric::Temperature => (crate::telemetry::MIN_TEMPERATURE, crate::telemetry::MAX_TEMPERATURE),
            Metric::Offline => (1.0, MAX_OFFLINE_MINUTES),
        };
        let unit = metric.unit_name();
        if !threshold.is_finite() || threshold < low || threshold > high {
            errors.add(
                threshold_field,
                format!("the threshold of a {} rule must be {low}–{high} {unit}", metric.as_str()),
            );
        }
        if metric == Metric::Offline && !matches!(operator, Operator::Gt | Operator::Gte) {
            let field = if self.operator.is_some() { "operator" } else { "metric" };
            errors.add(
                field,
                "an offline rule fires when a device has been offline longer than the threshold: use gt or gte",
            );
        }
    }
}

fn check_device_ids(errors: &mut FieldErrors, ids: &[String]) {
    if ids.is_empty() {
        errors.add("deviceIds", "must name at least one device (or be null for every device)");
    }
    if ids.len() > MAX_DEVICE_IDS {
        errors.add("deviceIds", format!("at most {MAX_DEVICE_IDS} devices"));
    }
    for (i, id) in ids.iter().enumerate() {
        if id.parse::<DeviceId>().is_err() {
            errors.add(format!("deviceIds[{i}]"), "must be a device id (UUID)");
        }
    }
}

fn check_tags(errors: &mut FieldErrors, tags: &[String]) {
    if tags.is_empty() {
        errors.add("tags", "must name at least one tag (or be null for every device)");
    }
    errors.tags("tags", tags);
}

fn device_ids(ids: &Option<Vec<String>>) -> Option<Vec<DeviceId>> {
    ids.as_ref().map(|ids| ids.iter().filter_map(|id| id.parse().ok()).collect())
}

fn tags(tags: &Option<Vec<String>>) -> Option<Vec<String>> {
    tags.as_deref().map(herd_domain::tags::normalize)
}

/// The tenant's rules, oldest first. The first read creates the default rules.
#[utoipa::path(get, path = "/monitoring-rules", operation_id = "listMonitoringRules", tag = "monitoring", security(("apiToken" = []), ("sessionToken" = [])), params(PageParams),
    responses((status = 200, body = ListResponse<RuleDto>)))]
pub(crate) async fn list_rules(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListResponse<RuleDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let page = params.page()?;
    let store = MonitoringStore::new(scope);
    store.ensure_defaults(to_millis(clock.now())).await?;
    let rows = store.list_rules(&page).await?;
    let more = rows.len() > page.limit as usize;
    let items: Vec<RuleDto> =
        rows.into_iter().take(page.limit as usize).map(RuleDto::try_from).collect::<Result<_, _>>()?;
    let next_cursor = if more { items.last().map(|rule| crate::http::extract::encode_cursor(&rule.id)) } else { None };
    Ok(Json(ListResponse { items, next_cursor }))
}

/// Create a rule (admin).
#[utoipa::path(post, path = "/monitoring-rules", operation_id = "createMonitoringRule", tag = "monitoring", security(("apiToken" = []), ("sessionToken" = [])), request_body = CreateRuleDto,
    responses((status = 201, body = RuleDto)))]
pub(crate) async fn create_rule(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    ApiJson(body): ApiJson<CreateRuleDto>,
) -> Result<(StatusCode, Json<RuleDto>), ApiError> {
    let scope = member.require(Role::Admin)?;
    let spec = RuleSpec {
        name: body.name.trim().to_string(),
        metric: body.metric,
        operator: body.operator,
        threshold: body.threshold,
        severity: body.severity,
        enabled: body.enabled,
        device_ids: device_ids(&body.device_ids),
        tags: tags(&body.tags),
    };
    let row = MonitoringStore::new(scope).create_rule(&spec, to_millis(clock.now())).await?;
    Ok((StatusCode::CREATED, Json(row.try_into()?)))
}

/// One rule.
#[utoipa::path(get, path = "/monitoring-rules/{id}", operation_id = "getMonitoringRule", tag = "monitoring", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "rule id")), responses((status = 200, body = RuleDto)))]
async fn get_rule(member: Member, IdPath(id): IdPath<RuleId>) -> Result<Json<RuleDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = MonitoringStore::new(scope).get_rule(id).await?.ok_or_else(|| ApiError::not_found("monitoring rule"))?;
    Ok(Json(row.try_into()?))
}

/// Change a rule (admin). Disabling it, or changing its metric, resolves its open alerts.
#[utoipa::path(patch, path = "/monitoring-rules/{id}", operation_id = "updateMonitoringRule", tag = "monitoring", security(("apiToken" = []), ("sessionToken" = [])), request_body = UpdateRuleDto,
    params(("id" = String, Path, description = "rule id")), responses((status = 200, body = RuleDto)))]
pub(crate) async fn update_rule(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<RuleId>,
    ApiJson(body): ApiJson<UpdateRuleDto>,
) -> Result<Json<RuleDto>, ApiError> {
    let scope = member.require(Role::Admin)?;
    let store = MonitoringStore::new(scope);
    let row = store.get_rule(id).await?.ok_or_else(|| ApiError::not_found("monitoring rule"))?;
    let current = row.to_rule();
    let spec = RuleSpec {
        name: body.name.as_deref().map(|n| n.trim().to_string()).unwrap_or(current.name),
        metric: body.metric.unwrap_or(current.metric),
        operator: body.operator.unwrap_or(current.operator),
        threshold: body.threshold.unwrap_or(current.threshold),
        severity: body.severity.unwrap_or(current.severity),
        enabled: body.enabled.unwrap_or(current.enabled),
        device_ids: match &body.device_ids {
            Some(ids) => device_ids(ids),
            None => current.device_ids,
        },
        tags: match &body.tags {
            Some(given) => tags(given),
            None => current.tags,
        },
    };
    let mut errors = FieldErrors::new();
    let partial =
        PartialSpec { name: None, operator: body.operator, threshold: body.threshold, device_ids: None, tags: None };
    partial.check(&mut errors, spec.metric, spec.operator, spec.threshold);
    if spec.device_ids.is_some() && spec.tags.is_some() {
        errors.add("tags", "give deviceIds or tags, not both");
    }
    errors.finish()?;
    let row = store
        .update_rule(id, &spec, to_millis(clock.now()))
        .await?
        .ok_or_else(|| ApiError::not_found("monitoring rule"))?;
    Ok(Json(row.try_into()?))
}

/// Delete a rule (admin). Its open alerts are resolved; its alerts stay in the history.
#[utoipa::path(delete, path = "/monitoring-rules/{id}", operation_id = "deleteMonitoringRule", tag = "monitoring", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "rule id")), responses((status = 204, description = "deleted")))]
pub(crate) async fn delete_rule(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<RuleId>,
) -> Result<StatusCode, ApiError> {
    let scope = member.require(Role::Admin)?;
    if MonitoringStore::new(scope).delete_rule(id, to_millis(clock.now())).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("monitoring rule"))
    }
}
