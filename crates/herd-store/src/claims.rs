//! SQL for device claims and registration challenges (security finding 1).
//!
//! A registration whose identifiers match an existing device but that does not prove it is
//! that device leaves the device alone and becomes a claim: the claimant's new token is kept
//! here, hashed, and only becomes the device's token when an operator approves (or the tenant's
//! policy does, for a device never seen online). A challenge is a single-use nonce a device
//! signs with its registered key to prove possession on re-registration.

use sqlx::FromRow;

use herd_domain::ids::{ClaimId, DeviceId, EnrollmentTokenId, TenantId};
use herd_domain::status::{ClaimPolicy, ClaimStatus};
use herd_domain::Event;

use crate::devices::{reregister_in, DeviceRow, Identifiers};
use crate::{classify, with_reader, with_tx, with_writer, Db, Page, StoreError, TenantScope, Tx};

/// A claim as stored (the token hash stays inside the store).
#[derive(Debug, Clone, FromRow)]
pub struct ClaimRow {
    pub id: ClaimId,
    pub device_id: DeviceId,
    pub status: ClaimStatus,
    pub serial_number: Option<String>,
    pub mac_address: Option<String>,
    pub android_id: Option<String>,
    pub name: Option<String>,
    pub model: Option<String>,
    pub manufacturer: Option<String>,
    pub os_version: Option<String>,
    pub app_version: Option<String>,
    pub public_key: Option<String>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
}

const COLUMNS: &str = "id, device_id, status, serial_number, mac_address, android_id, name, model, manufacturer, \
                       os_version, app_version, public_key, created_at, decided_at, decided_by";

/// Everything a registration presented, as a claim keeps it.
#[derive(Debug, Clone)]
pub struct Claimant<'a> {
    pub ids: &'a Identifiers,
    pub info: &'a crate::devices::DeviceInfo,
    pub public_key: Option<&'a str>,
    pub token_hash: &'a str,
    pub enrollment: Option<EnrollmentTokenId>,
}

/// Records a claim on `device_id` in `status` (pending, or approved by the tenant's policy).
pub(crate) async fn insert(
    tx: &mut Tx,
    tenant: TenantId,
    device_id: DeviceId,
    claimant: &Claimant<'_>,
    status: ClaimStatus,
    decided_by: Option<&str>,
    now: i64,
) -> Result<ClaimRow, StoreError> {
    let id = ClaimId::new();
    let decided_at = decided_by.map(|_| now);
    let sql = format!(
        "INSERT INTO device_claims (id, tenant_id, device_id, status, token_hash, serial_number, mac_address, android_id, \
         name, model, manufacturer, os_version, app_version, public_key, enrollment_token_id, created_at, decided_at, decided_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) RETURNING {COLUMNS}"
    );
    let info = claimant.info;
    with_tx!(tx, |conn| sqlx::query_as::<_, ClaimRow>(&sql)
        .bind(id)
        .bind(tenant)
        .bind(device_id)
        .bind(status)
        .bind(claimant.token_hash)
        .bind(&claimant.ids.serial_number)
        .bind(&claimant.ids.mac_address)
        .bind(&claimant.ids.android_id)
        .bind(&info.name)
        .bind(&info.model)
        .bind(&info.manufacturer)
        .bind(&info.os_version)
        .bind(&info.app_version)
        .bind(claimant.public_key)
        .bind(claimant.enrollment)
        .bind(now)
        .bind(decided_at)
        .bind(decided_by)
        .fetch_one(&mut *conn)
        .await)
    .map_err(classify)
}

/// The tenant's rule for claims (read inside the registration's transaction).
pub(crate) async fn policy(tx: &mut Tx, tenant: TenantId) -> Result<ClaimPolicy, StoreError> {
    let (policy,): (ClaimPolicy,) =
        with_tx!(tx, |conn| sqlx::query_as("SELECT claim_policy FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_one(&mut *conn)
            .await)
        .map_err(classify)?;
    Ok(policy)
}

/// Stores a fresh challenge for the scope's tenant, and forgets expired ones (of any tenant:
/// they are useless and nobody else cleans them up).
pub async fn create_challenge(
    scope: &TenantScope,
    challenge: &str,
    expires_at: i64,
    now: i64,
) -> Result<(), StoreError> {
    let mut tx = scope.db().begin().await?;
    with_tx!(&mut tx, |conn| sqlx::query("DELETE FROM registration_challenges WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    with_tx!(&mut tx, |conn| sqlx::query(
        "INSERT INTO registration_challenges (challenge, tenant_id, expires_at) VALUES ($1, $2, $3)"
    )
    .bind(challenge)
    .bind(scope.tenant_id())
    .bind(expires_at)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    tx.commit().await
}

/// Uses up a challenge of `tenant` that has not expired; false if there is none.
pub(crate) async fn consume_challenge(
    tx: &mut Tx,
    tenant: TenantId,
    challenge: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let deleted = with_tx!(tx, |conn| sqlx::query(
        "DELETE FROM registration_challenges WHERE challenge = $1 AND tenant_id = $2 AND expires_at > $3"
    )
    .bind(challenge)
    .bind(tenant)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(deleted == 1)
}

/// One page of the scope's claims in id order (ids are time-ordered UUIDs, so oldest first),
/// optionally of one status; fetches `page.limit + 1` rows.
pub async fn list(scope: &TenantScope, status: Option<ClaimStatus>, page: &Page) -> Result<Vec<ClaimRow>, StoreError> {
    let after = page.after.as_deref().unwrap_or("");
    let sql = format!(
        "SELECT {COLUMNS} FROM device_claims WHERE tenant_id = $1 AND id > $2 AND ($3 IS NULL OR status = $3) \
         ORDER BY id LIMIT $4"
    );
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, ClaimRow>(&sql)
        .bind(scope.tenant_id())
        .bind(after)
        .bind(status.map(|s| s.as_str()))
        .bind(i64::from(page.limit) + 1)
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// One claim of the scope's tenant.
pub async fn get(scope: &TenantScope, id: ClaimId) -> Result<Option<ClaimRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM device_claims WHERE tenant_id = $1 AND id = $2");
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, ClaimRow>(&sql)
        .bind(scope.tenant_id())
        .bind(id)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

/// What deciding a claim did.
#[derive(Debug)]
pub enum Decision {
    /// Decided now; for an approval, with the device as it is now.
    Decided(ClaimRow, Option<Box<DeviceRow>>),
    /// No such claim in the tenant.
    NotFound,
    /// Already approved or rejected.
    AlreadyDecided(ClaimRow),
}

/// Approves a pending claim: the claimant's token becomes the device's token (the device's
/// previous token stops working), and what the claimant said about itself is applied as a
/// proven re-registration would apply it.
pub async fn approve(scope: &TenantScope, id: ClaimId, decided_by: &str, now: i64) -> Result<Decision, StoreError> {
    decide(scope, id, ClaimStatus::Approved, decided_by, now).await
}

/// Rejects a pending claim; the device is not touched and the claimant's token never works.
pub async fn reject(scope: &TenantScope, id: ClaimId, decided_by: &str, now: i64) -> Result<Decision, StoreError> {
    decide(scope, id, ClaimStatus::Rejected, decided_by, now).await
}

#[derive(Debug, FromRow)]
struct DecidedRow {
    #[sqlx(flatten)]
    claim: ClaimRow,
    token_hash: String,
}

async fn decide(
    scope: &TenantScope,
    id: ClaimId,
    to: ClaimStatus,
    decided_by: &str,
    now: i64,
) -> Result<Decision, StoreError> {
    let tenant = scope.tenant_id();
    let mut tx = scope.db().begin().await?;
    // Conditional on `pending`: two operators (or instances) deciding at once make one decision.
    let sql = format!(
        "UPDATE device_claims SET status = $1, decided_at = $2, decided_by = $3 \
         WHERE tenant_id = $4 AND id = $5 AND status = 'pending' RETURNING {COLUMNS}, token_hash"
    );
    let decided = with_tx!(&mut tx, |conn| sqlx::query_as::<_, DecidedRow>(&sql)
        .bind(to)
        .bind(now)
        .bind(decided_by)
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await)
    .map_err(classify)?;
    let Some(DecidedRow { claim, token_hash }) = decided else {
        drop(tx);
        return Ok(match get(scope, id).await? {
            Some(claim) => Decision::AlreadyDecided(claim),
            None => Decision::NotFound,
        });
    };
    let device_id = claim.device_id;
    let decided_by = decided_by.to_string();
    let device = if to == ClaimStatus::Approved {
        let ids = Identifiers {
            serial_number: claim.serial_number.clone(),
            mac_address: claim.mac_address.clone(),
            android_id: claim.android_id.clone(),
        };
        let info = crate::devices::DeviceInfo {
            name: claim.name.clone(),
            model: claim.model.clone(),
            manufacturer: claim.manufacturer.clone(),
            os_version: claim.os_version.clone(),
            app_version: claim.app_version.clone(),
            ..Default::default()
        };
        let row = reregister_in(&mut tx, scope, device_id, &ids, &info, claim.public_key.as_deref(), &token_hash, now)
            .await?;
        tx.record(tenant, &Event::DeviceClaimApproved { claim_id: id, device_id, decided_by }, now);
        tx.record(tenant, &Event::DeviceReregistered { device_id }, now);
        Some(row)
    } else {
        tx.record(tenant, &Event::DeviceClaimRejected { claim_id: id, device_id, decided_by }, now);
        None
    };
    tx.commit().await?;
    Ok(Decision::Decided(claim, device.map(Box::new)))
}

/// Cross-tenant by necessity, like the device-token lookup it backs up: whether a device token
/// that matched no device belongs to a pending claim (the device is told to wait, not that its
/// token is wrong).
pub async fn pending_for_token_hash(db: &Db, hash: &str) -> Result<Option<ClaimId>, StoreError> {
    let row: Option<(ClaimId,)> = with_reader!(db, |pool| sqlx::query_as(
        "SELECT id FROM device_claims WHERE token_hash = $1 AND status = 'pending'"
    )
    .bind(hash)
    .fetch_optional(pool)
    .await)
    .map_err(classify)?;
    Ok(row.map(|(id,)| id))
}

/// Sets the tenant's claim policy.
pub async fn set_policy(scope: &TenantScope, policy: ClaimPolicy) -> Result<(), StoreError> {
    // cache: untouched — no cached credential holds or depends on the claim policy.
    with_writer!(scope.db(), |pool| sqlx::query("UPDATE tenants SET claim_policy = $1 WHERE id = $2")
        .bind(policy)
        .bind(scope.tenant_id())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(())
}

/// The tenant's claim policy.
pub async fn get_policy(scope: &TenantScope) -> Result<ClaimPolicy, StoreError> {
    let (policy,): (ClaimPolicy,) =
        with_reader!(scope.db(), |pool| sqlx::query_as("SELECT claim_policy FROM tenants WHERE id = $1")
            .bind(scope.tenant_id())
            .fetch_one(pool)
            .await)
        .map_err(classify)?;
    Ok(policy)
}
