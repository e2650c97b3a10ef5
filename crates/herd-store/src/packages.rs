//! SQL for software packages (OTA artifacts): the metadata of each uploaded APK, firmware image
//! or file, and which blob-store key holds its bytes. Every function binds the scope's tenant.
//! A package's `version_code` is monotonic per (tenant, name): [`create`] refuses a code that is
//! not above every existing one of the name, and serialises concurrent uploads of one name (one
//! SQLite writer; on PostgreSQL a transaction-scoped advisory lock on the name) so that two
//! racing uploads cannot both pass the check.

use sqlx::FromRow;

use herd_domain::ids::{PackageId, TenantId};
use herd_domain::status::PackageKind;
use herd_domain::Event;

use crate::{classify, with_reader, with_tx, Db, Json, Page, StoreError, TenantScope};

/// A package as stored.
#[derive(Debug, Clone, FromRow)]
pub struct PackageRow {
    pub id: PackageId,
    pub kind: PackageKind,
    pub name: String,
    pub version: String,
    pub version_code: i64,
    /// Device models it is for; empty: any model.
    pub target_models: Json<Vec<String>>,
    pub notes: Option<String>,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    pub size: i64,
    pub blob_key: String,
    pub content_type: String,
    pub created_by: String,
    pub created_at: i64,
}

impl PackageRow {
    /// Whether a device of `model` may have it: no target models, or `model` among them.
    pub fn targets(&self, model: Option<&str>) -> bool {
        self.target_models.0.is_empty() || model.is_some_and(|m| self.target_models.0.iter().any(|t| t == m))
    }
}

const COLUMNS: &str = "id, kind, name, version, version_code, target_models, notes, sha256, size, blob_key, \
    content_type, created_by, created_at";

/// A package to record (its blob is already stored).
#[derive(Debug, Clone)]
pub struct NewPackage<'a> {
    pub kind: PackageKind,
    pub name: &'a str,
    pub version: &'a str,
    pub version_code: i64,
    pub target_models: &'a [String],
    pub notes: Option<&'a str>,
    pub sha256: &'a str,
    pub size: i64,
    pub blob_key: &'a str,
    pub content_type: &'a str,
    pub created_by: &'a str,
}

/// What [`create`] did.
#[derive(Debug)]
pub enum Created {
    Created(Box<PackageRow>),
    /// A package of the name already has this version code or a higher one (the highest given).
    VersionNotAbove(i64),
}

/// Records a package with its `package.created` event, unless its version code is not above
/// every existing one of the same name in the tenant.
pub async fn create(scope: &TenantScope, package: &NewPackage<'_>, now: i64) -> Result<Created, StoreError> {
    let tenant = scope.tenant_id();
    let mut tx = scope.db().begin().await?;
    if let crate::TxConn::Postgres(conn) = &mut tx.conn {
        // Class 1011 ("packages"), keyed by tenant and name: uploads of one name queue here.
        sqlx::query("SELECT pg_advisory_xact_lock(1011, hashtext($1))")
            .bind(format!("{tenant}/{}", package.name))
            .execute(&mut **conn)
            .await
            .map_err(classify)?;
    }
    let (highest,): (Option<i64>,) = with_tx!(&mut tx, |conn| sqlx::query_as(
        "SELECT MAX(version_code) FROM packages WHERE tenant_id = $1 AND name = $2"
    )
    .bind(tenant)
    .bind(package.name)
    .fetch_one(&mut *conn)
    .await)
    .map_err(classify)?;
    if let Some(highest) = highest.filter(|h| *h >= package.version_code) {
        return Ok(Created::VersionNotAbove(highest));
    }
    let id = PackageId::new();
    let sql = format!(
        "INSERT INTO packages (tenant_id, {COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
         RETURNING {COLUMNS}"
    );
    let row: PackageRow = with_tx!(&mut tx, |conn| sqlx::query_as::<_, PackageRow>(&sql)
        .bind(tenant)
        .bind(id)
        .bind(package.kind)
        .bind(package.name)
        .bind(package.version)
        .bind(package.version_code)
        .bind(Json(package.target_models.to_vec()))
        .bind(package.notes)
        .bind(package.sha256)
        .bind(package.size)
        .bind(package.blob_key)
        .bind(package.content_type)
        .bind(package.created_by)
        .bind(now)
        .fetch_one(&mut *conn)
        .await)
    .map_err(classify)?;
    tx.record(
        tenant,
        &Event::PackageCreated {
            package_id: id,
            kind: row.kind,
            name: row.name.clone(),
            version: row.version.clone(),
            version_code: row.version_code,
            sha256: row.sha256.clone(),
            size: row.size,
        },
        now,
    );
    tx.commit().await?;
    Ok(Created::Created(Box::new(row)))
}

/// One package of the tenant.
pub async fn get(scope: &TenantScope, id: PackageId) -> Result<Option<PackageRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM packages WHERE tenant_id = $1 AND id = $2");
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, PackageRow>(&sql)
        .bind(scope.tenant_id())
        .bind(id)
        .fetch_optional(pool)
        .await)
    .map_err(classify)
}

/// A package for a signed download link (`GET /downloads/packages/{id}`), which carries no
/// bearer token: the link is the credential, so this is a credential lookup (like a token-hash
/// lookup) and reads by id across tenants. It answers the row only when `signature_holds`
/// accepts it, given the row's own tenant (the link's signature covers the tenant, the id and
/// the content's SHA-256, so it must be checked against what is stored, never against the
/// request); otherwise `None`, exactly as for a missing package.
pub async fn find_for_signed_link(
    db: &Db,
    id: PackageId,
    signature_holds: impl FnOnce(TenantId, &PackageRow) -> bool,
) -> Result<Option<PackageRow>, StoreError> {
    #[derive(FromRow)]
    struct Owned {
        tenant_id: TenantId,
        #[sqlx(flatten)]
        row: PackageRow,
    }
    let sql = format!("SELECT tenant_id, {COLUMNS} FROM packages WHERE id = $1");
    let found = with_reader!(db, |pool| sqlx::query_as::<_, Owned>(&sql).bind(id).fetch_optional(pool).await)
        .map_err(classify)?;
    Ok(found.filter(|owned| signature_holds(owned.tenant_id, &owned.row)).map(|owned| owned.row))
}

/// The tenant's packages (only those named `name` when given), oldest first; `limit + 1` rows.
pub async fn list(scope: &TenantScope, name: Option<&str>, page: &Page) -> Result<Vec<PackageRow>, StoreError> {
    let after = page.after.as_deref().unwrap_or("");
    let sql = format!(
        "SELECT {COLUMNS} FROM packages WHERE tenant_id = $1 AND id > $2 AND ($3 IS NULL OR name = $3) \
         ORDER BY id LIMIT $4"
    );
    with_reader!(scope.db(), |pool| sqlx::query_as::<_, PackageRow>(&sql)
        .bind(scope.tenant_id())
        .bind(after)
        .bind(name)
        .bind(i64::from(page.limit) + 1)
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// Deletes a package with its `package.deleted` event. Answers the deleted row and whether
/// another package of the tenant still uses its blob (then the blob must be kept); `None` when
/// the tenant has no such package.
pub async fn delete(scope: &TenantScope, id: PackageId, now: i64) -> Result<Option<(PackageRow, bool)>, StoreError> {
    let tenant = scope.tenant_id();
    let mut tx = scope.db().begin().await?;
    let sql = format!("DELETE FROM packages WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}");
    let row: Option<PackageRow> = with_tx!(&mut tx, |conn| sqlx::query_as::<_, PackageRow>(&sql)
        .bind(tenant)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await)
    .map_err(classify)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (shared,): (i64,) = with_tx!(&mut tx, |conn| sqlx::query_as(
        "SELECT COUNT(*) FROM packages WHERE tenant_id = $1 AND blob_key = $2"
    )
    .bind(tenant)
    .bind(&row.blob_key)
    .fetch_one(&mut *conn)
    .await)
    .map_err(classify)?;
    tx.record(
        tenant,
        &Event::PackageDeleted { package_id: id, name: row.name.clone(), version_code: row.version_code },
        now,
    );
    tx.commit().await?;
    Ok(Some((row, shared > 0)))
}

/// The highest version code of the tenant's packages named `name`, if any.
pub async fn highest_version_code(scope: &TenantScope, name: &str) -> Result<Option<i64>, StoreError> {
    let (highest,): (Option<i64>,) = with_reader!(scope.db(), |pool| sqlx::query_as(
        "SELECT MAX(version_code) FROM packages WHERE tenant_id = $1 AND name = $2"
    )
    .bind(scope.tenant_id())
    .bind(name)
    .fetch_one(pool)
    .await)
    .map_err(classify)?;
    Ok(highest)
}

/// Whether a package of the tenant has its bytes under `blob_key`.
pub async fn blob_in_use(scope: &TenantScope, blob_key: &str) -> Result<bool, StoreError> {
    let (n,): (i64,) = with_reader!(scope.db(), |pool| sqlx::query_as(
        "SELECT COUNT(*) FROM packages WHERE tenant_id = $1 AND blob_key = $2"
    )
    .bind(scope.tenant_id())
    .bind(blob_key)
    .fetch_one(pool)
    .await)
    .map_err(classify)?;
    Ok(n > 0)
}
