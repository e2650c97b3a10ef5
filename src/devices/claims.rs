//! Device claims: registrations that matched an existing device without proving they are that
//! device (security finding 1). The device stays untouched until an operator approves the
//! claim (the claimant's token then becomes the device's token) or rejects it. The tenant's
//! `claimPolicy` can approve claims on devices never seen online at once.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use herd_domain::ids::ClaimId;
use herd_domain::status::{ClaimPolicy, ClaimStatus};
use herd_store::claims::{self as store, ClaimRow, Decision};

use super::routes::DeviceDto;
use crate::app::AppState;
use crate::auth::{Member, Role};
use crate::clock::to_millis;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, PageParams, Validate};
use crate::http::{time, ListResponse};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_claims))
        .routes(routes!(get_claim))
        .routes(routes!(approve_claim))
        .routes(routes!(reject_claim))
        .routes(routes!(get_policy, set_policy))
}

/// The tenant's rule for claims.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClaimPolicyDto {
    /// `manual` (default): every claim waits for an operator. `approve_never_seen`: a claim on a
    /// device that was never seen online (e.g. created by an admin, never enrolled) is approved
    /// at once; others still wait.
    pub claim_policy: ClaimPolicy,
}

/// The tenant's claim policy (viewer and up).
#[utoipa::path(get, path = "/device-claims/policy", operation_id = "getClaimPolicy", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])),
    responses((status = 200, body = ClaimPolicyDto)))]
async fn get_policy(member: Member) -> Result<Json<ClaimPolicyDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    Ok(Json(ClaimPolicyDto { claim_policy: store::get_policy(scope).await? }))
}

/// Set the tenant's claim policy (admin).
#[utoipa::path(put, path = "/device-claims/policy", operation_id = "setClaimPolicy", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])),
    request_body = ClaimPolicyDto, responses((status = 200, body = ClaimPolicyDto)))]
async fn set_policy(member: Member, ApiJson(body): ApiJson<ClaimPolicyDto>) -> Result<Json<ClaimPolicyDto>, ApiError> {
    let scope = member.require(Role::Admin)?;
    store::set_policy(scope, body.claim_policy).await?;
    Ok(Json(body))
}

impl Validate for ClaimPolicyDto {
    fn validate(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

/// A claim on an existing device: what the unproven registration presented, and its decision.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClaimDto {
    pub id: String,
    pub device_id: String,
    pub status: ClaimStatus,
    pub serial_number: Option<String>,
    pub mac_address: Option<String>,
    pub android_id: Option<String>,
    pub name: Option<String>,
    pub model: Option<String>,
    pub manufacturer: Option<String>,
    pub os_version: Option<String>,
    pub app_version: Option<String>,
    /// The public key the claimant presented; it becomes the device's key on approval.
    pub public_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    /// `policy`, or the id of the member token that decided.
    pub decided_by: Option<String>,
}

impl From<ClaimRow> for ClaimDto {
    fn from(row: ClaimRow) -> Self {
        Self {
            id: row.id.to_string(),
            device_id: row.device_id.to_string(),
            status: row.status,
            serial_number: row.serial_number,
            mac_address: row.mac_address,
            android_id: row.android_id,
            name: row.name,
            model: row.model,
            manufacturer: row.manufacturer,
            os_version: row.os_version,
            app_version: row.app_version,
            public_key: row.public_key,
            created_at: time(row.created_at),
            decided_at: row.decided_at.map(time),
            decided_by: row.decided_by,
        }
    }
}

/// A decided claim, with the device as it is after an approval.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DecidedClaim {
    pub claim: ClaimDto,
    pub device: Option<DeviceDto>,
}

/// `?status=pending|approved|rejected`, `limit`, `cursor`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ClaimListParams {
    /// Only claims in this state.
    pub status: Option<String>,
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// The tenant's claims, oldest first (viewer and up).
#[utoipa::path(get, path = "/device-claims", operation_id = "listDeviceClaims", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])), params(ClaimListParams),
    responses((status = 200, body = ListResponse<ClaimDto>)))]
async fn list_claims(
    member: Member,
    ApiQuery(params): ApiQuery<ClaimListParams>,
) -> Result<Json<ListResponse<ClaimDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let page = PageParams { limit: params.limit, cursor: params.cursor.clone() }.page()?;
    let mut errors = FieldErrors::new();
    let status = match params.status.as_deref().map(str::parse::<ClaimStatus>).transpose() {
        Ok(status) => status,
        Err(_) => {
            errors.add("status", "must be pending, approved or rejected");
            None
        }
    };
    errors.finish()?;
    let rows = store::list(scope, status, &page).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |r| r.id, ClaimDto::from)))
}

/// One claim (viewer and up).
#[utoipa::path(get, path = "/device-claims/{id}", operation_id = "getDeviceClaim", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "claim id")), responses((status = 200, body = ClaimDto)))]
async fn get_claim(member: Member, IdPath(id): IdPath<ClaimId>) -> Result<Json<ClaimDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = store::get(scope, id).await?.ok_or_else(|| ApiError::not_found("claim"))?;
    Ok(Json(row.into()))
}

/// Approve a pending claim (operator and up): the claimant's token becomes the device's token
/// and the device's previous token stops working. 409 if already decided.
#[utoipa::path(post, path = "/device-claims/{id}/approve", operation_id = "approveDeviceClaim", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "claim id")), responses((status = 200, body = DecidedClaim)))]
async fn approve_claim(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<ClaimId>,
) -> Result<Json<DecidedClaim>, ApiError> {
    let scope = member.require(Role::Operator)?;
    let decision = store::approve(scope, id, &member.token_id.to_string(), to_millis(clock.now())).await?;
    decided(decision)
}

/// Reject a pending claim (operator and up): the device is not touched and the claimant's
/// token never works. 409 if already decided.
#[utoipa::path(post, path = "/device-claims/{id}/reject", operation_id = "rejectDeviceClaim", tag = "devices", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "claim id")), responses((status = 200, body = DecidedClaim)))]
async fn reject_claim(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<ClaimId>,
) -> Result<Json<DecidedClaim>, ApiError> {
    let scope = member.require(Role::Operator)?;
    let decision = store::reject(scope, id, &member.token_id.to_string(), to_millis(clock.now())).await?;
    decided(decision)
}

fn decided(decision: Decision) -> Result<Json<DecidedClaim>, ApiError> {
    match decision {
        Decision::Decided(claim, device) => {
            Ok(Json(DecidedClaim { claim: claim.into(), device: device.map(|row| DeviceDto::from(*row)) }))
        }
        Decision::NotFound => Err(ApiError::not_found("claim")),
        Decision::AlreadyDecided(claim) => {
            Err(ApiError::Conflict(format!("the claim was already {}", claim.status.as_str())))
        }
    }
}
