//! SQL for credentials: API tokens, login sessions, enrollment tokens and users.
//!
//! Lookups by token hash are the one place that reads across tenants on purpose: a token is
//! how a request's tenant becomes known. Everything else takes a [`TenantScope`].

use sqlx::FromRow;

use herd_domain::ids::{EnrollmentTokenId, TenantId, TokenId, UserId};
use herd_domain::status::{MemberTokenKind, Role};

use crate::cache::{CachedMember, Touch};
use crate::TenantScope;
use crate::{classify, Db, StoreError, Tx};
use crate::{with_reader, with_tx, with_writer};

#[derive(Debug, FromRow)]
struct MemberTokenRow {
    id: TokenId,
    tenant_id: TenantId,
    kind: MemberTokenKind,
    role: Role,
    platform_admin: bool,
    user_id: Option<UserId>,
    expires_at: Option<i64>,
    last_used_at: Option<i64>,
}

/// A usable member token (API token or login session), as the authenticator needs it, with
/// the scope of its tenant.
#[derive(Debug, Clone)]
pub struct MemberCredential {
    pub scope: TenantScope,
    pub id: TokenId,
    pub kind: MemberTokenKind,
    pub role: Role,
    pub platform_admin: bool,
    pub user_id: Option<UserId>,
    pub last_used_at: Option<i64>,
}

/// Looks up a member token by its hash: one of the places that make a [`TenantScope`]. A
/// stored role or kind herd does not know fails the lookup (an error, never a weaker role).
///
/// Answered from the credential cache when it can ([`crate::cache`]): every write that can end
/// a member token touches its tenant, so a revoked token is refused on the very next request.
pub async fn find_member_token(db: &Db, hash: &str, now: i64) -> Result<Option<MemberCredential>, StoreError> {
    const SQL: &str = "SELECT id, tenant_id, kind, role, platform_admin, user_id, expires_at, last_used_at \
                       FROM api_tokens \
                       WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)";
    let usable = |member: &CachedMember| member.expires_at.is_none_or(|at| at > now);
    if let Some(member) = db.cache.member(hash) {
        return Ok(usable(&member).then(|| credential(db, member)));
    }
    // Read before the database is (see `cache`).
    let epoch = db.cache.epoch();
    let row = with_reader!(db, |pool| sqlx::query_as::<_, MemberTokenRow>(SQL)
        .bind(hash)
        .bind(now)
        .fetch_optional(pool)
        .await)
    .map_err(classify)?;
    let Some(row) = row else { return Ok(None) };
    let member = CachedMember {
        tenant: row.tenant_id,
        id: row.id,
        kind: row.kind,
        role: row.role,
        platform_admin: row.platform_admin,
        user_id: row.user_id,
        expires_at: row.expires_at,
        last_used_at: row.last_used_at,
    };
    db.cache.put_member(hash, member.clone(), epoch);
    Ok(Some(credential(db, member)))
}

fn credential(db: &Db, member: CachedMember) -> MemberCredential {
    MemberCredential {
        scope: TenantScope::new(db.clone(), member.tenant),
        id: member.id,
        kind: member.kind,
        role: member.role,
        platform_admin: member.platform_admin,
        user_id: member.user_id,
        last_used_at: member.last_used_at,
    }
}

/// Records that the token with `hash` (and `id`) was used at `now` (advisory: callers do it at
/// most once a minute).
pub async fn touch_member_token(db: &Db, hash: &str, id: TokenId, now: i64) -> Result<(), StoreError> {
    // cache: untouched — `last_used_at` is advisory; the entry is updated in place below.
    const SQL: &str = "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2";
    with_writer!(db, |pool| sqlx::query(SQL).bind(now).bind(id).execute(pool).await.map(|r| r.rows_affected()))
        .map_err(classify)?;
    db.cache.member_used(hash, now);
    Ok(())
}

/// Looks up a usable enrollment token by its hash: answers its tenant's scope and its id.
pub async fn find_usable_enrollment_token(
    db: &Db,
    hash: &str,
    now: i64,
) -> Result<Option<(TenantScope, EnrollmentTokenId)>, StoreError> {
    const SQL: &str = "SELECT id, tenant_id FROM enrollment_tokens WHERE token_hash = $1 AND revoked_at IS NULL \
                       AND (expires_at IS NULL OR expires_at > $2) AND (max_uses IS NULL OR uses < max_uses)";
    let row: Option<(EnrollmentTokenId, TenantId)> =
        with_reader!(db, |pool| sqlx::query_as(SQL).bind(hash).bind(now).fetch_optional(pool).await)
            .map_err(classify)?;
    Ok(row.map(|(id, tenant_id)| (TenantScope::new(db.clone(), tenant_id), id)))
}

/// Counts one use of an enrollment token in a transaction of its own (PostgreSQL's
/// registrations): the token's row lock is then held for this statement's commit only, not across
/// the registration's statements and its event write, which serialised every registration through
/// one token. False if the token ran out (or expired, or was revoked). A registration that then
/// fails gives the use back with [`release_enrollment_use`]; a server that dies in between has
/// spent one use too many, never one too few.
pub async fn reserve_enrollment_use(db: &Db, id: EnrollmentTokenId, now: i64) -> Result<bool, StoreError> {
    let id = id.to_string();
    let result = with_writer!(db, |pool| sqlx::query(COUNT_USES)
        .bind(&id)
        .bind(now)
        .bind(1_i64)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()));
    Ok(result.map_err(classify)? == 1)
}

/// Counts `$3` uses of token `$1` at time `$2`, all or none: no row changes if the token has
/// fewer than `$3` uses left, expired or was revoked.
const COUNT_USES: &str = "UPDATE enrollment_tokens SET uses = uses + $3 WHERE id = $1 AND revoked_at IS NULL \
                          AND (expires_at IS NULL OR expires_at > $2) AND (max_uses IS NULL OR uses + $3 <= max_uses)";

/// Gives back a use [`reserve_enrollment_use`] took for a registration that did not happen.
pub async fn release_enrollment_use(db: &Db, id: EnrollmentTokenId) -> Result<(), StoreError> {
    let id = id.to_string();
    with_writer!(db, |pool| sqlx::query("UPDATE enrollment_tokens SET uses = uses - 1 WHERE id = $1 AND uses > 0")
        .bind(&id)
        .execute(pool)
        .await
        .map(drop))
    .map_err(classify)
}

/// Counts one use of an enrollment token inside the registration's transaction. False if the
/// token ran out (or expired, or was revoked) since it was authenticated.
pub async fn consume_enrollment_use(tx: &mut Tx, id: EnrollmentTokenId, now: i64) -> Result<bool, StoreError> {
    consume_enrollment_uses(tx, id, 1, now).await
}

/// Counts `n` uses of an enrollment token inside a transaction, all or none: false, and
/// nothing counted, if the token has fewer than `n` left (or expired, or was revoked).
pub(crate) async fn consume_enrollment_uses(
    tx: &mut Tx,
    id: EnrollmentTokenId,
    n: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let id = id.to_string();
    let result = with_tx!(tx, |conn| sqlx::query(COUNT_USES)
        .bind(&id)
        .bind(now)
        .bind(n)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()));
    Ok(result.map_err(classify)? == 1)
}

/// What a new API token is for.
pub struct NewToken<'a> {
    pub kind: MemberTokenKind,
    pub name: &'a str,
    pub role: Role,
    pub platform_admin: bool,
    pub user_id: Option<UserId>,
    pub expires_at: Option<i64>,
}

/// Inserts a member token for a tenant. System-level: used by tenant creation (before any
/// member of the tenant exists) and, through [`create_token`], by tenant admins.
pub(crate) async fn insert_token(
    tx: &mut Tx,
    tenant_id: TenantId,
    token: &NewToken<'_>,
    hash: &str,
    now: i64,
) -> Result<TokenId, StoreError> {
    // cache: untouched — a new token has no entry to kill: lookups that find nothing are not kept.
    const SQL: &str = "INSERT INTO api_tokens (id, tenant_id, kind, name, role, platform_admin, user_id, token_hash, expires_at, created_at) \
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    let id = TokenId::new();
    let (id_text, tenant_text, user_text) =
        (id.to_string(), tenant_id.to_string(), token.user_id.map(|u| u.to_string()));
    with_tx!(tx, |conn| sqlx::query(SQL)
        .bind(&id_text)
        .bind(&tenant_text)
        .bind(token.kind)
        .bind(token.name)
        .bind(token.role.as_str())
        .bind(token.platform_admin)
        .bind(&user_text)
        .bind(hash)
        .bind(token.expires_at)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(id)
}

/// An API token as listed (never its secret).
#[derive(Debug, FromRow)]
pub struct TokenRow {
    pub id: TokenId,
    pub name: String,
    pub role: Role,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub created_at: i64,
}

const TOKEN_COLUMNS: &str = "id, name, role, expires_at, revoked_at, last_used_at, created_at";

pub async fn create_token(
    scope: &TenantScope,
    token: &NewToken<'_>,
    hash: &str,
    now: i64,
) -> Result<TokenRow, StoreError> {
    let mut tx = scope.db.begin().await?;
    let id = insert_token(&mut tx, scope.tenant_id, token, hash, now).await?;
    tx.commit().await?;
    get_token(scope, id).await?.ok_or_else(|| StoreError::Other(sqlx::Error::RowNotFound))
}

pub async fn get_token(scope: &TenantScope, id: TokenId) -> Result<Option<TokenRow>, StoreError> {
    let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE tenant_id = $1 AND id = $2 AND kind = 'api'");
    let (tenant, id) = (scope.tenant_id.to_string(), id.to_string());
    with_reader!(&scope.db, |pool| sqlx::query_as::<_, TokenRow>(&sql)
        .bind(&tenant)
        .bind(&id)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

pub async fn list_tokens(scope: &TenantScope, after: Option<&str>, limit: u32) -> Result<Vec<TokenRow>, StoreError> {
    let sql = format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE tenant_id = $1 AND kind = 'api' AND id > $2 ORDER BY id LIMIT $3"
    );
    let tenant = scope.tenant_id.to_string();
    let after = after.unwrap_or("");
    with_reader!(&scope.db, |pool| sqlx::query_as::<_, TokenRow>(&sql)
        .bind(&tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// Revokes an API token or session of the tenant. False if there is no such live token.
pub async fn revoke_token(
    scope: &TenantScope,
    id: TokenId,
    kind: MemberTokenKind,
    now: i64,
) -> Result<bool, StoreError> {
    const SQL: &str =
        "UPDATE api_tokens SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3 AND kind = $4 AND revoked_at IS NULL";
    let (tenant, id) = (scope.tenant_id.to_string(), id.to_string());
    let mut tx = scope.db.begin().await?;
    let revoked = with_tx!(tx, |conn| sqlx::query(SQL)
        .bind(now)
        .bind(&tenant)
        .bind(&id)
        .bind(kind)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?
        == 1;
    // The credential cache may hold the token (on this instance and others).
    tx.touch(Touch::Tenant(scope.tenant_id));
    tx.commit().await?;
    Ok(revoked)
}

#[derive(Debug, FromRow)]
pub struct EnrollmentTokenRow {
    pub id: EnrollmentTokenId,
    pub name: String,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

const ENROLLMENT_COLUMNS: &str = "id, name, expires_at, max_uses, uses, revoked_at, created_at";

pub async fn create_enrollment_token(
    scope: &TenantScope,
    name: &str,
    expires_at: Option<i64>,
    max_uses: Option<i64>,
    hash: &str,
    now: i64,
) -> Result<EnrollmentTokenRow, StoreError> {
    const SQL: &str =
        "INSERT INTO enrollment_tokens (id, tenant_id, name, token_hash, expires_at, max_uses, uses, created_at) \
                       VALUES ($1, $2, $3, $4, $5, $6, 0, $7)";
    let id = EnrollmentTokenId::new();
    let (id_text, tenant) = (id.to_string(), scope.tenant_id.to_string());
    with_writer!(&scope.db, |pool| sqlx::query(SQL)
        .bind(&id_text)
        .bind(&tenant)
        .bind(name)
        .bind(hash)
        .bind(expires_at)
        .bind(max_uses)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    get_enrollment_token(scope, id).await?.ok_or_else(|| StoreError::Other(sqlx::Error::RowNotFound))
}

pub async fn get_enrollment_token(
    scope: &TenantScope,
    id: EnrollmentTokenId,
) -> Result<Option<EnrollmentTokenRow>, StoreError> {
    let sql = format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollment_tokens WHERE tenant_id = $1 AND id = $2");
    let (tenant, id) = (scope.tenant_id.to_string(), id.to_string());
    with_reader!(&scope.db, |pool| sqlx::query_as::<_, EnrollmentTokenRow>(&sql)
        .bind(&tenant)
        .bind(&id)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

pub async fn list_enrollment_tokens(
    scope: &TenantScope,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<EnrollmentTokenRow>, StoreError> {
    let sql = format!(
        "SELECT {ENROLLMENT_COLUMNS} FROM enrollment_tokens WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    );
    let tenant = scope.tenant_id.to_string();
    let after = after.unwrap_or("");
    with_reader!(&scope.db, |pool| sqlx::query_as::<_, EnrollmentTokenRow>(&sql)
        .bind(&tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

pub async fn revoke_enrollment_token(scope: &TenantScope, id: EnrollmentTokenId, now: i64) -> Result<bool, StoreError> {
    const SQL: &str =
        "UPDATE enrollment_tokens SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL";
    let (tenant, id) = (scope.tenant_id.to_string(), id.to_string());
    let result = with_writer!(&scope.db, |pool| sqlx::query(SQL)
        .bind(now)
        .bind(&tenant)
        .bind(&id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()));
    Ok(result.map_err(classify)? == 1)
}

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub username: String,
    pub password_hash: String,
    pub role: Role,
    pub platform_admin: bool,
    pub created_at: i64,
}

const USER_COLUMNS: &str = "id, tenant_id, username, password_hash, role, platform_admin, created_at";

pub async fn create_user(
    scope: &TenantScope,
    username: &str,
    password_hash: &str,
    role: Role,
    now: i64,
) -> Result<UserRow, StoreError> {
    const SQL: &str = "INSERT INTO users (id, tenant_id, username, password_hash, role, platform_admin, created_at) \
                       VALUES ($1, $2, $3, $4, $5, FALSE, $6)";
    let id = UserId::new();
    let (id_text, tenant) = (id.to_string(), scope.tenant_id.to_string());
    with_writer!(&scope.db, |pool| sqlx::query(SQL)
        .bind(&id_text)
        .bind(&tenant)
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    get_user(scope, id).await?.ok_or_else(|| StoreError::Other(sqlx::Error::RowNotFound))
}

pub async fn get_user(scope: &TenantScope, id: UserId) -> Result<Option<UserRow>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2");
    let (tenant, id) = (scope.tenant_id.to_string(), id.to_string());
    with_reader!(&scope.db, |pool| sqlx::query_as::<_, UserRow>(&sql)
        .bind(&tenant)
        .bind(&id)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

pub async fn list_users(scope: &TenantScope, after: Option<&str>, limit: u32) -> Result<Vec<UserRow>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3");
    let tenant = scope.tenant_id.to_string();
    let after = after.unwrap_or("");
    with_reader!(&scope.db, |pool| sqlx::query_as::<_, UserRow>(&sql)
        .bind(&tenant)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// Deletes a user; their sessions go with them (foreign key cascade).
pub async fn delete_user(scope: &TenantScope, id: UserId) -> Result<bool, StoreError> {
    const SQL: &str = "DELETE FROM users WHERE tenant_id = $1 AND id = $2";
    let (tenant, id) = (scope.tenant_id.to_string(), id.to_string());
    let mut tx = scope.db.begin().await?;
    let deleted = with_tx!(tx, |conn| sqlx::query(SQL)
        .bind(&tenant)
        .bind(&id)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?
        == 1;
    // The credential cache may hold the user's sessions (on this instance and others).
    tx.touch(Touch::Tenant(scope.tenant_id));
    tx.commit().await?;
    Ok(deleted)
}

/// Login looks a user up by the tenant's name and the username before any credential is
/// known. Usernames are unique per tenant (`users_tenant_username_uq`), so the pair names at
/// most one user; an unknown tenant and an unknown user both answer `None`.
pub async fn find_user_by_username(db: &Db, tenant_name: &str, username: &str) -> Result<Option<UserRow>, StoreError> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = (SELECT id FROM tenants WHERE name = $1) AND username = $2"
    );
    with_reader!(db, |pool| sqlx::query_as::<_, UserRow>(&sql)
        .bind(tenant_name)
        .bind(username)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

/// Opens a login session for a user found by [`find_user_by_username`].
pub async fn create_session(db: &Db, user: &UserRow, hash: &str, expires_at: i64, now: i64) -> Result<(), StoreError> {
    let (tenant_id, user_id) = (user.tenant_id, user.id);
    let token = NewToken {
        kind: MemberTokenKind::Session,
        name: &user.username,
        role: user.role,
        platform_admin: user.platform_admin,
        user_id: Some(user_id),
        expires_at: Some(expires_at),
    };
    let mut tx = db.begin().await?;
    insert_token(&mut tx, tenant_id, &token, hash, now).await?;
    tx.commit().await
}

/// Announces that repeated failed logins locked `user` until `until` (the lock itself lives in
/// the server's memory): a `user.locked` event of the user's tenant, through the outbox.
pub async fn record_user_locked(db: &Db, user: &UserRow, until: i64, now: i64) -> Result<(), StoreError> {
    let event = herd_domain::event::Event::UserLocked { user_id: user.id, username: user.username.clone(), until };
    let mut tx = db.begin().await?;
    tx.record(user.tenant_id, &event, now);
    tx.commit().await
}
