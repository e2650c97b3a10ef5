//! Enrollment & access: enrollment tokens (with the QR code a device's set-up app scans), API
//! tokens and users. Every list and action is the API's own handler (`auth::routes`), called
//! with the signed-in member, so the admin-only rules are the API's; a member without the admin
//! role sees a note instead of lists and forms, and a forged form still gets the API's 403.
//!
//! A new secret (enrollment token, API token) is shown once, on the page that answers the
//! creating form: it is never stored by the console and never put in a URL.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Duration, Utc};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;

use super::layout::{self, badge, empty, field, may, page, pager, path_id, when, FormErrors, Page, Section};
use super::session::{Console, ConsoleForm};
use crate::app::AppState;
use crate::auth::routes::{
    CreateEnrollmentTokenRequest, CreateTokenRequest, CreateUserRequest, EnrollmentTokenDto, TokenDto, UserDto,
};
use crate::auth::Role;
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, ApiQuery, PageParams};
use crate::http::ListResponse;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui/enrollment", get(enrollment_page).post(create_enrollment_token))
        .route("/ui/enrollment/{id}/revoke", post(revoke_enrollment_token))
        .route("/ui/enrollment/api-tokens", get(api_tokens_page).post(create_api_token))
        .route("/ui/enrollment/api-tokens/{id}/revoke", post(revoke_api_token))
        .route("/ui/enrollment/users", get(users_page).post(create_user))
        .route("/ui/enrollment/users/{id}/delete", post(delete_user))
}

/// A page of each list holds this many rows.
const PAGE_SIZE: u32 = 50;

/// The pages under "Enrollment & access", in the order of their sub-navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tab {
    EnrollmentTokens,
    ApiTokens,
    Users,
    Webhooks,
}

/// The sub-navigation of the section (the webhooks page draws it too).
pub(super) fn tabs(current: Tab) -> Markup {
    layout::tabs(
        "Enrollment & access",
        &[
            ("/ui/enrollment", "Enrollment tokens", current == Tab::EnrollmentTokens),
            ("/ui/enrollment/api-tokens", "API tokens", current == Tab::ApiTokens),
            ("/ui/enrollment/users", "Users", current == Tab::Users),
            ("/ui/webhooks", "Webhooks", current == Tab::Webhooks),
        ],
    )
}

/// The page a member without the admin role gets instead of `tab`'s lists and forms (`None`
/// for an admin): the API would refuse its reads and actions anyway.
pub(super) fn admin_only(console: &Console, tab: Tab, title: &str, what: &str) -> Option<Response> {
    if may(console, Role::Admin) {
        return None;
    }
    let body = html! {
        (tabs(tab))
        div.alert.warn role="note" {
            p { (what) " needs the admin role; yours is " strong { (console.member.role.as_str()) } "." }
            p { "Ask an admin of this tenant if you need a token, a user or a webhook." }
        }
    };
    Some(Page::new(page(console, Section::Enrollment, title, body)).into_response())
}

/// A secret shown once, with a copy button (`console.js` copies `#new-secret`).
pub(super) fn secret_once(label: &str, secret: &str) -> Markup {
    html! {
        div.alert.ok role="status" {
            p { strong { (label) } " Copy it now: herd keeps only its hash and will not show it again." }
        }
        div.secret {
            code #new-secret { (secret) }
            button type="button" data-copy="new-secret" { "Copy" }
        }
    }
}

/// The `cursor` of a list page.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Cursor {
    cursor: Option<String>,
}

impl Cursor {
    fn params(&self) -> PageParams {
        PageParams { limit: Some(PAGE_SIZE), cursor: self.cursor.clone().filter(|c| !c.is_empty()) }
    }
}

/// A failed action: a refusal or a missing resource is an error page; anything the member can
/// correct (a field, a conflict) re-renders the form beside its fields.
fn refused(error: &ApiError) -> bool {
    matches!(error, ApiError::Forbidden(_) | ApiError::NotFound(_) | ApiError::Unauthorized(_))
}

/// "Expires in" choices of the create forms: hours, or empty for never.
const EXPIRY_CHOICES: [(&str, &str); 6] = [
    ("", "Never"),
    ("1", "In 1 hour"),
    ("24", "In 1 day"),
    ("168", "In 7 days"),
    ("720", "In 30 days"),
    ("8760", "In 1 year"),
];

fn expiry_select(name: &str, chosen: &str) -> Markup {
    html! {
        select id=(layout::field_id(name)) name=(name) {
            @for (value, label) in EXPIRY_CHOICES {
                option value=(value) selected[value == chosen] { (label) }
            }
        }
    }
}

/// The expiry a form's choice of hours means (`field` names the API's field for errors).
fn expiry_from(now: DateTime<Utc>, field: &str, hours: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let hours = hours.trim();
    if hours.is_empty() {
        return Ok(None);
    }
    match hours.parse::<i64>() {
        Ok(h) if (1..=24 * 366 * 10).contains(&h) => Ok(Some(now + Duration::hours(h))),
        _ => Err(ApiError::invalid(field, "choose one of the offered expiries")),
    }
}

// ---------------------------------------------------------------------------------------------
// Enrollment tokens

#[derive(Debug, Default, Deserialize)]
pub(super) struct EnrollmentForm {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "expiresAt")]
    expires_in: String,
    #[serde(default, rename = "maxUses")]
    max_uses: String,
}

async fn enrollment_page(State(state): State<AppState>, console: Console, Query(cursor): Query<Cursor>) -> Response {
    render_enrollment(&state, &console, &cursor, &EnrollmentForm::default(), FormErrors::none()).await
}

async fn render_enrollment(
    state: &AppState,
    console: &Console,
    cursor: &Cursor,
    form: &EnrollmentForm,
    errors: FormErrors,
) -> Response {
    let title = "Enrollment tokens";
    if let Some(refusal) = admin_only(console, Tab::EnrollmentTokens, title, "Managing enrollment tokens") {
        return refusal;
    }
    let answer = crate::auth::routes::list_enrollment_tokens(console.member.clone(), ApiQuery(cursor.params())).await;
    let tokens = match answer {
        Ok(axum::Json(tokens)) => tokens,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let now = state.clock.now();
    let body = html! {
        (tabs(Tab::EnrollmentTokens))
        p.lead {
            "A device joins this tenant by presenting an enrollment token to "
            code { "POST /devices/auto-register" } ". Give tokens an expiry and a use limit: anyone "
            "who holds one can register new devices until it expires, is used up or is revoked."
        }
        (enrollment_form(console, form, &errors))
        (enrollment_table(console, &tokens, cursor, now))
    };
    Page::with_status(errors.status(), page(console, Section::Enrollment, title, body)).into_response()
}

fn enrollment_form(console: &Console, form: &EnrollmentForm, errors: &FormErrors) -> Markup {
    html! {
        section.card {
            h2 { "New enrollment token" }
            (errors.summary(&["name", "expiresAt", "maxUses"]))
            form.stack method="post" action="/ui/enrollment" {
                (console.csrf_input())
                (field(errors, "name", "Label", html! {
                    input #f-name name="name" value=(form.name) maxlength="200" placeholder="e.g. lobby screens, March batch";
                }))
                (field(errors, "expiresAt", "Expires", expiry_select("expiresAt", &form.expires_in)))
                (field(errors, "maxUses", "Maximum registrations (empty: unlimited)", html! {
                    input #f-maxUses name="maxUses" type="number" min="1" max="100000000" value=(form.max_uses) inputmode="numeric";
                }))
                button.primary type="submit" { "Create the token" }
            }
        }
    }
}

fn enrollment_state(token: &EnrollmentTokenDto, now: DateTime<Utc>) -> &'static str {
    if token.revoked_at.is_some() {
        "revoked"
    } else if token.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else if token.max_uses.is_some_and(|max| token.uses >= max) {
        "used_up"
    } else {
        "active"
    }
}

fn enrollment_table(
    console: &Console,
    tokens: &ListResponse<EnrollmentTokenDto>,
    cursor: &Cursor,
    now: DateTime<Utc>,
) -> Markup {
    html! {
        h2 { "Tokens" }
        @if tokens.items.is_empty() {
            (empty("No enrollment tokens yet", html! {
                p { "Create one above, then scan its QR code with the device's set-up app or pass the token to it." }
            }))
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th { "Label" } th.num { "Uses" } th { "Expires" } th { "Created" } th { "State" } th { span.muted { "Actions" } }
                } }
                tbody {
                    @for token in &tokens.items {
                        @let state = enrollment_state(token, now);
                        tr {
                            td { (token.name) }
                            td.num { (token.uses) " / " (token.max_uses.map(|m| m.to_string()).unwrap_or_else(|| "∞".into())) }
                            td.nowrap { @if token.expires_at.is_some() { (when(now, token.expires_at)) } @else { span.muted { "never" } } }
                            td.nowrap { (when(now, Some(token.created_at))) }
                            td { (badge(state)) }
                            td {
                                @if token.revoked_at.is_none() {
                                    form.inline method="post" action=(format!("/ui/enrollment/{}/revoke", token.id))
                                        data-confirm=(format!("Revoke the enrollment token {}? Devices it registered keep working.", token.name)) {
                                        (console.csrf_input())
                                        button.small.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
            (pager("/ui/enrollment", &[], tokens.next_cursor.as_deref(), cursor.cursor.is_none()))
        }
    }
}

async fn create_enrollment_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    ConsoleForm { console, form }: ConsoleForm<EnrollmentForm>,
) -> Response {
    let now = state.clock.now();
    let request = (|| {
        let max_uses = match form.max_uses.trim() {
            "" => None,
            text => Some(text.parse::<i64>().map_err(|_| ApiError::invalid("maxUses", "must be a whole number"))?),
        };
        let name = Some(form.name.trim().to_string()).filter(|n| !n.is_empty());
        let request = CreateEnrollmentTokenRequest {
            name,
            expires_at: expiry_from(now, "expiresAt", &form.expires_in)?,
            max_uses,
        };
        ApiJson::validated(request)
    })();
    let answer = match request {
        Ok(request) => {
            crate::auth::routes::create_enrollment_token(State(state.clone()), console.member.clone(), request).await
        }
        Err(error) => Err(error),
    };
    match answer {
        Ok((_, axum::Json(created))) => {
            let server = public_base(&state, &headers);
            let payload = enrollment_payload(&server, &created.secret);
            let qr = match qr_svg(&payload) {
                Ok(svg) => svg,
                Err(error) => return layout::error_page(Some(&console), ApiError::internal(error)),
            };
            let token = &created.enrollment_token;
            let body = html! {
                (tabs(Tab::EnrollmentTokens))
                (secret_once(&format!("Enrollment token “{}” created.", token.name), &created.secret))
                div.grid-2 {
                    section.card {
                        h2 { "Scan to enroll" }
                        div.qr role="img" aria-label="QR code: this server's address and the enrollment token" { (qr) }
                        p.hint {
                            "The device's set-up app scans this and registers with "
                            code { (server) } ". The code holds the token: treat a photo of it like the token itself."
                        }
                    }
                    section.card {
                        h2 { "This token" }
                        dl.facts {
                            dt { "Label" } dd { (token.name) }
                            dt { "Expires" } dd { @if token.expires_at.is_some() { (when(now, token.expires_at)) } @else { "never" } }
                            dt { "Maximum registrations" } dd { (token.max_uses.map(|m| m.to_string()).unwrap_or_else(|| "unlimited".into())) }
                        }
                        p { "Or pass the token to the device yourself: " code { "POST /devices/auto-register" } " with "
                            code { "Authorization: Bearer <token>" } "." }
                        p { a href="/ui/enrollment" { "Back to the enrollment tokens" } }
                    }
                }
            };
            Page::with_status(
                StatusCode::CREATED,
                page(&console, Section::Enrollment, "Enrollment token created", body),
            )
            .into_response()
        }
        Err(error) if refused(&error) => layout::error_page(Some(&console), error),
        Err(error) => render_enrollment(&state, &console, &Cursor::default(), &form, error.into()).await,
    }
}

/// The address devices reach this server at: `HERD_PUBLIC_URL`, else the address the browser
/// used (its `Host` header) over plain HTTP.
fn public_base(state: &AppState, headers: &HeaderMap) -> String {
    match state.settings.public_url.as_deref() {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
            format!("http://{host}")
        }
    }
}

/// What the enrollment QR code holds (docs/device-protocol.md, "Enrolling by QR code").
fn enrollment_payload(server: &str, token: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("server", server)
        .append_pair("token", token)
        .finish();
    format!("herd://enroll?{query}")
}

/// `text` as an SVG QR code (without the XML declaration, to sit inside HTML).
fn qr_svg(text: &str) -> Result<PreEscaped<String>, qrcode::types::QrError> {
    let svg =
        qrcode::QrCode::new(text.as_bytes())?.render::<qrcode::render::svg::Color>().min_dimensions(220, 220).build();
    let start = svg.find("<svg").unwrap_or(0);
    Ok(PreEscaped(svg[start..].to_string()))
}

async fn revoke_enrollment_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>,
) -> Response {
    let answer = match path_id(&id, "enrollment token") {
        Ok(id) => crate::auth::routes::revoke_enrollment_token(State(state), console.member.clone(), id).await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(_) => Redirect::to("/ui/enrollment").into_response(),
        Err(error) => layout::error_page(Some(&console), error),
    }
}

// ---------------------------------------------------------------------------------------------
// API tokens

#[derive(Debug, Default, Deserialize)]
pub(super) struct ApiTokenForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default, rename = "expiresAt")]
    expires_in: String,
}

async fn api_tokens_page(State(state): State<AppState>, console: Console, Query(cursor): Query<Cursor>) -> Response {
    render_api_tokens(&state, &console, &cursor, &ApiTokenForm::default(), FormErrors::none()).await
}

async fn render_api_tokens(
    state: &AppState,
    console: &Console,
    cursor: &Cursor,
    form: &ApiTokenForm,
    errors: FormErrors,
) -> Response {
    let title = "API tokens";
    if let Some(refusal) = admin_only(console, Tab::ApiTokens, title, "Managing API tokens") {
        return refusal;
    }
    let tokens = match crate::auth::routes::list_tokens(console.member.clone(), ApiQuery(cursor.params())).await {
        Ok(axum::Json(tokens)) => tokens,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let now = state.clock.now();
    let body = html! {
        (tabs(Tab::ApiTokens))
        p.lead { "API tokens let scripts and integrations call herd's JSON API with a role: send one as "
            code { "Authorization: Bearer …" } "." }
        section.card {
            h2 { "New API token" }
            (errors.summary(&["name", "role", "expiresAt"]))
            form.stack method="post" action="/ui/enrollment/api-tokens" {
                (console.csrf_input())
                (field(&errors, "name", "Name", html! {
                    input #f-name name="name" value=(form.name) maxlength="200" required placeholder="e.g. CI deploys";
                }))
                (field(&errors, "role", "Role", role_select(&form.role)))
                (field(&errors, "expiresAt", "Expires", expiry_select("expiresAt", &form.expires_in)))
                button.primary type="submit" { "Create the token" }
            }
        }
        h2 { "Tokens" }
        @if tokens.items.is_empty() {
            (empty("No API tokens yet", html! { p { "Create one above for a script or an integration." } }))
        } @else {
            div.table-wrap { table {
                thead { tr { th { "Name" } th { "Role" } th { "Expires" } th { "Last used" } th { "Created" } th { "State" } th { span.muted { "Actions" } } } }
                tbody {
                    @for token in &tokens.items {
                        tr {
                            td { (token.name) }
                            td { (token.role.as_str()) }
                            td.nowrap { @if token.expires_at.is_some() { (when(now, token.expires_at)) } @else { span.muted { "never" } } }
                            td.nowrap { (when(now, token.last_used_at)) }
                            td.nowrap { (when(now, Some(token.created_at))) }
                            td { (badge(api_token_state(token, now))) }
                            td {
                                @if token.revoked_at.is_none() {
                                    form.inline method="post" action=(format!("/ui/enrollment/api-tokens/{}/revoke", token.id))
                                        data-confirm=(format!("Revoke the API token {}? Whatever uses it stops working at once.", token.name)) {
                                        (console.csrf_input())
                                        button.small.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
            (pager("/ui/enrollment/api-tokens", &[], tokens.next_cursor.as_deref(), cursor.cursor.is_none()))
        }
    };
    Page::with_status(errors.status(), page(console, Section::Enrollment, title, body)).into_response()
}

fn api_token_state(token: &TokenDto, now: DateTime<Utc>) -> &'static str {
    if token.revoked_at.is_some() {
        "revoked"
    } else if token.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

fn role_select(chosen: &str) -> Markup {
    let chosen = if chosen.is_empty() { Role::Viewer.as_str() } else { chosen };
    html! {
        select #f-role name="role" {
            @for role in [Role::Viewer, Role::Operator, Role::Admin] {
                option value=(role.as_str()) selected[role.as_str() == chosen] { (role.as_str()) }
            }
        }
    }
}

fn parse_role(text: &str) -> Result<Role, ApiError> {
    text.parse::<Role>().map_err(|_| ApiError::invalid("role", "choose viewer, operator or admin"))
}

async fn create_api_token(
    State(state): State<AppState>,
    ConsoleForm { console, form }: ConsoleForm<ApiTokenForm>,
) -> Response {
    let now = state.clock.now();
    let request = (|| {
        let request = CreateTokenRequest {
            name: form.name.trim().to_string(),
            role: parse_role(&form.role)?,
            expires_at: expiry_from(now, "expiresAt", &form.expires_in)?,
        };
        ApiJson::validated(request)
    })();
    let answer = match request {
        Ok(request) => crate::auth::routes::create_token(State(state.clone()), console.member.clone(), request).await,
        Err(error) => Err(error),
    };
    match answer {
        Ok((_, axum::Json(created))) => {
            let body = html! {
                (tabs(Tab::ApiTokens))
                (secret_once(&format!("API token “{}” ({}) created.", created.token.name, created.token.role.as_str()), &created.secret))
                p { a href="/ui/enrollment/api-tokens" { "Back to the API tokens" } }
            };
            Page::with_status(StatusCode::CREATED, page(&console, Section::Enrollment, "API token created", body))
                .into_response()
        }
        Err(error) if refused(&error) => layout::error_page(Some(&console), error),
        Err(error) => render_api_tokens(&state, &console, &Cursor::default(), &form, error.into()).await,
    }
}

async fn revoke_api_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>,
) -> Response {
    let answer = match path_id(&id, "token") {
        Ok(id) => crate::auth::routes::revoke_token(State(state), console.member.clone(), id).await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(_) => Redirect::to("/ui/enrollment/api-tokens").into_response(),
        Err(error) => layout::error_page(Some(&console), error),
    }
}

// ---------------------------------------------------------------------------------------------
// Users

#[derive(Debug, Default, Deserialize)]
pub(super) struct UserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
}

async fn users_page(State(state): State<AppState>, console: Console, Query(cursor): Query<Cursor>) -> Response {
    render_users(&state, &console, &cursor, &UserForm::default(), FormErrors::none()).await
}

async fn render_users(
    state: &AppState,
    console: &Console,
    cursor: &Cursor,
    form: &UserForm,
    errors: FormErrors,
) -> Response {
    let title = "Users";
    if let Some(refusal) = admin_only(console, Tab::Users, title, "Managing users") {
        return refusal;
    }
    let users = match crate::auth::routes::list_users(console.member.clone(), ApiQuery(cursor.params())).await {
        Ok(axum::Json(users)) => users,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let now = state.clock.now();
    let body = html! {
        (tabs(Tab::Users))
        section.card {
            h2 { "New user" }
            (errors.summary(&["username", "password", "role"]))
            form.stack method="post" action="/ui/enrollment/users" {
                (console.csrf_input())
                (field(&errors, "username", "Username", html! {
                    input #f-username name="username" value=(form.username) maxlength="128" required autocomplete="off" placeholder="e.g. ana@example.com";
                }))
                (field(&errors, "password", "Password (at least 8 characters)", html! {
                    input #f-password name="password" type="password" minlength="8" required autocomplete="new-password";
                }))
                (field(&errors, "role", "Role", role_select(&form.role)))
                button.primary type="submit" { "Create the user" }
            }
        }
        h2 { "Users" }
        (users_table(console, &users, cursor, now))
    };
    Page::with_status(errors.status(), page(console, Section::Enrollment, title, body)).into_response()
}

fn users_table(console: &Console, users: &ListResponse<UserDto>, cursor: &Cursor, now: DateTime<Utc>) -> Markup {
    let me = console.member.user_id.map(|id| id.to_string());
    html! {
        @if users.items.is_empty() {
            (empty("No users yet", html! { p { "Create one above; they sign in with their username and password." } }))
        } @else {
            div.table-wrap { table {
                thead { tr { th { "Username" } th { "Role" } th { "Created" } th { span.muted { "Actions" } } } }
                tbody {
                    @for user in &users.items {
                        tr {
                            td { (user.username) @if me.as_deref() == Some(user.id.as_str()) { " " span.muted { "(you)" } } }
                            td { (user.role.as_str()) @if user.platform_admin { " " (badge("platform_admin")) } }
                            td.nowrap { (when(now, Some(user.created_at))) }
                            td {
                                @if me.as_deref() != Some(user.id.as_str()) {
                                    form.inline method="post" action=(format!("/ui/enrollment/users/{}/delete", user.id))
                                        data-confirm=(format!("Delete the user {}? Their sessions end with them.", user.username)) {
                                        (console.csrf_input())
                                        button.small.danger type="submit" { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
            (pager("/ui/enrollment/users", &[], users.next_cursor.as_deref(), cursor.cursor.is_none()))
        }
    }
}

async fn create_user(
    State(state): State<AppState>,
    ConsoleForm { console, mut form }: ConsoleForm<UserForm>,
) -> Response {
    let request = (|| {
        let request = CreateUserRequest {
            username: form.username.trim().to_string(),
            password: std::mem::take(&mut form.password),
            role: parse_role(&form.role)?,
        };
        ApiJson::validated(request)
    })();
    let answer = match request {
        Ok(request) => crate::auth::routes::create_user(State(state.clone()), console.member.clone(), request).await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(_) => Redirect::to("/ui/enrollment/users").into_response(),
        Err(error) if refused(&error) => layout::error_page(Some(&console), error),
        Err(error) => render_users(&state, &console, &Cursor::default(), &form, error.into()).await,
    }
}

async fn delete_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>,
) -> Response {
    let answer = match path_id(&id, "user") {
        Ok(id) => crate::auth::routes::delete_user(console.member.clone(), id).await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(_) => Redirect::to("/ui/enrollment/users").into_response(),
        Err(error @ ApiError::Conflict(_)) => {
            render_users(&state, &console, &Cursor::default(), &UserForm::default(), error.into()).await
        }
        Err(error) => layout::error_page(Some(&console), error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qr_payload_carries_the_server_and_the_token_encoded() {
        let payload = enrollment_payload("https://herd.example.com:8443", "herd_et_abc+/=");
        assert_eq!(payload, "herd://enroll?server=https%3A%2F%2Fherd.example.com%3A8443&token=herd_et_abc%2B%2F%3D");
    }

    #[test]
    fn a_qr_code_is_an_inline_svg() {
        let svg = qr_svg("herd://enroll?server=http%3A%2F%2F127.0.0.1&token=t").expect("fits a QR code").into_string();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(!svg.contains("style="), "the CSP forbids inline styles");
    }
}
