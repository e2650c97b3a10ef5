//! `POST /admin/presence/sweep`: run the sweep now (platform admin). Operators use it after
//! maintenance; the benchmark harness uses it to time sweeps of large fleets.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::PlatformAdmin;
use crate::http::error::ApiError;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sweep_now))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SweepResponse {
    /// Devices marked offline by this sweep (each with one `device.status_changed` event).
    pub marked_offline: usize,
    pub duration_ms: f64,
}

/// Run the presence sweep now, across all tenants (platform admin).
#[utoipa::path(post, path = "/admin/presence/sweep", operation_id = "sweepPresence", tag = "presence", security(("platformAdminToken" = [])),
    responses((status = 200, body = SweepResponse)))]
async fn sweep_now(State(state): State<AppState>, _admin: PlatformAdmin) -> Result<Json<SweepResponse>, ApiError> {
    let outcome = super::run_sweep(&state).await?;
    Ok(Json(SweepResponse {
        marked_offline: outcome.marked_offline,
        duration_ms: outcome.duration.as_secs_f64() * 1000.0,
    }))
}
