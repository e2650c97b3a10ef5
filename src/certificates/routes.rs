//! Certificate routes and their wire types (DESIGN.md): issuance, inventory, renewal,
//! revocation, validation, the device's own certificate, and the CA certificate and CRL.
//!
//! Handlers authenticate, parse and shape answers; the order of every operation (and the
//! tenancy proof) lives in [`CertificateService`]. They never read a tenant id from the
//! request: the scope comes from the credential.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use herd_pki::{RevocationReason, VerifiedCsr};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::store::{CertificateFilter, CertificateRow, CertificateStore};
use super::{prove_device, CertificateError, CertificateService, CertificateStatus, Issued, NewKey};
use crate::app::AppState;
use crate::auth::{DeviceAuth, Member, Role};
use crate::clock::to_millis;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, OptionalJson, PageParams, Validate};
use crate::http::{time, ListResponse};
use crate::ids::{CertificateId, DeviceId};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(issue_certificate, list_device_certificates))
        .routes(routes!(list_certificates))
        .routes(routes!(get_certificate))
        .routes(routes!(revoke_certificate))
        .routes(routes!(renew_certificate))
        .routes(routes!(validate_certificate))
        .routes(routes!(ca_certificate))
        .routes(routes!(ca_crl))
}

/// The routes a device calls with its own token.
pub(crate) fn device_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(device_renews_certificate)).routes(routes!(device_certificate))
}

/// A CSR larger than this is not a device's CSR.
const MAX_CSR_BYTES: usize = 16 * 1024;
const MAX_CERTIFICATE_BYTES: usize = 32 * 1024;
const PEM: &str = "application/x-pem-file";

/// A certificate record (DESIGN.md).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertificateDto {
    pub id: String,
    pub device_id: String,
    /// Lowercase hex.
    pub serial_number: String,
    /// SHA-256 of the DER, lowercase hex without colons.
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// `pending`, `active`, `expired` or `revoked`.
    #[schema(value_type = herd_domain::status::CertificateStatus)]
    pub status: String,
    pub revoked_at: Option<DateTime<Utc>>,
    /// RFC 5280 reason name, e.g. `keyCompromise`.
    pub revocation_reason: Option<String>,
    /// `server` (herd generated the key) or `csr` (the device's own key).
    #[schema(value_type = herd_domain::status::KeySource)]
    pub key_source: String,
    /// The certificate that renewed this one.
    pub replaced_by_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<CertificateRow> for CertificateDto {
    fn from(row: CertificateRow) -> Self {
        Self {
            id: row.id.to_string(),
            device_id: row.device_id.to_string(),
            serial_number: row.serial_number,
            fingerprint: row.fingerprint,
            subject: row.subject,
            issuer: row.issuer,
            not_before: time(row.not_before),
            not_after: time(row.not_after),
            status: row.status.to_string(),
            revoked_at: row.revoked_at.map(time),
            revocation_reason: row.revocation_reason,
            key_source: row.key_source.to_string(),
            replaced_by_id: row.replaced_by_id,
            created_at: time(row.created_at),
        }
    }
}

/// A certificate with what a device needs to use it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CertificateBundle {
    pub certificate: CertificateDto,
    pub certificate_pem: String,
    /// Only for server-generated keys (PKCS#8 PEM). Absent for CSR certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
    pub ca_certificate_pem: String,
}

impl CertificateBundle {
    fn new(certificates: &CertificateService, issued: Issued) -> Self {
        Self {
            certificate: issued.record.into(),
            certificate_pem: issued.certificate_pem,
            private_key_pem: issued.private_key_pem,
            ca_certificate_pem: certificates.ca_certificate_pem().to_string(),
        }
    }
}

/// `{csr}`: a PKCS#10 request in PEM. Its signature is verified before anything is signed;
/// RSA ≥ 2048 bits and ECDSA P-256/P-384 keys are accepted. Only its public key is used.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CsrRequest {
    pub csr: String,
}

impl Validate for CsrRequest {
    fn validate(&self) -> Result<(), ApiError> {
        if self.csr.len() > MAX_CSR_BYTES {
            return Err(ApiError::invalid("csr", format!("must be at most {MAX_CSR_BYTES} bytes")));
        }
        Ok(())
    }
}

impl CsrRequest {
    fn verified(&self) -> Result<VerifiedCsr, ApiError> {
        VerifiedCsr::from_pem(&self.csr).map_err(|error| CertificateError::from(error).into())
    }
}

/// Issue a certificate for a device (admin). No body: herd generates an RSA key
/// (`HERD_CERT_KEY_SIZE`) and answers it once in `privateKeyPem`. `{csr}`: herd signs the
/// device's own key.
#[utoipa::path(post, path = "/devices/{id}/certificates", operation_id = "issueCertificate", tag = "certificates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id")), request_body(content = Option<CsrRequest>),
    responses((status = 201, body = CertificateBundle), (status = 404, description = "no such device in this tenant"),
        (status = 422, description = "the CSR is malformed, badly signed or its key too weak")))]
pub(crate) async fn issue_certificate(
    State(certificates): State<Arc<crate::certificates::CertificateService>>,
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(device_id): IdPath<DeviceId>,
    OptionalJson(body): OptionalJson<CsrRequest>,
) -> Result<(StatusCode, Json<CertificateBundle>), ApiError> {
    let scope = member.require(Role::Admin)?;
    let key = match body {
        Some(body) => NewKey::Csr(body.verified()?),
        None => NewKey::Generated,
    };
    let now = to_millis(clock.now());
    let issued = certificates.issue(scope, device_id, key, None, now).await?;
    Ok((StatusCode::CREATED, Json(CertificateBundle::new(&certificates, issued))))
}

/// A device's certificates, oldest first.
#[utoipa::path(get, path = "/devices/{id}/certificates", operation_id = "listDeviceCertificates", tag = "certificates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "device id"), PageParams),
    responses((status = 200, body = ListResponse<CertificateDto>)))]
pub(crate) async fn list_device_certificates(
    State(_state): State<AppState>,
    member: Member,
    IdPath(device_id): IdPath<DeviceId>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListResponse<CertificateDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let page = params.page()?;
    prove_device(scope, device_id).await?;
    let rows = CertificateStore::new(scope).list_for_device(device_id, &page).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |row| row.id, CertificateDto::from)))
}

/// Filters of `GET /certificates`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub(crate) struct CertificateListParams {
    /// `pending`, `active`, `expired` or `revoked`.
    pub status: Option<String>,
    /// Only certificates whose `notAfter` is within this many days from now (and not past).
    pub expiring_within_days: Option<u32>,
    /// Only this device's certificates.
    pub device_id: Option<String>,
    /// How many items to return (1–500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// The tenant's certificates in the order they expire, soonest first.
#[utoipa::path(get, path = "/certificates", operation_id = "listCertificates", tag = "certificates", security(("apiToken" = []), ("sessionToken" = [])), params(CertificateListParams),
    responses((status = 200, body = ListResponse<CertificateDto>)))]
pub(crate) async fn list_certificates(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    ApiQuery(params): ApiQuery<CertificateListParams>,
) -> Result<Json<ListResponse<CertificateDto>>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let page = PageParams { limit: params.limit, cursor: params.cursor.clone() }.page()?;
    let mut errors = FieldErrors::new();
    if let Some(status) = &params.status {
        if status.parse::<CertificateStatus>().is_err() {
            errors.add("status", "must be pending, active, expired or revoked");
        }
    }
    if params.expiring_within_days.is_some_and(|days| days > 36_500) {
        errors.add("expiringWithinDays", "must be between 0 and 36500");
    }
    let device_id = match params.device_id.as_deref().map(str::parse::<DeviceId>) {
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            errors.add("deviceId", "must be a device id");
            None
        }
        None => None,
    };
    errors.finish()?;
    let now = to_millis(clock.now());
    let filter = CertificateFilter {
        status: params.status,
        expiring: params.expiring_within_days.map(|days| (now, now + i64::from(days) * 86_400_000)),
        device_id,
    };
    let rows = CertificateStore::new(scope).list(&filter, &page).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |row| row.id, CertificateDto::from)))
}

/// One certificate record of the tenant.
#[utoipa::path(get, path = "/certificates/{id}", operation_id = "getCertificate", tag = "certificates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "certificate id")),
    responses((status = 200, body = CertificateDto), (status = 404, description = "no such certificate in this tenant")))]
pub(crate) async fn get_certificate(
    member: Member,
    IdPath(id): IdPath<CertificateId>,
) -> Result<Json<CertificateDto>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let row = CertificateStore::new(scope).get(id).await?.ok_or_else(|| ApiError::not_found("certificate"))?;
    Ok(Json(row.into()))
}

/// `{reason}`: an RFC 5280 reason name.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    /// `unspecified`, `keyCompromise`, `cACompromise`, `affiliationChanged`, `superseded`,
    /// `cessationOfOperation`, `privilegeWithdrawn` or `aACompromise`.
    pub reason: String,
}

impl Validate for RevokeRequest {
    fn validate(&self) -> Result<(), ApiError> {
        self.reason
            .parse::<RevocationReason>()
            .map(|_| ())
            .map_err(|error| ApiError::invalid("reason", error.to_string()))
    }
}

/// Revoke a certificate (admin). Final: it cannot be renewed or un-revoked. The CRL is
/// re-signed at once.
#[utoipa::path(post, path = "/certificates/{id}/revoke", operation_id = "revokeCertificate", tag = "certificates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "certificate id")), request_body = RevokeRequest,
    responses((status = 200, body = CertificateDto), (status = 409, description = "already revoked")))]
pub(crate) async fn revoke_certificate(
    State(certificates): State<Arc<crate::certificates::CertificateService>>,
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<CertificateId>,
    ApiJson(body): ApiJson<RevokeRequest>,
) -> Result<Json<CertificateDto>, ApiError> {
    let scope = member.require(Role::Admin)?;
    let reason =
        body.reason.parse::<RevocationReason>().map_err(|error| ApiError::invalid("reason", error.to_string()))?;
    let now = to_millis(clock.now());
    let row = certificates.revoke(scope, id, reason, now).await?;
    Ok(Json(row.into()))
}

/// Renew a certificate (admin): a new certificate for the same device; the old record gets
/// `replacedById`. Server-key certificates get a new key; `{csr}` signs a new device key.
#[utoipa::path(post, path = "/certificates/{id}/renew", operation_id = "renewCertificate", tag = "certificates", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "certificate id")), request_body(content = Option<CsrRequest>),
    responses((status = 201, body = CertificateBundle), (status = 409, description = "revoked, already renewed, or a CSR certificate without a new CSR")))]
async fn renew_certificate(
    State(certificates): State<Arc<crate::certificates::CertificateService>>,
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    IdPath(id): IdPath<CertificateId>,
    OptionalJson(body): OptionalJson<CsrRequest>,
) -> Result<(StatusCode, Json<CertificateBundle>), ApiError> {
    let scope = member.require(Role::Admin)?;
    let csr = body.map(|body| body.verified()).transpose()?;
    let now = to_millis(clock.now());
    let issued = certificates.renew(scope, id, csr, now).await?;
    Ok((StatusCode::CREATED, Json(CertificateBundle::new(&certificates, issued))))
}

/// `{certificatePem}` or `{fingerprint}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ValidateRequest {
    pub certificate_pem: Option<String>,
    /// SHA-256 of the DER in hex (colons allowed).
    pub fingerprint: Option<String>,
}

impl Validate for ValidateRequest {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        match (&self.certificate_pem, &self.fingerprint) {
            (None, None) => errors.add("certificatePem", "give certificatePem or fingerprint"),
            (Some(pem), _) if pem.len() > MAX_CERTIFICATE_BYTES => {
                errors.add("certificatePem", format!("must be at most {MAX_CERTIFICATE_BYTES} bytes"))
            }
            (None, Some(fingerprint)) => {
                let hex: String = fingerprint.chars().filter(|c| *c != ':').collect();
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    errors.add("fingerprint", "must be a SHA-256 fingerprint: 64 hex characters");
                }
            }
            _ => {}
        }
        errors.finish()
    }
}

/// The verdict on a certificate.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ValidationResponse {
    pub valid: bool,
    /// The record's status as of now (`unknown` when no record of this tenant matches).
    pub status: String,
    /// Every check that failed: `malformed`, `notSignedByCa`, `notYetValid`, `expired`,
    /// `revoked`, `unknownCertificate`.
    pub reasons: Vec<String>,
    pub certificate_id: Option<String>,
    pub device_id: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
}

/// Validate a certificate: CA signature, validity window, revocation, and a matching record of
/// this tenant. Every failed check is reported.
#[utoipa::path(post, path = "/certificates/validate", operation_id = "validateCertificate", tag = "certificates", security(("apiToken" = []), ("sessionToken" = [])),
    request_body = ValidateRequest, responses((status = 200, body = ValidationResponse)))]
async fn validate_certificate(
    State(certificates): State<Arc<crate::certificates::CertificateService>>,
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    member: Member,
    ApiJson(body): ApiJson<ValidateRequest>,
) -> Result<Json<ValidationResponse>, ApiError> {
    let scope = member.require(Role::Viewer)?;
    let now = to_millis(clock.now());
    let verdict =
        certificates.validate(scope, body.certificate_pem.as_deref(), body.fingerprint.as_deref(), now).await?;
    let has = |reason: &str| verdict.reasons.contains(&reason);
    let status = match &verdict.record {
        None => "unknown".to_string(),
        Some(row) if row.status == CertificateStatus::Revoked => CertificateStatus::Revoked.to_string(),
        Some(_) if has(super::reasons::EXPIRED) => CertificateStatus::Expired.to_string(),
        Some(_) if has(super::reasons::NOT_YET_VALID) => CertificateStatus::Pending.to_string(),
        Some(row) => row.status.to_string(),
    };
    Ok(Json(ValidationResponse {
        valid: verdict.reasons.is_empty(),
        status,
        reasons: verdict.reasons.iter().map(|reason| reason.to_string()).collect(),
        certificate_id: verdict.record.as_ref().map(|row| row.id.to_string()),
        device_id: verdict.record.as_ref().map(|row| row.device_id.to_string()),
        not_after: verdict.not_after.map(time),
    }))
}

/// A device renews (or first gets) its own certificate with a new CSR (device token). Its
/// current certificate is marked replaced.
#[utoipa::path(post, path = "/devices/self/certificates", operation_id = "renewOwnCertificate", tag = "certificates", security(("deviceToken" = [])),
    request_body = CsrRequest, responses((status = 201, body = CertificateBundle)))]
async fn device_renews_certificate(
    State(certificates): State<Arc<crate::certificates::CertificateService>>,
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    device: DeviceAuth,
    ApiJson(body): ApiJson<CsrRequest>,
) -> Result<(StatusCode, Json<CertificateBundle>), ApiError> {
    let csr = body.verified()?;
    let now = to_millis(clock.now());
    let issued = certificates.renew_by_device(&device.scope, device.device_id, csr, now).await?;
    Ok((StatusCode::CREATED, Json(CertificateBundle::new(&certificates, issued))))
}

/// The calling device's current certificate bundle (device token). When herd generated the
/// key, `privateKeyPem` is in the first answer for that certificate and never again: store it
/// on the first fetch (after an auto-renewal, this is how the device gets its new key). The
/// recommended path is a CSR (`POST /devices/self/certificates`): the key never leaves the device.
#[utoipa::path(get, path = "/devices/self/certificate", operation_id = "getOwnCertificate", tag = "certificates", security(("deviceToken" = [])),
    responses((status = 200, body = CertificateBundle), (status = 404, description = "the device has no current certificate")))]
async fn device_certificate(
    State(certificates): State<Arc<crate::certificates::CertificateService>>,
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    device: DeviceAuth,
) -> Result<Json<CertificateBundle>, ApiError> {
    let now = to_millis(clock.now());
    let issued = certificates.current_bundle(&device.scope, device.device_id, now).await?;
    Ok(Json(CertificateBundle::new(&certificates, issued)))
}

/// `?format=pem|der`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FormatParams {
    /// `pem` or `der`.
    pub format: Option<String>,
}

fn wants(params: &FormatParams, default: &'static str) -> Result<&'static str, ApiError> {
    match params.format.as_deref() {
        None => Ok(default),
        Some("pem") => Ok("pem"),
        Some("der") => Ok("der"),
        Some(_) => Err(ApiError::invalid("format", "must be pem or der")),
    }
}

/// The CA certificate: PEM by default, `?format=der` for DER. No credential needed.
#[utoipa::path(get, path = "/ca/certificate", operation_id = "getCaCertificate", tag = "certificates", params(FormatParams),
    responses((status = 200, content((String = "application/x-pem-file"), (Vec<u8> = "application/pkix-cert")))))]
async fn ca_certificate(
    State(certificates): State<Arc<crate::certificates::CertificateService>>,
    ApiQuery(params): ApiQuery<FormatParams>,
) -> Result<Response, ApiError> {
    Ok(match wants(&params, "pem")? {
        "pem" => ([(header::CONTENT_TYPE, PEM)], certificates.ca_certificate_pem().to_string()).into_response(),
        _ => ([(header::CONTENT_TYPE, "application/pkix-cert")], certificates.ca_certificate_der().to_vec())
            .into_response(),
    })
}

/// The CRL signed by the CA: DER by default, `?format=pem` for PEM. No credential needed.
#[utoipa::path(get, path = "/ca/crl", operation_id = "getCaCrl", tag = "certificates", params(FormatParams),
    responses((status = 200, content((Vec<u8> = "application/pkix-crl"), (String = "application/x-pem-file")))))]
async fn ca_crl(
    State(certificates): State<Arc<crate::certificates::CertificateService>>,
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    ApiQuery(params): ApiQuery<FormatParams>,
) -> Result<Response, ApiError> {
    let format = wants(&params, "der")?;
    let crl = certificates.crl(to_millis(clock.now())).await?;
    Ok(match format {
        "pem" => ([(header::CONTENT_TYPE, PEM)], crl.pem).into_response(),
        _ => ([(header::CONTENT_TYPE, "application/pkix-crl")], crl.der).into_response(),
    })
}
