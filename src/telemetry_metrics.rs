//! `GET /metrics`: Prometheus text about herd itself — requests and latencies by route, devices
//! by status, the database pools, the background jobs (runs, durations, lag, last success), the
//! webhook outbox's backlog and age, certificates expiring within 30 days. Not to be confused with
//! device telemetry. `deploy/grafana-dashboard.json` graphs these names.
//!
//! The format follows `Accept`: OpenMetrics 1.0 to a scraper that asks for
//! `application/openmetrics-text` (Prometheus does, by default) at least as much as for anything
//! else, the classic text format 0.0.4 otherwise (`promtool check metrics`, curl, older scrapers).
//! prometheus-client encodes OpenMetrics only; [`classic_text`] rewrites its output.
//!
//! Each [`crate::app::App`] owns its registry (no global recorder), so several apps in one
//! test process keep separate figures.
//!
//! With `HERD_METRICS_TOKEN` set, a scrape must present `Authorization: Bearer <token>`; without
//! it `/metrics` is public (and its device counts cover every tenant), which the start-up log says.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::app::AppState;
use crate::config::Secret;
use crate::http::error::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobRunLabels {
    job: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabels {
    pool: &'static str,
    state: &'static str,
}

/// A gauge of seconds or timestamps.
type SecondsGauge = Gauge<f64, AtomicU64>;

/// Certificates expiring within this window count in `herd_certificates_expiring_30d`.
const EXPIRING_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;

/// The process's own metrics.
pub struct HttpMetrics {
    /// Guarded by a std `Mutex`: encoding is quick and never awaits.
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    devices: Family<StatusLabels, Gauge>,
    sweep_duration: Histogram,
    marked_offline: Counter,
    heartbeats_buffered: Gauge,
    webhook_failures: Counter,
    event_backlog: Gauge,
    event_backlog_oldest_age: SecondsGauge,
    command_polls_waiting: Gauge,
    job_runs: Family<JobRunLabels, Counter>,
    job_duration: Family<JobLabels, Histogram, fn() -> Histogram>,
    job_lag: Family<JobLabels, SecondsGauge>,
    job_last_success: Family<JobLabels, SecondsGauge>,
    pool_connections: Family<PoolStateLabels, Gauge>,
    pool_max: Family<PoolLabels, Gauge>,
    certificates_expiring: Gauge,
    device_cache_lookups: Family<ResultLabels, Counter>,
    device_cache_entries: Gauge,
    /// Held while the cache's running totals are copied into `device_cache_lookups`.
    device_cache_sync: Mutex<()>,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpMetrics")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// 1 ms to about 33 s.
fn job_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for HttpMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("herd");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let devices = Family::<StatusLabels, Gauge>::default();
        registry.register("http_requests", "HTTP requests by method, route and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by method and route", latency.clone());
        registry.register("devices", "Devices by presence status, all tenants", devices.clone());
        let sweep_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let marked_offline = Counter::default();
        let heartbeats_buffered = Gauge::default();
        let webhook_failures = Counter::default();
        let event_backlog = Gauge::default();
        let command_polls_waiting = Gauge::default();
        let device_cache_lookups = Family::<ResultLabels, Counter>::default();
        let device_cache_entries = Gauge::default();
        registry.register(
            "device_cache_lookups",
            "Device token lookups by the credential cache's answer (hit, miss)",
            device_cache_lookups.clone(),
        );
        registry.register("device_cache_entries", "Device credentials held by the cache", device_cache_entries.clone());
        registry.register("presence_sweep_duration_seconds", "Duration of presence sweeps", sweep_duration.clone());
        registry.register("presence_marked_offline", "Devices marked offline by the sweep", marked_offline.clone());
        registry.register("heartbeats_buffered", "Heartbeats waiting to be written", heartbeats_buffered.clone());
        registry.register("webhook_delivery_failures", "Failed webhook delivery attempts", webhook_failures.clone());
        registry.register("event_backlog", "Webhook deliveries not yet delivered", event_backlog.clone());
        registry.register(
            "command_polls_waiting",
            "Devices whose command long poll waits on this instance",
            command_polls_waiting.clone(),
        );
        let event_backlog_oldest_age = SecondsGauge::default();
        registry.register(
            "event_backlog_oldest_age_seconds",
            "Age of the oldest webhook delivery not yet delivered (0 when none)",
            event_backlog_oldest_age.clone(),
        );
        let job_runs = Family::<JobRunLabels, Counter>::default();
        let job_duration = Family::<JobLabels, Histogram, fn() -> Histogram>::new_with_constructor(job_histogram);
        let job_lag = Family::<JobLabels, SecondsGauge>::default();
        let job_last_success = Family::<JobLabels, SecondsGauge>::default();
        registry.register(
            "job_runs",
            "Background job steps run by this instance, by job and outcome",
            job_runs.clone(),
        );
        registry.register("job_duration_seconds", "Duration of background job steps, by job", job_duration.clone());
        registry.register(
            "job_lag_seconds",
            "How late the last step of each background job started after its tick was due",
            job_lag.clone(),
        );
        registry.register(
            "job_last_success_timestamp_seconds",
            "Unix time at which each background job last completed a step without error",
            job_last_success.clone(),
        );
        let pool_connections = Family::<PoolStateLabels, Gauge>::default();
        let pool_max = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Open database connections by pool and state (idle or in_use)",
            pool_connections.clone(),
        );
        registry.register("db_pool_max_connections", "The most connections each pool opens", pool_max.clone());
        let certificates_expiring = Gauge::default();
        registry.register(
            "certificates_expiring_30d",
            "Active certificates, all tenants, whose notAfter is within the next 30 days",
            certificates_expiring.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            devices,
            sweep_duration,
            marked_offline,
            heartbeats_buffered,
            webhook_failures,
            event_backlog,
            event_backlog_oldest_age,
            command_polls_waiting,
            job_runs,
            job_duration,
            job_lag,
            job_last_success,
            pool_connections,
            pool_max,
            certificates_expiring,
            device_cache_lookups,
            device_cache_entries,
            device_cache_sync: Mutex::new(()),
        }
    }
}

impl HttpMetrics {
    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.requests.get_or_create(&RequestLabels { method: method.into(), route: route.into(), status }).inc();
        self.latency
            .get_or_create(&RouteLabels { method: method.into(), route: route.into() })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_sweep(&self, marked_offline: usize, elapsed: Duration) {
        self.sweep_duration.observe(elapsed.as_secs_f64());
        self.marked_offline.inc_by(marked_offline as u64);
    }

    pub fn observe_webhook_failure(&self) {
        self.webhook_failures.inc();
    }

    /// One step of background job `job`: `lag` after its tick was due it ran for `elapsed`, and
    /// succeeded at `succeeded_at` (`None`: it failed).
    pub fn observe_job(&self, job: &str, lag: Duration, elapsed: Duration, succeeded_at: Option<DateTime<Utc>>) {
        let ok = succeeded_at.is_some();
        let labels = JobLabels { job: job.into() };
        let outcome = if ok { "ok" } else { "error" };
        self.job_runs.get_or_create(&JobRunLabels { job: job.into(), outcome }).inc();
        self.job_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        self.job_lag.get_or_create(&labels).set(lag.as_secs_f64());
        if let Some(at) = succeeded_at {
            self.job_last_success.get_or_create(&labels).set(crate::clock::to_millis(at) as f64 / 1000.0);
        }
    }

    fn observe_pools(&self, pools: &[herd_store::PoolStats]) {
        for pool in pools {
            let in_use = i64::from(pool.open).saturating_sub(i64::try_from(pool.idle).unwrap_or(i64::MAX)).max(0);
            let idle = i64::try_from(pool.idle).unwrap_or(i64::MAX);
            self.pool_connections.get_or_create(&PoolStateLabels { pool: pool.name, state: "idle" }).set(idle);
            self.pool_connections.get_or_create(&PoolStateLabels { pool: pool.name, state: "in_use" }).set(in_use);
            self.pool_max.get_or_create(&PoolLabels { pool: pool.name }).set(i64::from(pool.max));
        }
    }

    /// Copies the device cache's running totals into the lookup counters.
    fn observe_device_cache(&self, stats: herd_store::cache::CacheStats) {
        let _sync = self.device_cache_sync.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (result, total) in [("hit", stats.hits), ("miss", stats.misses)] {
            let counter = self.device_cache_lookups.get_or_create(&ResultLabels { result });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.device_cache_entries.set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        let registry = self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = String::new();
        encode(&mut text, &registry)?;
        Ok(text)
    }
}

pub(crate) fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(serve))
}

/// Prometheus metrics: requests by route, latency, devices by status, database pools, background
/// jobs, the webhook outbox, expiring certificates. OpenMetrics when `Accept` asks for it, the
/// classic text format otherwise. When `HERD_METRICS_TOKEN` is set, the scrape must present it as
/// a bearer token.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "text/plain", body = String,
            description = "Classic text format 0.0.4, or OpenMetrics 1.0 (`application/openmetrics-text`) when asked for"),
        (status = 401, description = "`HERD_METRICS_TOKEN` is set and the request does not present it")))]
pub(crate) async fn serve(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(expected) = &state.settings.metrics_token {
        if !presents_token(&headers, expected) {
            return Err(ApiError::Unauthorized("/metrics needs the scrape token (HERD_METRICS_TOKEN)".into()));
        }
    }
    let metrics = &state.metrics;
    let counts = crate::devices::store::count_by_status(&state.db).await?;
    for status in herd_domain::status::DeviceStatus::ALL {
        let n = counts.iter().find(|(s, _)| s == status).map(|(_, n)| *n).unwrap_or(0);
        metrics.devices.get_or_create(&StatusLabels { status: status.as_str().into() }).set(n);
    }
    metrics.heartbeats_buffered.set(state.heartbeats.len() as i64);
    metrics.command_polls_waiting.set(state.command_waiters.waiting() as i64);
    let now = crate::clock::to_millis(state.clock.now());
    let backlog = crate::webhooks::store::backlog(&state.db).await?;
    metrics.event_backlog.set(backlog.deliveries);
    let oldest_age_ms = backlog.oldest_created_at.map_or(0, |created| now.saturating_sub(created).max(0));
    metrics.event_backlog_oldest_age.set(oldest_age_ms as f64 / 1000.0);
    let expiring =
        crate::certificates::store::count_expiring(&state.db, now, now.saturating_add(EXPIRING_WINDOW_MS)).await?;
    metrics.certificates_expiring.set(expiring);
    metrics.observe_pools(&state.db.pool_stats());
    metrics.observe_device_cache(state.db.device_cache_stats());
    let text = metrics.encode().map_err(|e| ApiError::internal(anyhow::anyhow!("cannot encode metrics: {e}")))?;
    let response = if wants_openmetrics(&headers) {
        ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response()
    } else {
        ([(header::CONTENT_TYPE, CLASSIC)], classic_text(&text)).into_response()
    };
    Ok(response)
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// True when `Accept` ranks `application/openmetrics-text` at least as high as the classic text
/// format (`text/plain`, or `*/*`, which means the classic one). No `Accept`: classic.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    let (mut openmetrics, mut classic) = (0.0_f32, 0.0_f32);
    for value in headers.get_all(header::ACCEPT).iter().filter_map(|value| value.to_str().ok()) {
        for range in value.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let quality = parts
                .filter_map(|param| param.strip_prefix("q=").or_else(|| param.strip_prefix("Q=")))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => classic = classic.max(quality),
                _ => {}
            }
        }
    }
    openmetrics > 0.0 && openmetrics >= classic
}

/// Rewrites prometheus-client's OpenMetrics text as the classic text format 0.0.4: a counter's
/// `# HELP` and `# TYPE` name the `_total` series its samples carry; `unknown` becomes `untyped`;
/// `# UNIT`, `# EOF`, `_created` samples and exemplars go (the classic format has none of them).
fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    let mut counter: Option<String> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                "gaugehistogram" | "stateset" | "info" => (name.to_string(), "gauge"),
                other => (name.to_string(), other),
            };
            counter = (kind == "counter").then(|| name.clone());
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" || line.is_empty() {
            continue;
        }
        if let Some(total) = &counter {
            let series = line.split(['{', ' ']).next().unwrap_or("");
            if series != total.as_str() {
                // `_created` (and anything else a counter family carries besides its total).
                continue;
            }
        }
        let sample = line.split_once(" # ").map_or(line, |(sample, _exemplar)| sample);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// True when the request's `Authorization: Bearer …` is the scrape token. The two are compared
/// as SHA-256 digests, byte by byte without an early exit, so the time taken tells a caller
/// nothing about how much of a guess was right.
fn presents_token(headers: &HeaderMap, expected: &Secret) -> bool {
    use sha2::{Digest, Sha256};
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.expose().as_bytes());
    presented.iter().zip(expected.iter()).fold(0u8, |differ, (a, b)| differ | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let expected = Secret::from("scrape-token-0123456789");
        assert!(presents_token(&with_authorization("Bearer scrape-token-0123456789"), &expected));
        assert!(!presents_token(&with_authorization("Bearer scrape-token-012345678"), &expected));
        assert!(!presents_token(&with_authorization("Bearer scrape-token-0123456789x"), &expected));
        assert!(!presents_token(&with_authorization("Basic scrape-token-0123456789"), &expected));
        assert!(!presents_token(&with_authorization("scrape-token-0123456789"), &expected));
        assert!(!presents_token(&HeaderMap::new(), &expected));
    }

    fn accepting(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn the_format_follows_accept() {
        // What Prometheus 2.x sends by default.
        let prometheus =
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                          text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(&accepting(prometheus)));
        assert!(wants_openmetrics(&accepting("application/openmetrics-text")));
        assert!(!wants_openmetrics(&accepting("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(&accepting("*/*")));
        assert!(!wants_openmetrics(&accepting("text/plain, application/openmetrics-text;q=0.5")));
        assert!(!wants_openmetrics(&accepting("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(&HeaderMap::new()));
    }

    #[test]
    fn the_classic_format_names_counters_by_their_total_and_drops_what_it_lacks() {
        let metrics = HttpMetrics::default();
        metrics.observe_request("GET", "/healthz", 200, Duration::from_millis(3));
        metrics.observe_sweep(2, Duration::from_millis(5));
        metrics.observe_job("presence-sweep", Duration::from_millis(1), Duration::from_millis(4), Some(Utc::now()));
        let openmetrics = metrics.encode().unwrap();
        assert!(openmetrics.contains("# TYPE herd_http_requests counter"), "{openmetrics}");
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");

        let classic = classic_text(&openmetrics);
        assert!(classic.contains("# HELP herd_http_requests_total HTTP requests"), "{classic}");
        assert!(classic.contains("# TYPE herd_http_requests_total counter"), "{classic}");
        assert!(classic.contains("# TYPE herd_presence_marked_offline_total counter"), "{classic}");
        assert!(classic.contains("herd_presence_marked_offline_total 2"), "{classic}");
        assert!(classic.contains("# TYPE herd_job_runs_total counter"), "{classic}");
        assert!(classic.contains("herd_job_runs_total{job=\"presence-sweep\",outcome=\"ok\"} 1"), "{classic}");
        assert!(classic.contains("# TYPE herd_http_request_duration_seconds histogram"), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");
        assert!(!classic.contains("# UNIT"), "{classic}");
        // Every family's samples follow its own HELP and TYPE.
        let mut family = String::new();
        for line in classic.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "{line} is outside its family {family}");
            }
        }
    }

    #[test]
    fn the_classic_rewrite_drops_created_samples_and_exemplars() {
        let openmetrics = "# HELP x_things Things.\n# TYPE x_things counter\nx_things_total 3 # {trace=\"a\"} 1\n\
                           x_things_created 1700000000\n# HELP x_other Other.\n# TYPE x_other unknown\nx_other 1\n# EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP x_things_total Things.\n# TYPE x_things_total counter\nx_things_total 3\n\
             # HELP x_other Other.\n# TYPE x_other untyped\nx_other 1\n"
        );
    }
}
