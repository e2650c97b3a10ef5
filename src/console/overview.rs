//! The fleet overview (the seed's stats overview), and the event stream the console's live
//! regions listen to.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};

use super::layout::{self, badge, empty, event_types, live, page, when, Page, Section};
use super::session::Console;
use crate::app::AppState;
use crate::http::extract::ApiQuery;
use crate::monitoring::overview::StatsOverview;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/ui/", get(overview)).route("/ui/events/stream", get(stream))
}

async fn overview(State(state): State<AppState>, console: Console) -> Response {
    let answer = crate::monitoring::overview::stats_overview(State(state.clock.clone()), console.member.clone()).await;
    match answer {
        Ok(axum::Json(stats)) => {
            let now = state.clock.now();
            let types = event_types(&[
                "device.status_changed",
                "device.registered",
                "device.deleted",
                "alert.",
                "rollout.",
                "device.update_state",
            ]);
            let body = live("overview", &types, render(&stats, now));
            Page::new(page(&console, Section::Overview, "Fleet overview", body)).into_response()
        }
        Err(error) => layout::error_page(Some(&console), error),
    }
}

fn percent(part: i64, total: i64) -> String {
    if total == 0 {
        "–".into()
    } else {
        format!("{:.0} %", part as f64 * 100.0 / total as f64)
    }
}

fn render(stats: &StatsOverview, now: chrono::DateTime<chrono::Utc>) -> Markup {
    let updates = &stats.updates;
    html! {
        @if stats.total == 0 {
            (empty("No devices yet", html! {
                p { "Devices join with an enrollment token: create one, then scan its QR code on the device or pass it to your set-up app." }
                p { a.button.primary href="/ui/enrollment" { "Create an enrollment token" } }
            }))
        }
        div.stats {
            div.stat { a href="/ui/devices" { span.value #stat-total { (stats.total) } span.label { "devices" } } }
            div.stat.ok { a href="/ui/devices?status=online" {
                span.value #stat-online { (stats.active) } span.label { "online · " (percent(stats.active, stats.total)) }
            } }
            div.stat.bad[stats.offline > 0] { a href="/ui/devices?status=offline" {
                span.value #stat-offline { (stats.offline) } span.label { "offline" }
            } }
            div.stat.warn[stats.alerts_last_24h > 0] { a href="/ui/alerts" {
                span.value #stat-alerts { (stats.alerts_last_24h) } span.label { "alerts in the last 24 h" }
            } }
        }
        div.grid-2 {
            section.card {
                h2 { "Recent alerts" }
                @if stats.recent_alerts.is_empty() {
                    p.muted { "No alerts. Rules under " a href="/ui/alerts/rules" { "Monitoring rules" } " decide when one opens." }
                } @else {
                    div.table-wrap { table {
                        thead { tr { th { "Severity" } th { "Device" } th { "Metric" } th.num { "Value" } th { "Opened" } th { "State" } } }
                        tbody {
                            @for alert in &stats.recent_alerts {
                                tr {
                                    td { (badge(&alert.severity)) }
                                    td { a href=(format!("/ui/devices/{}", alert.device_id)) { (alert.device_name) } }
                                    td { (alert.metric) }
                                    td.num { (format!("{:.1}", alert.value)) span.muted { " / " (format!("{:.0}", alert.threshold)) } }
                                    td.nowrap { (when(now, Some(alert.created_at))) }
                                    td { (badge(&alert.status)) }
                                }
                            }
                        }
                    } }
                }
            }
            section.card {
                h2 { "Software updates" }
                @if updates.running + updates.paused + updates.ready + updates.completed + updates.cancelled == 0 {
                    p.muted { "No rollouts yet. " a href="/ui/updates" { "Upload a package and start one." } }
                } @else {
                    dl.facts {
                        dt { "Running" } dd { (updates.running) }
                        dt { "Paused" } dd { (updates.paused) @if updates.paused > 0 { " " (badge("paused")) } }
                        dt { "Ready to start" } dd { (updates.ready) }
                        dt { "Completed" } dd { (updates.completed) }
                        dt { "Cancelled" } dd { (updates.cancelled) }
                    }
                    @let d = &updates.devices;
                    @let active = d.pending + d.notified + d.downloading + d.downloaded + d.installing;
                    @if active + d.installed + d.failed > 0 {
                        h3 { "Devices in running and paused rollouts" }
                        dl.facts {
                            dt { "Installed" } dd { (d.installed) }
                            dt { "In progress" } dd { (active) }
                            dt { "Failed" } dd { (d.failed) }
                        }
                    }
                    p { a href="/ui/updates" { "All rollouts →" } }
                }
            }
        }
    }
}

/// The tenant's event stream for the console's live regions: the API's `GET /events/stream`
/// (same types filter, same resumption, same caps and credential re-checks), authenticated by
/// the session cookie.
async fn stream(
    State(state): State<AppState>,
    console: Console,
    mut headers: HeaderMap,
    Query(params): Query<crate::events::routes::StreamParams>,
) -> Response {
    headers.insert(axum::http::header::AUTHORIZATION, console.authorization());
    match crate::events::routes::stream_events(State(state), console.member.clone(), headers, ApiQuery(params)).await {
        Ok(stream) => stream.into_response(),
        Err(error) => error.into_response(),
    }
}
