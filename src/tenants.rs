//! Tenants: the platform admin creates them; each starts with one admin API token. Also the
//! first-start bootstrap of the `default` tenant and the platform admin credential.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::auth::tokens::{self, TokenKind};
use crate::auth::PlatformAdmin;
use crate::clock::to_millis;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, PageParams, Validate};
use crate::http::{time, ListResponse};
use herd_store::tenants as store;
pub(crate) use herd_store::tenants::{CreateTenantError, TenantRow};
use herd_store::Db;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_tenant, list_tenants))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TenantDto {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl From<TenantRow> for TenantDto {
    fn from(row: TenantRow) -> Self {
        Self { id: row.id.to_string(), name: row.name, created_at: time(row.created_at) }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CreateTenantRequest {
    /// Unique; 1–64 characters.
    pub name: String,
}

impl Validate for CreateTenantRequest {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        errors.text("name", Some(&self.name), 64);
        errors.finish()
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatedTenant {
    pub tenant: TenantDto,
    /// The tenant's first admin API token. Shown once.
    pub admin_token: String,
}

/// Creates a tenant with an admin API token and returns the token's secret. `platform_admin`
/// marks the token as the platform admin's too (only the bootstrap does that).
pub(crate) async fn create(
    db: &Db,
    name: &str,
    token: Option<String>,
    platform_admin: bool,
    now: i64,
) -> Result<(TenantRow, String), CreateTenantError> {
    let secret = token.unwrap_or_else(|| tokens::generate(TokenKind::Member));
    let row = store::create(db, name, &tokens::hash(&secret), platform_admin, now).await?;
    Ok((row, secret))
}

/// What the first start did.
#[derive(Debug)]
pub enum Bootstrap {
    /// The database already had tenants.
    AlreadyDone,
    /// Created `default` with the operator's `HERD_BOOTSTRAP_TOKEN`.
    CreatedWithConfiguredToken,
    /// Created `default` with a random token, written to this file.
    CreatedWithTokenFile(PathBuf),
}

/// The name of the tenant that bootstrap creates; a login that names no tenant signs in to it.
pub(crate) const DEFAULT_TENANT_NAME: &str = "default";

/// On an empty database, creates the platform admin and the `default` tenant (DESIGN.md
/// "Principals"). Safe when several instances start at once: the tenant name is unique.
pub(crate) async fn bootstrap(
    db: &Db,
    data_dir: &Path,
    configured_token: Option<&str>,
    now: i64,
) -> anyhow::Result<Bootstrap> {
    if store::count(db).await? > 0 {
        return Ok(Bootstrap::AlreadyDone);
    }
    match create(db, DEFAULT_TENANT_NAME, configured_token.map(str::to_string), true, now).await {
        Ok((_, secret)) => match configured_token {
            Some(_) => Ok(Bootstrap::CreatedWithConfiguredToken),
            None => {
                let path = data_dir.join("initial-admin-token");
                write_secret_file(&path, &secret)?;
                Ok(Bootstrap::CreatedWithTokenFile(path))
            }
        },
        Err(CreateTenantError::Duplicate(_)) => Ok(Bootstrap::AlreadyDone),
        Err(CreateTenantError::Store(error)) => Err(error.into()),
    }
}

/// Writes a secret readable only by its owner (0600), atomically.
pub(crate) fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    crate::files::write_atomically(path, format!("{secret}\n").as_bytes(), 0o600)
}

/// Create a tenant (platform admin). Answers its first admin token.
#[utoipa::path(post, path = "/tenants", operation_id = "createTenant", tag = "tenants", security(("platformAdminToken" = [])), request_body = CreateTenantRequest,
    responses((status = 201, body = CreatedTenant)))]
async fn create_tenant(
    State(clock): State<Arc<dyn crate::clock::Clock>>,
    State(db): State<herd_store::Db>,
    _admin: PlatformAdmin,
    ApiJson(body): ApiJson<CreateTenantRequest>,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
    let (row, secret) =
        create(&db, body.name.trim(), None, false, to_millis(clock.now())).await.map_err(|e| match e {
            CreateTenantError::Duplicate(_) => ApiError::Conflict(e.to_string()),
            CreateTenantError::Store(error) => error.into(),
        })?;
    Ok((StatusCode::CREATED, Json(CreatedTenant { tenant: row.into(), admin_token: secret })))
}

/// List tenants (platform admin).
#[utoipa::path(get, path = "/tenants", operation_id = "listTenants", tag = "tenants", security(("platformAdminToken" = [])), params(PageParams),
    responses((status = 200, body = ListResponse<TenantDto>)))]
async fn list_tenants(
    State(db): State<herd_store::Db>,
    _admin: PlatformAdmin,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListResponse<TenantDto>>, ApiError> {
    let page = params.page()?;
    let rows = store::list(&db, &page).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |r| r.id.to_string(), TenantDto::from)))
}
