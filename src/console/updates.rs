//! Software updates: the tenant's packages and rollouts (`/ui/updates`), the upload form, the
//! form that creates a rollout, and each rollout's page with its waves, its failed devices and
//! the buttons that start, pause, resume and cancel it.
//!
//! Every read and action is the API's own handler (`packages`, `rollouts`), called with the
//! session's member; the upload streams the form's file into `packages::receive_upload`, the
//! function `POST /packages` runs, so the size limit, the SHA-256 and the "nothing stored on
//! failure" rule are the API's. The upload form is `multipart/form-data`, which
//! [`ConsoleForm`](super::session::ConsoleForm) cannot read: its handler checks the CSRF token
//! itself, from the form's first field, before it reads anything else.

use std::collections::HashMap;

use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{
    self, badge, empty, event_types, field, field_id, live, may, page, when, FormErrors, Page, Section,
};
use super::session::{self, Console, ConsoleForm};
use crate::app::AppState;
use crate::auth::Role;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, OptionalJson, Validate};
use crate::http::ListResponse;
use crate::packages::{Artifact, PackageDto, PackageListParams, UploadParams};
use crate::rollouts::{
    CreateRolloutDto, MaintenanceWindowDto, PauseDto, RolloutDeviceParams, RolloutDto, RolloutListParams,
    RolloutTargetDto, UpdateCounts,
};
use herd_domain::ids::{PackageId, RolloutId};
use herd_domain::status::RolloutState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui/updates", get(overview))
        .route("/ui/updates/packages/new", get(upload_page))
        .route("/ui/updates/packages/{id}/delete", post(delete_package))
        .route("/ui/updates/rollouts", post(create_rollout))
        .route("/ui/updates/rollouts/new", get(new_rollout_page))
        .route("/ui/updates/rollouts/{id}", get(rollout_page))
        .route("/ui/updates/rollouts/{id}/{action}", post(rollout_action))
}

/// The upload, a transfer like `POST /packages` (see `console::transfer_router`). Its body is
/// not held in memory, so the server's body limit does not apply; the package size limit does,
/// in `receive_upload`, and each text field is bounded here.
pub(super) fn transfer_router() -> Router<AppState> {
    Router::new().route("/ui/updates/packages", post(upload).layer(DefaultBodyLimit::disable()))
}

/// Packages and rollouts on one page of the list each.
const PAGE_SIZE: u32 = 50;
/// Packages the rollout form offers.
const PACKAGE_CHOICES: u32 = 500;
/// Failed devices a rollout page lists.
const FAILED_LISTED: u32 = 100;
/// The most bytes a text field of the upload form may have (notes: 4096 characters).
const MAX_TEXT_FIELD: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// The list
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    packages_cursor: Option<String>,
    rollouts_cursor: Option<String>,
}

async fn overview(State(state): State<AppState>, console: Console, Query(query): Query<ListQuery>) -> Response {
    render_overview(&state, &console, &query, FormErrors::none()).await
}

async fn render_overview(state: &AppState, console: &Console, query: &ListQuery, errors: FormErrors) -> Response {
    let member = || console.member.clone();
    let packages = crate::packages::list_packages(
        member(),
        ApiQuery(PackageListParams {
            name: None,
            limit: Some(PAGE_SIZE),
            cursor: query.packages_cursor.clone().filter(|c| !c.is_empty()),
        }),
    )
    .await;
    let packages = match packages {
        Ok(axum::Json(list)) => list,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let rollouts = crate::rollouts::list_rollouts(
        member(),
        ApiQuery(RolloutListParams {
            state: None,
            package_id: None,
            limit: Some(PAGE_SIZE),
            cursor: query.rollouts_cursor.clone().filter(|c| !c.is_empty()),
        }),
    )
    .await;
    let rollouts = match rollouts {
        Ok(axum::Json(list)) => list,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let mut names = PackageNames::from_list(&packages.items);
    for rollout in &rollouts.items {
        if let Err(error) = names.learn(console, &rollout.package_id).await {
            return layout::error_page(Some(console), error);
        }
    }
    let now = state.clock.now();
    let operator = may(console, Role::Operator);
    let body = html! {
        (errors.summary(&[]))
        section {
            div.row {
                h2 { "Packages" }
                span.spacer {}
                @if operator { a.button.primary href="/ui/updates/packages/new" { "Upload a package" } }
            }
            (live("packages", &event_types(&["package."]), packages_table(console, &packages, query, now)))
        }
        section {
            div.row {
                h2 { "Rollouts" }
                span.spacer {}
                @if operator && !packages.items.is_empty() {
                    a.button.primary href="/ui/updates/rollouts/new" { "Start a rollout" }
                }
            }
            (live(
                "rollouts",
                &event_types(&["rollout.", "device.update_state_changed"]),
                rollouts_table(&rollouts, &names, query, now, !packages.items.is_empty() || query.packages_cursor.is_some()),
            ))
        }
    };
    Page::with_status(errors.status(), page(console, Section::Updates, "Software updates", body)).into_response()
}

/// Package names and versions by id, for the rollouts that name them.
struct PackageNames(HashMap<String, Option<String>>);

impl PackageNames {
    fn from_list(packages: &[PackageDto]) -> Self {
        PackageNames(packages.iter().map(|p| (p.id.clone(), Some(label(p)))).collect())
    }

    /// Asks the API for a package not on the page (`None` once it has been deleted).
    async fn learn(&mut self, console: &Console, id: &str) -> Result<(), ApiError> {
        if self.0.contains_key(id) {
            return Ok(());
        }
        let name = match id.parse::<PackageId>() {
            Ok(parsed) => match crate::packages::get_package(console.member.clone(), IdPath(parsed)).await {
                Ok(axum::Json(package)) => Some(label(&package)),
                Err(ApiError::NotFound(_)) => None,
                Err(error) => return Err(error),
            },
            Err(_) => None,
        };
        self.0.insert(id.to_string(), name);
        Ok(())
    }

    fn show(&self, id: &str) -> Markup {
        match self.0.get(id) {
            Some(Some(name)) => html! { (name) },
            _ => html! { span.muted { "deleted package" } },
        }
    }
}

fn label(package: &PackageDto) -> String {
    format!("{} {}", package.name, package.version)
}

/// `1.5 MiB` style (binary units), exact bytes in words for small sizes.
fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A "next page" link for one of the page's two lists (each keeps its own cursor).
fn next_link(query: &ListQuery, which: &str, cursor: Option<&str>) -> Markup {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if which != "packages_cursor" {
        if let Some(c) = query.packages_cursor.as_deref() {
            pairs.push(("packages_cursor", c));
        }
    }
    if which != "rollouts_cursor" {
        if let Some(c) = query.rollouts_cursor.as_deref() {
            pairs.push(("rollouts_cursor", c));
        }
    }
    let on_first_page = match which {
        "packages_cursor" => query.packages_cursor.is_none(),
        _ => query.rollouts_cursor.is_none(),
    };
    let href = |extra: Option<&str>| {
        let mut all = pairs.clone();
        if let Some(c) = extra {
            all.push((which, c));
        }
        let encoded = serde_urlencoded::to_string(&all).unwrap_or_default();
        if encoded.is_empty() {
            "/ui/updates".to_string()
        } else {
            format!("/ui/updates?{encoded}")
        }
    };
    html! {
        @if cursor.is_some() || !on_first_page {
            nav.pager aria-label="Pages" {
                @if !on_first_page { a href=(href(None)) { "← First page" } }
                @if let Some(cursor) = cursor { a href=(href(Some(cursor))) rel="next" { "Next page →" } }
            }
        }
    }
}

fn packages_table(
    console: &Console,
    packages: &ListResponse<PackageDto>,
    query: &ListQuery,
    now: DateTime<Utc>,
) -> Markup {
    let operator = may(console, Role::Operator);
    html! {
        @if packages.items.is_empty() {
            (empty("No packages yet", html! {
                p { "A package is the file herd sends to devices: an APK, a firmware image or any other file. "
                    "Upload one, then start a rollout to send it to your devices." }
                @if operator {
                    p { a.button.primary href="/ui/updates/packages/new" { "Upload a package" } }
                } @else {
                    p { "An operator or admin of the tenant can upload one." }
                }
            }))
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th { "Name" } th { "Version" } th.num { "Version code" } th { "Kind" } th.num { "Size" }
                    th.hide-narrow { "SHA-256" } th.hide-narrow { "Target models" } th { "Created" }
                    @if operator { th { span.muted { "Actions" } } }
                } }
                tbody {
                    @for package in &packages.items {
                        tr {
                            td { (package.name) }
                            td { (package.version) }
                            td.num { (package.version_code) }
                            td { (package.kind.as_str()) }
                            td.num.nowrap title=(format!("{} bytes", package.size)) { (human_size(package.size)) }
                            td.hide-narrow.mono title=(package.sha256) { (short_hash(&package.sha256)) }
                            td.hide-narrow {
                                @if package.target_models.is_empty() { span.muted { "any model" } }
                                @else { (package.target_models.join(", ")) }
                            }
                            td.nowrap { (when(now, Some(package.created_at))) }
                            @if operator {
                                td.nowrap {
                                    a.button.small href=(format!("/ui/updates/rollouts/new?package={}", package.id)) { "Roll out" }
                                    " "
                                    form.inline method="post" action=(format!("/ui/updates/packages/{}/delete", package.id))
                                        data-confirm=(format!("Delete the package {} {}? Its file is deleted too.", package.name, package.version)) {
                                        (console.csrf_input())
                                        button.small.danger type="submit" aria-label=(format!("Delete {} {}", package.name, package.version)) { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
            (next_link(query, "packages_cursor", packages.next_cursor.as_deref()))
        }
    }
}

fn short_hash(sha256: &str) -> String {
    match sha256.get(..12) {
        Some(head) => format!("{head}…"),
        None => sha256.to_string(),
    }
}

/// Devices whose update is over, one way or another.
fn finished(counts: &UpdateCounts) -> i64 {
    counts.installed + counts.failed + counts.skipped + counts.cancelled
}

fn progress(done: i64, total: i64, what: &str) -> Markup {
    html! {
        progress value=(done) max=(total.max(1)) aria-label=(what) { (done) " / " (total) }
        span.hint { (done) " of " (total) " finished" }
    }
}

fn wave_of(rollout: &RolloutDto) -> String {
    match rollout.current_wave {
        Some(wave) => format!("{} / {}", wave + 1, rollout.waves.len()),
        None => format!("– / {}", rollout.waves.len()),
    }
}

fn rollouts_table(
    rollouts: &ListResponse<RolloutDto>,
    names: &PackageNames,
    query: &ListQuery,
    now: DateTime<Utc>,
    has_packages: bool,
) -> Markup {
    html! {
        @if rollouts.items.is_empty() {
            (empty("No rollouts yet", html! {
                @if has_packages {
                    p { "A rollout sends a package to a set of devices in waves, and pauses by itself when too many fail." }
                    p { a.button.primary href="/ui/updates/rollouts/new" { "Start a rollout" } }
                } @else {
                    p { "Upload a package first, then start a rollout to send it to your devices in waves." }
                }
            }))
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th { "Rollout" } th { "Package" } th { "State" } th.num { "Wave" } th { "Devices" }
                    th.hide-narrow { "Created" } th.hide-narrow { "Started" }
                } }
                tbody {
                    @for rollout in &rollouts.items {
                        tr {
                            td { a href=(format!("/ui/updates/rollouts/{}", rollout.id)) { (rollout.name) } }
                            td { (names.show(&rollout.package_id)) }
                            td { (badge(rollout.state.as_str())) }
                            td.num.nowrap { (wave_of(rollout)) }
                            td { (progress(finished(&rollout.counts), rollout.total, "devices finished")) }
                            td.hide-narrow.nowrap { (when(now, Some(rollout.created_at))) }
                            td.hide-narrow.nowrap { (when(now, rollout.started_at)) }
                        }
                    }
                }
            } }
            (next_link(query, "rollouts_cursor", rollouts.next_cursor.as_deref()))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Packages: upload and delete
// ---------------------------------------------------------------------------------------------

/// What the upload form holds (the API's names; the file is streamed, not kept).
#[derive(Debug, Default)]
struct UploadForm {
    kind: String,
    name: String,
    version: String,
    version_code: String,
    target_models: String,
    notes: String,
}

impl UploadForm {
    fn set(&mut self, name: &str, value: String) {
        match name {
            "kind" => self.kind = value,
            "name" => self.name = value,
            "version" => self.version = value,
            "versionCode" => self.version_code = value,
            "targetModels" => self.target_models = value,
            "notes" => self.notes = value,
            _ => {}
        }
    }

    fn params(&self) -> UploadParams {
        let some = |v: &str| Some(v.trim().to_string());
        UploadParams {
            kind: some(&self.kind),
            name: some(&self.name),
            version: some(&self.version),
            version_code: some(&self.version_code),
            target_models: some(&self.target_models),
            notes: Some(self.notes.clone()),
        }
    }
}

const UPLOAD_FIELDS: [&str; 7] = ["kind", "name", "version", "versionCode", "targetModels", "notes", "file"];

async fn upload_page(console: Console) -> Response {
    if let Some(refused) = session::refusal(&console, Role::Operator) {
        return refused;
    }
    upload_form_page(&console, &UploadForm { kind: "apk".into(), ..UploadForm::default() }, &FormErrors::none())
}

fn upload_form_page(console: &Console, form: &UploadForm, errors: &FormErrors) -> Response {
    let body = html! {
        p.lead { "herd stores the file, computes its SHA-256, and sends it to the devices a rollout targets." }
        (errors.summary(&UPLOAD_FIELDS))
        // The CSRF token comes first: the server checks it before it reads the file. The file
        // comes last, so that the metadata are checked before a byte of it is stored.
        form.card.stack method="post" action="/ui/updates/packages" enctype="multipart/form-data" {
            (console.csrf_input())
            (field(errors, "kind", "Kind", html! {
                select #(field_id("kind")) name="kind" {
                    @for (value, text) in [("apk", "Android app (APK)"), ("firmware", "Firmware image"), ("file", "Other file")] {
                        option value=(value) selected[form.kind == value] { (text) }
                    }
                }
            }))
            (field(errors, "name", "Name", html! {
                input #(field_id("name")) name="name" value=(form.name) required maxlength="128"
                    placeholder="e.g. com.example.player" autocomplete="off";
            }))
            (field(errors, "version", "Version", html! {
                input #(field_id("version")) name="version" value=(form.version) required maxlength="64" placeholder="e.g. 2.4.1";
            }))
            (field(errors, "versionCode", "Version code", html! {
                input #(field_id("versionCode")) name="versionCode" type="number" min="0" step="1" value=(form.version_code)
                    required aria-describedby="versionCode-hint";
                p.hint #versionCode-hint { "A whole number above every earlier package of this name (an APK's versionCode)." }
            }))
            (field(errors, "targetModels", "Target models", html! {
                input #(field_id("targetModels")) name="targetModels" value=(form.target_models) placeholder="e.g. X96, H96"
                    aria-describedby="targetModels-hint";
                p.hint #targetModels-hint { "Comma-separated device models; leave empty for any model." }
            }))
            (field(errors, "notes", "Release notes", html! {
                textarea #(field_id("notes")) name="notes" maxlength="4096" { (form.notes) }
            }))
            (field(errors, "file", "File", html! {
                input #(field_id("file")) name="file" type="file" required;
            }))
            div.row {
                button.primary type="submit" { "Upload" }
                a href="/ui/updates" { "Cancel" }
            }
        }
    };
    Page::with_status(errors.status(), page(console, Section::Updates, "Upload a package", body)).into_response()
}

/// A small text field of the upload form, read whole (at most [`MAX_TEXT_FIELD`] bytes).
async fn small_text(mut field: Field<'_>) -> Result<String, ApiError> {
    let name = field.name().unwrap_or("a field").to_string();
    let mut bytes = Vec::new();
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > MAX_TEXT_FIELD {
                    return Err(ApiError::invalid(name, "is too long"));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(error) => return Err(ApiError::BadRequest(format!("cannot read the form: {error}"))),
        }
    }
    String::from_utf8(bytes).map_err(|_| ApiError::invalid(name, "must be UTF-8 text"))
}

/// `POST /ui/updates/packages`: the CSRF token (the first field), the metadata, then the file,
/// streamed into the API's upload.
async fn upload(
    State(state): State<AppState>,
    console: Console,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let fail = |error: ApiError| layout::error_page(Some(&console), error);
    let mut multipart = match multipart {
        Ok(multipart) => multipart,
        Err(rejection) => return fail(ApiError::BadRequest(format!("send the upload form: {rejection}"))),
    };
    // Nothing but the token is read before the token is checked.
    let token = match multipart.next_field().await {
        Ok(Some(first)) if first.name() == Some(session::CSRF_FIELD) => match small_text(first).await {
            Ok(token) => Some(token),
            Err(error) => return fail(error),
        },
        _ => None,
    };
    if let Err(error) = session::check_csrf(&console, &headers, token.as_deref()) {
        return fail(error);
    }
    let mut form = UploadForm::default();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(error) => return fail(ApiError::BadRequest(format!("cannot read the form: {error}"))),
        };
        let Some(name) = field.name().map(str::to_string) else {
            continue;
        };
        if name != "file" {
            match small_text(field).await {
                Ok(value) => form.set(&name, value),
                Err(error @ ApiError::Validation(_)) => return upload_form_page(&console, &form, &error.into()),
                Err(error) => return fail(error),
            }
            continue;
        }
        if field.file_name().is_none_or(str::is_empty) {
            break;
        }
        let content_type = field.content_type().map(str::to_string);
        let artifact = Artifact { content_type: content_type.as_deref(), length: None, bytes: field };
        let params = form.params();
        let outcome = crate::packages::receive_upload(
            state.clock.as_ref(),
            &state.blobs,
            &state.settings,
            &console.member,
            &params,
            artifact,
        )
        .await;
        return match outcome {
            Ok(_) => Redirect::to("/ui/updates").into_response(),
            Err(error @ (ApiError::Forbidden(_) | ApiError::Unauthorized(_))) => fail(error),
            Err(error) => upload_form_page(&console, &form, &error.into()),
        };
    }
    let errors: FormErrors = ApiError::invalid("file", "choose the file to upload").into();
    upload_form_page(&console, &form, &errors)
}

async fn delete_package(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { console, .. }: ConsoleForm<serde::de::IgnoredAny>,
) -> Response {
    let Ok(id) = id.parse::<PackageId>() else {
        return layout::error_page(Some(&console), ApiError::not_found("package"));
    };
    let answer = crate::packages::delete_package(
        State(state.clock.clone()),
        State(state.blobs.clone()),
        console.member.clone(),
        IdPath(id),
    )
    .await;
    match answer {
        Ok(_) => Redirect::to("/ui/updates").into_response(),
        Err(error @ ApiError::Conflict(_)) => {
            render_overview(&state, &console, &ListQuery::default(), error.into()).await
        }
        Err(error) => layout::error_page(Some(&console), error),
    }
}

// ---------------------------------------------------------------------------------------------
// Creating a rollout
// ---------------------------------------------------------------------------------------------

/// The rollout form as the browser sends it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RolloutForm {
    #[serde(default)]
    package_id: String,
    #[serde(default)]
    name: String,
    /// `all`, `tag`, `model` or `devices`.
    #[serde(default)]
    target: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    device_ids: String,
    #[serde(default)]
    waves: String,
    #[serde(default)]
    soak_seconds: String,
    #[serde(default)]
    failure_threshold: String,
    allow_downgrade: Option<String>,
    #[serde(default)]
    window_start: String,
    #[serde(default)]
    window_end: String,
    start: Option<String>,
}

/// The API's names of the fields the rollout form draws beside its inputs.
const ROLLOUT_FIELDS: [&str; 13] = [
    "packageId",
    "name",
    "target",
    "target.tag",
    "target.model",
    "target.deviceIds",
    "waves",
    "soakSeconds",
    "failureThreshold",
    "allowDowngrade",
    "maintenanceWindow",
    "maintenanceWindow.start",
    "maintenanceWindow.end",
];

#[derive(Debug, Default, Deserialize)]
pub(super) struct NewRolloutQuery {
    package: Option<String>,
}

async fn new_rollout_page(
    State(_state): State<AppState>,
    console: Console,
    Query(query): Query<NewRolloutQuery>,
) -> Response {
    if let Some(refused) = session::refusal(&console, Role::Operator) {
        return refused;
    }
    let form = RolloutForm {
        package_id: query.package.unwrap_or_default(),
        target: "all".into(),
        waves: "1,10,50,100".into(),
        soak_seconds: "3600".into(),
        failure_threshold: "10".into(),
        ..RolloutForm::default()
    };
    rollout_form_page(&console, &form, &FormErrors::none()).await
}

async fn rollout_form_page(console: &Console, form: &RolloutForm, errors: &FormErrors) -> Response {
    let packages = crate::packages::list_packages(
        console.member.clone(),
        ApiQuery(PackageListParams { name: None, limit: Some(PACKAGE_CHOICES), cursor: None }),
    )
    .await;
    let packages = match packages {
        Ok(axum::Json(list)) => list.items,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let checked = |value: &str| form.target == value;
    let body = html! {
        @if packages.is_empty() {
            (empty("No packages to roll out", html! {
                p { "A rollout sends a package: upload one first." }
                p { a.button.primary href="/ui/updates/packages/new" { "Upload a package" } }
            }))
        } @else {
            (errors.summary(&ROLLOUT_FIELDS))
            form.card.stack method="post" action="/ui/updates/rollouts" {
                (console.csrf_input())
                (field(errors, "packageId", "Package", html! {
                    select #(field_id("packageId")) name="package_id" required {
                        @for package in packages.iter().rev() {
                            option value=(package.id) selected[form.package_id == package.id] {
                                (label(package)) " (" (package.version_code) ")"
                            }
                        }
                    }
                }))
                (field(errors, "name", "Name (optional)", html! {
                    input #(field_id("name")) name="name" value=(form.name) maxlength="200"
                        placeholder="default: the package's name and version";
                }))
                fieldset.field.invalid[errors.field("target").is_some()] {
                    legend { "Devices" }
                    @if let Some(message) = errors.field("target") { p.field-error role="alert" { (message) } }
                    div.row {
                        input #target-all type="radio" name="target" value="all" checked[checked("all")];
                        label for="target-all" { "The whole tenant" }
                    }
                    div.row {
                        input #target-tag type="radio" name="target" value="tag" checked[checked("tag")];
                        label for="target-tag" { "Devices with a tag" }
                    }
                    (field(errors, "target.tag", "Tag", html! {
                        input #(field_id("target.tag")) name="tag" value=(form.tag) placeholder="e.g. lobby";
                    }))
                    div.row {
                        input #target-model type="radio" name="target" value="model" checked[checked("model")];
                        label for="target-model" { "Devices of a model" }
                    }
                    (field(errors, "target.model", "Model", html! {
                        input #(field_id("target.model")) name="model" value=(form.model) placeholder="e.g. X96";
                    }))
                    div.row {
                        input #target-devices type="radio" name="target" value="devices" checked[checked("devices")];
                        label for="target-devices" { "These devices" }
                    }
                    (field(errors, "target.deviceIds", "Device ids", html! {
                        textarea #(field_id("target.deviceIds")) name="device_ids" placeholder="one id per line, or separated by commas" {
                            (form.device_ids)
                        }
                    }))
                }
                (field(errors, "waves", "Waves", html! {
                    input #(field_id("waves")) name="waves" value=(form.waves) aria-describedby="waves-hint";
                    p.hint #waves-hint { "Cumulative percentages of the devices, ending at 100, e.g. 1,10,50,100." }
                }))
                (field(errors, "soakSeconds", "Soak time (seconds)", html! {
                    input #(field_id("soakSeconds")) name="soak_seconds" type="number" min="0" value=(form.soak_seconds)
                        aria-describedby="soak-hint";
                    p.hint #soak-hint { "How long a wave runs before the next one starts (3600 = one hour)." }
                }))
                (field(errors, "failureThreshold", "Failure threshold (%)", html! {
                    input #(field_id("failureThreshold")) name="failure_threshold" type="number" min="0" max="100"
                        value=(form.failure_threshold) aria-describedby="threshold-hint";
                    p.hint #threshold-hint { "More failures than this in a wave pause the rollout." }
                }))
                div.row {
                    input #f-allowDowngrade type="checkbox" name="allow_downgrade" value="true" checked[form.allow_downgrade.is_some()];
                    label for="f-allowDowngrade" { "Allow downgrades (send it to devices that have a newer version)" }
                }
                fieldset.field.invalid[errors.field("maintenanceWindow").is_some()] {
                    legend { "Maintenance window (optional, each device's local time)" }
                    @if let Some(message) = errors.field("maintenanceWindow") { p.field-error role="alert" { (message) } }
                    div.row {
                        (field(errors, "maintenanceWindow.start", "From", html! {
                            input #(field_id("maintenanceWindow.start")) name="window_start" type="time" value=(form.window_start);
                        }))
                        (field(errors, "maintenanceWindow.end", "Until", html! {
                            input #(field_id("maintenanceWindow.end")) name="window_end" type="time" value=(form.window_end);
                        }))
                    }
                }
                div.row {
                    input #f-start type="checkbox" name="start" value="true" checked[form.start.is_some()];
                    label for="f-start" { "Start now (else it waits, ready, for Start)" }
                }
                div.row {
                    button.primary type="submit" { "Create the rollout" }
                    a href="/ui/updates" { "Cancel" }
                }
            }
        }
    };
    Page::with_status(errors.status(), page(console, Section::Updates, "Start a rollout", body)).into_response()
}

/// A number the form needs whole, or a field error.
fn whole(text: &str, field: &str, errors: &mut FieldErrors) -> Option<i64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    match text.parse::<i64>() {
        Ok(value) => Some(value),
        Err(_) => {
            errors.add(field, "must be a whole number");
            None
        }
    }
}

/// The API's request from the form; a field the API could not even read (a word where a
/// number goes) is reported here, under the API's name for it.
fn rollout_request(form: &RolloutForm) -> Result<CreateRolloutDto, ApiError> {
    let mut errors = FieldErrors::new();
    let waves = if form.waves.trim().is_empty() {
        None
    } else {
        let parsed: Result<Vec<i64>, _> =
            form.waves.split([',', ' ']).filter(|p| !p.trim().is_empty()).map(|p| p.trim().parse::<i64>()).collect();
        match parsed {
            Ok(waves) => Some(waves),
            Err(_) => {
                errors.add("waves", "must be whole percentages separated by commas, e.g. 1,10,50,100");
                None
            }
        }
    };
    let soak_seconds = whole(&form.soak_seconds, "soakSeconds", &mut errors);
    let failure_threshold = whole(&form.failure_threshold, "failureThreshold", &mut errors);
    let text = |v: &str| Some(v.trim().to_string());
    let target = match form.target.as_str() {
        "all" => RolloutTargetDto { all: Some(true), ..RolloutTargetDto::default() },
        "tag" => RolloutTargetDto { tag: text(&form.tag), ..RolloutTargetDto::default() },
        "model" => RolloutTargetDto { model: text(&form.model), ..RolloutTargetDto::default() },
        "devices" => RolloutTargetDto {
            device_ids: Some(
                form.device_ids
                    .split([',', ' ', '\n', '\r', '\t'])
                    .filter(|id| !id.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            ..RolloutTargetDto::default()
        },
        _ => {
            errors.add("target", "choose which devices to update");
            RolloutTargetDto::default()
        }
    };
    let maintenance_window = if form.window_start.trim().is_empty() && form.window_end.trim().is_empty() {
        None
    } else {
        Some(MaintenanceWindowDto {
            start: form.window_start.trim().to_string(),
            end: form.window_end.trim().to_string(),
        })
    };
    errors.finish()?;
    Ok(CreateRolloutDto {
        package_id: form.package_id.trim().to_string(),
        name: Some(form.name.trim().to_string()).filter(|n| !n.is_empty()),
        target,
        waves,
        soak_seconds,
        failure_threshold,
        allow_downgrade: Some(form.allow_downgrade.is_some()),
        maintenance_window,
        start: Some(form.start.is_some()),
    })
}

async fn create_rollout(
    State(state): State<AppState>,
    ConsoleForm { console, form }: ConsoleForm<RolloutForm>,
) -> Response {
    let request = match rollout_request(&form).and_then(ApiJson::validated) {
        Ok(request) => request,
        Err(error) => return failed_rollout_form(&console, &form, error).await,
    };
    match crate::rollouts::create_rollout(State(state), console.member.clone(), request).await {
        Ok((_, axum::Json(rollout))) => Redirect::to(&format!("/ui/updates/rollouts/{}", rollout.id)).into_response(),
        Err(error) => failed_rollout_form(&console, &form, error).await,
    }
}

async fn failed_rollout_form(console: &Console, form: &RolloutForm, error: ApiError) -> Response {
    match error {
        ApiError::Forbidden(_) | ApiError::Unauthorized(_) => layout::error_page(Some(console), error),
        error => rollout_form_page(console, form, &error.into()).await,
    }
}

// ---------------------------------------------------------------------------------------------
// One rollout
// ---------------------------------------------------------------------------------------------

async fn rollout_page(State(state): State<AppState>, console: Console, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<RolloutId>() else {
        return layout::error_page(Some(&console), ApiError::not_found("rollout"));
    };
    render_rollout(&state, &console, id, FormErrors::none()).await
}

async fn render_rollout(state: &AppState, console: &Console, id: RolloutId, errors: FormErrors) -> Response {
    let rollout = match crate::rollouts::get_rollout(console.member.clone(), IdPath(id)).await {
        Ok(axum::Json(rollout)) => rollout,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let failed = crate::rollouts::list_rollout_devices(
        console.member.clone(),
        IdPath(id),
        ApiQuery(RolloutDeviceParams {
            state: Some("failed".into()),
            wave: None,
            limit: Some(FAILED_LISTED),
            cursor: None,
        }),
    )
    .await;
    let failed = match failed {
        Ok(axum::Json(list)) => list,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let mut names = PackageNames(HashMap::new());
    if let Err(error) = names.learn(console, &rollout.package_id).await {
        return layout::error_page(Some(console), error);
    }
    let now = state.clock.now();
    let types = event_types(&["rollout.", "device.update_state_changed"]);
    let body = html! {
        p { a href="/ui/updates" { "← Software updates" } }
        (errors.summary(&[]))
        (live("rollout", &types, rollout_body(console, &rollout, &names, &failed, now)))
    };
    let title = format!("Rollout {}", rollout.name);
    Page::with_status(errors.status(), page(console, Section::Updates, &title, body)).into_response()
}

fn target_text(target: &RolloutTargetDto) -> Markup {
    html! {
        @if target.all == Some(true) {
            "the whole tenant"
        } @else if let Some(ids) = &target.device_ids {
            (ids.len()) @if ids.len() == 1 { " device" } @else { " devices" }
        } @else {
            @if let Some(tag) = &target.tag { "devices tagged " code { (tag) } }
            @if target.tag.is_some() && target.model.is_some() { " of model " } @else if target.model.is_some() { "devices of model " }
            @if let Some(model) = &target.model { code { (model) } }
        }
    }
}

fn counts_text(counts: &UpdateCounts) -> String {
    let parts = [
        ("installed", counts.installed),
        ("failed", counts.failed),
        ("installing", counts.installing),
        ("downloaded", counts.downloaded),
        ("downloading", counts.downloading),
        ("notified", counts.notified),
        ("pending", counts.pending),
        ("skipped", counts.skipped),
        ("cancelled", counts.cancelled),
    ];
    let shown: Vec<String> = parts.iter().filter(|(_, n)| *n > 0).map(|(state, n)| format!("{n} {state}")).collect();
    if shown.is_empty() {
        "no devices".into()
    } else {
        shown.join(" · ")
    }
}

fn rollout_body(
    console: &Console,
    rollout: &RolloutDto,
    names: &PackageNames,
    failed: &ListResponse<crate::rollouts::RolloutDeviceDto>,
    now: DateTime<Utc>,
) -> Markup {
    html! {
        div.grid-2 {
            section.card {
                h2 { "Facts" }
                dl.facts {
                    dt { "Package" } dd { (names.show(&rollout.package_id)) }
                    dt { "Devices" } dd { (target_text(&rollout.target)) " · " (rollout.total) " targeted" }
                    dt { "State" } dd {
                        (badge(rollout.state.as_str()))
                        @if let Some(reason) = rollout.reason.as_deref().filter(|_| rollout.state == RolloutState::Paused) {
                            p { "Why: " (reason) }
                        }
                    }
                    dt { "Wave" } dd { (wave_of(rollout)) }
                    dt { "Soak time" } dd { (rollout.soak_seconds) " s" }
                    dt { "Failure threshold" } dd { (rollout.failure_threshold) " %" }
                    dt { "Downgrades" } dd { @if rollout.allow_downgrade { "allowed" } @else { "skipped" } }
                    @if let Some(window) = &rollout.maintenance_window {
                        dt { "Maintenance window" } dd { (window.start) "–" (window.end) " device time" }
                    }
                    dt { "Created" } dd { (when(now, Some(rollout.created_at))) }
                    dt { "Started" } dd { (when(now, rollout.started_at)) }
                    dt { "Finished" } dd { (when(now, rollout.finished_at)) }
                }
                div.stack {
                    (progress(finished(&rollout.counts), rollout.total, "devices finished"))
                    p { (counts_text(&rollout.counts)) }
                }
                (actions(console, rollout))
            }
            section.card {
                h2 { "Waves" }
                div.table-wrap { table {
                    thead { tr { th { "Wave" } th.num { "Up to" } th.num { "Devices" } th { "Started" } th { "Progress" } } }
                    tbody {
                        @for wave in &rollout.waves {
                            tr {
                                td { (wave.index + 1) @if rollout.current_wave == Some(wave.index) { " " span.badge { "current" } } }
                                td.num { (wave.percent) " %" }
                                td.num { (wave.devices) }
                                td.nowrap { (when(now, wave.started_at)) }
                                td {
                                    (progress(finished(&wave.counts), wave.devices, &format!("wave {} finished", wave.index + 1)))
                                    p.hint { (counts_text(&wave.counts)) }
                                }
                            }
                        }
                    }
                } }
            }
        }
        section {
            h2 { "Failed devices" }
            @if failed.items.is_empty() {
                p.muted { "No device has reported a failure." }
            } @else {
                div.table-wrap { table {
                    thead { tr { th { "Device" } th.num { "Wave" } th { "Reason" } th { "Failed" } } }
                    tbody {
                        @for device in &failed.items {
                            tr {
                                td.mono { a href=(format!("/ui/devices/{}", device.device_id)) { (device.device_id) } }
                                td.num { (device.wave + 1) }
                                td { (device.reason.as_deref().unwrap_or("–")) }
                                td.nowrap { (when(now, device.finished_at)) }
                            }
                        }
                    }
                } }
                @if failed.next_cursor.is_some() {
                    p.hint { "The first " (FAILED_LISTED) " are listed; " code { "GET /rollouts/" (rollout.id) "/devices?state=failed" } " lists them all." }
                }
            }
        }
    }
}

/// Start, Pause, Resume and Cancel, as the state allows, for operators and up.
fn actions(console: &Console, rollout: &RolloutDto) -> Markup {
    let action = |name: &str| format!("/ui/updates/rollouts/{}/{name}", rollout.id);
    html! {
        @if may(console, Role::Operator) && !rollout.state.is_final() {
            div.row {
                @if rollout.state == RolloutState::Ready {
                    form.inline method="post" action=(action("start")) {
                        (console.csrf_input())
                        button.primary type="submit" { "Start" }
                    }
                }
                @if rollout.state == RolloutState::Running {
                    form.inline.row method="post" action=(action("pause")) {
                        (console.csrf_input())
                        input #f-reason name="reason" maxlength="1024" placeholder="reason (optional)"
                            aria-label="Reason for the pause (optional)";
                        button type="submit" { "Pause" }
                    }
                }
                @if rollout.state == RolloutState::Paused {
                    form.inline method="post" action=(action("resume")) {
                        (console.csrf_input())
                        button.primary type="submit" { "Resume" }
                    }
                }
                form.inline method="post" action=(action("cancel"))
                    data-confirm="Cancel this rollout? Devices that have not started downloading will not get the package." {
                    (console.csrf_input())
                    button.danger type="submit" { "Cancel rollout" }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ActionForm {
    reason: Option<String>,
}

async fn rollout_action(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    ConsoleForm { console, form }: ConsoleForm<ActionForm>,
) -> Response {
    let Ok(id) = id.parse::<RolloutId>() else {
        return layout::error_page(Some(&console), ApiError::not_found("rollout"));
    };
    let member = console.member.clone();
    let answer = match action.as_str() {
        "start" => crate::rollouts::start_rollout(State(state.clone()), member, IdPath(id)).await.map(|_| ()),
        "pause" => {
            let body = PauseDto { reason: form.reason.map(|r| r.trim().to_string()).filter(|r| !r.is_empty()) };
            match body.validate() {
                Ok(()) => crate::rollouts::pause_rollout(
                    State(state.clock.clone()),
                    member,
                    IdPath(id),
                    OptionalJson(Some(body)),
                )
                .await
                .map(|_| ()),
                Err(error) => Err(error),
            }
        }
        "resume" => crate::rollouts::resume_rollout(State(state.clone()), member, IdPath(id)).await.map(|_| ()),
        "cancel" => crate::rollouts::cancel_rollout(State(state.clock.clone()), member, IdPath(id)).await.map(|_| ()),
        _ => Err(ApiError::NotFound("no such action".into())),
    };
    match answer {
        Ok(()) => Redirect::to(&format!("/ui/updates/rollouts/{id}")).into_response(),
        Err(error @ (ApiError::Conflict(_) | ApiError::Validation(_))) => {
            render_rollout(&state, &console, id, error.into()).await
        }
        Err(error) => layout::error_page(Some(&console), error),
    }
}
