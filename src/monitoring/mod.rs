//! Monitoring (the seed's DeviceMonitoringsModule): rules and thresholds, the alerts they raise,
//! and the stats overview that summarises both.
//!
//! This module owns the domain types ([`Rule`], [`Metric`], [`Operator`], [`Severity`]), the pure
//! evaluation of samples against a rule ([`evaluate`]), the per-tenant rule cache, and the offline
//! sweep step ([`evaluate_offline`]). `rules` and `alerts` hold the routes, `overview` the
//! `GET /devices/stats/overview` route, `store` all SQL. It must not store samples (that is
//! `telemetry`) nor change device presence (that is `presence`).
//!
//! **Evaluation model.** Metric rules are evaluated when samples arrive (`telemetry` calls
//! [`evaluate`] with the samples newer than the device's newest stored one, in time order).
//! A breach opens one alert per (device, rule) — a unique partial index on open alerts enforces
//! it on both engines and across instances — and further breaches update that alert. A later
//! sample back within the threshold resolves it. Samples older than the newest stored one
//! (late uploads, backfills) are kept for history but neither open nor resolve alerts: they
//! describe a past the alert state has already moved beyond. `offline` rules are evaluated by
//! the sweep ([`evaluate_offline`]), which also resolves them once the device is online again.
//! A device with no open alert of a sampled metric (known from its credential lookup) whose
//! samples breach no rule skips evaluation: it could write nothing ([`may_change_alerts`]).

pub(crate) mod alerts;
pub(crate) mod overview;
pub(crate) mod rules;
pub use herd_domain::monitoring::{evaluate, may_change_alerts, Reading, Rule};
pub use herd_domain::status::{Metric, Operator, Severity};
pub use herd_store::monitoring as store;
pub use herd_store::monitoring::tenant_rules;

use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use herd_store::{Db, StoreError, System, TenantScope};

/// `/monitoring-rules`, `/alerts` and `/devices/stats/overview`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(rules::router()).merge(alerts::router()).merge(overview::router())
}

/// What one run of the offline sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OfflineOutcome {
    pub opened: u64,
    pub resolved: u64,
}

/// The offline-rule step (a job runs it every presence sweep interval; tests call it with a
/// chosen `now`): resolves open `offline` alerts of devices that are online again, then opens
/// one for every offline device past an enabled `offline` rule's threshold. Safe when several
/// instances run it at once: resolution is a conditional `UPDATE … RETURNING`, opening inserts
/// against the open-alert unique index, so each event is written once.
pub async fn evaluate_offline(db: &Db, system: &System, now: i64) -> Result<OfflineOutcome, StoreError> {
    let resolved = store::resolve_offline_alerts_of_online_devices(db, system, now).await?;
    let mut opened = 0;
    for (tenant_id, rule) in store::enabled_offline_rules(db, system).await? {
        let scope = TenantScope::for_system(system, db, tenant_id);
        opened += store::MonitoringStore::new(&scope).open_offline_alerts(&rule, now).await?;
    }
    Ok(OfflineOutcome { opened, resolved })
}
