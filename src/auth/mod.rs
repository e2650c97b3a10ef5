//! Who is asking: principals, roles, and the tenant-bound handle.
//!
//! The extractors here ([`Member`], [`DeviceAuth`], [`Enroller`], [`PlatformAdmin`]) are the
//! only producers of a caller's identity, and [`TenantScope`] — the only way into a tenant's
//! data — can only be made by them (its constructor is private to this module). A handler
//! therefore cannot name a tenant it was not authenticated for: it never reads a tenant id
//! from the path or the body.

pub mod routes;
pub mod store;
pub mod tokens;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::clock::to_millis;
use crate::ids::{DeviceId, EnrollmentTokenId, TenantId, TokenId, UserId};
use crate::store::Db;
use crate::{devices, http::error::ApiError};
use tokens::TokenKind;

/// A tenant member's role. Ordered: `Viewer < Operator < Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything in the tenant.
    Viewer,
    /// Also manages devices, commands and updates.
    Operator,
    /// Also manages users, tokens, CA operations and rules.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The proof that a request may touch one tenant's data. Feature stores take it and bind its
/// tenant id into every query they run.
#[derive(Debug, Clone)]
pub struct TenantScope {
    db: Db,
    tenant_id: TenantId,
}

impl TenantScope {
    /// Private: only authentication (and the explicit system principal below) makes scopes.
    fn new(db: Db, tenant_id: TenantId) -> Self {
        Self { db, tenant_id }
    }

    /// The background-job principal (STYLE.md "Background work acts as an explicit system
    /// principal"): a job that has read a tenant id from a row it owns may act in that tenant.
    pub fn for_system(_system: &System, db: Db, tenant_id: TenantId) -> Self {
        Self::new(db, tenant_id)
    }

    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// The internal principal of background jobs and the command line. Holding one is a
/// statement in the code that no request is behind the action.
#[derive(Debug)]
pub struct System(());

impl System {
    /// Used by jobs and CLI commands; grep for it to find every action without a caller.
    pub fn principal() -> Self {
        System(())
    }
}

/// An authenticated tenant member (API token or login session).
#[derive(Debug, Clone)]
pub struct Member {
    scope: TenantScope,
    pub role: Role,
    pub platform_admin: bool,
    pub token_id: TokenId,
    pub user_id: Option<UserId>,
    /// `api` or `session`.
    pub kind: String,
}

impl Member {
    /// The tenant scope, if the member's role is at least `role`; else 403.
    pub fn require(&self, role: Role) -> Result<&TenantScope, ApiError> {
        if self.role >= role {
            Ok(&self.scope)
        } else {
            Err(ApiError::Forbidden(format!("this action needs the {} role", role.as_str())))
        }
    }

    pub fn tenant_id(&self) -> TenantId {
        self.scope.tenant_id
    }
}

/// A platform admin (the bootstrap credential, or a user marked so).
#[derive(Debug, Clone)]
pub struct PlatformAdmin(pub Member);

/// An authenticated device: its own id and its tenant's scope.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    pub scope: TenantScope,
    pub device_id: DeviceId,
    /// The device's row as read while authenticating (the heartbeat answers from it).
    pub device: devices::store::DeviceRow,
}

/// Who may auto-register a device: an enrollment token or a member with at least `operator`.
#[derive(Debug, Clone)]
pub enum Enroller {
    Token { scope: TenantScope, token_id: EnrollmentTokenId },
    Member { scope: TenantScope },
}

impl Enroller {
    pub fn scope(&self) -> &TenantScope {
        match self {
            Enroller::Token { scope, .. } | Enroller::Member { scope } => scope,
        }
    }
}

/// What a bearer token turned out to be.
enum Principal {
    Member(Member),
    Enrollment(TenantScope, EnrollmentTokenId),
    /// Boxed: a device principal carries the device's whole row.
    Device(Box<DeviceAuth>),
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer token".into()))?;
    let text = header.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, token) =
        text.split_once(' ').ok_or_else(|| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > 512 {
        return Err(ApiError::Unauthorized("expected Authorization: Bearer <token>".into()));
    }
    Ok(token)
}

fn rejected() -> ApiError {
    ApiError::Unauthorized("the token is invalid, expired or revoked".into())
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let token = bearer(parts)?;
    let hash = tokens::hash(token);
    let now = to_millis(state.clock.now());
    let db = &state.db;
    match TokenKind::of(token) {
        TokenKind::Member => {
            let row = store::find_member_token(db, &hash, now).await?.ok_or_else(rejected)?;
            let role =
                Role::parse(&row.role).ok_or_else(|| ApiError::internal(anyhow::anyhow!("bad role {}", row.role)))?;
            let member = Member {
                scope: TenantScope::new(db.clone(), parse_id(&row.tenant_id)?),
                role,
                platform_admin: row.platform_admin,
                token_id: parse_id(&row.id)?,
                user_id: row.user_id.as_deref().map(parse_id).transpose()?,
                kind: row.kind,
            };
            // Recording use is advisory: at most one write a minute per token.
            if row.last_used_at.is_none_or(|last| now - last > 60_000) {
                store::touch_member_token(db, &row.id, now).await?;
            }
            Ok(Principal::Member(member))
        }
        TokenKind::Enrollment => {
            let row = store::find_usable_enrollment_token(db, &hash, now).await?.ok_or_else(rejected)?;
            Ok(Principal::Enrollment(TenantScope::new(db.clone(), parse_id(&row.tenant_id)?), parse_id(&row.id)?))
        }
        TokenKind::Device => {
            let owner = devices::store::find_by_token_hash(db, &hash).await?.ok_or_else(rejected)?;
            let scope = TenantScope::new(db.clone(), parse_id(&owner.tenant_id)?);
            Ok(Principal::Device(Box::new(DeviceAuth {
                scope,
                device_id: parse_id(&owner.device.id)?,
                device: owner.device,
            })))
        }
    }
}

fn parse_id<T: std::str::FromStr>(text: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| ApiError::internal(anyhow::anyhow!("stored id {text:?} is not a UUID")))
}

fn wrong_credential(what: &str) -> ApiError {
    ApiError::Forbidden(format!("{what} cannot be used for this request"))
}

impl FromRequestParts<AppState> for Member {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match authenticate(parts, state).await? {
            Principal::Member(member) => Ok(member),
            Principal::Enrollment(..) => Err(wrong_credential("an enrollment token")),
            Principal::Device(_) => Err(wrong_credential("a device token")),
        }
    }
}

impl FromRequestParts<AppState> for PlatformAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let member = Member::from_request_parts(parts, state).await?;
        if member.platform_admin {
            Ok(PlatformAdmin(member))
        } else {
            Err(ApiError::Forbidden("this action needs a platform admin".into()))
        }
    }
}

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match authenticate(parts, state).await? {
            Principal::Device(device) => Ok(*device),
            Principal::Enrollment(..) => Err(wrong_credential("an enrollment token")),
            Principal::Member(_) => Err(wrong_credential("a member token (this route takes a device token)")),
        }
    }
}

impl FromRequestParts<AppState> for Enroller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match authenticate(parts, state).await? {
            Principal::Enrollment(scope, token_id) => Ok(Enroller::Token { scope, token_id }),
            Principal::Member(member) => {
                let scope = member.require(Role::Operator)?.clone();
                Ok(Enroller::Member { scope })
            }
            Principal::Device(_) => Err(wrong_credential("a device token")),
        }
    }
}
