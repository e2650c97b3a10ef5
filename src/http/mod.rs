//! The HTTP edge: the root router (which only merges the features' routers), the middleware
//! stack, problem+json errors and the extractors that produce them.

pub(crate) mod bounded_time;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod serve;
pub(crate) mod transfer;
pub(crate) mod unread_body;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::app::AppState;
use error::ApiError;

/// `{ items, nextCursor }`: the shape of every list (DESIGN.md).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListResponse<T: ToSchema> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> ListResponse<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only says there is more.
    pub(crate) fn from_rows<R, K: ToString>(
        rows: Vec<R>,
        limit: u32,
        id_of: impl Fn(&R) -> K,
        into: impl Fn(R) -> T,
    ) -> Self {
        Self::from_rows_with_cursor(rows, limit, |row| extract::encode_cursor(&id_of(row).to_string()), into)
    }

    /// [`ListResponse::from_rows`] for a list with a cursor of its own (`cursor_of` encodes it).
    pub(crate) fn from_rows_with_cursor<R>(
        mut rows: Vec<R>,
        limit: u32,
        cursor_of: impl Fn(&R) -> String,
        into: impl Fn(R) -> T,
    ) -> Self {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if more { rows.last().map(cursor_of) } else { None };
        Self { items: rows.into_iter().map(into).collect(), next_cursor }
    }
}

/// Renders a stored millisecond timestamp for the wire.
pub(crate) fn time(millis: i64) -> DateTime<Utc> {
    crate::clock::from_millis(millis)
}

/// Every route a device calls (enrollment, heartbeats, telemetry, its configuration and
/// certificate), in one router beside the operators' so that device-only transport rules
/// (mTLS, EST, their own limits) can be layered on it alone; its transfers (uploads and
/// downloads of artifacts) are in [`device_transfer_router`], which such rules must cover too.
fn device_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(crate::devices::routes::device_router())
        .merge(crate::telemetry::routes::device_router())
        .merge(crate::configurations::device_router())
        .merge(crate::certificates::routes::device_router())
        .merge(crate::commands::device::device_router())
        .merge(crate::packages::device_router())
        .merge(crate::rollouts::device::device_router())
}

/// The device routes that move artifacts (see [`transfer`]).
fn device_transfer_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(crate::commands::device::device_transfer_router())
        .merge(crate::packages::device_transfer_router())
}

/// The whole application: every feature's routes, the OpenAPI document, the middleware. Every
/// route is bounded by `HERD_REQUEST_TIMEOUT`, except the transfers (artifact uploads and
/// downloads, merged from the features' `transfer_router()`s), which [`transfer::bound`] bounds
/// by `HERD_TRANSFER_TIMEOUT` and a stall limit instead.
pub(crate) fn router(state: AppState) -> Router {
    let (transfer_router, transfer_document) = OpenApiRouter::new()
        .merge(crate::packages::transfer_router())
        .merge(device_transfer_router())
        .split_for_parts();
    let (api_router, mut document) = OpenApiRouter::with_openapi(crate::openapi::base_document())
        .merge(crate::health::router())
        .merge(crate::tenants::router())
        .merge(crate::auth::routes::router())
        .merge(crate::devices::routes::router())
        .merge(crate::devices::claims::router())
        .merge(crate::certificates::routes::router())
        .merge(crate::telemetry_metrics::router())
        .merge(crate::telemetry::router())
        .merge(crate::monitoring::router())
        .merge(crate::settings::router())
        .merge(crate::configurations::router())
        .merge(crate::presence::routes::router())
        .merge(crate::events::routes::router())
        .merge(crate::webhooks::routes::router())
        .merge(crate::commands::router())
        .merge(crate::packages::router())
        .merge(crate::rollouts::router())
        .merge(device_router())
        .split_for_parts();
    document.merge(transfer_document);
    let document = Arc::new(crate::openapi::finish(document));

    let mut router =
        api_router.route("/openapi.json", get(move || openapi_json(document.clone()))).merge(crate::console::router());
    if state.settings.bench_echo {
        router = router.route("/bench/echo", axum::routing::post(bench_echo));
    }

    let request_id = HeaderName::from_static("x-request-id");
    let timeout = state.settings.request_timeout;
    let limits = transfer::TransferLimits { total: state.settings.transfer_timeout, stall: timeout };
    let router = router
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|error: BoxError| async move {
                    if error.is::<tower::timeout::error::Elapsed>() {
                        ApiError::Timeout
                    } else {
                        ApiError::internal(anyhow::anyhow!("middleware error: {error}"))
                    }
                }))
                .timeout(timeout),
        )
        .merge(
            transfer_router
                .merge(crate::console::transfer_router())
                .layer(middleware::from_fn_with_state(limits, transfer::bound)),
        );
    router
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(DefaultBodyLimit::max(state.settings.body_limit))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(move |request: &Request| {
                    let id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    tracing::info_span!("request", method = %request.method(), uri = %request.uri().path(), request_id = %id)
                }))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| {
                    ApiError::internal(anyhow::anyhow!("handler panicked")).into_response()
                })),
        )
        // Outermost, so that it sees every answer given before the request body was read.
        .layer(middleware::from_fn(unread_body::finish_unread_body))
        .with_state(state)
}

async fn openapi_json(document: Arc<serde_json::Value>) -> Response {
    Json(document.as_ref()).into_response()
}

/// The benchmark harness's HTTP ceiling: parse a small JSON body and echo it, through the
/// same stack as every other route. Only served when `HERD_BENCH_ECHO=true`.
async fn bench_echo(extract::ApiJson(body): extract::ApiJson<serde_json::Value>) -> Json<serde_json::Value> {
    Json(body)
}

impl extract::Validate for serde_json::Value {
    fn validate(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// Counts and times every request by method, matched route and status.
async fn record_metrics(
    State(metrics): State<Arc<crate::telemetry_metrics::HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    let elapsed: Duration = started.elapsed();
    if method != Method::OPTIONS {
        metrics.observe_request(method.as_str(), &route, response.status().as_u16(), elapsed);
    }
    response
}
