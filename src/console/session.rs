//! Sessions in a browser: sign-in, set-up, sign-out, the session cookie and CSRF.
//!
//! - **The cookie** `herd_session` holds a login session token (the one `POST /auth/login`
//!   answers): `HttpOnly`, `SameSite=Strict`, `Path=/ui`, `Secure` when `HERD_PUBLIC_URL` is
//!   https. Only console routes read it; the JSON API takes `Authorization` headers only, so
//!   a cookie can never make an API call on a browser's behalf.
//! - **Every form that changes something** is a [`ConsoleForm`]: the extractor refuses (403)
//!   a POST whose `_csrf` field is not the session's token (an HMAC of the session's id under
//!   a key derived from the CA's secrets, so it cannot be forged or reused across sessions) or
//!   whose `Origin` / `Sec-Fetch-Site` says it came from another site. Sign-in and set-up,
//!   which have no session yet, check a random value held in a `herd_form` cookie instead
//!   (double submit), plus the same origin check.
//! - **Authorisation** is the API's: the member the cookie names is handed to the same
//!   handlers the API runs, which check the role.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use hmac::{Hmac, Mac};
use maud::{html, Markup};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::layout::{self, bare, field, FormErrors, Page};
use crate::app::AppState;
use crate::auth::routes::{CreateUserRequest, LoginRequest};
use crate::auth::{Member, Role};
use crate::http::error::ApiError;
use crate::http::extract::{ApiJson, Validate};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "herd_session";
/// The pre-session cookie that sign-in and set-up forms double-submit.
const FORM_COOKIE: &str = "herd_form";
/// The name of the field that carries the CSRF token.
pub(super) const CSRF_FIELD: &str = "_csrf";
/// The key purpose `CertificateService::derive_key` derives the CSRF key for.
const CSRF_KEY_PURPOSE: &str = "console csrf v1";

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/setup", get(setup_page).post(setup))
        .route("/ui/sign-out", axum::routing::post(sign_out))
}

/// A signed-in member of the console: who (their [`Member`], exactly as the API's extractor
/// makes it) and the CSRF token their forms carry.
#[derive(Debug, Clone)]
pub(crate) struct Console {
    pub member: Member,
    /// The session's secret token, for calls that present the credential again (the live
    /// event stream re-checks it like an `Authorization` header).
    token: String,
    pub csrf: String,
}

impl Console {
    /// The hidden field every changing form carries.
    pub(crate) fn csrf_input(&self) -> Markup {
        html! { input type="hidden" name=(CSRF_FIELD) value=(self.csrf); }
    }

    /// The session's credential as an `Authorization` header value.
    pub(crate) fn authorization(&self) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {}", self.token)).expect("a token is header-safe ASCII")
    }
}

fn csrf_token(state: &AppState, member: &Member) -> String {
    let key = state.certificates.derive_key(CSRF_KEY_PURPOSE);
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes a key of any length");
    mac.update(member.token_id.to_string().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Equal without telling by its timing where the first difference is.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Where a browser without a (valid) session is sent: the sign-in page, which returns it to
/// the page it asked for.
fn to_sign_in(parts: &Parts) -> Response {
    let wanted = if parts.method == Method::GET { parts.uri.path_and_query().map(|p| p.as_str()) } else { None };
    let target = match wanted.filter(|p| safe_next(p)) {
        Some(next) if next != "/ui/" => format!("/ui/sign-in?next={}", encode(next)),
        _ => "/ui/sign-in".to_string(),
    };
    let mut response = Redirect::to(&target).into_response();
    response.headers_mut().append(header::SET_COOKIE, expired_cookie(COOKIE));
    response
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A return address after sign-in: only a console path (never another site, never `//host`).
fn safe_next(next: &str) -> bool {
    next.starts_with("/ui/") && !next.contains("//") && !next.contains('\\') && !next.starts_with("/ui/sign-")
}

impl FromRequestParts<AppState> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(to_sign_in(parts));
        };
        match crate::auth::member_from_token(state, token).await {
            Ok(member) => {
                let csrf = csrf_token(state, &member);
                Ok(Console { member, token: token.to_string(), csrf })
            }
            Err(ApiError::Unauthorized(_)) => Err(to_sign_in(parts)),
            Err(error) => Err(layout::error_page(None, error)),
        }
    }
}

/// Refuses a request that a browser says came from another site. Browsers send
/// `Sec-Fetch-Site` (and `Origin` on POST); a client that sends neither is not a browser
/// being abused, and still needs the CSRF token.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let refused = || ApiError::Forbidden("this form was sent from another site".into());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Err(refused());
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        if origin == "null" || origin_host != host {
            return Err(refused());
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
}

/// Reads an urlencoded form body (at most the server's body limit).
async fn form_body(request: Request, state: &AppState) -> Result<axum::body::Bytes, ApiError> {
    axum::body::Bytes::from_request(request, state)
        .await
        .map_err(|rejection| ApiError::BadRequest(format!("cannot read the form: {rejection}")))
}

fn parse_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_urlencoded::from_bytes(bytes).map_err(|error| ApiError::BadRequest(format!("the form is not valid: {error}")))
}

/// A form that changes something, sent by a signed-in member: the extractor checks the CSRF
/// token and the origin before the handler runs, so a handler that takes one cannot forget to.
pub(crate) struct ConsoleForm<T> {
    pub console: Console,
    pub form: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for ConsoleForm<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let console = Console::from_request_parts(&mut parts, state).await?;
        let fail = |error: ApiError| layout::error_page(Some(&console), error);
        same_origin(&parts.headers).map_err(fail)?;
        let bytes = form_body(Request::from_parts(parts, body), state).await.map_err(fail)?;
        let presented = parse_form::<CsrfField>(&bytes).map_err(fail)?.csrf;
        check_token(&console, presented.as_deref()).map_err(fail)?;
        let form = parse_form::<T>(&bytes).map_err(fail)?;
        Ok(ConsoleForm { console, form })
    }
}

/// The check every changing form of a signed-in member passes: the browser does not say it
/// came from another site, and `presented` (its `_csrf` field) is the session's token.
/// [`ConsoleForm`] runs the same two checks for urlencoded forms; a form it cannot read (a
/// `multipart/form-data` upload) calls this itself with its first field, before reading any other.
pub(super) fn check_csrf(console: &Console, headers: &HeaderMap, presented: Option<&str>) -> Result<(), ApiError> {
    same_origin(headers)?;
    check_token(console, presented)
}

fn check_token(console: &Console, presented: Option<&str>) -> Result<(), ApiError> {
    if !same_secret(presented.unwrap_or_default(), &console.csrf) {
        return Err(ApiError::Forbidden(
            "this form is not from your current session; reload the page and try again".into(),
        ));
    }
    Ok(())
}

fn session_cookie(state: &AppState, token: &str) -> HeaderValue {
    let secure = state.settings.public_url.as_deref().is_some_and(|url| url.starts_with("https://"));
    let value = format!(
        "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{}",
        state.settings.session_ttl.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&value).expect("a token is header-safe ASCII")
}

/// The answer that ends a successful sign-in or set-up: the session cookie, the pre-session
/// cookie forgotten, and on to `target`.
fn signed_in(state: &AppState, target: &str, token: &str) -> Response {
    let mut response = Redirect::to(target).into_response();
    response.headers_mut().append(header::SET_COOKIE, session_cookie(state, token));
    response.headers_mut().append(header::SET_COOKIE, expired_cookie(FORM_COOKIE));
    response
}

fn expired_cookie(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{name}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"))
        .expect("static cookie text")
}

/// The double-submit value of a page without a session: the one the browser already holds,
/// or a new one (set with the page).
fn form_secret(headers: &HeaderMap) -> (String, Option<HeaderValue>) {
    if let Some(existing) =
        cookie(headers, FORM_COOKIE).filter(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return (existing.to_string(), None);
    }
    let fresh = hex::encode(rand::random::<[u8; 16]>());
    let header = HeaderValue::from_str(&format!("{FORM_COOKIE}={fresh}; Path=/ui; HttpOnly; SameSite=Strict"))
        .expect("hex is header-safe");
    (fresh, Some(header))
}

fn with_cookie(page: Page, cookie: Option<HeaderValue>) -> Response {
    let mut response = page.into_response();
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Checks a sign-in or set-up form: same origin, and its `_csrf` equals the `herd_form` cookie.
fn check_pre_session(headers: &HeaderMap, presented: Option<&str>) -> Result<(), ApiError> {
    same_origin(headers)?;
    match (cookie(headers, FORM_COOKIE), presented) {
        (Some(held), Some(sent)) if same_secret(held, sent) => Ok(()),
        _ => Err(ApiError::Forbidden("this form has expired; reload the page and try again".into())),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct SignInQuery {
    next: Option<String>,
    #[serde(default)]
    signed_out: bool,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct SignInForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

fn sign_in_markup(secret: &str, form: &SignInForm, notice: Option<&str>, errors: &FormErrors) -> Markup {
    let body = html! {
        @if let Some(notice) = notice { div.alert.ok role="status" { p { (notice) } } }
        (errors.summary(&["tenant", "username", "password"]))
        form.card.stack method="post" action="/ui/sign-in" {
            input type="hidden" name=(CSRF_FIELD) value=(secret);
            @if let Some(next) = &form.next { input type="hidden" name="next" value=(next); }
            (field(errors, "username", "Username", html! {
                input #f-username name="username" value=(form.username) autocomplete="username" required autofocus;
            }))
            (field(errors, "password", "Password", html! {
                input #f-password name="password" type="password" autocomplete="current-password" required;
            }))
            details open[!form.tenant.is_empty()] {
                summary { "Another tenant" }
                (field(errors, "tenant", "Tenant", html! {
                    input #f-tenant name="tenant" value=(form.tenant) placeholder="default" autocomplete="organization";
                }))
            }
            button.primary type="submit" { "Sign in" }
        }
        p.hint {
            "First time here? "
            a href="/ui/setup" { "Set up a user with the admin token" }
            " that herd wrote to " code { "<data-dir>/initial-admin-token" } " at its first start."
        }
    };
    bare("Sign in", body)
}

async fn sign_in_page(headers: HeaderMap, Query(query): Query<SignInQuery>) -> Response {
    let (secret, set) = form_secret(&headers);
    let notice = query.signed_out.then_some("You are signed out.");
    let form = SignInForm { next: query.next.filter(|n| safe_next(n)), ..SignInForm::default() };
    with_cookie(Page::new(sign_in_markup(&secret, &form, notice, &FormErrors::none())), set)
}

async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (secret, set) = form_secret(&headers);
    let mut form: SignInForm = match parse_form(&body) {
        Ok(form) => form,
        Err(error) => return layout::error_page(None, error),
    };
    let failed = |form: &SignInForm, errors: FormErrors| {
        let page = Page::with_status(errors.status(), sign_in_markup(&secret, form, None, &errors));
        with_cookie(page, set.clone())
    };
    if let Err(error) = check_pre_session(&headers, form.csrf.as_deref()) {
        return failed(&form, error.into());
    }
    let tenant = Some(form.tenant.trim().to_string()).filter(|t| !t.is_empty());
    let request =
        LoginRequest { tenant, username: form.username.clone(), password: std::mem::take(&mut form.password) };
    let answer = match ApiJson::validated(request) {
        Ok(request) => crate::auth::routes::login(State(state.clone()), ConnectInfo(peer), request).await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(session) => {
            let next = form.next.filter(|n| safe_next(n)).unwrap_or_else(|| "/ui/".to_string());
            signed_in(&state, &next, &session.0.token)
        }
        Err(error) => failed(&form, error.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct SetupForm {
    #[serde(rename = "_csrf")]
    csrf: Option<String>,
    #[serde(default)]
    token: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    confirm: String,
}

fn setup_markup(secret: &str, form: &SetupForm, errors: &FormErrors) -> Markup {
    let body = html! {
        p.lead {
            "An admin token (the one herd wrote to " code { "<data-dir>/initial-admin-token" }
            " at its first start, or any admin API token) creates a user who signs in with a password."
        }
        (errors.summary(&["token", "username", "password", "confirm"]))
        form.card.stack method="post" action="/ui/setup" {
            input type="hidden" name=(CSRF_FIELD) value=(secret);
            (field(errors, "token", "Admin token", html! {
                input #f-token name="token" type="password" autocomplete="off" required autofocus placeholder="herd_at_…";
            }))
            (field(errors, "username", "New username", html! {
                input #f-username name="username" value=(form.username) autocomplete="username" required;
            }))
            (field(errors, "password", "Password (at least 8 characters)", html! {
                input #f-password name="password" type="password" autocomplete="new-password" minlength="8" required;
            }))
            (field(errors, "confirm", "Password again", html! {
                input #f-confirm name="confirm" type="password" autocomplete="new-password" minlength="8" required;
            }))
            button.primary type="submit" { "Create the user and sign in" }
        }
        p.hint { a href="/ui/sign-in" { "Back to sign-in" } }
    };
    bare("Set up a user", body)
}

async fn setup_page(headers: HeaderMap) -> Response {
    let (secret, set) = form_secret(&headers);
    with_cookie(Page::new(setup_markup(&secret, &SetupForm::default(), &FormErrors::none())), set)
}

/// Creates an admin user with the admin token's authority (the API's `POST /users`), then
/// opens a session for that user.
async fn setup(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let (secret, set) = form_secret(&headers);
    let form: SetupForm = match parse_form(&body) {
        Ok(form) => form,
        Err(error) => return layout::error_page(None, error),
    };
    let failed = |errors: FormErrors| {
        with_cookie(Page::with_status(errors.status(), setup_markup(&secret, &form, &errors)), set.clone())
    };
    if let Err(error) = check_pre_session(&headers, form.csrf.as_deref()) {
        return failed(error.into());
    }
    if form.password != form.confirm {
        return failed(ApiError::invalid("confirm", "the two passwords differ").into());
    }
    let member = match crate::auth::member_from_token(&state, form.token.trim()).await {
        Ok(member) if member.role >= Role::Admin => member,
        Ok(_) => return failed(ApiError::invalid("token", "this token is not an admin's").into()),
        Err(ApiError::Unauthorized(_)) => {
            return failed(ApiError::invalid("token", "this token is unknown, expired or revoked").into())
        }
        Err(error) => return failed(error.into()),
    };
    let request = CreateUserRequest {
        username: form.username.trim().to_string(),
        password: form.password.clone(),
        role: Role::Admin,
    };
    if let Err(error) = request.validate() {
        return failed(error.into());
    }
    match crate::auth::routes::add_user(&state, &member, request).await {
        Ok(user) => match crate::auth::routes::open_session(&state, &user).await {
            Ok(session) => signed_in(&state, "/ui/", &session.token),
            Err(error) => failed(error.into()),
        },
        Err(error) => failed(error.into()),
    }
}

/// Ends the session (the API's `POST /auth/logout`) and forgets the cookie.
async fn sign_out(
    State(state): State<AppState>,
    ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>,
) -> Response {
    if let Err(error) = crate::auth::routes::logout(State(state), console.member.clone()).await {
        return layout::error_page(Some(&console), error);
    }
    let mut response = Redirect::to("/ui/sign-in?signed_out=true").into_response();
    response.headers_mut().append(header::SET_COOKIE, expired_cookie(COOKIE));
    response
}

/// The console's response headers: a strict content security policy (scripts, styles and
/// images only from herd itself; no framing), no caching of pages that show tenant data,
/// and no referrer leaving the site.
pub(super) async fn headers(request: Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// For a handler that cannot go on without a role: the 403 page when the member lacks it.
pub(crate) fn refusal(console: &Console, role: Role) -> Option<Response> {
    console.member.require(role).err().map(|error| layout::error_page(Some(console), error))
}
