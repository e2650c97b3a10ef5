//! `GET /devices/stats/overview`: the seed's getStatsOverview(), exactly as DESIGN.md shapes it.
//!
//! It must stay fast for a tenant of 100,000 devices with months of metrics and alerts, so it
//! reads no samples: device counts come from `device_counts` (a row per tenant and status, kept
//! by triggers on `devices`), the alerts of the last 24 hours and the newest ones from the
//! `(tenant_id, created_at)` index of `alerts` (the seed derived its alerts from DeviceMetrics on every call; here evaluation at
//! ingest has already turned samples into alerts). The queries run concurrently; the updates
//! summary counts rollouts by state and the devices of unfinished rollouts (an index range of
//! `rollout_devices` per running or paused rollout).

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{AlertRow, MonitoringStore};
use crate::app::AppState;
use crate::auth::{Member, Role};
use crate::clock::to_millis;
use crate::http::error::ApiError;
use crate::http::time;
use herd_domain::status::RolloutState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stats_overview))
}

/// The tenant at a glance.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatsOverview {
    /// Every device of the tenant.
    pub total: i64,
    /// Devices online (reported within the presence threshold).
    pub active: i64,
    pub offline: i64,
    /// Alerts opened in the last 24 hours (open or since resolved).
    pub alerts_last_24h: i64,
    /// The newest alerts (at most 10), newest first.
    pub recent_alerts: Vec<RecentAlert>,
    /// Software updates: rollouts by state, and the devices of running and paused rollouts
    /// by update state.
    pub updates: UpdatesSummary,
}

/// The updates part of the overview.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdatesSummary {
    pub ready: i64,
    pub running: i64,
    pub paused: i64,
    pub completed: i64,
    pub cancelled: i64,
    /// Devices of running and paused rollouts, by update state.
    pub devices: crate::rollouts::UpdateCounts,
}

/// One alert of the overview.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecentAlert {
    pub id: String,
    pub device_id: String,
    pub device_name: String,
    /// `cpu`, `ram`, `storage`, `temperature` or `offline`.
    #[schema(value_type = herd_domain::status::Metric)]
    pub metric: String,
    /// The value that opened the alert.
    pub value: f64,
    pub threshold: f64,
    /// `info`, `warning` or `critical`.
    #[schema(value_type = herd_domain::status::Severity)]
    pub severity: String,
    /// `open` or `resolved`.
    #[schema(value_type = herd_domain::status::AlertStatus)]
    pub status: String,
    pub created_at: DateTime<Utc>,
}

impl From<AlertRow> for RecentAlert {
    fn from(row: AlertRow) -> Self {
        Self {
            id: row.id.to_string(),
            device_id: row.device_id.to_string(),
            device_name: row.device_name,
            metric: row.metric.to_string(),
            value: row.value,
            threshold: row.threshold,
            severity: row.severity.to_string(),
            status: row.status.to_string(),
            created_at: time(row.created_at),
        }
    }
}

/// Device counts by presence, alerts of the last 24 hours and the newest alerts.
#[utoipa::path(get, path = "/devices/stats/overview", operation_id = "getFleetOverview", tag = "monitoring", security(("apiToken" = []), ("sessionToken" = [])),
    responses((status = 200, body = StatsOverview)))]
pub(crate) async fn stats_overview(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
) -> Result<Json<StatsOverview>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let store = MonitoringStore::new(scope);
    let (overview, updates) =
        tokio::try_join!(store.overview(to_millis(clock.now())), crate::rollouts::store::summary(scope))?;
    let mut summary = UpdatesSummary::default();
    for (state, n) in updates.0 {
        let slot = match state {
            RolloutState::Ready => &mut summary.ready,
            RolloutState::Running => &mut summary.running,
            RolloutState::Paused => &mut summary.paused,
            RolloutState::Completed => &mut summary.completed,
            RolloutState::Cancelled => &mut summary.cancelled,
        };
        *slot += n;
    }
    for (state, n) in updates.1 {
        summary.devices.add(state, n);
    }
    Ok(Json(StatsOverview {
        total: overview.total,
        active: overview.online,
        offline: overview.offline,
        alerts_last_24h: overview.alerts_last_24h,
        recent_alerts: overview.recent.into_iter().map(RecentAlert::from).collect(),
        updates: summary,
    }))
}
