//! Metrics ingest: samples per second through `POST /devices/metrics`, one sample per request and
//! in batches, as devices of the fleet. Also used by the overview phase to store its ~10M samples.

use std::sync::Arc;

use anyhow::{bail, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::context::Bench;
use crate::http::{send_once, Method, Request};
use crate::load::{expect_success, LoadPlan, Stop, Workload};
use crate::phases::{observe, pick, DeviceRequests};
use crate::probe::is_missing_route;
use crate::report::{format_count, Aim, Figure, PhaseReport};

/// One sample as a device sends it.
const SINGLE_SAMPLE: &str = r#"{"cpu":12.5,"ram":40,"storage":70,"temperature":45}"#;

/// The route, for n/a rows.
pub const ROUTE: &str = "POST /devices/metrics";

/// Runs the metrics phase.
pub async fn run(bench: &mut Bench) -> Result<Vec<PhaseReport>> {
    let n_devices = bench.settings.n_devices;
    if let Some(route) = bench.ensure_fleet(n_devices).await? {
        return Ok(vec![PhaseReport::not_in_build("metrics", route)]);
    }
    let tokens = bench.fleet().map(|fleet| fleet.tokens(n_devices)).unwrap_or_else(|| Arc::from(Vec::new()));
    if !available(bench, &tokens).await? {
        return Ok(vec![PhaseReport::not_in_build("metrics", ROUTE)]);
    }
    let concurrency = bench.settings.concurrency;
    let batch = bench.settings.metrics_batch;
    let runs = bench.settings.runs;
    let single = Arc::new(DeviceRequests {
        path: "/devices/metrics",
        tokens: Arc::clone(&tokens),
        body: Bytes::from_static(SINGLE_SAMPLE.as_bytes()),
    });
    let batched = Arc::new(MetricsBatches::new(tokens, batch, 0));

    let mut phase = PhaseReport::new("metrics");
    let mut single_rate = Figure::new(format!("one sample per request (c={concurrency})"), "samples/s");
    let mut batched_rate =
        Figure::new(format!("batches of {batch} (c={concurrency})"), "samples/s").aim(Aim::AtLeast(50_000.0));
    let mut batched_p99 = Figure::new(format!("batch of {batch} p99"), "ms");

    bench.measure(Arc::clone(&single), &bench.warmup_plan("metrics warm-up", concurrency)).await?;
    for run in 1..=runs {
        let plan = bench.timed_plan(format!("single samples run {run}/{runs}"), concurrency);
        let measured = bench.measure(Arc::clone(&single), &plan).await?;
        observe(&mut phase, &measured);
        single_rate.push(measured.outcome.per_second());
        bench.samples_stored += measured.outcome.completed;

        let plan = bench.timed_plan(format!("batched samples run {run}/{runs}"), concurrency);
        let measured = bench.measure(Arc::clone(&batched), &plan).await?;
        observe(&mut phase, &measured);
        batched_rate.push(measured.outcome.per_second() * batch as f64);
        batched_p99.push(measured.outcome.latency_ms(0.99));
        bench.samples_stored += measured.outcome.completed * batch as u64;
    }
    phase.figures = vec![single_rate, batched_rate, batched_p99];
    phase.notes.push(format!(
        "spread over {} devices; {} samples stored so far",
        format_count(n_devices),
        format_count(bench.samples_stored)
    ));
    Ok(vec![phase])
}

/// Whether `POST /devices/metrics` exists (one sample sent as the first device).
pub async fn available(bench: &Bench, tokens: &[Arc<str>]) -> Result<bool> {
    let Some(token) = tokens.first() else {
        return Ok(false);
    };
    let request = Request::new(Method::POST, "/devices/metrics")
        .bearer(Arc::clone(token))
        .json_bytes(Bytes::from_static(SINGLE_SAMPLE.as_bytes()));
    let response = send_once(bench.addr(), &request).await?;
    if is_missing_route(response.status) {
        return Ok(false);
    }
    if let Err(error) = expect_success(&response) {
        bail!("{ROUTE} with one sample: {error}");
    }
    Ok(true)
}

/// Stores about `samples` samples in batches across `tokens`' devices, with progress.
pub async fn store_samples(bench: &mut Bench, tokens: Arc<[Arc<str>]>, samples: u64) -> Result<()> {
    let batch = bench.settings.metrics_batch;
    let requests = samples.div_ceil(batch as u64);
    // Timestamps continue below those of earlier batches so no (device, time) pair repeats.
    let workload = Arc::new(MetricsBatches::new(tokens, batch, bench.samples_stored));
    let plan = LoadPlan {
        label: format!("storing {} metric samples", format_count(samples)),
        concurrency: bench.settings.concurrency,
        stop: Stop::Jobs(requests),
    };
    let measured = bench.measure(workload, &plan).await?;
    bench.samples_stored += measured.outcome.completed * batch as u64;
    if measured.outcome.failed > 0 {
        eprintln!(
            "  {} batches failed while storing samples; first: {}",
            measured.outcome.failed,
            measured.outcome.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// `{"samples": [...]}` batches with distinct `recordedAt` values: sample k of job j is
/// `(offset + j × batch + k)` milliseconds before the start, so every sample is in the last day
/// for the first ~86M and none repeats for a device. Values vary so some cross the seed's alert
/// thresholds (CPU > 90 %, RAM > 85 %).
pub struct MetricsBatches {
    tokens: Arc<[Arc<str>]>,
    batch: usize,
    offset_ms: u64,
    started: DateTime<Utc>,
}

impl MetricsBatches {
    /// Batches of `batch` samples across `tokens`, timestamps starting `offset_ms` back.
    pub fn new(tokens: Arc<[Arc<str>]>, batch: usize, offset_ms: u64) -> MetricsBatches {
        MetricsBatches { tokens, batch, offset_ms, started: Utc::now() }
    }

    fn body(&self, job: u64) -> Bytes {
        let samples: Vec<serde_json::Value> = (0..self.batch as u64)
            .map(|k| {
                let sequence = self.offset_ms + job * self.batch as u64 + k;
                let recorded_at =
                    self.started - chrono::Duration::milliseconds(i64::try_from(sequence).unwrap_or(i64::MAX));
                json!({
                    "cpu": (sequence * 37 % 1000) as f64 / 10.0,
                    "ram": (sequence * 11 % 100) as f64,
                    "storage": 40 + sequence % 50,
                    "temperature": 30 + sequence % 40,
                    "recordedAt": recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                })
            })
            .collect();
        Bytes::from(json!({ "samples": samples }).to_string())
    }
}

impl Workload for MetricsBatches {
    fn request(&self, job: u64) -> Request {
        let mut request = Request::new(Method::POST, "/devices/metrics").json_bytes(self.body(job));
        if let Some(token) = pick(&self.tokens, job) {
            request = request.bearer(Arc::clone(token));
        }
        request
    }
}
