//! Telemetry routes and their wire types: a device posts samples, a member reads the bucketed
//! history.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{BucketRow, Ingested, SampleRow, TelemetryStore};
use super::{MAX_BATCH, MAX_CLOCK_SKEW, MAX_TEMPERATURE, MIN_TEMPERATURE};
use crate::app::AppState;
use crate::auth::{DeviceAuth, Member, Role};
use crate::clock::to_millis;
use crate::devices::store::DeviceStore;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, Validate};
use crate::http::time;
use crate::ids::DeviceId;
use crate::monitoring::{self, Metric, Reading, Rule};
use crate::store::StoreError;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(history))
}

/// The routes a device calls with its own token.
pub(crate) fn device_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest))
}

/// One sample. `cpu`, `ram` and `storage` are percentages (0–100), `temperature` °C (−50–150,
/// optional); `recordedAt` defaults to the server's time and is required in a batch of more
/// than one sample.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SampleDto {
    #[schema(nullable = false, minimum = 0.0, maximum = 100.0)]
    pub cpu: Option<f64>,
    #[schema(nullable = false, minimum = 0.0, maximum = 100.0)]
    pub ram: Option<f64>,
    #[schema(nullable = false, minimum = 0.0, maximum = 100.0)]
    pub storage: Option<f64>,
    #[schema(nullable = false, minimum = -50.0, maximum = 150.0)]
    pub temperature: Option<f64>,
    #[serde(default, deserialize_with = "crate::http::bounded_time::optional")]
    #[schema(nullable = false)]
    pub recorded_at: Option<DateTime<Utc>>,
}

/// `POST /devices/metrics`: either one sample (its fields at the top level) or a batch
/// `{ "samples": [ … ] }` of at most 1000.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetricsBody {
    #[schema(nullable = false, minimum = 0.0, maximum = 100.0)]
    pub cpu: Option<f64>,
    #[schema(nullable = false, minimum = 0.0, maximum = 100.0)]
    pub ram: Option<f64>,
    #[schema(nullable = false, minimum = 0.0, maximum = 100.0)]
    pub storage: Option<f64>,
    #[schema(nullable = false, minimum = -50.0, maximum = 150.0)]
    pub temperature: Option<f64>,
    #[serde(default, deserialize_with = "crate::http::bounded_time::optional")]
    #[schema(nullable = false)]
    pub recorded_at: Option<DateTime<Utc>>,
    #[schema(nullable = false, max_items = 1000)]
    pub samples: Option<Vec<SampleDto>>,
}

impl MetricsBody {
    /// The samples of the body with the JSON path of each, one way or the other.
    fn samples(&self) -> Vec<(String, SampleDto)> {
        match &self.samples {
            Some(samples) => samples
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let sample = SampleDto {
                        cpu: s.cpu,
                        ram: s.ram,
                        storage: s.storage,
                        temperature: s.temperature,
                        recorded_at: s.recorded_at,
                    };
                    (format!("samples[{i}]."), sample)
                })
                .collect(),
            None => vec![(
                String::new(),
                SampleDto {
                    cpu: self.cpu,
                    ram: self.ram,
                    storage: self.storage,
                    temperature: self.temperature,
                    recorded_at: self.recorded_at,
                },
            )],
        }
    }
}

impl Validate for MetricsBody {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        if let Some(samples) = &self.samples {
            let single = [self.cpu, self.ram, self.storage, self.temperature].iter().any(Option::is_some)
                || self.recorded_at.is_some();
            if single {
                errors.add("samples", "send one sample or a batch of samples, not both");
            }
            if samples.is_empty() {
                errors.add("samples", "must hold at least one sample");
            }
            if samples.len() > MAX_BATCH {
                errors.add("samples", format!("at most {MAX_BATCH} samples per request"));
            }
        }
        let samples = self.samples();
        let mut seen = std::collections::HashMap::new();
        for (i, (prefix, sample)) in samples.iter().enumerate() {
            for (name, value) in [("cpu", sample.cpu), ("ram", sample.ram), ("storage", sample.storage)] {
                match value {
                    None => errors.add(format!("{prefix}{name}"), "is required"),
                    Some(v) if !(0.0..=100.0).contains(&v) => {
                        errors.add(format!("{prefix}{name}"), "must be a percentage between 0 and 100")
                    }
                    Some(_) => {}
                }
            }
            if let Some(t) = sample.temperature {
                if !(MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&t) {
                    errors.add(
                        format!("{prefix}temperature"),
                        format!("must be between {MIN_TEMPERATURE} and {MAX_TEMPERATURE} °C"),
                    );
                }
            }
            match sample.recorded_at {
                None if samples.len() > 1 => {
                    errors.add(format!("{prefix}recordedAt"), "is required in a batch of more than one sample")
                }
                None => {}
                Some(at) => {
                    if let Some(first) = seen.insert(to_millis(at), i) {
                        errors.add(
                            format!("{prefix}recordedAt"),
                            format!("samples[{first}] has the same recordedAt (to the millisecond)"),
                        );
                    }
                }
            }
        }
        errors.finish()
    }
}

/// What `POST /devices/metrics` stored.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IngestResponse {
    /// Samples stored by this request.
    pub accepted: u64,
    /// Samples the device had already sent (same `recordedAt`); ignored, so retries are safe.
    pub duplicates: u64,
}

/// Post one sample or a batch (device token). All or nothing: an invalid sample rejects the
/// batch with a 422 naming it (`samples[3].cpu`). Enabled monitoring rules are evaluated on the
/// samples newer than the device's newest stored one.
#[utoipa::path(post, path = "/devices/metrics", operation_id = "reportMetrics", tag = "telemetry", security(("deviceToken" = [])), request_body = MetricsBody,
    responses((status = 200, body = IngestResponse)))]
async fn ingest(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    State(settings): State<Arc<crate::config::Settings>>,
    device: DeviceAuth,
    ApiJson(body): ApiJson<MetricsBody>,
) -> Result<Json<IngestResponse>, ApiError> {
    let now = to_millis(clock.now());
    let retention = i64::try_from(settings.metrics_retention.as_millis()).unwrap_or(i64::MAX);
    let skew = i64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(0);
    let mut errors = FieldErrors::new();
    let mut readings: Vec<Reading> = Vec::new();
    for (prefix, sample) in body.samples() {
        let recorded_at = sample.recorded_at.map(to_millis).unwrap_or(now);
        if recorded_at > now + skew {
            errors.add(format!("{prefix}recordedAt"), "is in the future");
        } else if recorded_at < now.saturating_sub(retention) {
            errors.add(format!("{prefix}recordedAt"), "is older than the metrics retention period");
        }
        readings.push(Reading {
            recorded_at,
            cpu: sample.cpu.unwrap_or_default(),
            ram: sample.ram.unwrap_or_default(),
            storage: sample.storage.unwrap_or_default(),
            temperature: sample.temperature,
        });
    }
    errors.finish()?;
    readings.sort_by_key(|r| r.recorded_at);

    let all_rules = monitoring::tenant_rules(&device.scope, now).await?;
    // The tags come with the device's row from authentication: a tag change touches the
    // device in the credential cache, so they are never older than the last edit.
    let tags = &device.device.tags.0;
    let mut rules: Vec<&Rule> = all_rules
        .iter()
        .filter(|rule| rule.enabled && rule.metric != Metric::Offline && rule.applies_to(device.device_id, tags))
        .collect();
    // Most samples breach nothing on a device with no open alert: then no rule can write, and
    // the store is spared reading the device's newest sample and open alerts.
    if !monitoring::may_change_alerts(&rules, device.alerting, &readings) {
        rules.clear();
    }
    let Ingested { stored, duplicates } = TelemetryStore::new(&device.scope)
        .ingest(device.device_id, &readings, &rules, now)
        .await
        .map_err(|error| match &error {
            StoreError::Other(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => gone(),
            _ => error.into(),
        })?;
    Ok(Json(IngestResponse { accepted: stored, duplicates }))
}

fn gone() -> ApiError {
    ApiError::Unauthorized("this device no longer exists".into())
}

/// Query of `GET /devices/{id}/metrics`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct HistoryParams {
    /// Start (inclusive, RFC 3339). Default: 24 hours before `to`.
    #[serde(default, deserialize_with = "crate::http::bounded_time::optional")]
    pub from: Option<DateTime<Utc>>,
    /// End (exclusive, RFC 3339). Default: now plus the accepted clock skew (5 minutes), so the
    /// newest samples are in.
    #[serde(default, deserialize_with = "crate::http::bounded_time::optional")]
    pub to: Option<DateTime<Utc>>,
    /// `1m`, `5m`, `1h` or `1d`. Default: the finest that gives at most 1440 buckets.
    pub bucket: Option<String>,
}

/// Buckets are aligned to multiples of their width since the Unix epoch (UTC).
const BUCKETS: &[(&str, i64)] = &[("1m", 60_000), ("5m", 300_000), ("1h", 3_600_000), ("1d", 86_400_000)];

/// The most buckets one history request may ask for.
const MAX_BUCKETS: i64 = 10_000;

/// Average, minimum and maximum of one metric in a bucket.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Aggregate {
    pub avg: f64,
    pub min: f64,
    pub max: f64,
}

/// One bucket of history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Bucket {
    /// The bucket's start.
    pub start: DateTime<Utc>,
    /// How many samples it holds.
    pub samples: i64,
    pub cpu: Aggregate,
    pub ram: Aggregate,
    pub storage: Aggregate,
    /// Null when no sample of the bucket had a temperature.
    pub temperature: Option<Aggregate>,
}

impl From<BucketRow> for Bucket {
    fn from(row: BucketRow) -> Self {
        Self {
            start: time(row.bucket),
            samples: row.samples,
            cpu: Aggregate { avg: row.cpu_avg, min: row.cpu_min, max: row.cpu_max },
            ram: Aggregate { avg: row.ram_avg, min: row.ram_min, max: row.ram_max },
            storage: Aggregate { avg: row.storage_avg, min: row.storage_min, max: row.storage_max },
            temperature: match (row.temperature_avg, row.temperature_min, row.temperature_max) {
                (Some(avg), Some(min), Some(max)) => Some(Aggregate { avg, min, max }),
                _ => None,
            },
        }
    }
}

/// A stored sample.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Sample {
    pub recorded_at: DateTime<Utc>,
    pub cpu: f64,
    pub ram: f64,
    pub storage: f64,
    pub temperature: Option<f64>,
}

impl From<SampleRow> for Sample {
    fn from(row: SampleRow) -> Self {
        Self {
            recorded_at: time(row.recorded_at),
            cpu: row.cpu,
            ram: row.ram,
            storage: row.storage,
            temperature: row.temperature,
        }
    }
}

/// A device's bucketed history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetricsHistory {
    pub device_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The bucket width used (`1m`, `5m`, `1h` or `1d`).
    pub bucket: String,
    /// Oldest first; buckets without samples are left out.
    pub buckets: Vec<Bucket>,
    /// The device's newest stored sample, whenever it was recorded.
    pub latest: Option<Sample>,
}

/// A device's metrics per bucket: average, minimum and maximum of each (raw samples are kept
/// for `HERD_METRICS_RETENTION`).
#[utoipa::path(get, path = "/devices/{id}/metrics", operation_id = "getMetricsHistory", tag = "telemetry", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id"), HistoryParams),
    responses((status = 200, body = MetricsHistory)))]
pub(crate) async fn history(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<DeviceId>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<MetricsHistory>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let now = clock.now();
    let to = params.to.unwrap_or(now + chrono::Duration::from_std(MAX_CLOCK_SKEW).unwrap_or_default());
    let from = params.from.unwrap_or(to - chrono::Duration::hours(24));
    let mut errors = FieldErrors::new();
    if from >= to {
        errors.add("from", "must be before to");
    }
    let span = (to_millis(to) - to_millis(from)).max(1);
    let (bucket, width) = match params.bucket.as_deref() {
        Some(name) => match BUCKETS.iter().find(|(n, _)| *n == name) {
            Some(found) => *found,
            None => {
                errors.add("bucket", "must be 1m, 5m, 1h or 1d");
                BUCKETS[0]
            }
        },
        None => *BUCKETS.iter().find(|(_, width)| span / width <= 1440).unwrap_or(&BUCKETS[BUCKETS.len() - 1]),
    };
    if span / width > MAX_BUCKETS {
        errors.add("bucket", format!("this range would need more than {MAX_BUCKETS} buckets; choose a coarser one"));
    }
    errors.finish()?;
    // A device of another tenant answers exactly like a missing one.
    DeviceStore::new(scope).get(id).await?.ok_or_else(|| ApiError::not_found("device"))?;
    let store = TelemetryStore::new(scope);
    let rows = store.history(id, to_millis(from), to_millis(to), width).await?;
    let latest = store.latest(id).await?;
    Ok(Json(MetricsHistory {
        device_id: id.to_string(),
        from,
        to,
        bucket: bucket.to_string(),
        buckets: rows.into_iter().map(Bucket::from).collect(),
        latest: latest.map(Sample::from),
    }))
}
