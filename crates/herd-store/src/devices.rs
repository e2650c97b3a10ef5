//! SQL for devices. Every method of [`DeviceStore`] binds the scope's tenant id; the two free
//! functions at the bottom are the documented cross-tenant exceptions (token lookup, counts
//! for `/metrics`).

use sqlx::FromRow;

use crate::Json;
use herd_domain::status::DeviceStatus;

use crate::cache::{Cached, Touch};
use crate::claims::{ClaimRow, Claimant};
use crate::credentials::consume_enrollment_use;
use crate::Page;
use crate::TenantScope;
use crate::{classify, Db, Engine, StoreError, Tx};
use crate::{with_reader, with_tx};
use herd_domain::ids::{DeviceId, TenantId};
use herd_domain::status::{ClaimPolicy, ClaimStatus};
use herd_domain::Event;

/// A device row as stored.
#[derive(Debug, Clone, FromRow)]
pub struct DeviceRow {
    pub id: DeviceId,
    pub name: String,
    pub serial_number: Option<String>,
    pub mac_address: Option<String>,
    pub android_id: Option<String>,
    pub model: Option<String>,
    pub manufacturer: Option<String>,
    pub os_version: Option<String>,
    pub app_version: Option<String>,
    pub firmware_version: Option<String>,
    pub ip_address: Option<String>,
    pub location: Option<String>,
    /// Stored as a JSON array of strings.
    pub tags: Json<Vec<String>>,
    pub status: DeviceStatus,
    pub last_seen: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub(crate) const COLUMNS: &str =
    "id, name, serial_number, mac_address, android_id, model, manufacturer, os_version, app_version, \
                       firmware_version, ip_address, location, tags, status, last_seen, created_at, updated_at";

/// The hardware identifiers a device is known by (at least one is set when registering).
#[derive(Debug, Clone, Default)]
pub struct Identifiers {
    pub serial_number: Option<String>,
    pub mac_address: Option<String>,
    pub android_id: Option<String>,
}

/// Descriptive fields that a registration or an admin sets.
#[derive(Debug, Clone, Default)]
pub struct DeviceInfo {
    pub name: Option<String>,
    pub model: Option<String>,
    pub manufacturer: Option<String>,
    pub os_version: Option<String>,
    pub app_version: Option<String>,
    pub location: Option<String>,
    pub tags: Vec<String>,
}

/// What a connecting device reports about itself.
#[derive(Debug, Clone, Default)]
pub struct ConnectReport {
    pub ip_address: Option<String>,
    pub app_version: Option<String>,
    pub os_version: Option<String>,
    pub firmware_version: Option<String>,
}

/// A partial update: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct DevicePatch {
    pub name: Option<String>,
    pub serial_number: Option<Option<String>>,
    pub mac_address: Option<Option<String>>,
    pub android_id: Option<Option<String>>,
    pub model: Option<Option<String>>,
    pub manufacturer: Option<Option<String>>,
    pub location: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
}

/// List filters.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub status: Option<DeviceStatus>,
    /// Case-insensitive substring of the name or serial number.
    pub q: Option<String>,
    pub tag: Option<String>,
}

/// The outcome of an auto-registration.
#[derive(Debug)]
pub enum Registration {
    /// A new device.
    Created(DeviceRow),
    /// The existing device, re-registered with proof (or approved by the tenant's policy).
    Existing(DeviceRow),
    /// The existing device was not touched: a pending claim waits for an operator.
    Claimed(ClaimRow),
}

/// How a registration that matches an existing device proves it is that device.
pub enum Proof<'a> {
    /// None: the registration becomes a claim (or the tenant's policy approves it).
    None,
    /// A member with at least `operator` registers: trusted as an approval would be.
    Operator,
    /// The hash of the device token the caller presented.
    Token(&'a str),
    /// A signature over a single-use challenge; `verify` checks it against the device's
    /// registered public key (PEM).
    Signature { challenge: &'a str, verify: &'a (dyn Fn(&str) -> bool + Sync) },
}

/// Who decided a claim when the tenant's policy did.
const POLICY: &str = "policy";

/// What the registration probe reads of a matching device.
#[derive(Debug, FromRow)]
struct Known {
    id: DeviceId,
    token_hash: Option<String>,
    public_key: Option<String>,
    last_seen: Option<i64>,
}

/// The registration probe: the devices of tenant `$1` that any of the identifiers `$2`–`$4`
/// match. One indexed probe per identifier: an OR across the three columns cannot use their
/// unique indexes and scans the tenant (registration slowed to ~60/s at 50,000 devices).
/// UNION also folds a device found by two identifiers into one row.
///
/// On PostgreSQL it runs unprepared (`persistent(false)`), so it is planned with its values each
/// time: a prepared statement switches to a generic plan after five runs, and one made while
/// `devices` was empty is a sequential scan that the connection keeps until the next ANALYZE
/// (measured: 10–25 ms a probe at 15,000 devices, registrations falling from ~1,100/s to ~650/s
/// within a 20-second run on a fresh database; BENCHMARKS.md, "Registrations in groups").
fn probe_sql() -> String {
    const PROBE: &str = "id, token_hash, public_key, last_seen";
    format!(
        "SELECT {PROBE} FROM devices WHERE tenant_id = $1 AND serial_number = $2 \
         UNION SELECT {PROBE} FROM devices WHERE tenant_id = $1 AND mac_address = $3 \
         UNION SELECT {PROBE} FROM devices WHERE tenant_id = $1 AND android_id = $4 LIMIT 3"
    )
}

/// A device about to be inserted: its row exactly as it will read back (offline, never seen),
/// and the credentials only the store keeps.
#[derive(Debug)]
pub(crate) struct NewDevice {
    pub(crate) tenant: TenantId,
    pub(crate) row: DeviceRow,
    pub(crate) token_hash: String,
    pub(crate) public_key: Option<String>,
}

/// The columns [`bind_new_device!`] binds, in its order (`last_seen` stays NULL).
pub(crate) const INSERT_COLUMNS: &str = "id, tenant_id, name, serial_number, mac_address, android_id, model, \
     manufacturer, os_version, app_version, location, tags, status, token_hash, created_at, updated_at, public_key";

/// Binds a [`NewDevice`]'s 17 [`INSERT_COLUMNS`] to `$query`, in order.
macro_rules! bind_new_device {
    ($query:expr, $new:expr) => {{
        let new: &NewDevice = $new;
        let row = &new.row;
        $query
            .bind(row.id)
            .bind(new.tenant)
            .bind(&row.name)
            .bind(&row.serial_number)
            .bind(&row.mac_address)
            .bind(&row.android_id)
            .bind(&row.model)
            .bind(&row.manufacturer)
            .bind(&row.os_version)
            .bind(&row.app_version)
            .bind(&row.location)
            .bind(&row.tags)
            .bind(row.status)
            .bind(&new.token_hash)
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(&new.public_key)
    }};
}
pub(crate) use bind_new_device;

impl NewDevice {
    pub(crate) fn new(
        tenant: TenantId,
        ids: &Identifiers,
        info: &DeviceInfo,
        name: String,
        token_hash: &str,
        public_key: Option<&str>,
        now: i64,
    ) -> NewDevice {
        let row = DeviceRow {
            id: DeviceId::new(),
            name,
            serial_number: ids.serial_number.clone(),
            mac_address: ids.mac_address.clone(),
            android_id: ids.android_id.clone(),
            model: info.model.clone(),
            manufacturer: info.manufacturer.clone(),
            os_version: info.os_version.clone(),
            app_version: info.app_version.clone(),
            firmware_version: None,
            ip_address: None,
            location: info.location.clone(),
            tags: Json(info.tags.clone()),
            status: DeviceStatus::Offline,
            last_seen: None,
            created_at: now,
            updated_at: now,
        };
        NewDevice { tenant, row, token_hash: token_hash.to_string(), public_key: public_key.map(str::to_string) }
    }

    /// A first auto-registration: named by the device, or else by its first identifier.
    fn registering(tenant: TenantId, claimant: &Claimant<'_>, now: i64) -> NewDevice {
        let (ids, info) = (claimant.ids, claimant.info);
        let name = info
            .name
            .clone()
            .or_else(|| ids.serial_number.clone())
            .or_else(|| ids.android_id.clone())
            .or_else(|| ids.mac_address.clone())
            .unwrap_or_else(|| "device".into());
        NewDevice::new(tenant, ids, info, name, claimant.token_hash, claimant.public_key, now)
    }

    pub(crate) fn registered_event(&self) -> Event {
        Event::DeviceRegistered { device_id: self.row.id, name: self.row.name.clone(), via: "auto-register" }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the identifiers match more than one device")]
    Ambiguous,
    /// A proof was presented and failed; nothing changed.
    #[error("{0}")]
    ProofFailed(&'static str),
    #[error("the enrollment token has expired, been revoked or used up")]
    EnrollmentExhausted,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The tenant's devices.
pub struct DeviceStore<'s> {
    scope: &'s TenantScope,
    tenant: TenantId,
}

impl<'s> DeviceStore<'s> {
    pub fn new(scope: &'s TenantScope) -> Self {
        Self { scope, tenant: scope.tenant_id() }
    }

    fn db(&self) -> &Db {
        self.scope.db()
    }

    pub async fn get(&self, id: DeviceId) -> Result<Option<DeviceRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM devices WHERE tenant_id = $1 AND id = $2");
        with_reader!(self.db(), |pool| sqlx::query_as::<_, DeviceRow>(&sql)
            .bind(self.tenant)
            .bind(id)
            .fetch_optional(pool)
            .await)
        .map_err(classify)
    }

    /// Reads a device inside `tx`, seeing the transaction's own writes (read-after-write goes
    /// through the transaction, never through another connection).
    pub async fn get_in(&self, tx: &mut Tx, id: DeviceId) -> Result<Option<DeviceRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM devices WHERE tenant_id = $1 AND id = $2");
        with_tx!(tx, |conn| sqlx::query_as::<_, DeviceRow>(&sql)
            .bind(self.tenant)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await)
        .map_err(classify)
    }

    /// One page of devices in id (creation) order; fetches `page.limit + 1` rows so the caller
    /// can tell whether there is more.
    pub async fn list(&self, filter: &DeviceFilter, page: &Page) -> Result<Vec<DeviceRow>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM devices d WHERE d.tenant_id = $1");
        let mut args: Vec<String> = Vec::new();
        if let Some(status) = &filter.status {
            args.push(status.as_str().to_string());
            sql.push_str(&format!(" AND d.status = ${}", args.len() + 1));
        }
        if let Some(q) = &filter.q {
            let escaped = q.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            args.push(format!("%{escaped}%"));
            let n = args.len() + 1;
            // The pattern is lowercased; SQLite's LIKE already ignores ASCII case (and its
            // LOWER changes nothing else), so it compares the columns as they are: half the
            // time of LOWER on every row of the scan (0.38 s against 0.77 s over 1,000,000
            // devices). PostgreSQL's LIKE is case-sensitive.
            let (name, serial) = match self.db().engine() {
                Engine::Sqlite => ("d.name", "COALESCE(d.serial_number, '')"),
                Engine::Postgres => ("LOWER(d.name)", "LOWER(COALESCE(d.serial_number, ''))"),
            };
            sql.push_str(&format!(" AND ({name} LIKE ${n} ESCAPE '\\' OR {serial} LIKE ${n} ESCAPE '\\')"));
        }
        if let Some(tag) = &filter.tag {
            args.push(tag.clone());
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM device_tags t WHERE t.tenant_id = d.tenant_id AND t.device_id = d.id AND t.tag = ${})",
                args.len() + 1
            ));
        }
        if let Some(after) = &page.after {
            args.push(after.clone());
            sql.push_str(&format!(" AND d.id > ${}", args.len() + 1));
        }
        sql.push_str(&format!(" ORDER BY d.id LIMIT ${}", args.len() + 2));
        let limit = i64::from(page.limit) + 1;
        with_reader!(self.db(), |pool| {
            let mut query = sqlx::query_as::<_, DeviceRow>(&sql).bind(self.tenant);
            for arg in &args {
                query = query.bind(arg);
            }
            query.bind(limit).fetch_all(pool).await
        })
        .map_err(classify)
    }

    /// An admin creates a device (`POST /devices`): offline, never seen.
    pub async fn create(
        &self,
        ids: &Identifiers,
        info: &DeviceInfo,
        name: &str,
        token_hash: &str,
        now: i64,
    ) -> Result<DeviceRow, StoreError> {
        let mut tx = self.db().begin().await?;
        let new = NewDevice::new(self.tenant, ids, info, name.to_string(), token_hash, None, now);
        self.insert(&mut tx, &new).await?;
        tx.record(
            self.scope.tenant_id(),
            &Event::DeviceRegistered { device_id: new.row.id, name: name.to_string(), via: "admin" },
            now,
        );
        tx.commit().await?;
        Ok(new.row)
    }

    /// Auto-registration (`POST /devices/auto-register`). New identifiers make a new device.
    /// Identifiers of an existing device re-register it only with `proof` that the caller is
    /// that device; without proof the device is not touched and the registration becomes a
    /// claim (approved at once only when the tenant's policy says so and the device was never
    /// seen online). A proof that is presented but fails changes nothing, not even the
    /// enrollment token's use count. Consumes one use of the enrollment token otherwise.
    ///
    /// Outside a group, on PostgreSQL, the use is reserved before the transaction, in a
    /// statement of its own, and given back if the registration fails: the token's row is every registration's one shared
    /// row, and holding its lock from the update to the commit (with the event write between)
    /// serialised them (wait events in BENCHMARKS.md). On SQLite, whose one writer serialises
    /// anyway, the use is counted inside the transaction, just before the commit.
    pub async fn auto_register(
        &self,
        claimant: &Claimant<'_>,
        proof: Proof<'_>,
        now: i64,
    ) -> Result<Registration, RegisterError> {
        // Every registration first tries to be a new device in the group commit of first
        // registrations ([`crate::registrations`]), which counts the token's uses itself: its
        // insert skips a row whose identifiers a device has, so it changes no existing device.
        // One it did not write (known identifiers, a token used up) takes the path below.
        if claimant.info.tags.is_empty() {
            let new = NewDevice::registering(self.tenant, claimant, now);
            if let Some(row) = crate::registrations::register(self.db(), new, claimant.enrollment).await? {
                return Ok(Registration::Created(row));
            }
        }
        let reserved = match claimant.enrollment {
            Some(token) if self.db().engine() == Engine::Postgres => {
                if !crate::credentials::reserve_enrollment_use(self.db(), token, now).await? {
                    return Err(RegisterError::EnrollmentExhausted);
                }
                Some(token)
            }
            _ => None,
        };
        let outcome = self.auto_register_in_tx(claimant, proof, now, reserved.is_none()).await;
        if let (Some(token), Err(_)) = (reserved, &outcome) {
            if let Err(error) = crate::credentials::release_enrollment_use(self.db(), token).await {
                tracing::warn!(%error, "could not give back an enrollment token's use; it stays spent");
            }
        }
        outcome
    }

    async fn auto_register_in_tx(
        &self,
        claimant: &Claimant<'_>,
        proof: Proof<'_>,
        now: i64,
        spend_use: bool,
    ) -> Result<Registration, RegisterError> {
        let (ids, info) = (claimant.ids, claimant.info);
        let mut tx = self.db().begin().await?;
        // The enrollment token's use is counted last, just before each commit: its row lock
        // serialises every registration through that token, so it is held for the commit only,
        // not across the probe, the insert and the reads.
        let sql = probe_sql();
        let found = with_tx!(&mut tx, |conn| sqlx::query_as::<_, Known>(&sql)
            .persistent(self.db().engine() == Engine::Sqlite)
            .bind(self.tenant)
            .bind(&ids.serial_number)
            .bind(&ids.mac_address)
            .bind(&ids.android_id)
            .fetch_all(&mut *conn)
            .await)
        .map_err(classify)?;
        let existing = match found.as_slice() {
            [] => {
                let new = NewDevice::registering(self.tenant, claimant, now);
                self.insert(&mut tx, &new).await?;
                tx.record(self.scope.tenant_id(), &new.registered_event(), now);
                if spend_use {
                    spend_enrollment_use(&mut tx, claimant, now).await?;
                }
                tx.commit().await?;
                return Ok(Registration::Created(new.row));
            }
            [existing] => existing,
            _ => return Err(RegisterError::Ambiguous),
        };
        let device_id = existing.id;
        let proven = match proof {
            Proof::None => false,
            Proof::Operator => true,
            Proof::Token(hash) => {
                if existing.token_hash.as_deref() != Some(hash) {
                    return Err(RegisterError::ProofFailed("deviceToken is not this device's current token"));
                }
                true
            }
            Proof::Signature { challenge, verify } => {
                let Some(key) = existing.public_key.as_deref() else {
                    return Err(RegisterError::ProofFailed(
                        "this device registered no public key; prove it with its deviceToken or ask an operator",
                    ));
                };
                if !crate::claims::consume_challenge(&mut tx, self.tenant, challenge, now).await? {
                    return Err(RegisterError::ProofFailed(
                        "the challenge is unknown, used or expired; fetch a new one",
                    ));
                }
                if !verify(key) {
                    return Err(RegisterError::ProofFailed(
                        "the signature does not verify with the device's registered key",
                    ));
                }
                true
            }
        };
        let tenant = self.scope.tenant_id();
        if !proven {
            let auto = existing.last_seen.is_none()
                && crate::claims::policy(&mut tx, self.tenant).await? == ClaimPolicy::ApproveNeverSeen;
            if !auto {
                let claim =
                    crate::claims::insert(&mut tx, self.tenant, device_id, claimant, ClaimStatus::Pending, None, now)
                        .await?;
                tx.record(tenant, &Event::DeviceClaimCreated { claim_id: claim.id, device_id }, now);
                if spend_use {
                    spend_enrollment_use(&mut tx, claimant, now).await?;
                }
                tx.commit().await?;
                return Ok(Registration::Claimed(claim));
            }
            let claim = crate::claims::insert(
                &mut tx,
                self.tenant,
                device_id,
                claimant,
                ClaimStatus::Approved,
                Some(POLICY),
                now,
            )
            .await?;
            let event = Event::DeviceClaimApproved { claim_id: claim.id, device_id, decided_by: POLICY.into() };
            tx.record(tenant, &event, now);
        }
        let row =
            reregister_in(&mut tx, self.scope, device_id, ids, info, claimant.public_key, claimant.token_hash, now)
                .await?;
        tx.record(tenant, &Event::DeviceReregistered { device_id }, now);
        if spend_use {
            spend_enrollment_use(&mut tx, claimant, now).await?;
        }
        tx.commit().await?;
        Ok(Registration::Existing(row))
    }

    /// Inserts `new`, and its tags if it has any.
    async fn insert(&self, tx: &mut Tx, new: &NewDevice) -> Result<(), StoreError> {
        // cache: untouched — a new row has no entry to kill: lookups that find nothing are not kept.
        let sql = format!(
            "INSERT INTO devices ({INSERT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        );
        with_tx!(tx, |conn| bind_new_device!(sqlx::query(&sql), new)
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected()))
        .map_err(classify)?;
        if new.row.tags.0.is_empty() {
            // A new device has no tag rows to replace; auto-registration never sends tags.
            return Ok(());
        }
        self.write_tags(tx, new.row.id, &new.row.tags.0).await
    }

    async fn write_tags(&self, tx: &mut Tx, device_id: DeviceId, tags: &[String]) -> Result<(), StoreError> {
        with_tx!(tx, |conn| {
            sqlx::query("DELETE FROM device_tags WHERE device_id = $1").bind(device_id).execute(&mut *conn).await?;
            for tag in tags {
                sqlx::query("INSERT INTO device_tags (device_id, tenant_id, tag) VALUES ($1, $2, $3)")
                    .bind(device_id)
                    .bind(self.tenant)
                    .bind(tag)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok::<_, sqlx::Error>(())
        })
        .map_err(classify)
    }

    /// Applies a partial update; `None` if the device does not exist in this tenant.
    pub async fn update(&self, id: DeviceId, patch: &DevicePatch, now: i64) -> Result<Option<DeviceRow>, StoreError> {
        let mut tx = self.db().begin().await?;
        if !self.update_in(&mut tx, id, patch, now).await? {
            return Ok(None);
        }
        let row = self.get_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// [`DeviceStore::update`] inside the caller's transaction (which also locks the row on
    /// PostgreSQL until it ends); false if the device does not exist in this tenant.
    pub(crate) async fn update_in(
        &self,
        tx: &mut Tx,
        id: DeviceId,
        patch: &DevicePatch,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut sets: Vec<String> = Vec::new();
        let mut values: Vec<Option<String>> = Vec::new();
        let mut push = |column: &str, value: Option<String>| {
            values.push(value);
            sets.push(format!("{column} = ${}", values.len()));
        };
        if let Some(name) = &patch.name {
            push("name", Some(name.clone()));
        }
        for (column, field) in [
            ("serial_number", &patch.serial_number),
            ("mac_address", &patch.mac_address),
            ("android_id", &patch.android_id),
            ("model", &patch.model),
            ("manufacturer", &patch.manufacturer),
            ("location", &patch.location),
        ] {
            if let Some(value) = field {
                push(column, value.clone());
            }
        }
        if let Some(tags) = &patch.tags {
            push("tags", Some(serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())));
        }
        let n = values.len();
        sets.push(format!("updated_at = ${}", n + 1));
        let sql = format!("UPDATE devices SET {} WHERE tenant_id = ${} AND id = ${}", sets.join(", "), n + 2, n + 3);
        let affected = with_tx!(tx, |conn| {
            let mut query = sqlx::query(&sql);
            for value in &values {
                query = query.bind(value);
            }
            query.bind(now).bind(self.tenant).bind(id).execute(&mut *conn).await.map(|r| r.rows_affected())
        })
        .map_err(classify)?;
        if affected == 0 {
            return Ok(false);
        }
        tx.touch(Touch::Device(id));
        if let Some(tags) = &patch.tags {
            self.write_tags(tx, id, tags).await?;
        }
        Ok(true)
    }

    /// Deletes a device; its token stops working with it. False if there was no such device.
    pub async fn delete(&self, id: DeviceId, now: i64) -> Result<bool, StoreError> {
        let mut tx = self.db().begin().await?;
        let affected = with_tx!(&mut tx, |conn| sqlx::query("DELETE FROM devices WHERE tenant_id = $1 AND id = $2")
            .bind(self.tenant)
            .bind(id)
            .execute(&mut *conn)
            .await
            .map(|r| r.rows_affected()))
        .map_err(classify)?;
        if affected == 0 {
            return Ok(false);
        }
        tx.record(self.scope.tenant_id(), &Event::DeviceDeleted { device_id: id }, now);
        tx.touch(Touch::Device(id));
        // Its certificates die with it: revoked (cessationOfOperation) in the same transaction.
        crate::certificates::revoke_for_deleted_device(&mut tx, self.scope, id, now).await?;
        // Its commands go with it (command_executions has no foreign key to cascade).
        crate::commands::delete_for_device(&mut tx, self.scope, id).await?;
        crate::rollouts::delete_for_device(&mut tx, self.scope, id).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A device reports in (`POST /devices/connect`): `lastSeen = now`, `status = online`.
    /// The common case (already online) is one UPDATE; the offline → online transition runs
    /// in a transaction with its `device.status_changed` event.
    pub async fn connect(
        &self,
        id: DeviceId,
        report: &ConnectReport,
        now: i64,
    ) -> Result<Option<DeviceRow>, StoreError> {
        let sets = "last_seen = $1, ip_address = COALESCE($2, ip_address), app_version = COALESCE($3, app_version), \
                    os_version = COALESCE($4, os_version), firmware_version = COALESCE($5, firmware_version)";
        let still_online = format!(
            "UPDATE devices SET {sets} WHERE tenant_id = $6 AND id = $7 AND status = 'online' RETURNING {COLUMNS}"
        );
        let row = self.update_online(&still_online, report, id, now).await?;
        if row.is_some() {
            return Ok(row);
        }
        // Offline until now: flipped in a group with other devices coming online (one commit,
        // one turn at the event-order lock); alone if the group failed.
        match crate::arrivals::come_online(self.db(), self.scope.tenant_id(), id, report, now).await {
            Ok(Some(row)) => return Ok(Some(row)),
            // Not offline as the group wrote (another request brought it online) or missing.
            Ok(None) => return self.update_online(&still_online, report, id, now).await,
            Err(error) => tracing::debug!(%error, "a group of devices coming online failed; this one flips alone"),
        }
        let coming_online = format!(
            "UPDATE devices SET {sets}, status = 'online', updated_at = $1 WHERE tenant_id = $6 AND id = $7 AND status <> 'online' RETURNING {COLUMNS}"
        );
        let mut tx = self.db().begin().await?;
        let row = with_tx!(&mut tx, |conn| sqlx::query_as::<_, DeviceRow>(&coming_online)
            .bind(now)
            .bind(&report.ip_address)
            .bind(&report.app_version)
            .bind(&report.os_version)
            .bind(&report.firmware_version)
            .bind(self.tenant)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await)
        .map_err(classify)?;
        match row {
            Some(row) => {
                tx.touch(Touch::Device(id));
                let event = Event::DeviceStatusChanged {
                    device_id: id,
                    from: DeviceStatus::Offline,
                    to: DeviceStatus::Online,
                    last_seen: Some(now),
                };
                tx.record(self.scope.tenant_id(), &event, now);
                tx.commit().await?;
                Ok(Some(row))
            }
            // Another request brought it online between the two statements: one more plain update.
            None => {
                drop(tx);
                self.update_online(&still_online, report, id, now).await
            }
        }
    }

    /// Runs `connect`'s update of an already-online device (its parameters are `$1..$7`), in a
    /// transaction of its own so that the cache touch (and on PostgreSQL its notification to the
    /// other instances) goes with the commit, whatever happens to the request.
    async fn update_online(
        &self,
        sql: &str,
        report: &ConnectReport,
        id: DeviceId,
        now: i64,
    ) -> Result<Option<DeviceRow>, StoreError> {
        let mut tx = self.db().begin().await?;
        let row = with_tx!(&mut tx, |conn| sqlx::query_as::<_, DeviceRow>(sql)
            .bind(now)
            .bind(&report.ip_address)
            .bind(&report.app_version)
            .bind(&report.os_version)
            .bind(&report.firmware_version)
            .bind(self.tenant)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await)
        .map_err(classify)?;
        if row.is_some() {
            tx.touch(Touch::Device(id));
            tx.commit().await?;
        }
        Ok(row)
    }
}

/// Applies a proven (or approved) re-registration to `device_id`: the identifiers and
/// descriptive fields given, the new token (the old one stops working), and the public key
/// if one was presented. Answers the device as it is now.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn reregister_in(
    tx: &mut Tx,
    scope: &TenantScope,
    device_id: DeviceId,
    ids: &Identifiers,
    info: &DeviceInfo,
    public_key: Option<&str>,
    token_hash: &str,
    now: i64,
) -> Result<DeviceRow, StoreError> {
    const SQL: &str =
        "UPDATE devices SET serial_number = COALESCE($1, serial_number), mac_address = COALESCE($2, mac_address), \
        android_id = COALESCE($3, android_id), model = COALESCE($4, model), manufacturer = COALESCE($5, manufacturer), \
        os_version = COALESCE($6, os_version), app_version = COALESCE($7, app_version), name = COALESCE($8, name), \
        public_key = COALESCE($9, public_key), token_hash = $10, updated_at = $11 WHERE tenant_id = $12 AND id = $13";
    with_tx!(tx, |conn| sqlx::query(SQL)
        .bind(&ids.serial_number)
        .bind(&ids.mac_address)
        .bind(&ids.android_id)
        .bind(&info.model)
        .bind(&info.manufacturer)
        .bind(&info.os_version)
        .bind(&info.app_version)
        .bind(&info.name)
        .bind(public_key)
        .bind(token_hash)
        .bind(now)
        .bind(scope.tenant_id())
        .bind(device_id)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    // The old token must stop working at once, here and on every instance.
    tx.touch(Touch::Device(device_id));
    DeviceStore::new(scope).get_in(tx, device_id).await?.ok_or(StoreError::Other(sqlx::Error::RowNotFound))
}

/// Counts the registration's use of its enrollment token (if an enrollment token made it), as
/// the transaction's last statement before the commit; a token that ran out, expired or was
/// revoked since it was authenticated fails the registration (the transaction rolls back).
async fn spend_enrollment_use(tx: &mut Tx, claimant: &Claimant<'_>, now: i64) -> Result<(), RegisterError> {
    if let Some(token) = claimant.enrollment {
        if !consume_enrollment_use(tx, token, now).await? {
            return Err(RegisterError::EnrollmentExhausted);
        }
    }
    Ok(())
}

#[derive(Debug, FromRow)]
struct TokenOwnerRow {
    tenant_id: TenantId,
    #[sqlx(flatten)]
    device: DeviceRow,
    pending_commands: i64,
    alerting: bool,
}

/// A device authenticated by its token: the scope of its tenant and its whole row.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub scope: TenantScope,
    pub device: DeviceRow,
    /// Its commands waiting to be fetched (queued), counted in the same read.
    pub pending_commands: i64,
    /// Whether it has an open alert of a sampled metric (any but `offline`), read in the same
    /// read: without one, samples that breach no rule need no alert evaluation.
    pub alerting: bool,
}

/// Cross-tenant by necessity: a device token is how a request's tenant becomes known, so this
/// lookup is one of the places that make a [`TenantScope`]. Returns the whole row, so that a
/// heartbeat needs no second read.
pub async fn find_by_token_hash(db: &Db, hash: &str) -> Result<Option<TokenOwner>, StoreError> {
    if let Some(cached) = db.cache.get(hash) {
        return Ok(Some(TokenOwner {
            scope: TenantScope::new(db.clone(), cached.tenant),
            device: cached.device,
            pending_commands: cached.pending_commands,
            alerting: cached.alerting,
        }));
    }
    // Read before the database is (see `cache`): a write that commits after this point
    // touches a newer epoch, and what is read below is not kept.
    let epoch = db.cache.epoch();
    // The waiting count is a probe of a partial index that holds only live commands, so the
    // heartbeat can say "fetch your commands" without a second round trip; `alerting` a probe
    // of the partial index of open alerts.
    let sql = format!(
        "SELECT tenant_id, {COLUMNS}, (SELECT COUNT(*) FROM command_executions c WHERE c.device_id = devices.id \
         AND c.state IN ('queued', 'delivered') AND c.state = 'queued') AS pending_commands, \
         EXISTS (SELECT 1 FROM alerts a WHERE a.device_id = devices.id AND a.status = 'open' \
         AND a.metric <> 'offline') AS alerting \
         FROM devices WHERE token_hash = $1"
    );
    let row = with_reader!(db, |pool| sqlx::query_as::<_, TokenOwnerRow>(&sql).bind(hash).fetch_optional(pool).await)
        .map_err(classify)?;
    let Some(row) = row else { return Ok(None) };
    let cached = Cached {
        tenant: row.tenant_id,
        device: row.device,
        pending_commands: row.pending_commands,
        alerting: row.alerting,
    };
    db.cache.put(hash, cached.clone(), epoch);
    Ok(Some(TokenOwner {
        scope: TenantScope::new(db.clone(), cached.tenant),
        device: cached.device,
        pending_commands: cached.pending_commands,
        alerting: cached.alerting,
    }))
}

/// Devices per status across all tenants, for `GET /metrics`.
pub async fn count_by_status(db: &Db) -> Result<Vec<(DeviceStatus, i64)>, StoreError> {
    with_reader!(db, |pool| sqlx::query_as::<_, (DeviceStatus, i64)>(
        "SELECT status, CAST(SUM(n) AS BIGINT) FROM device_counts GROUP BY status"
    )
    .fetch_all(pool)
    .await)
    .map_err(classify)
}
