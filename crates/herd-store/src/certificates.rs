//! SQL for certificates, the CRL state and the CA pin.
//!
//! [`CertificateStore`] is bound to a [`TenantScope`] and binds its tenant id into every query:
//! the records are global in the seed, but herd keeps the tenant on each row so that a record of
//! another tenant cannot be read even by mistake. The free functions are the writes that run
//! inside a caller's transaction, and the global sweeps of the monitor (system principal).
//! Where the engines differ (`FOR UPDATE SKIP LOCKED`), the query is chosen next to it.

use sqlx::FromRow;

use herd_domain::status::{CertificateStatus, KeySource};
use herd_domain::Event;

// The status texts, for the SQL below (the enum is the source of truth; a test pins them).
const PENDING: &str = "pending";
const ACTIVE: &str = "active";
const EXPIRED: &str = "expired";
const REVOKED: &str = "revoked";
use crate::group::{Group, Pending};
use crate::samples::sqlite_values_sql;
use crate::Page;
use crate::TenantScope;
use crate::{classify, column, Db, Engine, StoreError, System, Tx, TxConn};
use crate::{with_reader, with_tx, with_writer};
use herd_domain::ids::{CertificateId, DeviceId, TenantId};

/// A certificate record as stored (DESIGN.md's fields plus the tenant).
#[derive(Debug, Clone, FromRow)]
pub struct CertificateRow {
    pub id: CertificateId,
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    /// Lowercase hex, without leading zero bytes.
    pub serial_number: String,
    /// Lowercase hex SHA-256 of the DER.
    pub fingerprint: String,
    pub subject: String,
    pub issuer: String,
    pub not_before: i64,
    pub not_after: i64,
    pub status: CertificateStatus,
    pub revoked_at: Option<i64>,
    pub revocation_reason: Option<String>,
    pub key_source: KeySource,
    pub replaced_by_id: Option<String>,
    pub created_at: i64,
}

const COLUMNS: &str = "id, tenant_id, device_id, serial_number, fingerprint, subject, issuer, not_before, not_after, \
                       status, revoked_at, revocation_reason, key_source, replaced_by_id, created_at";

/// The certificate PEM and where its private key is.
#[derive(Debug, Clone, FromRow)]
pub struct CertificateMaterial {
    pub certificate_pem: String,
    /// `file`, `database`, or `None` (a CSR certificate: herd never had the key).
    pub key_storage: Option<String>,
    pub private_key_sealed: Option<String>,
    pub private_key_digest: Option<String>,
}

/// Where a new record's private key is (filled in by the vault).
#[derive(Debug, Clone, Default)]
pub struct KeyColumns {
    pub key_storage: Option<&'static str>,
    pub private_key_sealed: Option<String>,
    pub private_key_digest: Option<String>,
}

/// Filters of `GET /certificates`.
#[derive(Debug, Clone, Default)]
pub struct CertificateFilter {
    pub status: Option<String>,
    /// Only certificates whose `notAfter` is in `(now, before]`.
    pub expiring: Option<(i64, i64)>,
    pub device_id: Option<DeviceId>,
}

/// The CRL as last published.
#[derive(Debug, Clone, FromRow)]
pub struct CrlState {
    pub crl_number: i64,
    pub this_update: Option<i64>,
    pub next_update: Option<i64>,
    pub der_base64: Option<String>,
    pub stale: bool,
}

/// The caller's tenant's certificate records.
pub struct CertificateStore<'s> {
    scope: &'s TenantScope,
    tenant: String,
}

impl<'s> CertificateStore<'s> {
    pub fn new(scope: &'s TenantScope) -> Self {
        Self { scope, tenant: scope.tenant_id().to_string() }
    }

    fn db(&self) -> &Db {
        self.scope.db()
    }

    pub async fn get(&self, id: CertificateId) -> Result<Option<CertificateRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE tenant_id = $1 AND id = $2");
        let id = id.to_string();
        // The writer: a record read right after it was written (renew, revoke) must be there.
        with_reader!(self.db(), |pool| sqlx::query_as::<_, CertificateRow>(&sql)
            .bind(&self.tenant)
            .bind(&id)
            .fetch_optional(pool)
            .await)
        .map_err(classify)
    }

    pub async fn by_fingerprint(&self, fingerprint: &str) -> Result<Option<CertificateRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM certificates WHERE tenant_id = $1 AND fingerprint = $2");
        with_reader!(self.db(), |pool| sqlx::query_as::<_, CertificateRow>(&sql)
            .bind(&self.tenant)
            .bind(fingerprint)
            .fetch_optional(pool)
            .await)
        .map_err(classify)
    }

    /// The device's current certificate: the newest one that is neither revoked, expired nor
    /// replaced.
    pub async fn current_for_device(&self, device_id: DeviceId) -> Result<Option<CertificateRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM certificates WHERE tenant_id = $1 AND device_id = $2 \
             AND status IN ('{PENDING}', '{ACTIVE}') AND replaced_by_id IS NULL ORDER BY id DESC LIMIT 1"
        );
        let device = device_id.to_string();
        with_reader!(self.db(), |pool| sqlx::query_as::<_, CertificateRow>(&sql)
            .bind(&self.tenant)
            .bind(&device)
            .fetch_optional(pool)
            .await)
        .map_err(classify)
    }

    pub async fn material(&self, id: CertificateId) -> Result<Option<CertificateMaterial>, StoreError> {
        let id = id.to_string();
        with_reader!(self.db(), |pool| sqlx::query_as::<_, CertificateMaterial>(
            "SELECT certificate_pem, key_storage, private_key_sealed, private_key_digest FROM certificates \
             WHERE tenant_id = $1 AND id = $2"
        )
        .bind(&self.tenant)
        .bind(&id)
        .fetch_optional(pool)
        .await)
        .map_err(classify)
    }

    /// Marks a server-generated key as delivered to its device; true only the first time
    /// (conditional, so two concurrent fetches cannot both get the key).
    pub async fn take_key_delivery(&self, id: CertificateId, now: i64) -> Result<bool, StoreError> {
        let id = id.to_string();
        let updated = with_writer!(self.db(), |pool| sqlx::query(
            "UPDATE certificates SET key_delivered_at = $1 WHERE tenant_id = $2 AND id = $3 AND key_delivered_at IS NULL"
        )
        .bind(now)
        .bind(&self.tenant)
        .bind(&id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(classify)?;
        Ok(updated == 1)
    }

    /// A device's certificates, oldest first, `page.limit + 1` rows.
    pub async fn list_for_device(&self, device_id: DeviceId, page: &Page) -> Result<Vec<CertificateRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM certificates WHERE tenant_id = $1 AND device_id = $2 AND ($3 IS NULL OR id > $3) \
             ORDER BY id LIMIT $4"
        );
        let device = device_id.to_string();
        let limit = i64::from(page.limit) + 1;
        with_reader!(self.db(), |pool| sqlx::query_as::<_, CertificateRow>(&sql)
            .bind(&self.tenant)
            .bind(&device)
            .bind(&page.after)
            .bind(limit)
            .fetch_all(pool)
            .await)
        .map_err(classify)
    }

    /// The tenant's certificates in the order they expire (then by id), `page.limit + 1` rows.
    /// The cursor is the last id; the page continues after that row's `(notAfter, id)`.
    pub async fn list(&self, filter: &CertificateFilter, page: &Page) -> Result<Vec<CertificateRow>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM certificates c WHERE c.tenant_id = $1");
        let mut texts: Vec<String> = Vec::new();
        let mut numbers: Vec<i64> = Vec::new();
        // Text parameters are $2.. then numbers; placeholders are numbered as they are bound.
        if let Some(status) = &filter.status {
            texts.push(status.clone());
            sql.push_str(&format!(" AND c.status = ${}", texts.len() + 1));
        }
        if let Some(device) = filter.device_id {
            texts.push(device.to_string());
            sql.push_str(&format!(" AND c.device_id = ${}", texts.len() + 1));
        }
        if let Some(after) = &page.after {
            texts.push(after.clone());
            let n = texts.len() + 1;
            sql.push_str(&format!(
                " AND (c.not_after, c.id) > (SELECT p.not_after, p.id FROM certificates p WHERE p.tenant_id = $1 AND p.id = ${n})"
            ));
        }
        let base = texts.len() + 1;
        if let Some((now, before)) = filter.expiring {
            numbers.push(now);
            numbers.push(before);
            sql.push_str(&format!(" AND c.not_after > ${} AND c.not_after <= ${}", base + 1, base + 2));
        }
        numbers.push(i64::from(page.limit) + 1);
        sql.push_str(&format!(" ORDER BY c.not_after, c.id LIMIT ${}", base + numbers.len()));
        with_reader!(self.db(), |pool| {
            let mut query = sqlx::query_as::<_, CertificateRow>(&sql).bind(&self.tenant);
            for text in &texts {
                query = query.bind(text);
            }
            for number in &numbers {
                query = query.bind(*number);
            }
            query.fetch_all(pool).await
        })
        .map_err(classify)
    }
}

/// Checks, inside the issuing transaction, that the device is (still) in the tenant, and on
/// PostgreSQL locks its row `FOR SHARE` until `tx` ends: a concurrent delete either waits for
/// `tx` and then revokes what it issued, or commits first and this answers false. On SQLite the
/// one writer connection already keeps a delete out of `tx`.
async fn lock_device(tx: &mut Tx, scope: &TenantScope, device_id: DeviceId) -> Result<bool, StoreError> {
    let lock = match scope.db().engine() {
        Engine::Sqlite => "",
        Engine::Postgres => " FOR SHARE",
    };
    let sql = format!("SELECT id FROM devices WHERE tenant_id = $1 AND id = $2{lock}");
    let found = with_tx!(tx, |conn| sqlx::query_scalar::<_, DeviceId>(&sql)
        .bind(scope.tenant_id())
        .bind(device_id)
        .fetch_optional(&mut *conn)
        .await)
    .map_err(classify)?;
    Ok(found.is_some())
}

/// The columns an issuance writes, in the order [`bind_issuance!`] binds them.
const INSERT_INTO: &str = "INSERT INTO certificates (id, tenant_id, device_id, serial_number, fingerprint, subject, \
    issuer, not_before, not_after, status, key_source, certificate_pem, key_storage, private_key_sealed, \
    private_key_digest, created_at) ";

/// Binds an [`Issuance`]'s [`INSERT_INTO`] columns to `$query`, in order (either engine).
macro_rules! bind_issuance {
    ($query:expr, $issuance:expr) => {{
        let issuance: &Issuance = $issuance;
        let r = &issuance.record;
        $query
            .bind(r.id)
            .bind(r.tenant_id)
            .bind(r.device_id)
            .bind(&r.serial_number)
            .bind(&r.fingerprint)
            .bind(&r.subject)
            .bind(&r.issuer)
            .bind(r.not_before)
            .bind(r.not_after)
            .bind(r.status)
            .bind(r.key_source)
            .bind(&issuance.certificate_pem)
            .bind(issuance.key.key_storage)
            .bind(&issuance.key.private_key_sealed)
            .bind(&issuance.key.private_key_digest)
            .bind(r.created_at)
    }};
}

/// Inserts one record. A duplicate serial or fingerprint (a 2^-126 event) is a unique violation.
async fn insert(tx: &mut Tx, issuance: &Issuance) -> Result<(), StoreError> {
    let sql = format!("{INSERT_INTO}VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)");
    with_tx!(tx, |conn| bind_issuance!(sqlx::query(&sql), issuance).execute(&mut *conn).await.map(|_| ()))
        .map_err(classify)
}

/// A new certificate to record with the events that announce it ([`record_issued`]).
#[derive(Debug)]
pub struct Issuance {
    pub record: CertificateRow,
    pub certificate_pem: String,
    pub key: KeyColumns,
    /// Recorded for the record's tenant at its `created_at`.
    pub events: Vec<Event>,
}

/// The most issuances one group writes (16 parameters a row on SQLite, well under its limit).
const ISSUE_GROUP: usize = 256;

/// The group commit of [`record_issued`].
pub(crate) type IssueGroup = Group<Issuance, Recorded>;

pub(crate) fn issue_group() -> IssueGroup {
    Group::new(ISSUE_GROUP)
}

/// Records a new certificate (not a renewal) of a device of the scope's tenant and its events,
/// committed before this returns; [`Recorded::NoDevice`], and nothing written, if the device
/// is not in the tenant (any more).
///
/// Concurrent issuances share a transaction ([`crate::group`]): at c=64 the one SQLite writer
/// was held ~0.9 ms a certificate for six round trips (BENCHMARKS.md, "CSR signing"); a group
/// pays them once. If a group's device check finds a device missing, or a row fails, the
/// group is rolled back and each issuance is written alone, so each gets its own answer.
pub async fn record_issued(scope: &TenantScope, mut issuance: Issuance) -> Result<Recorded, StoreError> {
    issuance.record.tenant_id = scope.tenant_id();
    let db = scope.db().clone();
    scope.db().issues.submit(issuance, move |jobs| write_issued(db.clone(), jobs)).await
}

/// What recording one issuance came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Done,
    /// The device is not in the tenant (any more); nothing was written.
    NoDevice,
    /// The certificate a renewal replaces was already renewed or revoked; nothing was written.
    AlreadyReplaced,
}

/// Records a renewal: `issuance` replaces `old` (of the same device), committed with its
/// events before this returns, or nothing written. Renewals are rare and not grouped.
pub async fn record_renewal(
    scope: &TenantScope,
    mut issuance: Issuance,
    old: CertificateId,
) -> Result<Recorded, StoreError> {
    issuance.record.tenant_id = scope.tenant_id();
    insert_one(scope.db(), &issuance, Some(old)).await
}

async fn write_issued(db: Db, jobs: Vec<Pending<Issuance, Recorded>>) {
    if jobs.len() > 1 {
        let issuances: Vec<&Issuance> = jobs.iter().map(|pending| &pending.job).collect();
        if let Ok(true) = insert_group(&db, &issuances).await {
            for pending in jobs {
                pending.answer(Ok(Recorded::Done));
            }
            return;
        }
    }
    for pending in jobs {
        let result = insert_one(&db, &pending.job, None).await;
        pending.answer(result);
    }
}

/// One issuance in its own transaction: the device proven (and on PostgreSQL locked) inside
/// it, the record, `replaces` marked replaced by it, its events, one commit.
async fn insert_one(db: &Db, issuance: &Issuance, replaces: Option<CertificateId>) -> Result<Recorded, StoreError> {
    let record = &issuance.record;
    let scope = TenantScope::new(db.clone(), record.tenant_id);
    let mut tx = db.begin().await?;
    if !lock_device(&mut tx, &scope, record.device_id).await? {
        return Ok(Recorded::NoDevice);
    }
    insert(&mut tx, issuance).await?;
    if let Some(old) = replaces {
        if !mark_replaced(&mut tx, &scope, old, record.id).await? {
            return Ok(Recorded::AlreadyReplaced);
        }
    }
    for event in &issuance.events {
        tx.record(record.tenant_id, event, record.created_at);
    }
    tx.commit().await?;
    Ok(Recorded::Done)
}

/// Writes every issuance in one transaction if every device is (still) there; Ok(false), with
/// nothing written, if one is not.
async fn insert_group(db: &Db, issuances: &[&Issuance]) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let all_there = match &mut tx.conn {
        TxConn::Sqlite(conn) => {
            // The device check is in the insert: a row whose device is gone is not inserted, and
            // a count short of the rows sent says so without returning rows across threads.
            let sql = sqlite_values_sql(
                &format!("{INSERT_INTO}SELECT * FROM (VALUES "),
                16,
                issuances.len(),
                ") AS v WHERE EXISTS (SELECT 1 FROM devices d WHERE d.tenant_id = v.column2 AND d.id = v.column3)",
            );
            let mut query = sqlx::query(&sql);
            for issuance in issuances {
                query = bind_issuance!(query, issuance);
            }
            let written = query.execute(&mut **conn).await.map_err(classify)?.rows_affected();
            written == issuances.len() as u64
        }
        TxConn::Postgres(conn) => {
            // Each device is locked `FOR SHARE` as [`lock_device`] does, before the insert.
            let mut devices: Vec<(String, String)> =
                issuances.iter().map(|i| (i.record.tenant_id.to_string(), i.record.device_id.to_string())).collect();
            devices.sort_unstable();
            devices.dedup();
            let (locked,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM (SELECT 1 FROM devices WHERE (tenant_id, id) IN \
                 (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) FOR SHARE) AS locked",
            )
            .bind(devices.iter().map(|(tenant, _)| tenant.as_str()).collect::<Vec<_>>())
            .bind(devices.iter().map(|(_, device)| device.as_str()).collect::<Vec<_>>())
            .fetch_one(&mut **conn)
            .await
            .map_err(classify)?;
            if locked != devices.len() as i64 {
                return Ok(false);
            }
            sqlx::query(&format!(
                "{INSERT_INTO}SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], \
                 $7::TEXT[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[], $11::TEXT[], $12::TEXT[], $13::TEXT[], \
                 $14::TEXT[], $15::TEXT[], $16::BIGINT[])"
            ))
            .bind(column(issuances, |i| i.record.id.to_string()))
            .bind(column(issuances, |i| i.record.tenant_id.to_string()))
            .bind(column(issuances, |i| i.record.device_id.to_string()))
            .bind(column(issuances, |i| i.record.serial_number.clone()))
            .bind(column(issuances, |i| i.record.fingerprint.clone()))
            .bind(column(issuances, |i| i.record.subject.clone()))
            .bind(column(issuances, |i| i.record.issuer.clone()))
            .bind(column(issuances, |i| i.record.not_before))
            .bind(column(issuances, |i| i.record.not_after))
            .bind(column(issuances, |i| i.record.status.as_str().to_string()))
            .bind(column(issuances, |i| i.record.key_source.as_str().to_string()))
            .bind(column(issuances, |i| i.certificate_pem.clone()))
            .bind(column(issuances, |i| i.key.key_storage.map(str::to_string)))
            .bind(column(issuances, |i| i.key.private_key_sealed.clone()))
            .bind(column(issuances, |i| i.key.private_key_digest.clone()))
            .bind(column(issuances, |i| i.record.created_at))
            .execute(&mut **conn)
            .await
            .map_err(classify)?;
            true
        }
    };
    if !all_there {
        return Ok(false);
    }
    for issuance in issuances {
        for event in &issuance.events {
            tx.record(issuance.record.tenant_id, event, issuance.record.created_at);
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// Marks `old` as replaced by `new`, only if it is not revoked and not already replaced: the
/// one statement that makes every renewal happen once, whichever instance or request races.
async fn mark_replaced(
    tx: &mut Tx,
    scope: &TenantScope,
    old: CertificateId,
    new: CertificateId,
) -> Result<bool, StoreError> {
    let sql = format!(
        "UPDATE certificates SET replaced_by_id = $1 WHERE tenant_id = $2 AND id = $3 \
         AND replaced_by_id IS NULL AND status <> '{REVOKED}'"
    );
    let (new, tenant, old) = (new.to_string(), scope.tenant_id().to_string(), old.to_string());
    let affected = with_tx!(tx, |conn| sqlx::query(&sql)
        .bind(&new)
        .bind(&tenant)
        .bind(&old)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(affected == 1)
}

/// Revokes one record unless it is revoked already; answers the revoked record.
pub async fn revoke(
    tx: &mut Tx,
    scope: &TenantScope,
    id: CertificateId,
    reason: &str,
    now: i64,
) -> Result<Option<CertificateRow>, StoreError> {
    let sql = format!(
        "UPDATE certificates SET status = '{REVOKED}', revoked_at = $1, revocation_reason = $2 \
         WHERE tenant_id = $3 AND id = $4 AND status <> '{REVOKED}' RETURNING {COLUMNS}"
    );
    let (tenant, id) = (scope.tenant_id().to_string(), id.to_string());
    with_tx!(tx, |conn| sqlx::query_as::<_, CertificateRow>(&sql)
        .bind(now)
        .bind(reason)
        .bind(&tenant)
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await)
    .map_err(classify)
}

/// Revokes a device's pending and active certificates; answers their ids.
pub async fn revoke_device(
    tx: &mut Tx,
    scope: &TenantScope,
    device_id: DeviceId,
    reason: &str,
    now: i64,
) -> Result<Vec<CertificateId>, StoreError> {
    let sql = format!(
        "UPDATE certificates SET status = '{REVOKED}', revoked_at = $1, revocation_reason = $2 \
         WHERE tenant_id = $3 AND device_id = $4 AND status IN ('{PENDING}', '{ACTIVE}') RETURNING id"
    );
    let (tenant, device) = (scope.tenant_id().to_string(), device_id.to_string());
    let ids: Vec<(CertificateId,)> = with_tx!(tx, |conn| sqlx::query_as(&sql)
        .bind(now)
        .bind(reason)
        .bind(&tenant)
        .bind(&device)
        .fetch_all(&mut *conn)
        .await)
    .map_err(classify)?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// A record the monitor moved, with what its event needs.
#[derive(Debug, Clone, FromRow)]
pub struct Transition {
    pub id: CertificateId,
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    pub not_after: i64,
}

/// Monitor: `pending → active` for certificates whose `notBefore` has come. No event.
pub async fn activate_due(db: &Db, _system: &System, now: i64) -> Result<u64, StoreError> {
    let sql = format!("UPDATE certificates SET status = '{ACTIVE}' WHERE status = '{PENDING}' AND not_before <= $1 AND not_after > $1");
    with_writer!(db, |pool| sqlx::query(&sql).bind(now).execute(pool).await.map(|r| r.rows_affected()))
        .map_err(classify)
}

/// Active certificates of every tenant whose `notAfter` falls in `[now, until)`: the
/// `herd_certificates_expiring` metric (served by the `(status, not_after)` index).
pub async fn count_expiring(db: &Db, now: i64, until: i64) -> Result<i64, StoreError> {
    let sql =
        format!("SELECT COUNT(*) FROM certificates WHERE status = '{ACTIVE}' AND not_after >= $1 AND not_after < $2");
    let (n,): (i64,) =
        with_reader!(db, |pool| sqlx::query_as(&sql).bind(now).bind(until).fetch_one(pool).await).map_err(classify)?;
    Ok(n)
}

/// Monitor: moves up to `limit` certificates past `notAfter` to `expired` inside `tx`. The
/// status condition is re-checked by the UPDATE itself, so two instances never expire (and
/// announce) the same certificate twice.
pub async fn expire_due(tx: &mut Tx, _system: &System, now: i64, limit: i64) -> Result<Vec<Transition>, StoreError> {
    let sql = format!(
        "UPDATE certificates SET status = '{EXPIRED}' WHERE id IN (SELECT id FROM certificates \
         WHERE status IN ('{PENDING}', '{ACTIVE}') AND not_after <= $1 ORDER BY not_after LIMIT $2) \
         AND status IN ('{PENDING}', '{ACTIVE}') RETURNING id, tenant_id, device_id, not_after"
    );
    with_tx!(tx, |conn| sqlx::query_as::<_, Transition>(&sql).bind(now).bind(limit).fetch_all(&mut *conn).await)
        .map_err(classify)
}

/// Monitor: claims up to `limit` active certificates that entered the warning window and
/// were not warned about; `warned_at` is set by the same conditional UPDATE (once each).
pub async fn warn_due(
    tx: &mut Tx,
    _system: &System,
    now: i64,
    warn_before: i64,
    limit: i64,
) -> Result<Vec<Transition>, StoreError> {
    let sql = format!(
        "UPDATE certificates SET warned_at = $1 WHERE id IN (SELECT id FROM certificates \
         WHERE status = '{ACTIVE}' AND warned_at IS NULL AND not_after > $1 AND not_after <= $2 ORDER BY not_after LIMIT $3) \
         AND warned_at IS NULL RETURNING id, tenant_id, device_id, not_after"
    );
    with_tx!(tx, |conn| sqlx::query_as::<_, Transition>(&sql)
        .bind(now)
        .bind(warn_before)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await)
    .map_err(classify)
}

/// Monitor: claims up to `limit` server-key certificates due for auto-renewal. The claim only
/// spreads work between instances (a claim older than `reclaim_before` is taken again, in case
/// its instance died); `mark_replaced` is what makes each renewal happen once.
pub async fn claim_renewals(
    db: &Db,
    _system: &System,
    now: i64,
    renew_before: i64,
    reclaim_before: i64,
    limit: i64,
) -> Result<Vec<Transition>, StoreError> {
    let due = format!(
        "status = '{ACTIVE}' AND key_source = 'server' AND replaced_by_id IS NULL AND not_after > $1 \
         AND not_after <= $2 AND (renewal_claimed_at IS NULL OR renewal_claimed_at < $3)"
    );
    let sql = match db.engine() {
        Engine::Sqlite => format!(
            "UPDATE certificates SET renewal_claimed_at = $1 WHERE id IN \
             (SELECT id FROM certificates WHERE {due} ORDER BY not_after LIMIT $4) \
             RETURNING id, tenant_id, device_id, not_after"
        ),
        Engine::Postgres => format!(
            "UPDATE certificates AS c SET renewal_claimed_at = $1 FROM \
             (SELECT id FROM certificates WHERE {due} ORDER BY not_after LIMIT $4 FOR UPDATE SKIP LOCKED) AS s \
             WHERE c.id = s.id RETURNING c.id, c.tenant_id, c.device_id, c.not_after"
        ),
    };
    with_writer!(db, |pool| sqlx::query_as::<_, Transition>(&sql)
        .bind(now)
        .bind(renew_before)
        .bind(reclaim_before)
        .bind(limit)
        .fetch_all(pool)
        .await)
    .map_err(classify)
}

/// Serial, revocation time and reason of every revoked certificate that has not expired
/// (an expired certificate may leave the CRL: RFC 5280 §3.3).
pub async fn revoked_entries(tx: &mut Tx, now: i64) -> Result<Vec<(String, i64, Option<String>)>, StoreError> {
    let sql = format!(
        "SELECT serial_number, revoked_at, revocation_reason FROM certificates \
         WHERE status = '{REVOKED}' AND revoked_at IS NOT NULL AND not_after > $1 ORDER BY revoked_at, id"
    );
    with_tx!(tx, |conn| sqlx::query_as::<_, (String, i64, Option<String>)>(&sql).bind(now).fetch_all(&mut *conn).await)
        .map_err(classify)
}

/// The CRL as last published.
pub async fn crl_state(db: &Db) -> Result<CrlState, StoreError> {
    with_reader!(db, |pool| sqlx::query_as::<_, CrlState>(
        "SELECT crl_number, this_update, next_update, der_base64, stale FROM certificate_crl WHERE id = 1"
    )
    .fetch_one(pool)
    .await)
    .map_err(classify)
}

/// Takes the next `cRLNumber` inside `tx` and clears `stale`. On PostgreSQL the UPDATE locks
/// the row until `tx` ends, so CRLs are signed one at a time and a concurrent revocation's
/// `mark_crl_stale` lands after this CRL (and causes the next one).
pub async fn next_crl_number(tx: &mut Tx) -> Result<i64, StoreError> {
    with_tx!(tx, |conn| sqlx::query_scalar::<_, i64>(
        "UPDATE certificate_crl SET crl_number = crl_number + 1, stale = FALSE WHERE id = 1 RETURNING crl_number"
    )
    .fetch_one(&mut *conn)
    .await)
    .map_err(classify)
}

/// Stores a signed CRL.
pub async fn save_crl(tx: &mut Tx, this_update: i64, next_update: i64, der_base64: &str) -> Result<(), StoreError> {
    with_tx!(tx, |conn| sqlx::query(
        "UPDATE certificate_crl SET this_update = $1, next_update = $2, der_base64 = $3 WHERE id = 1"
    )
    .bind(this_update)
    .bind(next_update)
    .bind(der_base64)
    .execute(&mut *conn)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(())
}

/// Marks the CRL out of date (in the transaction of a revocation).
pub async fn mark_crl_stale(tx: &mut Tx) -> Result<(), StoreError> {
    with_tx!(tx, |conn| sqlx::query("UPDATE certificate_crl SET stale = TRUE WHERE id = 1")
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(())
}

/// The fingerprint of the CA this database was pinned to, if any.
pub async fn pinned_ca(db: &Db) -> Result<Option<String>, StoreError> {
    with_reader!(db, |pool| sqlx::query_scalar::<_, String>(
        "SELECT fingerprint FROM certificate_authority WHERE id = 1"
    )
    .fetch_optional(pool)
    .await)
    .map_err(classify)
}

/// Pins the database to a CA unless it is pinned already (the first instance wins).
pub async fn pin_ca(db: &Db, fingerprint: &str, certificate_pem: &str, now: i64) -> Result<(), StoreError> {
    with_writer!(db, |pool| sqlx::query(
        "INSERT INTO certificate_authority (id, fingerprint, certificate_pem, created_at) VALUES (1, $1, $2, $3) \
         ON CONFLICT (id) DO NOTHING"
    )
    .bind(fingerprint)
    .bind(certificate_pem)
    .bind(now)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(())
}

/// Key-store migration: every record whose key is in `from`, oldest first.
pub async fn keys_stored_in(db: &Db, from: &str) -> Result<Vec<(String, String, String, bool)>, StoreError> {
    // (id, device_id, status, is current) — "current" = not replaced and not revoked/expired.
    let sql = format!(
        "SELECT id, device_id, status, (replaced_by_id IS NULL AND status IN ('{PENDING}', '{ACTIVE}')) \
         FROM certificates WHERE key_storage = $1 ORDER BY id"
    );
    with_reader!(db, |pool| sqlx::query_as::<_, (String, String, String, bool)>(&sql).bind(from).fetch_all(pool).await)
        .map_err(classify)
}

/// The material of one record, for the key-store migration (system principal).
pub async fn material_of(db: &Db, id: &str) -> Result<Option<CertificateMaterial>, StoreError> {
    with_reader!(db, |pool| sqlx::query_as::<_, CertificateMaterial>(
        "SELECT certificate_pem, key_storage, private_key_sealed, private_key_digest FROM certificates WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(pool)
    .await)
    .map_err(classify)
}

/// Records that a key moved to another store.
pub async fn set_key_columns(db: &Db, id: &str, key: &KeyColumns) -> Result<(), StoreError> {
    with_writer!(db, |pool| sqlx::query(
        "UPDATE certificates SET key_storage = $1, private_key_sealed = $2, private_key_digest = $3 WHERE id = $4"
    )
    .bind(key.key_storage)
    .bind(&key.private_key_sealed)
    .bind(&key.private_key_digest)
    .bind(id)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(())
}

/// The RFC 5280 reason recorded when a device's certificates die with it (herd-pki's
/// `RevocationReason::CessationOfOperation`; a server test pins the two together).
pub const DELETED_DEVICE_REASON: &str = "cessationOfOperation";

/// Called by `DeviceStore::delete` inside its transaction: the deleted device's pending and
/// active certificates are revoked (`cessationOfOperation`) with their events, and the CRL is
/// marked stale so it is re-signed before it is served again.
pub(crate) async fn revoke_for_deleted_device(
    tx: &mut Tx,
    scope: &TenantScope,
    device_id: DeviceId,
    now: i64,
) -> Result<usize, StoreError> {
    let revoked = revoke_device(tx, scope, device_id, DELETED_DEVICE_REASON, now).await?;
    for id in &revoked {
        let event = Event::CertificateRevoked { certificate_id: *id, device_id, reason: DELETED_DEVICE_REASON };
        tx.record(scope.tenant_id(), &event, now);
    }
    if !revoked.is_empty() {
        mark_crl_stale(tx).await?;
    }
    Ok(revoked.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_status_texts_are_the_enum_texts() {
        assert_eq!(PENDING, CertificateStatus::Pending.as_str());
        assert_eq!(ACTIVE, CertificateStatus::Active.as_str());
        assert_eq!(EXPIRED, CertificateStatus::Expired.as_str());
        assert_eq!(REVOKED, CertificateStatus::Revoked.as_str());
    }

    use tokio::sync::oneshot;

    fn issuance(tenant_id: TenantId, device_id: DeviceId, n: u32) -> Issuance {
        let id = CertificateId::new();
        Issuance {
            record: CertificateRow {
                id,
                tenant_id,
                device_id,
                serial_number: format!("{n:032x}"),
                fingerprint: format!("{n:064x}"),
                subject: format!("CN=Device-{device_id}"),
                issuer: "CN=herd".into(),
                not_before: 0,
                not_after: 1,
                status: CertificateStatus::Active,
                revoked_at: None,
                revocation_reason: None,
                key_source: KeySource::Csr,
                replaced_by_id: None,
                created_at: 0,
            },
            certificate_pem: format!("pem {n}"),
            key: KeyColumns::default(),
            events: vec![Event::CertificateIssued {
                certificate_id: id,
                device_id,
                serial_number: format!("{n:032x}"),
                not_after: 1,
                key_source: KeySource::Csr,
            }],
        }
    }

    type Answer = oneshot::Receiver<Result<Recorded, StoreError>>;

    fn pending(issuance: Issuance) -> (Pending<Issuance, Recorded>, Answer) {
        let (answer, answered) = oneshot::channel();
        (Pending { job: issuance, answer }, answered)
    }

    /// A group is one transaction when every device is there; with one device gone, the group
    /// is written one by one: that issuance alone answers false, the others are stored, and
    /// every stored certificate has its event.
    #[tokio::test]
    async fn a_group_with_a_missing_device_answers_each_issuance_alone_on_sqlite() {
        a_group_with_a_missing_device_answers_each_issuance_alone(&crate::test_db::sqlite().await.db).await;
    }

    #[tokio::test]
    async fn a_group_with_a_missing_device_answers_each_issuance_alone_on_postgres() {
        if let Some(test_db) = crate::test_db::postgres().await {
            a_group_with_a_missing_device_answers_each_issuance_alone(&test_db.db).await;
        }
    }

    async fn a_group_with_a_missing_device_answers_each_issuance_alone(db: &Db) {
        let tenants = [crate::test_db::tenant(db).await, crate::test_db::tenant(db).await];
        let devices = [DeviceId::new(), DeviceId::new(), DeviceId::new()];
        // Devices 0 and 1 in tenant 0, device 2 in tenant 1.
        for (device, tenant) in devices.iter().zip([tenants[0], tenants[0], tenants[1]]) {
            let sql = "INSERT INTO devices (id, tenant_id, name, created_at, updated_at) VALUES ($1, $2, 'd', 0, 0)";
            with_writer!(db, |pool| sqlx::query(sql).bind(device).bind(tenant).execute(pool).await.map(|_| ()))
                .unwrap();
        }
        let count = |sql: &'static str| async move {
            with_writer!(db, |pool| sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await).unwrap()
        };

        // All there, two tenants: one group.
        let (a, a_answer) = pending(issuance(tenants[0], devices[0], 1));
        let (b, b_answer) = pending(issuance(tenants[0], devices[1], 2));
        let (c, c_answer) = pending(issuance(tenants[1], devices[2], 3));
        write_issued(db.clone(), vec![a, b, c]).await;
        for answer in [a_answer, b_answer, c_answer] {
            assert_eq!(answer.await.unwrap().unwrap(), Recorded::Done);
        }
        assert_eq!(count("SELECT COUNT(*) FROM certificates").await, 3);
        assert_eq!(count("SELECT COUNT(*) FROM events WHERE type = 'certificate.issued'").await, 3);

        // Device 1 is in the other tenant's group entry (wrong tenant) and device 3 does not
        // exist: both answer false, the rest are stored.
        let (kept, kept_answer) = pending(issuance(tenants[0], devices[0], 4));
        let (wrong_tenant, wrong_tenant_answer) = pending(issuance(tenants[1], devices[1], 5));
        let (gone, gone_answer) = pending(issuance(tenants[1], DeviceId::new(), 6));
        let (also_kept, also_kept_answer) = pending(issuance(tenants[1], devices[2], 7));
        write_issued(db.clone(), vec![kept, wrong_tenant, gone, also_kept]).await;
        assert_eq!(kept_answer.await.unwrap().unwrap(), Recorded::Done);
        assert_eq!(wrong_tenant_answer.await.unwrap().unwrap(), Recorded::NoDevice, "another tenant's device");
        assert_eq!(gone_answer.await.unwrap().unwrap(), Recorded::NoDevice);
        assert_eq!(also_kept_answer.await.unwrap().unwrap(), Recorded::Done);
        assert_eq!(count("SELECT COUNT(*) FROM certificates").await, 5);
        assert_eq!(count("SELECT COUNT(*) FROM events WHERE type = 'certificate.issued'").await, 5);

        // The group statement itself (not only the one-by-one fallback) writes and checks.
        let (x, y) = (issuance(tenants[0], devices[1], 8), issuance(tenants[1], devices[2], 9));
        assert!(insert_group(db, &[&x, &y]).await.unwrap(), "a group whose devices are all there");
        let (z, missing) = (issuance(tenants[0], devices[0], 10), issuance(tenants[0], devices[2], 11));
        assert!(!insert_group(db, &[&z, &missing]).await.unwrap(), "device 2 is not tenant 0's");
        assert_eq!(count("SELECT COUNT(*) FROM certificates").await, 7, "the failed group wrote nothing");
        assert_eq!(count("SELECT COUNT(*) FROM events WHERE type = 'certificate.issued'").await, 7);
        // Each tenant's events are numbered without gaps.
        assert_eq!(count("SELECT MAX(tenant_seq) - MIN(tenant_seq) + 1 - COUNT(*) FROM events GROUP BY tenant_id ORDER BY 1 DESC LIMIT 1").await, 0);
    }
}
