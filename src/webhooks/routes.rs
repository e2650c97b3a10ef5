//! Webhook routes (admin): subscribe, list, change, delete, and inspect deliveries.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{self, DeliveryRow, WebhookRow};
use crate::app::AppState;
use crate::auth::tokens;
use crate::auth::{Member, Role};
use crate::clock::to_millis;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, PageParams, Validate};
use crate::http::{time, ListResponse};
use crate::ids::WebhookId;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(list_deliveries))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookDto {
    pub id: String,
    pub url: String,
    /// Subscribed event types; empty means all.
    pub events: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub consecutive_failures: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<WebhookRow> for WebhookDto {
    fn from(row: WebhookRow) -> Self {
        Self {
            id: row.id.to_string(),
            url: row.url,
            events: row.events.0,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            consecutive_failures: row.consecutive_failures,
            created_at: time(row.created_at),
            updated_at: time(row.updated_at),
        }
    }
}

/// `Debug` (below) leaves the secret out.
#[derive(Deserialize, ToSchema)]
pub(crate) struct CreateWebhookRequest {
    pub url: String,
    /// Event types to deliver; absent or empty means all.
    #[serde(default)]
    pub events: Vec<String>,
    /// The HMAC signing key (16–256 characters); generated if absent.
    pub secret: Option<String>,
}

impl std::fmt::Debug for CreateWebhookRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateWebhookRequest")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &self.secret.as_ref().map(|_| REDACTED))
            .finish()
    }
}

/// What `Debug` shows instead of a webhook's signing secret.
const REDACTED: &str = "[redacted]";

fn check_events(errors: &mut FieldErrors, events: &[String]) {
    if events.len() > crate::events::KNOWN_TYPES.len() {
        errors.add("events", "lists too many types");
    }
    for (i, event) in events.iter().enumerate() {
        if !crate::events::KNOWN_TYPES.contains(&event.as_str()) {
            errors.add(format!("events[{i}]"), format!("unknown event type {event:?}"));
        }
    }
}

fn check_secret(errors: &mut FieldErrors, secret: Option<&str>) {
    if let Some(secret) = secret {
        if secret.len() < 16 || secret.len() > 256 || secret.chars().any(char::is_control) {
            errors.add("secret", "must be 16 to 256 printable characters");
        }
    }
}

impl Validate for CreateWebhookRequest {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        check_events(&mut errors, &self.events);
        check_secret(&mut errors, self.secret.as_deref());
        errors.finish()
    }
}

/// `Debug` (below) leaves the secret out.
#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedWebhook {
    pub webhook: WebhookDto,
    /// The signing secret. Shown once; herd never serves it again.
    pub secret: String,
}

impl std::fmt::Debug for CreatedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedWebhook").field("webhook", &self.webhook).field("secret", &REDACTED).finish()
    }
}

/// Subscribe a URL to events (admin). It receives events that happen from now on.
#[utoipa::path(post, path = "/webhooks", operation_id = "createWebhook", tag = "events", security(("apiToken" = []), ("sessionToken" = [])), request_body = CreateWebhookRequest,
    responses((status = 201, body = CreatedWebhook)))]
pub(crate) async fn create_webhook(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    State(settings): State<Arc<crate::config::Settings>>,
    member: Member,
    ApiJson(body): ApiJson<CreateWebhookRequest>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let scope = member.require(Role::Admin)?;
    let url =
        super::check_url(body.url.trim(), settings.webhook_allow_private).map_err(|m| ApiError::invalid("url", m))?;
    let secret =
        body.secret.unwrap_or_else(|| tokens::generate(tokens::TokenKind::Member).replacen("herd_at_", "whsec_", 1));
    let mut events = body.events;
    events.dedup();
    let row = store::create(scope, url.as_str(), &events, &secret, to_millis(clock.now())).await?;
    Ok((StatusCode::CREATED, Json(CreatedWebhook { webhook: row.into(), secret })))
}

/// List the tenant's webhooks (admin).
#[utoipa::path(get, path = "/webhooks", operation_id = "listWebhooks", tag = "events", security(("apiToken" = []), ("sessionToken" = [])), params(PageParams),
    responses((status = 200, body = ListResponse<WebhookDto>)))]
pub(crate) async fn list_webhooks(
    member: Member,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListResponse<WebhookDto>>, ApiError> {
    let scope = member.require(Role::Admin)?;
    let page = params.page()?;
    let rows = store::list(scope, page.after.as_deref(), page.limit + 1).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |r| r.id, WebhookDto::from)))
}

/// One webhook (admin).
#[utoipa::path(get, path = "/webhooks/{id}", operation_id = "getWebhook", tag = "events", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "webhook id")), responses((status = 200, body = WebhookDto)))]
pub(crate) async fn get_webhook(member: Member, IdPath(id): IdPath<WebhookId>) -> Result<Json<WebhookDto>, ApiError> {
    let scope = member.require(Role::Admin)?;
    let row = store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(row.into()))
}

/// `Debug` (below) leaves the secret out.
#[derive(Default, Deserialize, ToSchema)]
pub(crate) struct UpdateWebhookRequest {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub secret: Option<String>,
    /// `true` re-enables a disabled webhook and clears its failure count.
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for UpdateWebhookRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdateWebhookRequest")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &self.secret.as_ref().map(|_| REDACTED))
            .field("enabled", &self.enabled)
            .finish()
    }
}

impl Validate for UpdateWebhookRequest {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        if let Some(events) = &self.events {
            check_events(&mut errors, events);
        }
        check_secret(&mut errors, self.secret.as_deref());
        errors.finish()
    }
}

/// Change a webhook (admin).
#[utoipa::path(patch, path = "/webhooks/{id}", operation_id = "updateWebhook", tag = "events", security(("apiToken" = []), ("sessionToken" = [])), request_body = UpdateWebhookRequest,
    params(("id" = String, Path, description = "webhook id")), responses((status = 200, body = WebhookDto)))]
pub(crate) async fn update_webhook(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    State(settings): State<Arc<crate::config::Settings>>,
    member: Member,
    IdPath(id): IdPath<WebhookId>,
    ApiJson(body): ApiJson<UpdateWebhookRequest>,
) -> Result<Json<WebhookDto>, ApiError> {
    let scope = member.require(Role::Admin)?;
    let url = match &body.url {
        Some(url) => Some(
            super::check_url(url.trim(), settings.webhook_allow_private).map_err(|m| ApiError::invalid("url", m))?,
        ),
        None => None,
    };
    let row = store::update(
        scope,
        id,
        url.as_ref().map(|u| u.as_str()),
        body.events.as_deref(),
        body.secret.as_deref(),
        body.enabled,
        to_millis(clock.now()),
    )
    .await?
    .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(row.into()))
}

/// Delete a webhook and its delivery records (admin).
#[utoipa::path(delete, path = "/webhooks/{id}", operation_id = "deleteWebhook", tag = "events", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "webhook id")), responses((status = 204, description = "deleted")))]
pub(crate) async fn delete_webhook(member: Member, IdPath(id): IdPath<WebhookId>) -> Result<StatusCode, ApiError> {
    let scope = member.require(Role::Admin)?;
    if store::delete(scope, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook"))
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryDto {
    pub id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    /// `pending`, `in_flight`, `succeeded` or `dead` (gave up).
    #[schema(value_type = herd_domain::status::DeliveryStatus)]
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i64>,
    pub last_error: Option<String>,
    pub last_duration_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<DeliveryRow> for DeliveryDto {
    fn from(row: DeliveryRow) -> Self {
        Self {
            id: row.id.to_string(),
            webhook_id: row.webhook_id.to_string(),
            event_id: row.event_id.to_string(),
            event_type: row.event_type,
            status: row.status.to_string(),
            attempts: row.attempts,
            next_attempt_at: time(row.next_attempt_at),
            last_status_code: row.last_status_code,
            last_error: row.last_error,
            last_duration_ms: row.last_duration_ms,
            created_at: time(row.created_at),
            updated_at: time(row.updated_at),
        }
    }
}

/// The deliveries of a webhook, oldest first (admin).
#[utoipa::path(get, path = "/webhooks/{id}/deliveries", operation_id = "listWebhookDeliveries", tag = "events", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "webhook id"), PageParams), responses((status = 200, body = ListResponse<DeliveryDto>)))]
pub(crate) async fn list_deliveries(
    member: Member,
    IdPath(id): IdPath<WebhookId>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListResponse<DeliveryDto>>, ApiError> {
    let scope = member.require(Role::Admin)?;
    let page = params.page()?;
    store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("webhook"))?;
    let rows = store::list_deliveries(scope, id, page.after.as_deref(), page.limit + 1).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |r| r.id, DeliveryDto::from)))
}
