//! The tenant's event history: the API's `GET /events` (same type filter, same cursor paging,
//! tenant-scoped by the member), one line per event with a short summary and its JSON data.
//! The live event stream itself (`/ui/events/stream`) belongs to `overview`.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::layout::{self, empty, event_types, live, page, pager, when, FormErrors, Page, Section};
use super::session::Console;
use crate::app::AppState;
use crate::events::routes::{EventDto, EventListParams};
use crate::http::error::ApiError;
use crate::http::extract::ApiQuery;
use crate::http::ListResponse;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/ui/events", get(list))
}

/// A page of the history holds this many events.
const PAGE_SIZE: u32 = 50;

#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default, rename = "type")]
    event_type: String,
    cursor: Option<String>,
}

async fn list(State(state): State<AppState>, console: Console, Query(filters): Query<Filters>) -> Response {
    let params = EventListParams {
        event_type: Some(filters.event_type.clone()).filter(|t| !t.is_empty()),
        limit: Some(PAGE_SIZE),
        cursor: filters.cursor.clone().filter(|c| !c.is_empty()),
    };
    let answer = crate::events::routes::list_events(console.member.clone(), ApiQuery(params)).await;
    let (events, errors) = match answer {
        Ok(axum::Json(events)) => (events, FormErrors::none()),
        Err(error @ ApiError::Validation(_)) => {
            (ListResponse { items: Vec::new(), next_cursor: None }, FormErrors::from(error))
        }
        Err(error) => return layout::error_page(Some(&console), error),
    };
    let now = state.clock.now();
    let body = html! {
        (filter_form(&filters))
        (errors.summary(&[]))
        p.muted { "Oldest first (the order the API keeps them in); “Next page” leads to newer events, and new ones appear here as they happen." }
        (live("events", &event_types(&[""]), history(&events, &filters, now)))
    };
    Page::with_status(errors.status(), page(&console, Section::Events, "Events", body)).into_response()
}

fn filter_form(filters: &Filters) -> Markup {
    html! {
        form.filters method="get" action="/ui/events" role="search" {
            div.field {
                label for="f-type" { "Type" }
                select #f-type name="type" {
                    option value="" selected[filters.event_type.is_empty()] { "Any type" }
                    @for known in herd_domain::event::KNOWN_TYPES {
                        option value=(known) selected[filters.event_type == *known] { (known) }
                    }
                }
            }
            button.primary type="submit" { "Filter" }
            @if !filters.event_type.is_empty() {
                a.button href="/ui/events" { "Clear" }
            }
        }
    }
}

fn history(events: &ListResponse<EventDto>, filters: &Filters, now: DateTime<Utc>) -> Markup {
    html! {
        @if events.items.is_empty() {
            @if filters.event_type.is_empty() && filters.cursor.is_none() {
                (empty("No events yet", html! {
                    p { "Events record what happens in this tenant: devices registering, going offline, alerts, commands, rollouts." }
                    p { a.button.primary href="/ui/enrollment" { "Enroll a device" } }
                }))
            } @else {
                (empty("No event matches", html! { p { a href="/ui/events" { "Show every event" } } }))
            }
        } @else {
            ul.events {
                @for event in &events.items {
                    li {
                        span.nowrap { (when(now, Some(event.occurred_at))) }
                        a.badge href=(format!("/ui/events?type={}", event.event_type)) { code { (event.event_type) } }
                        span { (summary(&event.data)) }
                        details {
                            summary { "Data" }
                            pre { code { (serde_json::to_string_pretty(&event.data).unwrap_or_default()) } }
                        }
                    }
                }
            }
            (pager("/ui/events", &[("type", &filters.event_type)], events.next_cursor.as_deref(), filters.cursor.is_none()))
        }
    }
}

/// A few words from an event's data: a link to its device, then its most telling fields.
fn summary(data: &Value) -> Markup {
    let text = |key: &str| data.get(key).and_then(Value::as_str);
    let device = text("deviceId");
    let label = text("name").or(text("deviceName")).or(device);
    let details: Vec<String> = [
        ("from", "from"),
        ("to", "to"),
        ("status", "status"),
        ("state", "state"),
        ("metric", "metric"),
        ("severity", "severity"),
        ("version", "version"),
        ("via", "via"),
        ("reason", "reason"),
    ]
    .iter()
    .filter_map(|(key, word)| {
        let value = data.get(*key)?;
        let shown = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        Some(format!("{word} {shown}"))
    })
    .collect();
    html! {
        @if let (Some(device), Some(label)) = (device, label) {
            a href=(format!("/ui/devices/{device}")) { (label) }
            @if !details.is_empty() { " · " }
        }
        (details.join(" · "))
    }
}
