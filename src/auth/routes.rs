//! Credential routes: login sessions, API tokens, enrollment tokens and users.

use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::limits::FailureOutcome;
use super::store::{self, EnrollmentTokenRow, NewToken, TokenRow, UserRow};
use super::tokens::{self, TokenKind};
use super::MemberTokenKind;
use super::{Member, Role};
use crate::app::AppState;
use crate::clock::to_millis;
use crate::http::error::{ApiError, FieldErrors};
use crate::http::extract::{ApiJson, ApiQuery, IdPath, PageParams, Validate};
use crate::http::{time, ListResponse};
use crate::ids::{EnrollmentTokenId, TokenId, UserId};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(create_enrollment_token, list_enrollment_tokens))
        .routes(routes!(revoke_enrollment_token))
        .routes(routes!(create_user, list_users))
        .routes(routes!(delete_user))
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct LoginRequest {
    /// The name of the tenant to sign in to (usernames are unique per tenant); `default`, the
    /// tenant created at first start, when absent.
    pub tenant: Option<String>,
    pub username: String,
    pub password: String,
}

impl Validate for LoginRequest {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        errors.text("tenant", self.tenant.as_deref(), 64);
        errors.text("username", Some(&self.username), 128);
        if self.password.is_empty() || self.password.len() > 1024 {
            errors.add("password", "must be between 1 and 1024 bytes");
        }
        errors.finish()
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoginResponse {
    /// The session token: send it as `Authorization: Bearer …`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub user: UserDto,
}

/// Log in to a tenant (by name; `default` when absent) with a username and password; answers
/// a session token. An unknown tenant, an unknown user and a wrong password answer alike.
/// Bounded (see `auth::limits`): 429 with `Retry-After` beyond the rate of an address or a
/// username or while a username is locked after repeated failures, 503 with `Retry-After` when
/// every hashing turn is taken.
#[utoipa::path(post, path = "/auth/login", operation_id = "logIn", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse),
        (status = 429, description = "too many attempts, or the username is locked for a while"),
        (status = 503, description = "too many logins at once; retry after `Retry-After` seconds")))]
pub(crate) async fn login(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let tenant = body.tenant.as_deref().unwrap_or(crate::tenants::DEFAULT_TENANT_NAME);
    let limits = &state.login_limits;
    // Usernames are per tenant, so rates and locks count per (tenant, username).
    let limit_key = format!("{tenant}/{}", body.username);
    limits.check_attempt(peer.ip(), &limit_key, to_millis(state.clock.now()))?;
    let slot = limits.hash_slot().await?;
    let user = store::find_user_by_username(&state.db, tenant, &body.username).await?;
    let stored =
        user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| tokens::dummy_password_hash().to_string());
    let password = body.password.clone();
    // The slot moves into the blocking task: it is held while the hash runs, even if this
    // request is dropped meanwhile.
    let matches = tokio::task::spawn_blocking(move || tokens::verify_password(&slot, &password, &stored))
        .await
        .map_err(ApiError::internal)?;
    let user = match user {
        Some(user) if matches => user,
        user => {
            let now = state.clock.now();
            if let FailureOutcome::Locked { until } = limits.record_failure(&limit_key, to_millis(now)) {
                if let Some(user) = &user {
                    store::record_user_locked(&state.db, user, until, to_millis(now)).await?;
                }
            }
            return Err(ApiError::Unauthorized("wrong username or password".into()));
        }
    };
    limits.record_success(&limit_key);
    Ok(Json(open_session(&state, &user).await?))
}

/// Starts a login session for `user` (after its password was checked, or right after an
/// admin created it in the console's set-up).
pub(crate) async fn open_session(state: &AppState, user: &UserRow) -> Result<LoginResponse, ApiError> {
    let now = state.clock.now();
    let expires_at = now + chrono::Duration::from_std(state.settings.session_ttl).map_err(ApiError::internal)?;
    let secret = tokens::generate(TokenKind::Member);
    store::create_session(&state.db, user, &tokens::hash(&secret), to_millis(expires_at), to_millis(now)).await?;
    Ok(LoginResponse { token: secret, expires_at, user: UserDto::from(user.clone()) })
}

/// Revoke the credential this request presents (ends a login session).
#[utoipa::path(post, path = "/auth/logout", operation_id = "logOut", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])),
    responses((status = 204, description = "the credential no longer works")))]
pub(crate) async fn logout(
    axum::extract::State(state): axum::extract::State<AppState>,
    member: Member,
) -> Result<StatusCode, ApiError> {
    let scope = member.require(Role::Viewer)?;
    store::revoke_token(scope, member.token_id, member.kind, to_millis(state.clock.now())).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MeResponse {
    pub tenant_id: String,
    pub role: Role,
    pub platform_admin: bool,
    /// `api` (API token) or `session` (login).
    #[schema(value_type = herd_domain::status::MemberTokenKind)]
    pub credential: String,
    pub user_id: Option<String>,
}

/// Who the presented credential belongs to.
#[utoipa::path(get, path = "/auth/me", operation_id = "getCurrentCaller", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])), responses((status = 200, body = MeResponse)))]
async fn me(member: Member) -> Json<MeResponse> {
    Json(MeResponse {
        tenant_id: member.tenant_id().to_string(),
        role: member.role,
        platform_admin: member.platform_admin,
        credential: member.kind.to_string(),
        user_id: member.user_id.map(|u| u.to_string()),
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateTokenRequest {
    pub name: String,
    pub role: Role,
    /// When the token stops working; never if absent.
    #[serde(default, deserialize_with = "crate::http::bounded_time::optional")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl Validate for CreateTokenRequest {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        errors.text("name", Some(&self.name), 200);
        errors.finish()
    }
}

/// An API token (its secret is shown only once, at creation).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenDto {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<TokenRow> for TokenDto {
    fn from(row: TokenRow) -> Self {
        Self {
            id: row.id.to_string(),
            name: row.name,
            role: row.role,
            expires_at: row.expires_at.map(time),
            revoked_at: row.revoked_at.map(time),
            last_used_at: row.last_used_at.map(time),
            created_at: time(row.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedToken {
    pub token: TokenDto,
    /// The bearer secret. Store it now: herd keeps only its hash.
    pub secret: String,
}

fn future_expiry(state: &AppState, field: &str, at: Option<DateTime<Utc>>) -> Result<Option<i64>, ApiError> {
    match at {
        Some(at) if at <= state.clock.now() => Err(ApiError::invalid(field, "must be in the future")),
        other => Ok(other.map(to_millis)),
    }
}

/// Create an API token with a role (admin).
#[utoipa::path(post, path = "/tokens", operation_id = "createApiToken", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])), request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken)))]
pub(crate) async fn create_token(
    axum::extract::State(state): axum::extract::State<AppState>,
    member: Member,
    ApiJson(body): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let scope = member.require(Role::Admin)?;
    let expires_at = future_expiry(&state, "expiresAt", body.expires_at)?;
    let secret = tokens::generate(TokenKind::Member);
    let new = NewToken {
        kind: MemberTokenKind::Api,
        name: body.name.trim(),
        role: body.role,
        platform_admin: false,
        user_id: None,
        expires_at,
    };
    let row = store::create_token(scope, &new, &tokens::hash(&secret), to_millis(state.clock.now())).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token: row.into(), secret })))
}

/// List the tenant's API tokens (admin).
#[utoipa::path(get, path = "/tokens", operation_id = "listApiTokens", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])), params(PageParams),
    responses((status = 200, body = ListResponse<TokenDto>)))]
pub(crate) async fn list_tokens(
    member: Member,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListResponse<TokenDto>>, ApiError> {
    let scope = member.require(Role::Admin)?;
    let page = params.page()?;
    let rows = store::list_tokens(scope, page.after.as_deref(), page.limit + 1).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |r| r.id, TokenDto::from)))
}

/// Revoke an API token (admin). It answers 401 from the next request on.
#[utoipa::path(delete, path = "/tokens/{id}", operation_id = "revokeApiToken", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "token id")), responses((status = 204, description = "revoked")))]
pub(crate) async fn revoke_token(
    axum::extract::State(state): axum::extract::State<AppState>,
    member: Member,
    IdPath(id): IdPath<TokenId>,
) -> Result<StatusCode, ApiError> {
    let scope = member.require(Role::Admin)?;
    if store::revoke_token(scope, id, MemberTokenKind::Api, to_millis(state.clock.now())).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("token"))
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateEnrollmentTokenRequest {
    pub name: Option<String>,
    /// When the token stops working; never if absent.
    #[serde(default, deserialize_with = "crate::http::bounded_time::optional")]
    pub expires_at: Option<DateTime<Utc>>,
    /// How many registrations it allows; unlimited if absent.
    pub max_uses: Option<i64>,
}

impl Validate for CreateEnrollmentTokenRequest {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        errors.text("name", self.name.as_deref(), 200);
        if let Some(max) = self.max_uses {
            if !(1..=100_000_000).contains(&max) {
                errors.add("maxUses", "must be between 1 and 100000000");
            }
        }
        errors.finish()
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EnrollmentTokenDto {
    pub id: String,
    pub name: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<EnrollmentTokenRow> for EnrollmentTokenDto {
    fn from(row: EnrollmentTokenRow) -> Self {
        Self {
            id: row.id.to_string(),
            name: row.name,
            expires_at: row.expires_at.map(time),
            max_uses: row.max_uses,
            uses: row.uses,
            revoked_at: row.revoked_at.map(time),
            created_at: time(row.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatedEnrollmentToken {
    pub enrollment_token: EnrollmentTokenDto,
    /// The bearer secret devices use for `POST /devices/auto-register`. Shown once.
    pub secret: String,
}

/// Create an enrollment token (admin), optionally expiring or limited in uses.
#[utoipa::path(post, path = "/enrollment-tokens", operation_id = "createEnrollmentToken", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])),
    request_body = CreateEnrollmentTokenRequest, responses((status = 201, body = CreatedEnrollmentToken)))]
pub(crate) async fn create_enrollment_token(
    axum::extract::State(state): axum::extract::State<AppState>,
    member: Member,
    ApiJson(body): ApiJson<CreateEnrollmentTokenRequest>,
) -> Result<(StatusCode, Json<CreatedEnrollmentToken>), ApiError> {
    let scope = member.require(Role::Admin)?;
    let expires_at = future_expiry(&state, "expiresAt", body.expires_at)?;
    let secret = tokens::generate(TokenKind::Enrollment);
    let name = body.name.as_deref().map(str::trim).unwrap_or("enrollment");
    let row = store::create_enrollment_token(
        scope,
        name,
        expires_at,
        body.max_uses,
        &tokens::hash(&secret),
        to_millis(state.clock.now()),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(CreatedEnrollmentToken { enrollment_token: row.into(), secret })))
}

/// List the tenant's enrollment tokens (admin).
#[utoipa::path(get, path = "/enrollment-tokens", operation_id = "listEnrollmentTokens", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])), params(PageParams),
    responses((status = 200, body = ListResponse<EnrollmentTokenDto>)))]
pub(crate) async fn list_enrollment_tokens(
    member: Member,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListResponse<EnrollmentTokenDto>>, ApiError> {
    let scope = member.require(Role::Admin)?;
    let page = params.page()?;
    let rows = store::list_enrollment_tokens(scope, page.after.as_deref(), page.limit + 1).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |r| r.id, EnrollmentTokenDto::from)))
}

/// Revoke an enrollment token (admin). Devices it registered keep working.
#[utoipa::path(delete, path = "/enrollment-tokens/{id}", operation_id = "revokeEnrollmentToken", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "enrollment token id")), responses((status = 204, description = "revoked")))]
pub(crate) async fn revoke_enrollment_token(
    axum::extract::State(state): axum::extract::State<AppState>,
    member: Member,
    IdPath(id): IdPath<EnrollmentTokenId>,
) -> Result<StatusCode, ApiError> {
    let scope = member.require(Role::Admin)?;
    if store::revoke_enrollment_token(scope, id, to_millis(state.clock.now())).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("enrollment token"))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CreateUserRequest {
    /// Unique across the platform (an email address works well).
    pub username: String,
    /// 8 to 1024 bytes.
    pub password: String,
    pub role: Role,
}

impl Validate for CreateUserRequest {
    fn validate(&self) -> Result<(), ApiError> {
        let mut errors = FieldErrors::new();
        errors.text("username", Some(&self.username), 128);
        if self.username.chars().any(char::is_whitespace) {
            errors.add("username", "must not contain spaces");
        }
        if self.password.len() < 8 || self.password.len() > 1024 {
            errors.add("password", "must be between 8 and 1024 bytes");
        }
        errors.finish()
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserDto {
    pub id: String,
    pub tenant_id: String,
    pub username: String,
    pub role: Role,
    pub platform_admin: bool,
    pub created_at: DateTime<Utc>,
}

impl From<UserRow> for UserDto {
    fn from(row: UserRow) -> Self {
        Self {
            id: row.id.to_string(),
            tenant_id: row.tenant_id.to_string(),
            username: row.username,
            role: row.role,
            platform_admin: row.platform_admin,
            created_at: time(row.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedUser {
    pub user: UserDto,
}

/// Create a user who logs in with a password (admin).
#[utoipa::path(post, path = "/users", operation_id = "createUser", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])), request_body = CreateUserRequest,
    responses((status = 201, body = CreatedUser)))]
pub(crate) async fn create_user(
    axum::extract::State(state): axum::extract::State<AppState>,
    member: Member,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> Result<(StatusCode, Json<CreatedUser>), ApiError> {
    let row = add_user(&state, &member, body).await?;
    Ok((StatusCode::CREATED, Json(CreatedUser { user: row.into() })))
}

/// Creates a user (admin; `body` already validated).
pub(crate) async fn add_user(state: &AppState, member: &Member, body: CreateUserRequest) -> Result<UserRow, ApiError> {
    let scope = member.require(Role::Admin)?;
    let password = body.password;
    let hash = tokio::task::spawn_blocking(move || tokens::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    store::create_user(scope, body.username.trim(), &hash, body.role, to_millis(state.clock.now())).await.map_err(|e| {
        if e.is_unique_on("username") {
            ApiError::Conflict("this username is taken".into())
        } else {
            e.into()
        }
    })
}

/// List the tenant's users (admin).
#[utoipa::path(get, path = "/users", operation_id = "listUsers", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])), params(PageParams),
    responses((status = 200, body = ListResponse<UserDto>)))]
pub(crate) async fn list_users(
    member: Member,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListResponse<UserDto>>, ApiError> {
    let scope = member.require(Role::Admin)?;
    let page = params.page()?;
    let rows = store::list_users(scope, page.after.as_deref(), page.limit + 1).await?;
    Ok(Json(ListResponse::from_rows(rows, page.limit, |r| r.id, UserDto::from)))
}

/// Delete a user (admin); their sessions end with them.
#[utoipa::path(delete, path = "/users/{id}", operation_id = "deleteUser", tag = "auth", security(("apiToken" = []), ("sessionToken" = [])),
    params(("id" = String, Path, description = "user id")), responses((status = 204, description = "deleted")))]
pub(crate) async fn delete_user(member: Member, IdPath(id): IdPath<UserId>) -> Result<StatusCode, ApiError> {
    let scope = member.require(Role::Admin)?;
    if Some(id) == member.user_id {
        return Err(ApiError::Conflict("you cannot delete yourself".into()));
    }
    if store::delete_user(scope, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("user"))
    }
}
