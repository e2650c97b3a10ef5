//! The device list: search, status and tag filters, cursor paging (the API's `GET /devices`,
//! one indexed page per request however large the fleet).

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, badge, empty, event_types, field, live, page, pager, when, FormErrors, Page, Section};
use super::session::Console;
use crate::app::AppState;
use crate::devices::routes::{DeviceDto, DeviceListParams};
use crate::http::extract::ApiQuery;
use crate::http::ListResponse;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/ui/devices", get(list))
}

/// A page of the list holds this many devices.
const PAGE_SIZE: u32 = 50;

#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    tag: String,
    cursor: Option<String>,
}

async fn list(State(state): State<AppState>, console: Console, Query(filters): Query<Filters>) -> Response {
    let params = DeviceListParams {
        status: Some(filters.status.clone()).filter(|s| !s.is_empty()),
        q: Some(filters.q.trim().to_string()).filter(|s| !s.is_empty()),
        tag: Some(filters.tag.trim().to_string()).filter(|s| !s.is_empty()),
        limit: Some(PAGE_SIZE),
        cursor: filters.cursor.clone().filter(|c| !c.is_empty()),
    };
    let answer =
        crate::devices::routes::list_devices(State(state.heartbeats.clone()), console.member.clone(), ApiQuery(params))
            .await;
    let (devices, errors) = match answer {
        Ok(axum::Json(devices)) => (devices, FormErrors::none()),
        Err(error @ crate::http::error::ApiError::Validation(_)) => {
            (ListResponse { items: Vec::new(), next_cursor: None }, FormErrors::from(error))
        }
        Err(error) => return layout::error_page(Some(&console), error),
    };
    let now = state.clock.now();
    let types = event_types(&["device.status_changed", "device.registered", "device.deleted"]);
    let body = html! {
        (filter_form(&filters, &errors))
        (errors.summary(&["q", "status", "tag"]))
        (live("devices", &types, table(&devices, &filters, now)))
    };
    Page::with_status(errors.status(), page(&console, Section::Devices, "Devices", body)).into_response()
}

fn filter_form(filters: &Filters, errors: &FormErrors) -> Markup {
    html! {
        form.filters method="get" action="/ui/devices" role="search" {
            (field(errors, "q", "Search name or serial", html! {
                input #f-q name="q" type="search" value=(filters.q) placeholder="e.g. lobby or SN-0042";
            }))
            (field(errors, "status", "Status", html! {
                select #f-status name="status" {
                    option value="" selected[filters.status.is_empty()] { "Any" }
                    option value="online" selected[filters.status == "online"] { "Online" }
                    option value="offline" selected[filters.status == "offline"] { "Offline" }
                }
            }))
            (field(errors, "tag", "Tag", html! {
                input #f-tag name="tag" value=(filters.tag) placeholder="e.g. lobby";
            }))
            button.primary type="submit" { "Filter" }
            @if !(filters.q.is_empty() && filters.status.is_empty() && filters.tag.is_empty()) {
                a.button href="/ui/devices" { "Clear" }
            }
        }
    }
}

fn table(devices: &ListResponse<DeviceDto>, filters: &Filters, now: chrono::DateTime<chrono::Utc>) -> Markup {
    let filtered = !(filters.q.is_empty() && filters.status.is_empty() && filters.tag.is_empty());
    html! {
        @if devices.items.is_empty() {
            @if filtered || filters.cursor.is_some() {
                (empty("No device matches these filters", html! { p { a href="/ui/devices" { "Show every device" } } }))
            } @else {
                (empty("No devices yet", html! {
                    p { "A device registers itself with an enrollment token (" code { "POST /devices/auto-register" } ")." }
                    p { a.button.primary href="/ui/enrollment" { "Create an enrollment token" } }
                }))
            }
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th { "Name" } th { "Status" } th { "Last seen" } th.hide-narrow { "Model" }
                    th.hide-narrow { "Serial" } th.hide-narrow { "Tags" }
                } }
                tbody {
                    @for device in &devices.items {
                        tr {
                            td { a href=(format!("/ui/devices/{}", device.id)) { (device.name) } }
                            td { (badge(device.status.as_str())) }
                            td.nowrap { (when(now, device.last_seen)) }
                            td.hide-narrow { (device.model.as_deref().unwrap_or("–")) }
                            td.hide-narrow.mono { (device.serial_number.as_deref().unwrap_or("–")) }
                            td.hide-narrow {
                                @for tag in &device.tags {
                                    a.badge href=(format!("/ui/devices?tag={}", encode(tag))) { (tag) } " "
                                }
                            }
                        }
                    }
                }
            } }
            (pager("/ui/devices", &[("q", &filters.q), ("status", &filters.status), ("tag", &filters.tag)],
                devices.next_cursor.as_deref(), filters.cursor.is_none()))
        }
    }
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
