//! SQL for tenants: platform-level (a tenant is what a scope is bound to, so these take the
//! database, not a scope). Creating a tenant also creates its first admin token, in the same
//! transaction.

use herd_domain::ids::TenantId;
use herd_domain::status::{MemberTokenKind, Role};
use sqlx::FromRow;

use crate::credentials::{insert_token, NewToken};
use crate::{classify, with_reader, with_tx, Db, Page, StoreError};

/// A tenant as stored.
#[derive(Debug, Clone, FromRow)]
pub struct TenantRow {
    pub id: TenantId,
    pub name: String,
    pub created_at: i64,
}

/// Why a tenant could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateTenantError {
    #[error("a tenant named {0:?} already exists")]
    Duplicate(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates a tenant with an admin API token whose hash is `token_hash`. `platform_admin` marks
/// the token as the platform admin's too (only the first-start bootstrap does that).
pub async fn create(
    db: &Db,
    name: &str,
    token_hash: &str,
    platform_admin: bool,
    now: i64,
) -> Result<TenantRow, CreateTenantError> {
    let id = TenantId::new();
    let mut tx = db.begin().await?;
    with_tx!(&mut tx, |conn| sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(name)
        .bind(now)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(|e| match classify(e) {
        StoreError::Unique(_) => CreateTenantError::Duplicate(name.to_string()),
        other => CreateTenantError::Store(other),
    })?;
    let new = NewToken {
        kind: MemberTokenKind::Api,
        name: if platform_admin { "bootstrap" } else { "initial admin" },
        role: Role::Admin,
        platform_admin,
        user_id: None,
        expires_at: None,
    };
    insert_token(&mut tx, id, &new, token_hash, now).await?;
    tx.commit().await?;
    Ok(TenantRow { id, name: name.to_string(), created_at: now })
}

/// One page of tenants in id order (platform level); fetches `page.limit + 1` rows so the
/// caller can tell whether there is more.
pub async fn list(db: &Db, page: &Page) -> Result<Vec<TenantRow>, StoreError> {
    let after = page.after.as_deref().unwrap_or("");
    with_reader!(db, |pool| sqlx::query_as::<_, TenantRow>(
        "SELECT id, name, created_at FROM tenants WHERE id > $1 ORDER BY id LIMIT $2"
    )
    .bind(after)
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await)
    .map_err(classify)
}

/// How many tenants exist (the first-start bootstrap runs on zero).
pub async fn count(db: &Db) -> Result<i64, StoreError> {
    let (count,): (i64,) =
        with_reader!(db, |pool| sqlx::query_as("SELECT COUNT(*) FROM tenants").fetch_one(pool).await)
            .map_err(classify)?;
    Ok(count)
}
