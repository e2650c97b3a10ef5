//! `GET /metrics`: Prometheus (OpenMetrics) text about herd itself — request counts and
//! latencies by route, devices by status. Not to be confused with device telemetry.
//!
//! Each [`crate::app::App`] owns its registry (no global recorder), so several apps in one
//! test process keep separate figures.
//!
//! With `HERD_METRICS_TOKEN` set, a scrape must present `Authorization: Bearer <token>`; without
//! it `/metrics` is public (and its device counts cover every tenant), which the start-up log says.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::app::AppState;
use crate::config::{Secret, Settings};
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
    command_polls_waiting: Gauge,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpMetrics")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
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
            command_polls_waiting,
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

/// Prometheus metrics (OpenMetrics text): requests by route, latency, devices by status.
/// When `HERD_METRICS_TOKEN` is set, the scrape must present it as a bearer token.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, content_type = "application/openmetrics-text", body = String),
        (status = 401, description = "`HERD_METRICS_TOKEN` is set and the request does not present it")))]
pub(crate) async fn serve(
    State(db): State<herd_store::Db>,
    State(settings): State<Arc<Settings>>,
    State(heartbeats): State<Arc<crate::presence::HeartbeatBuffer>>,
    State(metrics): State<Arc<crate::telemetry_metrics::HttpMetrics>>,
    State(waiters): State<Arc<crate::commands::waiters::Waiters>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(expected) = &settings.metrics_token {
        if !presents_token(&headers, expected) {
            return Err(ApiError::Unauthorized("/metrics needs the scrape token (HERD_METRICS_TOKEN)".into()));
        }
    }
    let counts = crate::devices::store::count_by_status(&db).await?;
    for status in herd_domain::status::DeviceStatus::ALL {
        let n = counts.iter().find(|(s, _)| s == status).map(|(_, n)| *n).unwrap_or(0);
        metrics.devices.get_or_create(&StatusLabels { status: status.as_str().into() }).set(n);
    }
    metrics.heartbeats_buffered.set(heartbeats.len() as i64);
    metrics.command_polls_waiting.set(waiters.waiting() as i64);
    metrics.event_backlog.set(crate::webhooks::store::backlog(&db).await?);
    let text = metrics.encode().map_err(|e| ApiError::internal(anyhow::anyhow!("cannot encode metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
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
}
