//! The certificate inventory: the tenant's device certificates (soonest expiry first), filters
//! by status and "expiring soon", revocation for admins, and the CA certificate and CRL links.
//!
//! Reads and revocation call the API's own handlers (`certificates::routes`) with the signed-in
//! member; the handler checks the admin role, the tenancy and that a revocation is final.
//! Device names come from the devices API's `get_device`, one call per device on the page.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use herd_pki::RevocationReason;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, badge, empty, event_types, field, live, may, page, pager, when, FormErrors, Page, Section};
use super::session::{Console, ConsoleForm};
use crate::app::AppState;
use crate::auth::Role;
use crate::certificates::routes::{CertificateDto, CertificateListParams, RevokeRequest};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery, IdPath};
use crate::http::ListResponse;
use herd_domain::ids::CertificateId;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/ui/certificates", get(list)).route("/ui/certificates/{id}/revoke", post(revoke))
}

/// A page of the inventory holds this many certificates.
const PAGE_SIZE: u32 = 50;
/// The "Expiring soon" view: certificates that expire within this many days.
const SOON_DAYS: &str = "30";

/// The inventory's filters, as the filter form (and each revoke form, to come back to the
/// same view) sends them.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    status: String,
    /// Days: only certificates whose `notAfter` is within this many days from now.
    #[serde(default)]
    expiring: String,
    cursor: Option<String>,
}

impl Filters {
    fn any(&self) -> bool {
        !(self.status.is_empty() && self.expiring.is_empty())
    }

    fn query(&self) -> [(&str, &str); 2] {
        [("status", &self.status), ("expiring", &self.expiring)]
    }

    fn url(&self) -> String {
        let pairs: Vec<(&str, &str)> = self.query().into_iter().filter(|(_, v)| !v.is_empty()).collect();
        match serde_urlencoded::to_string(&pairs).unwrap_or_default() {
            query if query.is_empty() => "/ui/certificates".to_string(),
            query => format!("/ui/certificates?{query}"),
        }
    }
}

/// A revoke form: the reason, and the view to come back to.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RevokeForm {
    #[serde(default)]
    reason: String,
    #[serde(flatten)]
    filters: Filters,
}

/// A revocation that failed, shown above the list (and beside that certificate's reason).
struct Failed {
    certificate_id: String,
    errors: FormErrors,
}

async fn list(State(state): State<AppState>, console: Console, Query(filters): Query<Filters>) -> Response {
    render(&state, &console, &filters, None).await
}

async fn render(state: &AppState, console: &Console, filters: &Filters, failed: Option<Failed>) -> Response {
    let mut errors = FormErrors::none();
    let expiring_within_days = match filters.expiring.trim() {
        "" => None,
        days => match days.parse::<u32>() {
            Ok(days) => Some(days),
            Err(_) => {
                errors = FormErrors::from(ApiError::invalid("expiringWithinDays", "must be a number of days"));
                None
            }
        },
    };
    let params = CertificateListParams {
        status: Some(filters.status.trim().to_string()).filter(|s| !s.is_empty()),
        expiring_within_days,
        device_id: None,
        limit: Some(PAGE_SIZE),
        cursor: filters.cursor.clone().filter(|c| !c.is_empty()),
    };
    let certificates = if errors.is_empty() {
        let answer = crate::certificates::routes::list_certificates(
            State(state.clock.clone()),
            console.member.clone(),
            ApiQuery(params),
        )
        .await;
        match answer {
            Ok(axum::Json(certificates)) => certificates,
            Err(error @ ApiError::Validation(_)) => {
                errors = FormErrors::from(error);
                ListResponse { items: Vec::new(), next_cursor: None }
            }
            Err(error) => return layout::error_page(Some(console), error),
        }
    } else {
        ListResponse { items: Vec::new(), next_cursor: None }
    };
    let names = device_names(state, console, &certificates.items).await;
    let status = match &failed {
        Some(failed) => failed.errors.status(),
        None => errors.status(),
    };
    let now = state.clock.now();
    let body = html! {
        (tabs(filters))
        (filter_form(filters, &errors))
        (errors.summary(&["status", "expiringWithinDays"]))
        @if let Some(failed) = &failed { (failed.errors.summary(&[])) }
        (live("certificates", &event_types(&["certificate."]),
            table(console, &certificates, &names, filters, failed.as_ref(), now)))
        (downloads())
    };
    Page::with_status(status, page(console, Section::Certificates, "Certificates", body)).into_response()
}

/// Each device's name on this page, by id (the API's `get_device`; a device that is gone
/// keeps its id).
async fn device_names(state: &AppState, console: &Console, certificates: &[CertificateDto]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for certificate in certificates {
        if names.contains_key(&certificate.device_id) {
            continue;
        }
        let Ok(id) = certificate.device_id.parse() else { continue };
        let answer =
            crate::devices::routes::get_device(State(state.heartbeats.clone()), console.member.clone(), IdPath(id))
                .await;
        if let Ok(axum::Json(device)) = answer {
            names.insert(certificate.device_id.clone(), device.name);
        }
    }
    names
}

fn tabs(filters: &Filters) -> Markup {
    let soon = filters.expiring == SOON_DAYS && filters.status.is_empty();
    let all = !filters.any();
    let soon_href = format!("/ui/certificates?expiring={SOON_DAYS}");
    layout::tabs(
        "Views",
        &[("/ui/certificates", "All certificates", all), (soon_href.as_str(), "Expiring soon (30 days)", soon)],
    )
}

fn filter_form(filters: &Filters, errors: &FormErrors) -> Markup {
    let option = |value: &str, label: &str, current: &str| {
        html! { option value=(value) selected[current == value] { (label) } }
    };
    html! {
        form.filters method="get" action="/ui/certificates" role="search" {
            (field(errors, "status", "Status", html! {
                select #f-status name="status" {
                    (option("", "Any", &filters.status))
                    (option("active", "Active", &filters.status))
                    (option("pending", "Pending", &filters.status))
                    (option("expired", "Expired", &filters.status))
                    (option("revoked", "Revoked", &filters.status))
                }
            }))
            (field(errors, "expiringWithinDays", "Expiring within", html! {
                select #f-expiringWithinDays name="expiring" {
                    (option("", "Any time", &filters.expiring))
                    (option("7", "7 days", &filters.expiring))
                    (option("30", "30 days", &filters.expiring))
                    (option("90", "90 days", &filters.expiring))
                    @if !["", "7", "30", "90"].contains(&filters.expiring.as_str()) {
                        (option(&filters.expiring, &format!("{} days", filters.expiring), &filters.expiring))
                    }
                }
            }))
            button.primary type="submit" { "Filter" }
            @if filters.any() {
                a.button href="/ui/certificates" { "Clear" }
            }
        }
    }
}

fn table(
    console: &Console,
    certificates: &ListResponse<CertificateDto>,
    names: &HashMap<String, String>,
    filters: &Filters,
    failed: Option<&Failed>,
    now: DateTime<Utc>,
) -> Markup {
    let admin = may(console, Role::Admin);
    html! {
        @if certificates.items.is_empty() {
            @if filters.any() || filters.cursor.is_some() {
                (empty("No certificate matches these filters", html! {
                    p { a href="/ui/certificates" { "Show every certificate" } }
                }))
            } @else {
                (empty("No certificates yet", html! {
                    p { "An admin issues a device its certificate from the API ("
                        code { "POST /devices/{id}/certificates" }
                        ", with the device's CSR or without one); devices renew their own with "
                        code { "POST /devices/self/certificates" } "." }
                    p { a href="/ui/devices" { "Go to the devices" } }
                }))
            }
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th { "Serial" } th { "Device" } th { "Status" } th { "Not after" } th.hide-narrow { "Key" }
                    @if admin { th { span.muted { "Revoke" } } }
                } }
                tbody {
                    @for certificate in &certificates.items {
                        tr {
                            td.mono title=(format!("SHA-256 {}", certificate.fingerprint)) { (certificate.serial_number) }
                            td {
                                a href=(format!("/ui/devices/{}", certificate.device_id)) {
                                    @match names.get(&certificate.device_id) {
                                        Some(name) => { (name) }
                                        None => { span.mono { (short(&certificate.device_id)) } }
                                    }
                                }
                            }
                            td.nowrap {
                                (badge(&certificate.status))
                                @if let Some(reason) = &certificate.revocation_reason {
                                    br; span.muted { (reason) " · " (when(now, certificate.revoked_at)) }
                                }
                            }
                            td.nowrap { (when(now, Some(certificate.not_after))) }
                            td.hide-narrow { (key_source(&certificate.key_source)) }
                            @if admin {
                                td { (revoke_form(console, certificate, filters, failed)) }
                            }
                        }
                    }
                }
            } }
            (pager("/ui/certificates", &filters.query(), certificates.next_cursor.as_deref(), filters.cursor.is_none()))
        }
    }
}

fn key_source(source: &str) -> &str {
    match source {
        "server" => "made by herd",
        "csr" => "device's own (CSR)",
        other => other,
    }
}

/// An admin's revoke form for a certificate that is not revoked or expired yet.
fn revoke_form(console: &Console, certificate: &CertificateDto, filters: &Filters, failed: Option<&Failed>) -> Markup {
    if !matches!(certificate.status.as_str(), "active" | "pending") {
        return html! {};
    }
    let id = format!("reason-{}", certificate.id);
    let error = failed.filter(|f| f.certificate_id == certificate.id).and_then(|f| f.errors.field("reason"));
    html! {
        form.inline method="post" action=(format!("/ui/certificates/{}/revoke", certificate.id))
            data-confirm=(format!("Revoke certificate {}? This is final: the device can no longer use it.", certificate.serial_number)) {
            (console.csrf_input())
            @for (name, value) in filters.query() {
                @if !value.is_empty() { input type="hidden" name=(name) value=(value); }
            }
            (reason_field(&id, error))
            button.danger.small type="submit" { "Revoke" }
        }
    }
}

/// The reason select of a revoke form (`id` is the select's id), with its error beside it:
/// every RFC 5280 reason whose revocation is final (the only ones the service accepts).
pub(super) fn reason_field(id: &str, error: Option<&str>) -> Markup {
    html! {
        div.field.invalid[error.is_some()] {
            label for=(id) { "Reason" }
            select id=(id) name="reason" {
                @for reason in RevocationReason::ALL.into_iter().filter(|r| r.is_final()) {
                    option value=(reason.as_str()) { (reason.as_str()) }
                }
            }
            @if let Some(message) = error {
                p.field-error id=(format!("{id}-error")) role="alert" { (message) }
            }
        }
    }
}

/// Revokes a certificate for `reason` through the API's handler (admin; final).
pub(super) async fn revoke_through_api(
    state: &AppState,
    console: &Console,
    certificate_id: CertificateId,
    reason: &str,
) -> Result<CertificateDto, ApiError> {
    let body = ApiJson::validated(RevokeRequest { reason: reason.to_string() })?;
    let axum::Json(revoked) = crate::certificates::routes::revoke_certificate(
        State(state.certificates.clone()),
        State(state.clock.clone()),
        console.member.clone(),
        IdPath(certificate_id),
        body,
    )
    .await?;
    Ok(revoked)
}

fn downloads() -> Markup {
    html! {
        section.card {
            h2 { "Downloads" }
            ul {
                li {
                    a href="/ca/certificate" { "CA certificate" } " (PEM): install it where devices or services "
                    "must trust the certificates herd issues."
                }
                li {
                    a href="/ca/crl" { "Certificate revocation list" } " (DER): what a verifier checks to refuse revoked "
                    "certificates; herd re-signs it at every revocation. "
                    a href="/ca/crl?format=pem" { "The same list in PEM" } " for tools that want text."
                }
            }
        }
    }
}

/// `POST /ui/certificates/{id}/revoke`: the API's revoke (admin), then back to the same view;
/// a refusal (already revoked, bad reason) shows on the list.
async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { console, form }: ConsoleForm<RevokeForm>,
) -> Response {
    let Ok(certificate_id) = id.parse() else {
        return layout::error_page(Some(&console), ApiError::not_found("certificate"));
    };
    match revoke_through_api(&state, &console, certificate_id, &form.reason).await {
        Ok(_) => Redirect::to(&form.filters.url()).into_response(),
        Err(error @ (ApiError::Forbidden(_) | ApiError::NotFound(_))) => layout::error_page(Some(&console), error),
        Err(error) => {
            let failed = Failed { certificate_id: id, errors: FormErrors::from(error) };
            let filters = Filters { cursor: None, ..form.filters };
            render(&state, &console, &filters, Some(failed)).await
        }
    }
}

/// The first block of a UUID, enough to tell ids apart on a page.
fn short(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}
