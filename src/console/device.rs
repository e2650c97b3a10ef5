//! One device's page (`/ui/devices/{id}`): its facts, metric charts, alerts, certificates,
//! settings and configuration, and commands, with the forms that act on them.
//!
//! Every read and every action calls the JSON API's own handler with the signed-in member, so
//! the page shows and does exactly what that member's API calls could: a viewer is drawn no
//! form, and a forged POST is refused by the handler's role check (the 403 page). Nothing here
//! touches the database or the blob store itself.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Duration, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::layout::{self, badge, empty, event_types, field, live, may, page, when, FormErrors, Page, Section};
use super::session::{Console, ConsoleForm};
use crate::app::AppState;
use crate::auth::Role;
use crate::certificates::routes::{CertificateBundle, CertificateDto};
use crate::commands::{DeviceCommandListParams, ExecutionDto, SendCommandDto};
use crate::configurations::{ConfigurationStatusDto, DisplayConfiguration, PutConfigurationDto};
use crate::devices::routes::DeviceDto;
use crate::http::error::{ApiError, FieldError};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, IdsPath, OptionalJson, PageParams};
use crate::monitoring::alerts::{AlertDto, AlertListParams};
use crate::settings::{DeviceSettingsDto, PutSettingsDto};
use crate::telemetry::routes::{HistoryParams, MetricsHistory};
use herd_domain::ids::{AlertId, CertificateId, CommandId, DeviceId};
use herd_domain::status::CommandType;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui/devices/{id}", get(show))
        .route("/ui/devices/{id}/commands", post(send_command))
        .route("/ui/devices/{id}/commands/{command_id}/cancel", post(cancel_command))
        .route("/ui/devices/{id}/commands/{command_id}/screenshot", get(screenshot))
        .route("/ui/devices/{id}/certificates", post(issue_certificate))
        .route("/ui/devices/{id}/certificates/{certificate_id}/revoke", post(revoke_certificate))
        .route("/ui/devices/{id}/alerts/{alert_id}/acknowledge", post(acknowledge_alert))
        .route("/ui/devices/{id}/settings", post(save_settings))
        .route("/ui/devices/{id}/configuration", post(save_configuration))
}

/// The page shows at most this many commands, newest first.
const COMMANDS_SHOWN: u32 = 20;
/// How many resolved alerts the page shows below the open ones.
const PAST_ALERTS_SHOWN: u32 = 10;

/// The time ranges of the charts: query value, words, length, and bucket width (at most a few
/// hundred points per chart).
const RANGES: [(&str, &str, i64, &str); 3] =
    [("1h", "1 h", 3_600, "1m"), ("24h", "24 h", 86_400, "5m"), ("7d", "7 d", 7 * 86_400, "1h")];

#[derive(Debug, Default, Deserialize)]
pub(super) struct View {
    #[serde(default)]
    range: String,
}

/// The chosen range (an unknown one is the default, 1 h).
fn range_of(view: &View) -> (&'static str, &'static str, i64, &'static str) {
    RANGES.iter().copied().find(|(name, ..)| *name == view.range).unwrap_or(RANGES[0])
}

/// The 404 page of a device id that does not parse: the same as a missing one.
fn no_device(console: &Console) -> Response {
    layout::error_page(Some(console), ApiError::not_found("device"))
}

/// What a failed form leaves for the page to draw again: the values typed and the errors.
#[derive(Debug, Default)]
struct Failed {
    status: Option<StatusCode>,
    command: Option<(CommandForm, FormErrors)>,
    cancel: Option<FormErrors>,
    alerts: Option<FormErrors>,
    revoke: Option<(String, FormErrors)>,
    issue: Option<FormErrors>,
    settings: Option<(SettingsForm, FormErrors)>,
    configuration: Option<(ConfigurationForm, FormErrors)>,
}

/// Everything the page shows, each read through the API's handler.
struct DeviceData {
    device: DeviceDto,
    metrics: MetricsHistory,
    open_alerts: Vec<AlertDto>,
    past_alerts: Vec<AlertDto>,
    certificates: Vec<CertificateDto>,
    settings: DeviceSettingsDto,
    configuration: ConfigurationStatusDto,
    commands: Vec<ExecutionDto>,
}

async fn load(
    state: &AppState,
    console: &Console,
    id: DeviceId,
    seconds: i64,
    bucket: &str,
) -> Result<DeviceData, ApiError> {
    let member = || console.member.clone();
    let now = state.clock.now();
    let axum::Json(device) =
        crate::devices::routes::get_device(State(state.heartbeats.clone()), member(), IdPath(id)).await?;
    let params = HistoryParams { from: Some(now - Duration::seconds(seconds)), to: None, bucket: Some(bucket.into()) };
    let axum::Json(metrics) =
        crate::telemetry::routes::history(State(state.clock.clone()), member(), IdPath(id), ApiQuery(params)).await?;
    let alerts = |status: &str, limit: u32| AlertListParams {
        status: Some(status.into()),
        device_id: Some(id.to_string()),
        limit: Some(limit),
        ..AlertListParams::default()
    };
    let axum::Json(open) = crate::monitoring::alerts::list_alerts(member(), ApiQuery(alerts("open", 100))).await?;
    let axum::Json(past) =
        crate::monitoring::alerts::list_alerts(member(), ApiQuery(alerts("resolved", PAST_ALERTS_SHOWN))).await?;
    let axum::Json(certificates) = crate::certificates::routes::list_device_certificates(
        State(state.clone()),
        member(),
        IdPath(id),
        ApiQuery(PageParams { limit: Some(100), cursor: None }),
    )
    .await?;
    let axum::Json(settings) = crate::settings::get_settings(member(), IdPath(id)).await?;
    let axum::Json(configuration) = crate::configurations::get_configuration(member(), IdPath(id)).await?;
    let commands = newest_commands(console, id).await?;
    let mut certificates = certificates.items;
    certificates.reverse();
    Ok(DeviceData {
        device,
        metrics,
        open_alerts: open.items,
        past_alerts: past.items,
        certificates,
        settings,
        configuration,
        commands,
    })
}

/// The device's newest commands, newest first (one page of the API's `order=newest` list).
async fn newest_commands(console: &Console, id: DeviceId) -> Result<Vec<ExecutionDto>, ApiError> {
    let params = DeviceCommandListParams {
        order: Some("newest".into()),
        limit: Some(COMMANDS_SHOWN),
        ..DeviceCommandListParams::default()
    };
    let axum::Json(page) =
        crate::commands::list_device_commands(console.member.clone(), IdPath(id), ApiQuery(params)).await?;
    Ok(page.items)
}

async fn show(
    State(state): State<AppState>,
    console: Console,
    Path(raw): Path<String>,
    Query(view): Query<View>,
) -> Response {
    let Ok(id) = raw.parse::<DeviceId>() else {
        return no_device(&console);
    };
    render(&state, &console, id, &view, Failed::default()).await
}

/// Draws the page (after a failed form, with its values and errors and the error's status).
async fn render(state: &AppState, console: &Console, id: DeviceId, view: &View, failed: Failed) -> Response {
    let (range, range_words, seconds, bucket) = range_of(view);
    let data = match load(state, console, id, seconds, bucket).await {
        Ok(data) => data,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let now = state.clock.now();
    let base = format!("/ui/devices/{id}");
    let body = html! {
        (live("device-status", &event_types(&["device.status_changed"]), facts(&data.device, now)))
        section.card #metrics {
            div.row {
                h2 { "Metrics" }
                span.spacer {}
                (layout::tabs("Time range", &RANGES.map(|(name, words, ..)| {
                    (format!("{base}?range={name}#metrics"), words, name == range)
                })))
            }
            (charts(&data.metrics, range_words, now))
        }
        (alerts(console, &data, &failed, now))
        (certificates(console, &data, &failed, now))
        (settings(console, &data, &failed))
        (configuration(console, &data, &failed))
        (commands(console, &data, &failed, now))
    };
    let status = failed.status.unwrap_or(StatusCode::OK);
    Page::with_status(status, page(console, Section::Devices, &data.device.name, body)).into_response()
}

fn dash(value: Option<&str>) -> &str {
    value.filter(|v| !v.is_empty()).unwrap_or("–")
}

fn facts(device: &DeviceDto, now: DateTime<Utc>) -> Markup {
    html! {
        section.card #facts {
            dl.facts {
                dt { "Status" } dd { (badge(device.status.as_str())) }
                dt { "Last seen" } dd { (when(now, device.last_seen)) }
                dt { "Serial number" } dd.mono { (dash(device.serial_number.as_deref())) }
                dt { "MAC address" } dd.mono { (dash(device.mac_address.as_deref())) }
                dt { "Android id" } dd.mono { (dash(device.android_id.as_deref())) }
                dt { "Model" } dd { (dash(device.model.as_deref())) }
                dt { "Manufacturer" } dd { (dash(device.manufacturer.as_deref())) }
                dt { "OS version" } dd { (dash(device.os_version.as_deref())) }
                dt { "App version" } dd { (dash(device.app_version.as_deref())) }
                dt { "Firmware version" } dd { (dash(device.firmware_version.as_deref())) }
                dt { "IP address" } dd.mono { (dash(device.ip_address.as_deref())) }
                dt { "Location" } dd { (dash(device.location.as_deref())) }
                dt { "Tags" } dd {
                    @if device.tags.is_empty() { span.muted { "none" } }
                    @for tag in &device.tags {
                        a.badge href=(format!("/ui/devices?tag={}", encode(tag))) { (tag) } " "
                    }
                }
                dt { "Created" } dd { (when(now, Some(device.created_at))) }
            }
        }
    }
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Charts

/// The drawing area of a chart, in SVG user units.
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 590.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 176.0;

/// What one chart draws: which metric, its words, and the scale of its values.
struct ChartSpec<'a> {
    metric: &'a str,
    label: &'a str,
    unit: &'a str,
    range_words: &'a str,
    /// The value at the bottom and at the top of the chart.
    y_range: (f64, f64),
    /// The time at the left and at the right edge.
    x_range: (DateTime<Utc>, DateTime<Utc>),
}

/// Places `(time, value)` points in the drawing area: time left to right over `x_range`,
/// values bottom to top over `y_range` (clamped to it).
fn scale_points(
    points: &[(DateTime<Utc>, f64)],
    x_range: (DateTime<Utc>, DateTime<Utc>),
    y_range: (f64, f64),
) -> Vec<(f64, f64)> {
    let (from, to) = (x_range.0.timestamp_millis() as f64, x_range.1.timestamp_millis() as f64);
    let span = (to - from).max(1.0);
    let (low, high) = y_range;
    let height = (high - low).max(f64::EPSILON);
    points
        .iter()
        .map(|(at, value)| {
            let x = LEFT + ((at.timestamp_millis() as f64 - from) / span).clamp(0.0, 1.0) * (RIGHT - LEFT);
            let y = BOTTOM - ((value - low) / height).clamp(0.0, 1.0) * (BOTTOM - TOP);
            (x, y)
        })
        .collect()
}

/// A metric's line over time as an SVG: grid lines with value labels, the first and last time
/// of the range, and the series (`data-points` says how many points it has).
fn chart_svg(spec: &ChartSpec<'_>, points: &[(DateTime<Utc>, f64)], time_format: &str) -> Markup {
    let scaled = scale_points(points, spec.x_range, spec.y_range);
    let polyline: Vec<String> = scaled.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let (low, high) = spec.y_range;
    let ticks: Vec<(f64, f64)> = (0..=4)
        .map(|i| {
            let value = low + (high - low) * f64::from(i) / 4.0;
            (value, BOTTOM - (BOTTOM - TOP) * f64::from(i) / 4.0)
        })
        .collect();
    let unit = if spec.unit.is_empty() { String::new() } else { format!(" ({})", spec.unit) };
    let aria = format!("{}{} over the last {}", spec.label, unit, spec.range_words);
    html! {
        svg.chart data-metric=(spec.metric) role="img" aria-label=(aria) viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
            xmlns="http://www.w3.org/2000/svg" {
            @for (value, y) in &ticks {
                line.grid-line x1=(LEFT) x2=(RIGHT) y1=(format!("{y:.1}")) y2=(format!("{y:.1}")) {}
                text x=(LEFT - 6.0) y=(format!("{:.1}", y + 4.0)) text-anchor="end" { (format!("{value:.0}")) }
            }
            line.axis x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(BOTTOM) {}
            line.axis x1=(LEFT) x2=(RIGHT) y1=(BOTTOM) y2=(BOTTOM) {}
            text x=(LEFT) y=(HEIGHT - 6.0) text-anchor="start" { (spec.x_range.0.format(time_format).to_string()) }
            text x=(RIGHT) y=(HEIGHT - 6.0) text-anchor="end" { (spec.x_range.1.format(time_format).to_string()) }
            polyline.series data-points=(scaled.len()) points=(polyline.join(" ")) {}
            // A few samples in a long range are a short stroke: mark each so none is missed.
            @if scaled.len() <= 60 {
                @for (x, y) in &scaled { circle.point cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="2.5" {} }
            }
        }
    }
}

/// A temperature scale that holds every value, in whole tens of degrees.
fn temperature_range(values: &[f64]) -> (f64, f64) {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !low.is_finite() || !high.is_finite() {
        return (0.0, 100.0);
    }
    let low = (low / 10.0).floor() * 10.0;
    let high = ((high / 10.0).ceil() * 10.0).max(low + 10.0);
    (low, high)
}

fn charts(metrics: &MetricsHistory, range_words: &str, now: DateTime<Utc>) -> Markup {
    if metrics.buckets.is_empty() {
        return empty(
            &format!("This device has not sent metrics in the last {range_words}"),
            html! {
                p { "Devices post CPU, RAM, storage and temperature samples to "
                    code { "POST /devices/metrics" } " with their device token; they appear here as they arrive." }
                @if let Some(latest) = &metrics.latest {
                    p { "Its newest sample is from " (when(now, Some(latest.recorded_at))) ": try a longer range." }
                }
            },
        );
    }
    let time_format = if range_words == "7 d" { "%b %d" } else { "%H:%M UTC" };
    let x_range = (metrics.from, now);
    let series = |pick: fn(&crate::telemetry::routes::Bucket) -> Option<f64>| -> Vec<(DateTime<Utc>, f64)> {
        metrics.buckets.iter().filter_map(|b| pick(b).map(|v| (b.start, v))).collect()
    };
    let latest = metrics.latest.as_ref();
    let percent = (0.0, 100.0);
    let cpu = series(|b| Some(b.cpu.avg));
    let ram = series(|b| Some(b.ram.avg));
    let storage = series(|b| Some(b.storage.avg));
    let temperature = series(|b| b.temperature.as_ref().map(|t| t.avg));
    let temperature_values: Vec<f64> = temperature.iter().map(|(_, v)| *v).collect();
    let cards = [
        ("cpu", "CPU", "%", latest.map(|s| s.cpu), cpu, percent),
        ("ram", "RAM", "%", latest.map(|s| s.ram), ram, percent),
        ("storage", "Storage", "%", latest.map(|s| s.storage), storage, percent),
        (
            "temperature",
            "Temperature",
            "°C",
            latest.and_then(|s| s.temperature),
            temperature,
            temperature_range(&temperature_values),
        ),
    ];
    html! {
        div.grid-2 {
            @for (metric, label, unit, current, points, y_range) in &cards {
                div.card {
                    div.chart-title {
                        h3 { (label) }
                        @if let Some(value) = current {
                            strong { (format!("{value:.1} {unit}")) }
                        }
                    }
                    @if points.is_empty() {
                        p.muted { "No " (label.to_lowercase()) " readings in the last " (range_words) "." }
                    } @else {
                        (chart_svg(&ChartSpec { metric, label, unit, range_words, y_range: *y_range, x_range }, points, time_format))
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Alerts

fn alerts(console: &Console, data: &DeviceData, failed: &Failed, now: DateTime<Utc>) -> Markup {
    let id = &data.device.id;
    let row = |alert: &AlertDto| {
        html! {
            tr {
                td { (badge(&alert.severity)) }
                td { (alert.rule_name) }
                td { (alert.metric) }
                td.num { (format!("{:.1}", alert.last_value)) span.muted { " / " (format!("{:.1}", alert.threshold)) } }
                td.nowrap { (when(now, Some(alert.created_at))) }
                td {
                    (badge(&alert.status))
                    @if alert.acknowledged_at.is_some() { " " (badge("acknowledged")) }
                }
                td {
                    @if alert.status == "open" && alert.acknowledged_at.is_none() && may(console, Role::Operator) {
                        form.inline method="post" action=(format!("/ui/devices/{id}/alerts/{}/acknowledge", alert.id)) {
                            (console.csrf_input())
                            button.small type="submit" { "Acknowledge" }
                        }
                    }
                }
            }
        }
    };
    html! {
        section.card #alerts {
            h2 { "Alerts" }
            @if let Some(errors) = &failed.alerts { (errors.summary(&[])) }
            @if data.open_alerts.is_empty() && data.past_alerts.is_empty() {
                p.muted { "No alerts for this device. Rules under " a href="/ui/alerts/rules" { "Monitoring rules" } " decide when one opens." }
            } @else {
                div.table-wrap { table {
                    thead { tr { th { "Severity" } th { "Rule" } th { "Metric" } th.num { "Value / threshold" } th { "Opened" } th { "State" } th { span.muted { "Action" } } } }
                    tbody {
                        @for alert in &data.open_alerts { (row(alert)) }
                        @for alert in &data.past_alerts { (row(alert)) }
                    }
                } }
            }
        }
    }
}

async fn acknowledge_alert(
    State(state): State<AppState>,
    Path((raw, alert)): Path<(String, String)>,
    ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>,
) -> Response {
    let Ok(id) = raw.parse::<DeviceId>() else {
        return no_device(&console);
    };
    let Ok(alert) = alert.parse::<AlertId>() else {
        return layout::error_page(Some(&console), ApiError::not_found("alert"));
    };
    match crate::monitoring::alerts::acknowledge_alert(
        State(state.clock.clone()),
        console.member.clone(),
        IdPath(alert),
    )
    .await
    {
        Ok(_) => Redirect::to(&format!("/ui/devices/{id}#alerts")).into_response(),
        Err(error) => refused(&state, &console, id, error, |failed, errors| failed.alerts = Some(errors)).await,
    }
}

/// After a refused form: the 403/404 page, or the device page again with the errors.
async fn refused(
    state: &AppState,
    console: &Console,
    id: DeviceId,
    error: ApiError,
    place: impl FnOnce(&mut Failed, FormErrors),
) -> Response {
    if matches!(error, ApiError::Forbidden(_) | ApiError::NotFound(_)) {
        return layout::error_page(Some(console), error);
    }
    let errors = FormErrors::from(error);
    let mut failed = Failed { status: Some(errors.status()), ..Failed::default() };
    place(&mut failed, errors);
    render(state, console, id, &View::default(), failed).await
}

// ---------------------------------------------------------------------------------------------
// Certificates

fn certificates(console: &Console, data: &DeviceData, failed: &Failed, now: DateTime<Utc>) -> Markup {
    let id = &data.device.id;
    let admin = may(console, Role::Admin);
    html! {
        section.card #certificates {
            div.row {
                h2 { "Certificates" }
                span.spacer {}
                @if admin {
                    form.inline method="post" action=(format!("/ui/devices/{id}/certificates")) {
                        (console.csrf_input())
                        button.primary type="submit" { "Issue certificate" }
                    }
                }
            }
            @if let Some(errors) = &failed.issue { (errors.summary(&[])) }
            @if data.certificates.is_empty() {
                p.muted { "This device has no certificate. "
                    @if admin { "Issue one here (herd generates the key) or through the API with the device's CSR." }
                    @else { "An admin can issue one." } }
            } @else {
                div.table-wrap { table {
                    thead { tr { th { "Serial" } th { "Status" } th { "Not after" } th { "Key" } th { span.muted { "Action" } } } }
                    tbody {
                        @for certificate in &data.certificates {
                            tr {
                                td.mono { (certificate.serial_number) }
                                td {
                                    (badge(&certificate.status))
                                    @if let Some(reason) = &certificate.revocation_reason { " " span.muted { (reason) } }
                                }
                                td.nowrap {
                                    (certificate.not_after.format("%Y-%m-%d").to_string())
                                    " · " @if certificate.not_after > now { "expires " } @else { "expired " }
                                    (when(now, Some(certificate.not_after)))
                                }
                                td { (certificate.key_source) }
                                td {
                                    @if admin && certificate.status == "active" {
                                        (revoke_form(console, id, certificate, failed))
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    }
}

fn revoke_form(console: &Console, device_id: &str, certificate: &CertificateDto, failed: &Failed) -> Markup {
    let errors = failed.revoke.as_ref().filter(|(id, _)| *id == certificate.id).map(|(_, errors)| errors);
    let select_id = format!("reason-{}", certificate.id);
    let error = errors.and_then(|e| e.field("reason"));
    html! {
        form.row method="post" action=(format!("/ui/devices/{device_id}/certificates/{}/revoke", certificate.id))
            data-confirm="Revoke this certificate? Devices using it lose access." {
            (console.csrf_input())
            (super::certificates::reason_field(&select_id, error))
            button.danger type="submit" { "Revoke" }
            @if let Some(errors) = errors { (errors.summary(&["reason"])) }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RevokeForm {
    #[serde(default)]
    reason: String,
}

async fn revoke_certificate(
    State(state): State<AppState>,
    Path((raw, certificate)): Path<(String, String)>,
    ConsoleForm { console, form }: ConsoleForm<RevokeForm>,
) -> Response {
    let Ok(id) = raw.parse::<DeviceId>() else {
        return no_device(&console);
    };
    let Ok(certificate_id) = certificate.parse::<CertificateId>() else {
        return layout::error_page(Some(&console), ApiError::not_found("certificate"));
    };
    let answer = async {
        // The form names the device too: a certificate of another device is not found here.
        let axum::Json(certificate) =
            crate::certificates::routes::get_certificate(console.member.clone(), IdPath(certificate_id)).await?;
        if certificate.device_id != id.to_string() {
            return Err(ApiError::not_found("certificate"));
        }
        super::certificates::revoke_through_api(&state, &console, certificate_id, &form.reason).await
    }
    .await;
    match answer {
        Ok(_) => Redirect::to(&format!("/ui/devices/{id}#certificates")).into_response(),
        Err(error) => {
            refused(&state, &console, id, error, |failed, errors| {
                failed.revoke = Some((certificate_id.to_string(), errors))
            })
            .await
        }
    }
}

async fn issue_certificate(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>,
) -> Response {
    let Ok(id) = raw.parse::<DeviceId>() else {
        return no_device(&console);
    };
    // No body: herd generates the key and answers it this once.
    let answer = crate::certificates::routes::issue_certificate(
        State(state.certificates.clone()),
        State(state.clock.clone()),
        console.member.clone(),
        IdPath(id),
        OptionalJson(None),
    )
    .await;
    match answer {
        Ok((_, axum::Json(bundle))) => issued_page(&console, id, &bundle),
        Err(error) => refused(&state, &console, id, error, |failed, errors| failed.issue = Some(errors)).await,
    }
}

/// The one time the private key of a server-generated certificate is shown.
fn issued_page(console: &Console, id: DeviceId, bundle: &CertificateBundle) -> Response {
    let body = html! {
        div.alert.warn role="alert" {
            p { strong { "Copy the private key now." } " herd does not keep it readable: this page is the only time it is shown. Install it on the device with the certificate, and do not send it by e-mail or chat." }
        }
        section.card {
            dl.facts {
                dt { "Serial" } dd.mono { (bundle.certificate.serial_number) }
                dt { "Subject" } dd { (bundle.certificate.subject) }
                dt { "Not after" } dd { (bundle.certificate.not_after.format("%Y-%m-%d %H:%M UTC").to_string()) }
            }
            @if let Some(key) = &bundle.private_key_pem {
                div.field {
                    label for="private-key" { "Private key (PKCS#8 PEM)" }
                    textarea #private-key readonly rows="8" { (key) }
                }
            }
            div.field {
                label for="certificate-pem" { "Certificate (PEM)" }
                textarea #certificate-pem readonly rows="8" { (bundle.certificate_pem) }
            }
            div.field {
                label for="ca-pem" { "CA certificate (PEM)" }
                textarea #ca-pem readonly rows="8" { (bundle.ca_certificate_pem) }
            }
            p { a.button href=(format!("/ui/devices/{id}#certificates")) { "Back to the device" } }
        }
    };
    Page::with_status(StatusCode::CREATED, page(console, Section::Devices, "Certificate issued", body)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Settings and configuration

#[derive(Debug, Default, Deserialize)]
pub(super) struct SettingsForm {
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    timezone: String,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    tags: String,
    version: Option<i64>,
}

impl SettingsForm {
    fn of(settings: &DeviceSettingsDto) -> Self {
        SettingsForm {
            display_name: settings.display_name.clone().unwrap_or_default(),
            location: settings.location.clone().unwrap_or_default(),
            timezone: settings.timezone.clone().unwrap_or_default(),
            notes: settings.notes.clone().unwrap_or_default(),
            tags: settings.tags.join(", "),
            version: Some(settings.version),
        }
    }
}

fn optional(text: &str) -> Option<String> {
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

fn settings(console: &Console, data: &DeviceData, failed: &Failed) -> Markup {
    let id = &data.device.id;
    let settings = &data.settings;
    let none = FormErrors::none();
    let (form, errors) = match &failed.settings {
        Some((form, errors)) => (form, errors),
        None => (&SettingsForm::of(settings), &none),
    };
    html! {
        section.card #settings {
            h2 { "Settings" }
            @if may(console, Role::Operator) {
                form.stack method="post" action=(format!("/ui/devices/{id}/settings")) {
                    (console.csrf_input())
                    @if let Some(version) = form.version { input type="hidden" name="version" value=(version); }
                    (errors.summary(&["displayName", "location", "timezone", "notes", "tags"]))
                    (field(errors, "displayName", "Display name", html! {
                        input #f-displayName name="display_name" value=(form.display_name);
                    }))
                    (field(errors, "location", "Location", html! {
                        input #f-location name="location" value=(form.location);
                    }))
                    (field(errors, "timezone", "Time zone", html! {
                        input #f-timezone name="timezone" value=(form.timezone) placeholder="e.g. Europe/Berlin";
                    }))
                    (field(errors, "tags", "Tags (comma-separated)", html! {
                        input #f-tags name="tags" value=(form.tags);
                    }))
                    (field(errors, "notes", "Notes", html! {
                        textarea #f-notes name="notes" rows="3" { (form.notes) }
                    }))
                    button.primary type="submit" { "Save settings" }
                }
            } @else {
                dl.facts {
                    dt { "Display name" } dd { (dash(settings.display_name.as_deref())) }
                    dt { "Location" } dd { (dash(settings.location.as_deref())) }
                    dt { "Time zone" } dd { (dash(settings.timezone.as_deref())) }
                    dt { "Notes" } dd { (dash(settings.notes.as_deref())) }
                }
            }
        }
    }
}

async fn save_settings(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ConsoleForm { console, form }: ConsoleForm<SettingsForm>,
) -> Response {
    let Ok(id) = raw.parse::<DeviceId>() else {
        return no_device(&console);
    };
    let body = PutSettingsDto {
        display_name: optional(&form.display_name),
        location: optional(&form.location),
        timezone: optional(&form.timezone),
        notes: optional(&form.notes),
        tags: form.tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
        version: form.version,
    };
    let answer = match ApiJson::validated(body) {
        Ok(body) => crate::settings::put_settings(State(state.clock.clone()), console.member.clone(), IdPath(id), body)
            .await
            .map(|_| ()),
        Err(error) => Err(error),
    };
    match answer {
        Ok(()) => Redirect::to(&format!("/ui/devices/{id}#settings")).into_response(),
        Err(error) => {
            let error = fold_fields(error, "tags");
            refused(&state, &console, id, error, |failed, errors| failed.settings = Some((form, errors))).await
        }
    }
}

/// The configuration's fields, as the table lists them (JSON names).
const CONFIGURATION_FIELDS: [(&str, &str); 6] = [
    ("resolution", "Resolution"),
    ("orientation", "Orientation"),
    ("brightness", "Brightness (%)"),
    ("volume", "Volume (%)"),
    ("screenSchedule", "Screen schedule"),
    ("kioskApp", "Kiosk app"),
];

/// One field of a configuration as text ("–" when not set).
fn configuration_value(configuration: Option<&DisplayConfiguration>, name: &str) -> String {
    let value = configuration.and_then(|c| serde_json::to_value(c).ok()).and_then(|v| v.get(name).cloned());
    match value {
        None | Some(Value::Null) => "–".into(),
        Some(Value::String(text)) => text,
        Some(other) => other.to_string(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ConfigurationForm {
    #[serde(default)]
    configuration: String,
    version: Option<i64>,
}

fn configuration(console: &Console, data: &DeviceData, failed: &Failed) -> Markup {
    let id = &data.device.id;
    let status = &data.configuration;
    let none = FormErrors::none();
    let desired_text = serde_json::to_string_pretty(&status.desired).unwrap_or_default();
    let (text, version, errors) = match &failed.configuration {
        Some((form, errors)) => (form.configuration.clone(), form.version, errors),
        None => (desired_text, Some(status.desired_version), &none),
    };
    html! {
        section.card #configuration {
            h2 { "Configuration" }
            p.muted {
                "Desired version " (status.desired_version) "; "
                @match status.reported_version {
                    Some(reported) => { "the device last reported version " (reported) "." }
                    None => { "the device has not reported what it applied yet." }
                }
                @if status.in_sync { " " (badge("in sync")) }
            }
            div.table-wrap { table {
                thead { tr { th { "Setting" } th { "Desired" } th { "Reported" } th { span.muted { "Difference" } } } }
                tbody {
                    @for (name, label) in CONFIGURATION_FIELDS {
                        @let differs = status.differences.iter().any(|d| d == name);
                        tr.differs[differs] {
                            th scope="row" { (label) }
                            td.mono { (configuration_value(Some(&status.desired), name)) }
                            td.mono { (configuration_value(status.reported.as_ref(), name)) }
                            td { @if differs { (badge("differs")) } }
                        }
                    }
                }
            } }
            @if may(console, Role::Operator) {
                form.stack method="post" action=(format!("/ui/devices/{id}/configuration")) {
                    (console.csrf_input())
                    @if let Some(version) = version { input type="hidden" name="version" value=(version); }
                    (errors.summary(&["configuration"]))
                    (field(errors, "configuration", "Desired configuration (JSON; null leaves a setting unmanaged)", html! {
                        textarea #f-configuration.mono name="configuration" rows="9" { (text) }
                    }))
                    button.primary type="submit" { "Save configuration" }
                }
            }
        }
    }
}

async fn save_configuration(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ConsoleForm { console, form }: ConsoleForm<ConfigurationForm>,
) -> Response {
    let Ok(id) = raw.parse::<DeviceId>() else {
        return no_device(&console);
    };
    let text = if form.configuration.trim().is_empty() { "{}" } else { form.configuration.as_str() };
    let answer = match serde_json::from_str::<DisplayConfiguration>(text) {
        Err(error) => Err(ApiError::invalid("configuration", format!("is not a valid configuration: {error}"))),
        Ok(configuration) => match ApiJson::validated(PutConfigurationDto { configuration, version: form.version }) {
            Ok(body) => crate::configurations::put_configuration(
                State(state.clock.clone()),
                console.member.clone(),
                IdPath(id),
                body,
            )
            .await
            .map(|_| ()),
            Err(error) => Err(error),
        },
    };
    match answer {
        Ok(()) => Redirect::to(&format!("/ui/devices/{id}#configuration")).into_response(),
        Err(error) => {
            let error = fold_fields(error, "configuration");
            refused(&state, &console, id, error, |failed, errors| failed.configuration = Some((form, errors))).await
        }
    }
}

/// Gathers the field errors under `prefix` (`payload.url`, `tags[2]`) onto `prefix` itself,
/// which is the one form field that holds them, naming the part each is about.
fn fold_fields(error: ApiError, prefix: &str) -> ApiError {
    let ApiError::Validation(fields) = error else { return error };
    let mut folded: Vec<FieldError> = Vec::new();
    let mut messages: Vec<String> = Vec::new();
    for error in fields {
        match error.field.strip_prefix(prefix) {
            Some("") => messages.push(error.message),
            Some(rest) if rest.starts_with('.') || rest.starts_with('[') => {
                messages.push(format!("{}: {}", rest.trim_start_matches('.'), error.message))
            }
            _ => folded.push(error),
        }
    }
    if !messages.is_empty() {
        folded.push(FieldError { field: prefix.to_string(), message: messages.join("; ") });
    }
    ApiError::Validation(folded)
}

// ---------------------------------------------------------------------------------------------
// Commands

#[derive(Debug, Default, Deserialize)]
pub(super) struct CommandForm {
    #[serde(default, rename = "type")]
    command_type: String,
    #[serde(default)]
    payload: String,
}

fn commands(console: &Console, data: &DeviceData, failed: &Failed, now: DateTime<Utc>) -> Markup {
    let id = &data.device.id;
    let none = FormErrors::none();
    let empty_form = CommandForm::default();
    let (form, errors) = match &failed.command {
        Some((form, errors)) => (form, errors),
        None => (&empty_form, &none),
    };
    let operator = may(console, Role::Operator);
    html! {
        section.card #send-commands {
            h2 { "Commands" }
            @if operator {
                form.stack method="post" action=(format!("/ui/devices/{id}/commands")) {
                    (console.csrf_input())
                    (errors.summary(&["type", "payload"]))
                    (field(errors, "type", "Command", html! {
                        select #f-type name="type" {
                            @for command_type in CommandType::ALL {
                                option value=(command_type.as_str()) selected[form.command_type == command_type.as_str()] {
                                    (command_type.as_str().replace('_', " "))
                                }
                            }
                        }
                    }))
                    (field(errors, "payload", "Payload (JSON, optional)", html! {
                        textarea #f-payload.mono name="payload" rows="3" placeholder="e.g. {\"url\": \"https://example.com\"}" { (form.payload) }
                    }))
                    button.primary type="submit" { "Send command" }
                }
            }
            @if let Some(errors) = &failed.cancel { (errors.summary(&[])) }
            (live("commands", &event_types(&["command."]), command_list(console, data, operator, now)))
        }
    }
}

fn command_list(console: &Console, data: &DeviceData, operator: bool, now: DateTime<Utc>) -> Markup {
    let id = &data.device.id;
    html! {
        @if data.commands.is_empty() {
            p.muted { "No commands sent to this device yet."
                @if operator { " Choose one above: the device gets it on its next poll, or when it comes back online." } }
        } @else {
            div.table-wrap { table {
                thead { tr { th { "Command" } th { "State" } th { "Queued" } th { "Result" } th { span.muted { "Action" } } } }
                tbody {
                    @for command in &data.commands {
                        tr {
                            td { (command.command_type.as_str().replace('_', " ")) }
                            td { (badge(command.state.as_str())) }
                            td.nowrap { (when(now, Some(command.queued_at))) }
                            td {
                                @if let Some(error) = &command.error { span.field-error { (error) } }
                                @else if let Some(result) = &command.result { code { (shorten(&result.to_string(), 200)) } }
                                @else if let Some(message) = &command.message { (message) }
                                @if command.command_type == CommandType::Screenshot
                                    && command.state == herd_domain::status::CommandState::Succeeded
                                    && command.screenshot.is_some() {
                                    img.screenshot
                                        src=(format!("/ui/devices/{id}/commands/{}/screenshot", command.command_id))
                                        alt=(format!("Screenshot from {}", data.device.name));
                                }
                            }
                            td {
                                @if operator && command.state == herd_domain::status::CommandState::Queued {
                                    form.inline method="post" action=(format!("/ui/devices/{id}/commands/{}/cancel", command.command_id)) {
                                        (console.csrf_input())
                                        button.small type="submit" { "Cancel" }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
        }
    }
}

fn shorten(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(limit).collect();
        cut.push('…');
        cut
    }
}

async fn send_command(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    ConsoleForm { console, form }: ConsoleForm<CommandForm>,
) -> Response {
    let Ok(id) = raw.parse::<DeviceId>() else {
        return no_device(&console);
    };
    let answer = async {
        let command_type = form.command_type.parse::<CommandType>().map_err(|_| {
            let known: Vec<&str> = CommandType::ALL.iter().map(|t| t.as_str()).collect();
            ApiError::invalid("type", format!("must be one of {}", known.join(", ")))
        })?;
        let payload = match form.payload.trim() {
            "" => None,
            text => Some(
                serde_json::from_str::<Value>(text)
                    .map_err(|error| ApiError::invalid("payload", format!("is not valid JSON: {error}")))?,
            ),
        };
        let body =
            ApiJson::validated(SendCommandDto { command_type, payload, expires_at: None, timeout_seconds: None })?;
        crate::commands::send_to_device(
            State(state.clock.clone()),
            State(state.command_waiters.clone()),
            console.member.clone(),
            IdPath(id),
            body,
        )
        .await
    }
    .await;
    match answer {
        Ok(_) => Redirect::to(&format!("/ui/devices/{id}#commands")).into_response(),
        Err(error) => {
            let error = fold_fields(error, "payload");
            refused(&state, &console, id, error, |failed, errors| failed.command = Some((form, errors))).await
        }
    }
}

async fn cancel_command(
    State(state): State<AppState>,
    Path((raw, command)): Path<(String, String)>,
    ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>,
) -> Response {
    let Ok(id) = raw.parse::<DeviceId>() else {
        return no_device(&console);
    };
    let Ok(command_id) = command.parse::<CommandId>() else {
        return layout::error_page(Some(&console), ApiError::not_found("command"));
    };
    let answer = crate::commands::cancel_device_command(
        State(state.clock.clone()),
        console.member.clone(),
        IdsPath(id, command_id),
    )
    .await;
    match answer {
        Ok(_) => Redirect::to(&format!("/ui/devices/{id}#commands")).into_response(),
        Err(error) => refused(&state, &console, id, error, |failed, errors| failed.cancel = Some(errors)).await,
    }
}

/// The screenshot a command brought back: the API's answer, for the session's member.
async fn screenshot(
    State(state): State<AppState>,
    console: Console,
    Path((raw, command)): Path<(String, String)>,
) -> Response {
    let (Ok(id), Ok(command_id)) = (raw.parse::<DeviceId>(), command.parse::<CommandId>()) else {
        return layout::error_page(Some(&console), ApiError::not_found("screenshot"));
    };
    match crate::commands::screenshots::get_screenshot(
        State(state.blobs.clone()),
        console.member.clone(),
        IdsPath(id, command_id),
    )
    .await
    {
        Ok(response) => response,
        Err(error) => layout::error_page(Some(&console), error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().unwrap_or_default() + Duration::minutes(minute)
    }

    #[test]
    fn points_are_scaled_into_the_drawing_area() {
        let points = [(at(0), 0.0), (at(30), 50.0), (at(60), 100.0), (at(15), 250.0)];
        let scaled = scale_points(&points, (at(0), at(60)), (0.0, 100.0));
        assert_eq!(scaled[0], (LEFT, BOTTOM), "the first time and the lowest value: bottom left");
        assert_eq!(scaled[2], (RIGHT, TOP), "the last time and the highest value: top right");
        assert!((scaled[1].0 - (LEFT + RIGHT) / 2.0).abs() < 1e-9 && (scaled[1].1 - (TOP + BOTTOM) / 2.0).abs() < 1e-9);
        assert_eq!(scaled[3].1, TOP, "a value above the scale is clamped to the top");
        // A scale that does not start at zero (temperature).
        let warm = scale_points(&[(at(60), 30.0)], (at(0), at(60)), (20.0, 40.0));
        assert!((warm[0].1 - (TOP + BOTTOM) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn the_svg_names_its_metric_and_counts_its_points() {
        let spec = ChartSpec {
            metric: "cpu",
            label: "CPU",
            unit: "%",
            range_words: "1 h",
            y_range: (0.0, 100.0),
            x_range: (at(0), at(59)),
        };
        let svg = chart_svg(&spec, &[(at(0), 10.0), (at(30), 20.0), (at(59), 30.0)], "%H:%M").into_string();
        assert!(svg.contains(r#"data-metric="cpu""#), "{svg}");
        assert!(svg.contains(r#"aria-label="CPU (%) over the last 1 h""#), "{svg}");
        assert!(svg.contains(r#"data-points="3""#), "{svg}");
        assert!(svg.contains(">12:00<") && svg.contains(">12:59<"), "first and last time: {svg}");
        assert!(svg.contains(">100<") && svg.contains(">0<"), "the percentage scale: {svg}");
    }

    #[test]
    fn temperature_scales_to_its_data() {
        assert_eq!(temperature_range(&[41.0, 57.5]), (40.0, 60.0));
        assert_eq!(temperature_range(&[30.0]), (30.0, 40.0));
        assert_eq!(temperature_range(&[]), (0.0, 100.0));
    }
}
