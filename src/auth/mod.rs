//! Who is asking: the principals of a request.
//!
//! The extractors here ([`Member`], [`DeviceAuth`], [`Enroller`], [`PlatformAdmin`]) are the
//! only producers of a caller's identity. Each gets its [`TenantScope`] — the only way into a
//! tenant's data — from the store's credential lookup, and the store crate is the only code
//! that can make a scope (its constructor is `pub(crate)` there). A handler therefore cannot
//! name a tenant it was not authenticated for: it never reads a tenant id from the path or the
//! body.

pub mod limits;
pub(crate) mod routes;
pub(crate) use herd_store::credentials as store;
pub(crate) mod tokens;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use herd_domain::ids::{DeviceId, EnrollmentTokenId, TokenId, UserId};
pub(crate) use herd_domain::status::{MemberTokenKind, Role};
pub(crate) use herd_store::{System, TenantScope};

use crate::app::AppState;
use crate::clock::to_millis;
use crate::{devices, http::error::ApiError};
use tokens::TokenKind;

/// An authenticated tenant member (API token or login session).
#[derive(Debug, Clone)]
pub(crate) struct Member {
    scope: TenantScope,
    pub role: Role,
    pub platform_admin: bool,
    pub token_id: TokenId,
    pub user_id: Option<UserId>,
    pub kind: MemberTokenKind,
}

impl Member {
    /// The tenant scope, if the member's role is at least `role`; else 403.
    pub(crate) fn require(&self, role: Role) -> Result<&TenantScope, ApiError> {
        if self.role >= role {
            Ok(&self.scope)
        } else {
            Err(ApiError::Forbidden(format!("this action needs the {} role", role.as_str())))
        }
    }

    pub(crate) fn tenant_id(&self) -> herd_domain::ids::TenantId {
        self.scope.tenant_id()
    }
}

/// A platform admin (the bootstrap credential, or a user marked so).
#[derive(Debug, Clone)]
pub(crate) struct PlatformAdmin;

/// An authenticated device: its own id and its tenant's scope.
#[derive(Debug, Clone)]
pub(crate) struct DeviceAuth {
    pub scope: TenantScope,
    pub device_id: DeviceId,
    /// The device's row as read while authenticating (the heartbeat answers from it).
    pub device: devices::store::DeviceRow,
    /// Its queued commands, counted in the same read (the heartbeat answer says it).
    pub pending_commands: i64,
    /// Whether it has an open alert of a sampled metric, from the same read (metrics ingest
    /// skips alert evaluation without one when no sample breaches a rule).
    pub alerting: bool,
}

/// Who may auto-register a device: an enrollment token or a member with at least `operator`.
#[derive(Debug, Clone)]
pub(crate) enum Enroller {
    Token { scope: TenantScope, token_id: EnrollmentTokenId },
    Member { scope: TenantScope },
}

impl Enroller {
    pub(crate) fn scope(&self) -> &TenantScope {
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
        TokenKind::Member => Ok(Principal::Member(member_by_hash(state, &hash, now).await?)),
        TokenKind::Enrollment => {
            let (scope, token_id) = store::find_usable_enrollment_token(db, &hash, now).await?.ok_or_else(rejected)?;
            Ok(Principal::Enrollment(scope, token_id))
        }
        TokenKind::Device => {
            let Some(owner) = devices::store::find_by_token_hash(db, &hash).await? else {
                // Only on a miss: a claimant's token waits for an operator, and says so.
                if let Some(claim) = herd_store::claims::pending_for_token_hash(db, &hash).await? {
                    return Err(ApiError::Forbidden(format!(
                        "awaiting approval: this registration matched an existing device and waits for an operator to approve claim {claim}"
                    )));
                }
                return Err(rejected());
            };
            Ok(Principal::Device(Box::new(DeviceAuth {
                scope: owner.scope,
                device_id: owner.device.id,
                device: owner.device,
                pending_commands: owner.pending_commands,
                alerting: owner.alerting,
            })))
        }
    }
}

async fn member_by_hash(state: &AppState, hash: &str, now: i64) -> Result<Member, ApiError> {
    let db = &state.db;
    let credential = store::find_member_token(db, hash, now).await?.ok_or_else(rejected)?;
    // Recording use is advisory: at most one write a minute per token.
    if credential.last_used_at.is_none_or(|last| now - last > 60_000) {
        store::touch_member_token(db, hash, credential.id, now).await?;
    }
    Ok(Member {
        scope: credential.scope,
        role: credential.role,
        platform_admin: credential.platform_admin,
        token_id: credential.id,
        user_id: credential.user_id,
        kind: credential.kind,
    })
}

/// The member a token names when it does not come from an `Authorization` header: the
/// console's session cookie, and the admin token its set-up form takes. The same lookup as
/// the header's (revoked, expired and unknown tokens answer 401), so the console's requests
/// are authorised exactly like the API's.
pub(crate) async fn member_from_token(state: &AppState, token: &str) -> Result<Member, ApiError> {
    if token.is_empty() || token.len() > 512 || TokenKind::of(token) != TokenKind::Member {
        return Err(rejected());
    }
    member_by_hash(state, &tokens::hash(token), to_millis(state.clock.now())).await
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
            Ok(PlatformAdmin)
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
