//! The alerts page (what the monitoring rules raised, with filters and acknowledgement) and
//! the monitoring rules page (read for everyone, created, changed and deleted by admins).
//!
//! Every read and action calls the API's own handler (`monitoring::alerts`,
//! `monitoring::rules`) with the signed-in member, so the role checks are the API's: an
//! operator may acknowledge, only an admin may change rules. Nothing here opens or resolves an
//! alert; evaluation does that.

use std::str::FromStr;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, badge, empty, event_types, field, live, may, page, pager, when, FormErrors, Page, Section};
use super::session::{Console, ConsoleForm};
use crate::app::AppState;
use crate::auth::Role;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, PageParams};
use crate::http::ListResponse;
use crate::monitoring::alerts::{AlertDto, AlertListParams};
use crate::monitoring::rules::{CreateRuleDto, RuleDto, UpdateRuleDto};
use herd_domain::status::{Metric, Operator, Severity};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/ui/alerts", get(list))
        .route("/ui/alerts/{id}/acknowledge", post(acknowledge))
        .route("/ui/alerts/rules", get(rules).post(create_rule))
        .route("/ui/alerts/rules/{id}", post(update_rule))
        .route("/ui/alerts/rules/{id}/delete", post(delete_rule))
}

/// A page of the alert list holds this many alerts.
const PAGE_SIZE: u32 = 50;
/// A page of the rule list holds this many rules (a tenant has a handful).
const RULES_PAGE_SIZE: u32 = 100;
const RULES_URL: &str = "/ui/alerts/rules";

/// The alert list's filters, as the filter form (and the acknowledge forms) send them. The
/// API filters by status, severity and device; it has no metric filter.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    status: String,
    #[serde(default)]
    severity: String,
    /// A device id (the device page links here with it).
    #[serde(default)]
    device: String,
    cursor: Option<String>,
}

impl Filters {
    fn any(&self) -> bool {
        !(self.status.is_empty() && self.severity.is_empty() && self.device.is_empty())
    }

    fn query(&self) -> [(&str, &str); 3] {
        [("status", &self.status), ("severity", &self.severity), ("device", &self.device)]
    }

    /// The list's address with these filters (and no cursor).
    fn url(&self) -> String {
        let pairs: Vec<(&str, &str)> = self.query().into_iter().filter(|(_, v)| !v.is_empty()).collect();
        match serde_urlencoded::to_string(&pairs).unwrap_or_default() {
            query if query.is_empty() => "/ui/alerts".to_string(),
            query => format!("/ui/alerts?{query}"),
        }
    }
}

fn non_empty(text: &str) -> Option<String> {
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

async fn list(State(state): State<AppState>, console: Console, Query(filters): Query<Filters>) -> Response {
    let params = AlertListParams {
        status: non_empty(&filters.status),
        severity: non_empty(&filters.severity),
        device_id: non_empty(&filters.device),
        since: None,
        limit: Some(PAGE_SIZE),
        cursor: filters.cursor.clone().filter(|c| !c.is_empty()),
    };
    let answer = crate::monitoring::alerts::list_alerts(console.member.clone(), ApiQuery(params)).await;
    let (alerts, errors) = match answer {
        Ok(axum::Json(alerts)) => (alerts, FormErrors::none()),
        Err(error @ ApiError::Validation(_)) => {
            (ListResponse { items: Vec::new(), next_cursor: None }, FormErrors::from(error))
        }
        Err(error) => return layout::error_page(Some(&console), error),
    };
    let now = state.clock.now();
    let body = html! {
        (tabs(false))
        (filter_form(&filters, &errors))
        (errors.summary(&["status", "severity"]))
        (live("alerts", &event_types(&["alert."]), alert_table(&console, &alerts, &filters, now)))
    };
    Page::with_status(errors.status(), page(&console, Section::Alerts, "Alerts", body)).into_response()
}

/// The two views of the section: the alerts and the rules that raise them.
fn tabs(on_rules: bool) -> Markup {
    layout::tabs("Alerts and rules", &[("/ui/alerts", "Alerts", !on_rules), (RULES_URL, "Monitoring rules", on_rules)])
}

fn filter_form(filters: &Filters, errors: &FormErrors) -> Markup {
    let option = |value: &str, label: &str, current: &str| {
        html! { option value=(value) selected[current == value] { (label) } }
    };
    html! {
        form.filters method="get" action="/ui/alerts" role="search" {
            (field(errors, "status", "State", html! {
                select #f-status name="status" {
                    (option("", "Any", &filters.status))
                    (option("open", "Open", &filters.status))
                    (option("resolved", "Resolved", &filters.status))
                }
            }))
            (field(errors, "severity", "Severity", html! {
                select #f-severity name="severity" {
                    (option("", "Any", &filters.severity))
                    @for severity in Severity::ALL {
                        (option(severity.as_str(), &capitalised(severity.as_str()), &filters.severity))
                    }
                }
            }))
            @if !filters.device.is_empty() {
                input type="hidden" name="device" value=(filters.device);
            }
            button.primary type="submit" { "Filter" }
            @if filters.any() {
                a.button href="/ui/alerts" { "Clear" }
            }
        }
        @if !filters.device.is_empty() {
            p.hint {
                "Only the alerts of device "
                a.mono href=(format!("/ui/devices/{}", filters.device)) { (short(&filters.device)) }
                ". "
                a href=(Filters { device: String::new(), ..Filters::default() }.url()) { "Show every device's alerts" }
            }
        }
    }
}

fn alert_table(console: &Console, alerts: &ListResponse<AlertDto>, filters: &Filters, now: DateTime<Utc>) -> Markup {
    let can_acknowledge = may(console, Role::Operator);
    let me = console.member.user_id.map(|id| id.to_string());
    html! {
        @if alerts.items.is_empty() {
            @if filters.any() || filters.cursor.is_some() {
                (empty("No alert matches these filters", html! { p { a href="/ui/alerts" { "Show every alert" } } }))
            } @else {
                (empty("No alerts", html! {
                    p { "An alert opens when a device reports a metric beyond a monitoring rule's threshold, and resolves when the metric comes back." }
                    p { a.button.primary href=(RULES_URL) { "Review the monitoring rules" } }
                }))
            }
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th { "Severity" } th { "Device" } th { "Metric" } th.num { "Value / threshold" }
                    th { "Opened" } th { "State" } th.hide-narrow { "Acknowledged" }
                    @if can_acknowledge { th { span.muted { "Action" } } }
                } }
                tbody {
                    @for alert in &alerts.items {
                        tr {
                            td { (badge(&alert.severity)) }
                            td { a href=(format!("/ui/devices/{}", alert.device_id)) { (alert.device_name) } }
                            td { (alert.metric) br; span.muted { (alert.rule_name) } }
                            td.num.nowrap {
                                (number(alert.value)) (unit(&alert.metric))
                                span.muted { " " (operator_symbol(&alert.operator)) " " (number(alert.threshold)) (unit(&alert.metric)) }
                            }
                            td.nowrap { (when(now, Some(alert.created_at))) }
                            td.nowrap {
                                (badge(&alert.status))
                                @if let Some(resolved) = alert.resolved_at { br; span.muted { (when(now, Some(resolved))) } }
                            }
                            td.hide-narrow.nowrap {
                                @match (&alert.acknowledged_at, &alert.acknowledged_by) {
                                    (Some(at), by) => {
                                        (badge("acknowledged")) br;
                                        span.muted {
                                            (when(now, Some(*at)))
                                            @if let Some(by) = by {
                                                " by "
                                                @if me.as_deref() == Some(by.as_str()) { "you" }
                                                @else { span.mono title=(by) { (short(by)) } }
                                            }
                                        }
                                    }
                                    (None, _) => { span.muted { "–" } }
                                }
                            }
                            @if can_acknowledge {
                                td {
                                    @if alert.acknowledged_at.is_none() {
                                        form.inline method="post" action=(format!("/ui/alerts/{}/acknowledge", alert.id)) {
                                            (console.csrf_input())
                                            @for (name, value) in filters.query() {
                                                @if !value.is_empty() { input type="hidden" name=(name) value=(value); }
                                            }
                                            button.small type="submit" { "Acknowledge" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
            (pager("/ui/alerts", &filters.query(), alerts.next_cursor.as_deref(), filters.cursor.is_none()))
        }
    }
}

/// `POST /ui/alerts/{id}/acknowledge`: the API's acknowledge (operator and above), then back to
/// the list with the filters the form carried.
async fn acknowledge(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { console, form }: ConsoleForm<Filters>,
) -> Response {
    let Ok(id) = id.parse() else {
        return layout::error_page(Some(&console), ApiError::not_found("alert"));
    };
    let answer =
        crate::monitoring::alerts::acknowledge_alert(State(state.clock.clone()), console.member.clone(), IdPath(id))
            .await;
    match answer {
        Ok(_) => Redirect::to(&form.url()).into_response(),
        Err(error) => layout::error_page(Some(&console), error),
    }
}

/// `GET /ui/alerts/rules?cursor=`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RulesQuery {
    cursor: Option<String>,
}

/// Which form failed, so the page re-renders it (open, with the sent values) and its errors.
enum Failed {
    New(RuleForm, FormErrors),
    Rule(String, RuleForm, FormErrors),
}

async fn rules(State(state): State<AppState>, console: Console, Query(query): Query<RulesQuery>) -> Response {
    rules_page(&state, &console, query.cursor, None).await
}

async fn rules_page(state: &AppState, console: &Console, cursor: Option<String>, failed: Option<Failed>) -> Response {
    let cursor = cursor.filter(|c| !c.is_empty());
    let params = PageParams { limit: Some(RULES_PAGE_SIZE), cursor: cursor.clone() };
    let answer =
        crate::monitoring::rules::list_rules(State(state.clock.clone()), console.member.clone(), ApiQuery(params))
            .await;
    let rules = match answer {
        Ok(axum::Json(rules)) => rules,
        Err(error) => return layout::error_page(Some(console), error),
    };
    let status = match &failed {
        Some(Failed::New(_, errors) | Failed::Rule(_, _, errors)) => errors.status(),
        None => StatusCode::OK,
    };
    let admin = may(console, Role::Admin);
    let body = html! {
        (tabs(true))
        p.lead { "A rule opens an alert for a device when a metric it reports is beyond the threshold, and resolves it when the metric comes back." }
        @if let Some(Failed::Rule(_, _, errors)) = &failed {
            (errors.summary(&RULE_FIELDS))
        }
        (rule_table(console, &rules, failed.as_ref()))
        (pager(RULES_URL, &[], rules.next_cursor.as_deref(), cursor.is_none()))
        @if admin {
            section.card {
                h2 #new-rule { "New rule" }
                @match &failed {
                    Some(Failed::New(form, errors)) => { (rule_form(console, None, form, errors)) }
                    _ => { (rule_form(console, None, &RuleForm::new(), &FormErrors::none())) }
                }
            }
        } @else {
            p.muted { "Only an admin can create or change rules." }
        }
    };
    Page::with_status(status, page(console, Section::Alerts, "Monitoring rules", body)).into_response()
}

fn rule_table(console: &Console, rules: &ListResponse<RuleDto>, failed: Option<&Failed>) -> Markup {
    let admin = may(console, Role::Admin);
    html! {
        @if rules.items.is_empty() {
            (empty("No monitoring rules", html! {
                @if admin {
                    p { "Without rules no alert ever opens. " a href="#new-rule" { "Create a rule" } " below." }
                } @else {
                    p { "Without rules no alert ever opens; ask an admin to create one." }
                }
            }))
        } @else {
            div.table-wrap { table {
                thead { tr {
                    th { "Name" } th { "Metric" } th { "Condition" } th { "Severity" } th.hide-narrow { "Applies to" }
                    th { "Enabled" }
                    @if admin { th { span.muted { "Actions" } } }
                } }
                tbody {
                    @for rule in &rules.items {
                        tr {
                            td { (rule.name) }
                            td { (rule.metric.as_str()) }
                            td.nowrap {
                                (operator_symbol(rule.operator.as_str())) " " (number(rule.threshold)) (unit(rule.metric.as_str()))
                            }
                            td { (badge(rule.severity.as_str())) }
                            td.hide-narrow { (scope(rule)) }
                            td { @if rule.enabled { (badge("enabled")) } @else { (badge("disabled")) } }
                            @if admin {
                                td { (rule_actions(console, rule, failed)) }
                            }
                        }
                    }
                }
            } }
        }
    }
}

fn scope(rule: &RuleDto) -> Markup {
    html! {
        @match (&rule.device_ids, &rule.tags) {
            (Some(ids), _) => { (ids.len()) @if ids.len() == 1 { " device" } @else { " devices" } }
            (None, Some(tags)) => {
                "tagged "
                @for (i, tag) in tags.iter().enumerate() {
                    @if i > 0 { ", " }
                    a.badge href=(format!("/ui/devices?tag={}", encode(tag))) { (tag) }
                }
            }
            (None, None) => { "every device" }
        }
    }
}

/// An admin's edit form (in a disclosure, open when it failed) and delete button for a rule.
fn rule_actions(console: &Console, rule: &RuleDto, failed: Option<&Failed>) -> Markup {
    let (form, errors, open) = match failed {
        Some(Failed::Rule(id, form, errors)) if *id == rule.id => (form, errors, true),
        _ => (&RuleForm::from_rule(rule), &FormErrors::none(), false),
    };
    html! {
        details open[open] {
            summary { "Edit" }
            (rule_form(console, Some(rule), form, errors))
        }
        form.inline method="post" action=(format!("{RULES_URL}/{}/delete", rule.id))
            data-confirm=(format!("Delete the rule “{}”? Its open alerts are resolved.", rule.name)) {
            (console.csrf_input())
            button.danger.small type="submit" { "Delete" }
        }
    }
}

/// The fields a rule form draws itself (any other error goes to the summary).
const RULE_FIELDS: [&str; 6] = ["name", "metric", "operator", "threshold", "severity", "tags"];

/// The create form (`rule` is `None`) or a rule's edit form. A rule's metric and scope are
/// fixed once created: the edit form changes its name, condition, severity and whether it is on.
fn rule_form(console: &Console, rule: Option<&RuleDto>, values: &RuleForm, errors: &FormErrors) -> Markup {
    let prefix = rule.map_or_else(|| "new".to_string(), |rule| rule.id.clone());
    let action = rule.map_or_else(|| RULES_URL.to_string(), |rule| format!("{RULES_URL}/{}", rule.id));
    let choose = |name: &str, label: &str, options: &[(&str, String)], current: &str| {
        labelled(errors, &prefix, name, label, |id| {
            html! {
                select id=(id) name=(name) {
                    @for (value, text) in options {
                        option value=(value) selected[current == *value] { (text) }
                    }
                }
            }
        })
    };
    let metrics: Vec<(&str, String)> =
        Metric::ALL.iter().map(|m| (m.as_str(), format!("{} ({})", m.as_str(), m.unit_name()))).collect();
    let operators: Vec<(&str, String)> = Operator::ALL
        .iter()
        .map(|o| (o.as_str(), format!("{} ({})", operator_symbol(o.as_str()), o.as_str())))
        .collect();
    let severities: Vec<(&str, String)> = Severity::ALL.iter().map(|s| (s.as_str(), capitalised(s.as_str()))).collect();
    html! {
        form.stack method="post" action=(action) {
            (console.csrf_input())
            @if rule.is_none() { (errors.summary(&RULE_FIELDS)) }
            (labelled(errors, &prefix, "name", "Name", |id| html! {
                input id=(id) name="name" value=(values.name) maxlength="100" required;
            }))
            @if rule.is_none() {
                (choose("metric", "Metric", &metrics, &values.metric))
            }
            div.row {
                (choose("operator", "Comparison", &operators, &values.operator))
                (labelled(errors, &prefix, "threshold", "Threshold", |id| html! {
                    input id=(id) name="threshold" type="number" step="any" value=(values.threshold) required;
                }))
                (choose("severity", "Severity", &severities, &values.severity))
            }
            @if rule.is_none() {
                (labelled(errors, &prefix, "tags", "Only devices tagged (optional, comma-separated)", |id| html! {
                    input id=(id) name="tags" value=(values.tags) placeholder="every device";
                }))
            } @else {
                p.hint { "Thresholds are percent for cpu, ram and storage, °C for temperature, minutes for offline." }
            }
            div.field {
                label for=(format!("r-{prefix}-enabled")) {
                    input id=(format!("r-{prefix}-enabled")) type="checkbox" name="enabled" value="on" checked[values.enabled];
                    " Enabled"
                }
            }
            @if rule.is_some() {
                button.primary type="submit" { "Save changes" }
            } @else {
                button.primary type="submit" { "Create rule" }
            }
        }
    }
}

/// Like `layout::field`, for a page with many forms with the same field names: ids carry the
/// form's `prefix`, so every label points at its own input.
fn labelled(errors: &FormErrors, prefix: &str, name: &str, label: &str, input: impl FnOnce(&str) -> Markup) -> Markup {
    let id = format!("r-{prefix}-{name}");
    let error = errors.field(name);
    html! {
        div.field.invalid[error.is_some()] {
            label for=(id) { (label) }
            (input(&id))
            @if let Some(message) = error {
                p.field-error id=(format!("{id}-error")) role="alert" { (message) }
            }
        }
    }
}

/// A rule form as sent (every field text, so a failed form shows exactly what was typed).
#[derive(Debug, Default, Deserialize)]
pub(super) struct RuleForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    metric: String,
    #[serde(default)]
    operator: String,
    #[serde(default)]
    threshold: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    tags: String,
    /// A checkbox: present when ticked.
    #[serde(default, deserialize_with = "ticked")]
    enabled: bool,
}

fn ticked<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Option::<String>::deserialize(deserializer).map(|value| value.is_some())
}

impl RuleForm {
    fn new() -> Self {
        RuleForm {
            metric: Metric::Cpu.as_str().into(),
            operator: Operator::Gt.as_str().into(),
            severity: Severity::Warning.as_str().into(),
            enabled: true,
            ..RuleForm::default()
        }
    }

    fn from_rule(rule: &RuleDto) -> Self {
        RuleForm {
            name: rule.name.clone(),
            metric: rule.metric.as_str().into(),
            operator: rule.operator.as_str().into(),
            threshold: number(rule.threshold),
            severity: rule.severity.as_str().into(),
            tags: rule.tags.as_ref().map(|tags| tags.join(", ")).unwrap_or_default(),
            enabled: rule.enabled,
        }
    }

    fn threshold(&self, errors: &mut FieldErrors) -> Option<f64> {
        match self.threshold.trim().parse::<f64>() {
            Ok(value) => Some(value),
            Err(_) => {
                errors.add("threshold", "must be a number");
                None
            }
        }
    }

    fn create_body(&self) -> Result<CreateRuleDto, ApiError> {
        let mut errors = FieldErrors::new();
        let metric = choice::<Metric>(&mut errors, "metric", &self.metric);
        let operator = choice::<Operator>(&mut errors, "operator", &self.operator);
        let severity = choice::<Severity>(&mut errors, "severity", &self.severity);
        let threshold = self.threshold(&mut errors);
        let tags: Vec<String> =
            self.tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect();
        match (metric, operator, severity, threshold) {
            (Some(metric), Some(operator), Some(severity), Some(threshold)) => {
                errors.finish()?;
                Ok(CreateRuleDto {
                    name: self.name.clone(),
                    metric,
                    operator,
                    threshold,
                    severity,
                    enabled: self.enabled,
                    device_ids: None,
                    tags: Some(tags).filter(|tags| !tags.is_empty()),
                })
            }
            _ => Err(errors.finish().err().unwrap_or_else(|| ApiError::invalid("form", "incomplete"))),
        }
    }

    fn update_body(&self) -> Result<UpdateRuleDto, ApiError> {
        let mut errors = FieldErrors::new();
        let operator = choice::<Operator>(&mut errors, "operator", &self.operator);
        let severity = choice::<Severity>(&mut errors, "severity", &self.severity);
        let threshold = self.threshold(&mut errors);
        errors.finish()?;
        Ok(UpdateRuleDto {
            name: Some(self.name.clone()),
            operator,
            threshold,
            severity,
            enabled: Some(self.enabled),
            ..UpdateRuleDto::default()
        })
    }
}

fn choice<T: FromStr>(errors: &mut FieldErrors, field: &str, text: &str) -> Option<T> {
    match text.parse::<T>() {
        Ok(value) => Some(value),
        Err(_) => {
            errors.add(field, "choose one of the options");
            None
        }
    }
}

/// `POST /ui/alerts/rules`: the API's create (admin).
async fn create_rule(State(state): State<AppState>, ConsoleForm { console, form }: ConsoleForm<RuleForm>) -> Response {
    let answer = match form.create_body().and_then(ApiJson::validated) {
        Ok(body) => crate::monitoring::rules::create_rule(State(state.clock.clone()), console.member.clone(), body)
            .await
            .map(|_| ()),
        Err(error) => Err(error),
    };
    match answer {
        Ok(()) => Redirect::to(RULES_URL).into_response(),
        Err(error @ ApiError::Forbidden(_)) => layout::error_page(Some(&console), error),
        Err(error) => rules_page(&state, &console, None, Some(Failed::New(form, error.into()))).await,
    }
}

/// `POST /ui/alerts/rules/{id}`: the API's update (admin); on a refusal the rule's form shows
/// the errors beside its fields.
async fn update_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { console, form }: ConsoleForm<RuleForm>,
) -> Response {
    let Ok(rule_id) = id.parse() else {
        return layout::error_page(Some(&console), ApiError::not_found("monitoring rule"));
    };
    let answer = match form.update_body().and_then(ApiJson::validated) {
        Ok(body) => crate::monitoring::rules::update_rule(
            State(state.clock.clone()),
            console.member.clone(),
            IdPath(rule_id),
            body,
        )
        .await
        .map(|_| ()),
        Err(error) => Err(error),
    };
    match answer {
        Ok(()) => Redirect::to(RULES_URL).into_response(),
        Err(error @ (ApiError::Forbidden(_) | ApiError::NotFound(_))) => layout::error_page(Some(&console), error),
        Err(error) => rules_page(&state, &console, None, Some(Failed::Rule(id, form, error.into()))).await,
    }
}

/// `POST /ui/alerts/rules/{id}/delete`: the API's delete (admin).
async fn delete_rule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConsoleForm { console, .. }: ConsoleForm<RulesQuery>,
) -> Response {
    let Ok(rule_id) = id.parse() else {
        return layout::error_page(Some(&console), ApiError::not_found("monitoring rule"));
    };
    let answer =
        crate::monitoring::rules::delete_rule(State(state.clock.clone()), console.member.clone(), IdPath(rule_id))
            .await;
    match answer {
        Ok(_) => Redirect::to(RULES_URL).into_response(),
        Err(error) => layout::error_page(Some(&console), error),
    }
}

fn operator_symbol(operator: &str) -> &'static str {
    match operator {
        "gt" => ">",
        "gte" => "≥",
        "lt" => "<",
        "lte" => "≤",
        _ => "?",
    }
}

/// The unit written after a metric's values (" %"; nothing for a metric herd does not know).
fn unit(metric: &str) -> String {
    metric.parse::<Metric>().map(|m| format!(" {}", m.unit_symbol())).unwrap_or_default()
}

/// A value as people write it: no trailing zeros, at most two decimals.
fn number(value: f64) -> String {
    let text = format!("{value:.2}");
    match text.trim_end_matches('0').trim_end_matches('.') {
        "" | "-" => "0".to_string(),
        trimmed => trimmed.to_string(),
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// The first block of a UUID, enough to tell ids apart on a page.
fn short(id: &str) -> &str {
    id.split('-').next().unwrap_or(id)
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_lose_trailing_zeros() {
        assert_eq!(number(90.0), "90");
        assert_eq!(number(90.01), "90.01");
        assert_eq!(number(85.5), "85.5");
        assert_eq!(number(-3.0), "-3");
        assert_eq!(number(0.0), "0");
    }

    #[test]
    fn a_form_with_a_word_for_a_threshold_is_a_field_error() {
        let form = RuleForm { threshold: "lots".into(), ..RuleForm::new() };
        let errors = FormErrors::from(form.update_body().unwrap_err());
        assert_eq!(errors.field("threshold"), Some("must be a number"));
    }
}
