//! Webhooks (under "Enrollment & access"): the list, subscribing a URL, enabling, disabling and
//! deleting, and one webhook's recent deliveries. Every read and action is the API's handler
//! (`webhooks::routes`, admin-only there), called with the signed-in member.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::access::{admin_only, secret_once, tabs, Tab};
use super::layout::{self, badge, empty, field, page, pager, when, FormErrors, Page, Section};
use super::session::{Console, ConsoleForm};
use crate::app::AppState;
use crate::auth::Role;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery, IdPath, PageParams};
use crate::http::ListResponse;
use crate::ids::WebhookId;
use crate::webhooks::routes::{CreateWebhookRequest, DeliveryDto, UpdateWebhookRequest, WebhookDto};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui/webhooks", get(list).post(create))
        .route("/ui/webhooks/{id}", get(detail))
        .route("/ui/webhooks/{id}/enable", post(enable))
        .route("/ui/webhooks/{id}/disable", post(disable))
        .route("/ui/webhooks/{id}/delete", post(delete))
}

/// A page of each list holds this many rows.
const PAGE_SIZE: u32 = 50;

#[derive(Debug, Default, Deserialize)]
pub(super) struct Cursor {
    cursor: Option<String>,
}

impl Cursor {
    fn params(&self) -> PageParams {
        PageParams { limit: Some(PAGE_SIZE), cursor: self.cursor.clone().filter(|c| !c.is_empty()) }
    }
}

/// The create form as sent: its fields repeat (one `events` per ticked box), so it is read as
/// pairs rather than a struct.
#[derive(Debug, Default)]
struct WebhookForm {
    url: String,
    events: Vec<String>,
    enabled: bool,
}

impl WebhookForm {
    fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        let mut form = WebhookForm::default();
        for (key, value) in pairs {
            match key.as_str() {
                "url" => form.url = value,
                "events" => form.events.push(value),
                "enabled" => form.enabled = true,
                _ => {}
            }
        }
        form
    }
}

fn id_of(raw: &str) -> Result<IdPath<WebhookId>, ApiError> {
    layout::path_id(raw, "webhook")
}

async fn list(State(state): State<AppState>, console: Console, Query(cursor): Query<Cursor>) -> Response {
    let form = WebhookForm { enabled: true, ..WebhookForm::default() };
    render_list(&state, &console, &cursor, &form, FormErrors::none()).await
}

async fn render_list(
    state: &AppState,
    console: &Console,
    cursor: &Cursor,
    form: &WebhookForm,
    errors: FormErrors,
) -> Response {
    let title = "Webhooks";
    if let Some(refusal) = admin_only(console, Tab::Webhooks, title, "Managing webhooks") {
        return refusal;
    }
    let hooks = match crate::webhooks::routes::list_webhooks(console.member.clone(), ApiQuery(cursor.params())).await {
        Ok(axum::Json(hooks)) => hooks,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let now = state.clock.now();
    let body = html! {
        (tabs(Tab::Webhooks))
        p.lead { "A webhook receives this tenant's events as signed HTTP POSTs (see "
            code { "docs/webhooks.md" } " for checking the signature)." }
        (create_form(console, form, &errors))
        h2 { "Webhooks" }
        (table(console, &hooks, cursor, now))
    };
    Page::with_status(errors.status(), page(console, Section::Enrollment, title, body)).into_response()
}

fn create_form(console: &Console, form: &WebhookForm, errors: &FormErrors) -> Markup {
    let event_error = errors.field("events").is_some()
        || herd_domain::event::KNOWN_TYPES
            .iter()
            .enumerate()
            .any(|(i, _)| errors.field(&format!("events[{i}]")).is_some());
    let shown: Vec<String> = std::iter::once("url".to_string())
        .chain(std::iter::once("events".to_string()))
        .chain((0..herd_domain::event::KNOWN_TYPES.len()).map(|i| format!("events[{i}]")))
        .collect();
    let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
    html! {
        section.card {
            h2 { "New webhook" }
            (errors.summary(&shown))
            form.stack method="post" action="/ui/webhooks" {
                (console.csrf_input())
                (field(errors, "url", "URL", html! {
                    input #f-url name="url" type="url" value=(form.url) required placeholder="https://example.com/herd-events";
                }))
                fieldset {
                    legend { "Events (none ticked: every event)" }
                    @if event_error {
                        p.field-error role="alert" { "Choose event types from this list." }
                    }
                    div.checks {
                        @for (i, event) in herd_domain::event::KNOWN_TYPES.iter().enumerate() {
                            @let id = format!("f-event-{i}");
                            label for=(id) {
                                input id=(id) type="checkbox" name="events" value=(event) checked[form.events.iter().any(|e| e == event)];
                                " " code { (event) }
                            }
                        }
                    }
                }
                div.field {
                    label for="f-enabled" {
                        input #f-enabled type="checkbox" name="enabled" value="true" checked[form.enabled];
                        " Enabled (deliver events from now on)"
                    }
                }
                button.primary type="submit" { "Create the webhook" }
            }
        }
    }
}

/// A webhook's state in one word.
fn state_of(hook: &WebhookDto) -> &'static str {
    if hook.enabled {
        if hook.consecutive_failures > 0 {
            "failing"
        } else {
            "active"
        }
    } else {
        "disabled"
    }
}

fn events_text(hook: &WebhookDto) -> String {
    if hook.events.is_empty() {
        "every event".into()
    } else {
        hook.events.join(", ")
    }
}

fn table(console: &Console, hooks: &ListResponse<WebhookDto>, cursor: &Cursor, now: DateTime<Utc>) -> Markup {
    html! {
        @if hooks.items.is_empty() {
            (empty("No webhooks yet", html! { p { "Subscribe a URL above to receive this tenant's events." } }))
        } @else {
            div.table-wrap { table {
                thead { tr { th { "URL" } th { "Events" } th { "State" } th.num { "Failures in a row" } th { "Created" } th { span.muted { "Actions" } } } }
                tbody {
                    @for hook in &hooks.items {
                        tr {
                            td.mono { a href=(format!("/ui/webhooks/{}", hook.id)) { (hook.url) } }
                            td { (events_text(hook)) }
                            td {
                                (badge(state_of(hook)))
                                @if let Some(reason) = &hook.disabled_reason { br; span.muted { (reason) } }
                            }
                            td.num { (hook.consecutive_failures) }
                            td.nowrap { (when(now, Some(hook.created_at))) }
                            td.nowrap { (actions(console, hook)) }
                        }
                    }
                }
            } }
            (pager("/ui/webhooks", &[], hooks.next_cursor.as_deref(), cursor.cursor.is_none()))
        }
    }
}

fn actions(console: &Console, hook: &WebhookDto) -> Markup {
    html! {
        @if hook.enabled {
            form.inline method="post" action=(format!("/ui/webhooks/{}/disable", hook.id)) {
                (console.csrf_input())
                button.small type="submit" { "Disable" }
            }
        } @else {
            form.inline method="post" action=(format!("/ui/webhooks/{}/enable", hook.id)) {
                (console.csrf_input())
                button.small type="submit" { "Enable" }
            }
        }
        " "
        form.inline method="post" action=(format!("/ui/webhooks/{}/delete", hook.id))
            data-confirm=(format!("Delete the webhook to {} and its delivery records?", hook.url)) {
            (console.csrf_input())
            button.small.danger type="submit" { "Delete" }
        }
    }
}

async fn create(
    State(state): State<AppState>,
    ConsoleForm { console, form }: ConsoleForm<Vec<(String, String)>>,
) -> Response {
    let form = WebhookForm::from_pairs(form);
    let request = CreateWebhookRequest { url: form.url.trim().to_string(), events: form.events.clone(), secret: None };
    let created = match ApiJson::validated(request) {
        Ok(request) => {
            crate::webhooks::routes::create_webhook(
                State(state.clock.clone()),
                State(state.settings.clone()),
                console.member.clone(),
                request,
            )
            .await
        }
        Err(error) => Err(error),
    };
    let created = match created {
        Ok((_, axum::Json(created))) => created,
        Err(error @ (ApiError::Forbidden(_) | ApiError::NotFound(_))) => {
            return layout::error_page(Some(&console), error)
        }
        Err(error) => return render_list(&state, &console, &Cursor::default(), &form, error.into()).await,
    };
    let mut hook = created.webhook;
    if !form.enabled {
        match set_enabled(&state, &console, &hook.id, false).await {
            Ok(updated) => hook = updated,
            Err(error) => return layout::error_page(Some(&console), error),
        }
    }
    let body = html! {
        (tabs(Tab::Webhooks))
        (secret_once(&format!("Webhook to {} created.", hook.url), &created.secret))
        p { "Deliveries are signed with this secret; the receiver checks the signature with it." }
        p { a href=(format!("/ui/webhooks/{}", hook.id)) { "Open the webhook" } " · " a href="/ui/webhooks" { "Back to the webhooks" } }
    };
    Page::with_status(StatusCode::CREATED, page(&console, Section::Enrollment, "Webhook created", body)).into_response()
}

async fn set_enabled(state: &AppState, console: &Console, id: &str, enabled: bool) -> Result<WebhookDto, ApiError> {
    let request =
        ApiJson::validated(UpdateWebhookRequest { enabled: Some(enabled), ..UpdateWebhookRequest::default() })?;
    let axum::Json(hook) = crate::webhooks::routes::update_webhook(
        State(state.clock.clone()),
        State(state.settings.clone()),
        console.member.clone(),
        id_of(id)?,
        request,
    )
    .await?;
    Ok(hook)
}

async fn enable(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>,
) -> Response {
    switch(&state, &console, &id, true).await
}

async fn disable(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>,
) -> Response {
    switch(&state, &console, &id, false).await
}

async fn switch(state: &AppState, console: &Console, id: &str, enabled: bool) -> Response {
    match set_enabled(state, console, id, enabled).await {
        Ok(hook) => Redirect::to(&format!("/ui/webhooks/{}", hook.id)).into_response(),
        Err(error) => layout::error_page(Some(console), error),
    }
}

async fn delete(Path(id): Path<String>, ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>) -> Response {
    let answer = match id_of(&id) {
        Ok(id) => crate::webhooks::routes::delete_webhook(console.member.clone(), id).await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(_) => Redirect::to("/ui/webhooks").into_response(),
        Err(error) => layout::error_page(Some(&console), error),
    }
}

async fn detail(
    State(state): State<AppState>,
    console: Console,
    Path(id): Path<String>,
    Query(cursor): Query<Cursor>,
) -> Response {
    if let Some(refusal) = super::session::refusal(&console, Role::Admin) {
        return refusal;
    }
    let hook = match id_of(&id) {
        Ok(id) => crate::webhooks::routes::get_webhook(console.member.clone(), id).await,
        Err(error) => Err(error),
    };
    let hook = match hook {
        Ok(axum::Json(hook)) => hook,
        Err(error) => return layout::error_page(Some(&console), error),
    };
    let deliveries = match id_of(&id) {
        Ok(id) => crate::webhooks::routes::list_deliveries(console.member.clone(), id, ApiQuery(cursor.params())).await,
        Err(error) => Err(error),
    };
    let deliveries = match deliveries {
        Ok(axum::Json(deliveries)) => deliveries,
        Err(error) => return layout::error_page(Some(&console), error),
    };
    let now = state.clock.now();
    let base = format!("/ui/webhooks/{}", hook.id);
    let body = html! {
        (tabs(Tab::Webhooks))
        section.card {
            h2 { "Settings" }
            dl.facts {
                dt { "URL" } dd.mono { (hook.url) }
                dt { "Events" } dd { (events_text(&hook)) }
                dt { "State" } dd {
                    (badge(state_of(&hook)))
                    @if let Some(reason) = &hook.disabled_reason { " " span.muted { (reason) } }
                }
                dt { "Failures in a row" } dd { (hook.consecutive_failures) }
                dt { "Created" } dd { (when(now, Some(hook.created_at))) }
                dt { "Changed" } dd { (when(now, Some(hook.updated_at))) }
            }
            div.row { (actions(&console, &hook)) }
        }
        h2 { "Deliveries" }
        p.muted { "Oldest first, as the API lists them; follow “Next page” for newer ones." }
        @if deliveries.items.is_empty() {
            (empty("No deliveries yet", html! {
                p { "Events that happen from now on and match this webhook's types are delivered here." }
            }))
        } @else {
            (deliveries_table(&deliveries, now))
            (pager(&base, &[], deliveries.next_cursor.as_deref(), cursor.cursor.is_none()))
        }
        p { a href="/ui/webhooks" { "← All webhooks" } }
    };
    Page::new(page(&console, Section::Enrollment, "Webhook", body)).into_response()
}

fn deliveries_table(deliveries: &ListResponse<DeliveryDto>, now: DateTime<Utc>) -> Markup {
    html! {
        div.table-wrap { table {
            thead { tr {
                th { "Event" } th { "Status" } th.num { "Attempts" } th.num { "Response" } th { "Last error" }
                th { "Created" } th { "Next attempt" }
            } }
            tbody {
                @for delivery in &deliveries.items {
                    tr {
                        td { code { (delivery.event_type) } }
                        td { (badge(&delivery.status)) }
                        td.num { (delivery.attempts) }
                        td.num { (delivery.last_status_code.map(|c| c.to_string()).unwrap_or_else(|| "–".into())) }
                        td { (delivery.last_error.as_deref().unwrap_or("–")) }
                        td.nowrap { (when(now, Some(delivery.created_at))) }
                        td.nowrap {
                            @if matches!(delivery.status.as_str(), "pending" | "in_flight") {
                                (when(now, Some(delivery.next_attempt_at)))
                            } @else { span.muted { "–" } }
                        }
                    }
                }
            }
        } }
    }
}
