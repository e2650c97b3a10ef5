//! Liveness and readiness probes; no credential needed.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::http::error::ApiError;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct HealthResponse {
    /// `ok`.
    pub status: String,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", operation_id = "checkLiveness", tag = "health", responses((status = 200, body = HealthResponse)))]
async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".into() })
}

/// The database answers.
#[utoipa::path(get, path = "/readyz", operation_id = "checkReadiness", tag = "health", responses((status = 200, body = HealthResponse)))]
async fn readyz(State(db): State<herd_store::Db>) -> Result<Json<HealthResponse>, ApiError> {
    if db.ping().await {
        Ok(Json(HealthResponse { status: "ok".into() }))
    } else {
        Err(ApiError::Unavailable("the database does not answer".into()))
    }
}
