//! Device telemetry (the seed's DeviceMetricsModule): CPU, RAM, storage and temperature samples,
//! their bucketed history, and their retention.
//!
//! `routes` holds `POST /devices/metrics` (device token) and `GET /devices/{id}/metrics`
//! (member), `store` the SQL. This module stores samples and hands the fresh ones to
//! [`crate::monitoring::evaluate`]; it does not decide what an alert is (that is `monitoring`),
//! and it is not `crate::telemetry_metrics` (Prometheus figures about herd itself).
//!
//! **Durability contract of ingest.** A `2xx` answer means every sample of the request is
//! committed (one multi-row `INSERT` — on PostgreSQL one `INSERT … SELECT FROM UNNEST` — in
//! the same transaction as any alert it opened, updated or resolved and that alert's event; a
//! request of at most 100 samples that changes no alert shares its `INSERT` with the other such
//! requests in flight, `herd_store::samples`, and is answered after that statement committed).
//! Nothing is buffered beyond the answer: a crash loses only requests that were not answered, and a
//! device that retries re-sends samples that are then ignored (the `(device, recordedAt)`
//! primary key makes ingest idempotent; duplicates are counted, not stored twice). A `4xx`
//! answer means nothing of the request was stored: a batch is accepted or rejected whole.
//!
//! **Cost per request**, the second hot path after heartbeats: the device-token lookup (done by
//! the extractor), the tenant's rules from an in-memory cache (see
//! [`crate::monitoring::RULE_CACHE_TTL`]), one primary-key probe for the device's newest stored
//! sample and one index probe for its open alerts (both skipped when no rule applies, and the
//! second when all samples are late), then the single insert (shared with the requests in flight,
//! so a commit serves many). Alert rows and events are written
//! only when an alert opens, changes or resolves.

pub(crate) mod routes;
pub use herd_store::telemetry as store;

use std::time::Duration;

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use crate::store::{Db, StoreError};

/// The most samples one `POST /devices/metrics` may carry.
pub const MAX_BATCH: usize = 1000;

/// The accepted temperature range, °C (a device reporting outside it is broken, not hot).
pub const MIN_TEMPERATURE: f64 = -50.0;
pub const MAX_TEMPERATURE: f64 = 150.0;

/// How far in the future a sample's `recordedAt` may be (device clocks drift).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// How often the retention purge runs.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// `POST /devices/metrics` and `GET /devices/{id}/metrics`.
pub fn router() -> OpenApiRouter<AppState> {
    routes::router()
}

/// The retention step (a job runs it every [`RETENTION_INTERVAL`]; tests call it with a chosen
/// `now`): deletes every sample recorded before `now - retention`, in chunks so that ingest keeps
/// its turn at the SQLite writer. Cross-tenant, as the system principal. Answers how many rows
/// went. Safe when several instances run it at once (a chunk deleted by one is skipped by the
/// other). It also drops the overview's alert-count buckets that have left its 24-hour window
/// (`monitoring::store::purge_alert_counts`; a few rows per tenant and ten minutes).
pub async fn purge_expired(db: &Db, now: i64, retention: Duration) -> Result<u64, StoreError> {
    let cutoff = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let purged = store::purge_before(db, cutoff).await?;
    crate::monitoring::store::purge_alert_counts(db, now).await?;
    Ok(purged)
}
