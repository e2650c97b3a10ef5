//! The page shell (head, navigation, sign-out) and the small pieces every page draws with:
//! times, status badges, empty states, field errors, pagers and live regions.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::assets;
use super::session::Console;
use crate::auth::Role;
use crate::http::error::{ApiError, FieldError};
use crate::http::extract::IdPath;

/// The console's top-level sections, in navigation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Devices,
    Alerts,
    Certificates,
    Updates,
    Enrollment,
    Events,
}

impl Section {
    const ALL: [Section; 7] = [
        Section::Overview,
        Section::Devices,
        Section::Alerts,
        Section::Certificates,
        Section::Updates,
        Section::Enrollment,
        Section::Events,
    ];

    fn label(self) -> &'static str {
        match self {
            Section::Overview => "Overview",
            Section::Devices => "Devices",
            Section::Alerts => "Alerts",
            Section::Certificates => "Certificates",
            Section::Updates => "Updates",
            Section::Enrollment => "Enrollment & access",
            Section::Events => "Events",
        }
    }

    fn href(self) -> &'static str {
        match self {
            Section::Overview => "/ui/",
            Section::Devices => "/ui/devices",
            Section::Alerts => "/ui/alerts",
            Section::Certificates => "/ui/certificates",
            Section::Updates => "/ui/updates",
            Section::Enrollment => "/ui/enrollment",
            Section::Events => "/ui/events",
        }
    }
}

/// A page as the browser gets it: HTML (and a status other than 200 when it reports a failed
/// form). The console's security headers are added by `session::headers` for every page.
pub(crate) struct Page {
    status: StatusCode,
    markup: Markup,
}

impl Page {
    pub(crate) fn new(markup: Markup) -> Self {
        Page { status: StatusCode::OK, markup }
    }

    pub(crate) fn with_status(status: StatusCode, markup: Markup) -> Self {
        Page { status, markup }
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.markup.into_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        response
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · herd" }
            link rel="stylesheet" href=(assets::CSS_URL);
            link rel="icon" href=(assets::ICON_URL) type="image/svg+xml";
            script src=(assets::JS_URL) defer {}
        }
    }
}

/// A page of a signed-in member: navigation, who is signed in, sign-out, then `body`.
pub(crate) fn page(console: &Console, section: Section, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/" aria-label="herd: overview" { (logo()) span { "herd" } }
                    nav aria-label="Sections" {
                        ul {
                            @for item in Section::ALL {
                                li {
                                    @if item == section {
                                        a href=(item.href()) aria-current="page" { (item.label()) }
                                    } @else {
                                        a href=(item.href()) { (item.label()) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span.role title="your role in this tenant" { (console.member.role.as_str()) }
                        form method="post" action="/ui/sign-out" {
                            (console.csrf_input())
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page without navigation (sign-in, set-up, errors before a session exists).
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main #main {
                    div.brand-large { (logo()) span { "herd" } }
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn logo() -> Markup {
    PreEscaped(assets::ICON_SVG.to_string())
}

/// An error page (404, 403, 500 …) for a signed-in member, or bare when there is none.
pub(crate) fn error_page(console: Option<&Console>, error: ApiError) -> Response {
    let problem = error.into_problem();
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = html! {
        p.lead { (problem.detail) }
        p { a href="/ui/" { "Back to the overview" } }
    };
    let title = problem.title.as_str();
    let markup = match console {
        Some(console) => page(console, Section::Overview, title, body),
        None => bare(title, body),
    };
    Page::with_status(status, markup).into_response()
}

/// What a failed form shows: each field's message beside the field, anything else on top.
#[derive(Debug, Default)]
pub(crate) struct FormErrors {
    fields: Vec<FieldError>,
    general: Option<String>,
    status: Option<StatusCode>,
}

impl FormErrors {
    pub(crate) fn none() -> Self {
        Self::default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.general.is_none()
    }

    /// The status the page answers with: 200 with no errors, else the error's.
    pub(crate) fn status(&self) -> StatusCode {
        self.status.unwrap_or(StatusCode::OK)
    }

    /// The message for one field (the API's JSON name, e.g. `username`, `payload.url`).
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|e| e.field == name).map(|e| e.message.as_str())
    }

    /// Draws the general message, and any field message no form field shows (`shown` are
    /// the fields the form draws itself).
    pub(crate) fn summary(&self, shown: &[&str]) -> Markup {
        let others: Vec<&FieldError> = self.fields.iter().filter(|e| !shown.contains(&e.field.as_str())).collect();
        html! {
            @if self.general.is_some() || !others.is_empty() {
                div.alert.error role="alert" {
                    @if let Some(message) = &self.general { p { (message) } }
                    @for error in others { p { code { (error.field) } ": " (error.message) } }
                }
            }
        }
    }
}

impl From<ApiError> for FormErrors {
    fn from(error: ApiError) -> Self {
        let problem = error.into_problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match problem.errors {
            Some(fields) => FormErrors { fields, general: None, status: Some(status) },
            None => FormErrors { fields: Vec::new(), general: Some(problem.detail), status: Some(status) },
        }
    }
}

/// A labelled form field with its error beside it (`aria-invalid`, `aria-describedby`).
pub(crate) fn field(errors: &FormErrors, name: &str, label: &str, input: Markup) -> Markup {
    let error = errors.field(name);
    html! {
        div.field.invalid[error.is_some()] {
            label for=(field_id(name)) { (label) }
            (input)
            @if let Some(message) = error {
                p.field-error id=(format!("{}-error", field_id(name))) role="alert" { (message) }
            }
        }
    }
}

/// The id a field's input carries (`payload.url` → `f-payload-url`).
pub(crate) fn field_id(name: &str) -> String {
    let mut id = String::from("f-");
    id.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }));
    id
}

/// An id from the path, read as the API's `IdPath` reads it: one that does not parse is a
/// 404 for `what`, like a missing one.
pub(crate) fn path_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<IdPath<T>, ApiError> {
    raw.parse().map(IdPath).map_err(|_| ApiError::not_found(what))
}

/// "3 min ago" style, with the exact UTC time as a tooltip.
pub(crate) fn when(now: DateTime<Utc>, at: Option<DateTime<Utc>>) -> Markup {
    match at {
        None => html! { span.muted { "never" } },
        Some(at) => {
            let exact = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
            html! { time datetime=(at.to_rfc3339()) title=(exact) { (relative(now, at)) } }
        }
    }
}

/// A time relative to `now`, in words ("just now", "5 min ago", "in 3 d").
pub(crate) fn relative(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let seconds = (now - at).num_seconds();
    let (amount, future) = (seconds.unsigned_abs(), seconds < 0);
    let text = match amount {
        0..=9 => return "just now".into(),
        10..=59 => format!("{amount} s"),
        60..=3599 => format!("{} min", amount / 60),
        3600..=86_399 => format!("{} h", amount / 3600),
        _ => format!("{} d", amount / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A coloured word for a state (`online`, `failed`, `critical` …); the colour comes from the
/// state's class in the stylesheet, the word carries the meaning.
pub(crate) fn badge(state: &str) -> Markup {
    html! { span class=(format!("badge s-{}", state.replace(['_', ' '], "-"))) { (state.replace('_', " ")) } }
}

/// A strip of links between the views of one page (`aria-current` on the one shown): items
/// are `(href, label, current)`.
pub(crate) fn tabs<H: AsRef<str>>(label: &str, items: &[(H, &str, bool)]) -> Markup {
    html! {
        nav.tabs aria-label=(label) {
            @for (href, text, current) in items {
                a href=(href.as_ref()) aria-current=[current.then_some("true")] { (text) }
            }
        }
    }
}

/// What an empty list says: what it would hold and what to do next.
pub(crate) fn empty(title: &str, next: Markup) -> Markup {
    html! {
        div.empty {
            p.empty-title { (title) }
            (next)
        }
    }
}

/// A "next page" link for a cursor list (`query` is the page's own query without `cursor`).
pub(crate) fn pager(base: &str, query: &[(&str, &str)], next_cursor: Option<&str>, on_first_page: bool) -> Markup {
    let link = |cursor: Option<&str>| {
        let mut pairs: Vec<(&str, &str)> = query.iter().filter(|(_, v)| !v.is_empty()).copied().collect();
        if let Some(cursor) = cursor {
            pairs.push(("cursor", cursor));
        }
        let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        if encoded.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{encoded}")
        }
    };
    html! {
        @if next_cursor.is_some() || !on_first_page {
            nav.pager aria-label="Pages" {
                @if !on_first_page { a href=(link(None)) { "← First page" } }
                @if let Some(cursor) = next_cursor { a href=(link(Some(cursor))) rel="next" { "Next page →" } }
            }
        }
    }
}

/// A region that `console.js` reloads (by fetching the page again and swapping this element
/// by its id) when one of `events` arrives on the tenant's event stream. Without JavaScript it
/// is an ordinary part of the page.
pub(crate) fn live(id: &str, events: &[&str], content: Markup) -> Markup {
    html! {
        div id=(id) data-live=(events.join(" ")) aria-live="polite" { (content) }
    }
}

/// Every known event type that starts with one of `prefixes` (for [`live`]).
pub(crate) fn event_types(prefixes: &[&str]) -> Vec<&'static str> {
    herd_domain::event::KNOWN_TYPES.iter().copied().filter(|t| prefixes.iter().any(|p| t.starts_with(p))).collect()
}

/// Whether the member may press a button that needs `role`: a viewer is shown no control it
/// may not use (the server refuses the action anyway).
pub(crate) fn may(console: &Console, role: Role) -> bool {
    console.member.role >= role
}
