//! SQL for device settings. Every method of [`SettingsStore`] binds the scope's tenant id.
//! Location and tags are not here: they are the device record's own columns, read and written
//! through [`crate::devices::store::DeviceStore`].

use sqlx::FromRow;

use crate::devices::{DevicePatch, DeviceRow, DeviceStore};
use crate::TenantScope;
use crate::{classify, Db, StoreError};
use crate::{with_reader, with_tx};
use herd_domain::ids::DeviceId;

/// A settings row as stored.
#[derive(Debug, Clone, FromRow)]
pub struct SettingsRow {
    pub display_name: Option<String>,
    pub timezone: Option<String>,
    pub notes: Option<String>,
    pub version: i64,
    pub updated_at: i64,
}

/// The settings fields this table holds.
#[derive(Debug, Clone, Default)]
pub struct SettingsFields {
    pub display_name: Option<String>,
    pub timezone: Option<String>,
    pub notes: Option<String>,
}

/// Why settings could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The client's `version` is not the current one (which is given).
    #[error("the settings have changed: the current version is {0}")]
    VersionConflict(i64),
    /// The device is not in this tenant (any more).
    #[error("no such device")]
    DeviceNotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The tenant's device settings.
pub struct SettingsStore<'s> {
    scope: &'s TenantScope,
    tenant: String,
}

impl<'s> SettingsStore<'s> {
    pub fn new(scope: &'s TenantScope) -> Self {
        Self { scope, tenant: scope.tenant_id().to_string() }
    }

    fn db(&self) -> &Db {
        self.scope.db()
    }

    /// The device's settings row (`None` until they are first written).
    pub async fn get(&self, device_id: DeviceId) -> Result<Option<SettingsRow>, StoreError> {
        const SQL: &str = "SELECT display_name, timezone, notes, version, updated_at FROM device_settings \
            WHERE tenant_id = $1 AND device_id = $2";
        let device = device_id.to_string();
        with_reader!(self.db(), |pool| sqlx::query_as::<_, SettingsRow>(SQL)
            .bind(&self.tenant)
            .bind(&device)
            .fetch_optional(pool)
            .await)
        .map_err(classify)
    }

    /// Replaces the settings, bumping the version, and applies `patch` (location and tags, the
    /// device record's own fields) in the same transaction, so the document and the device
    /// change together or not at all. With `expected`, only if the current version (0 before
    /// the first write) is that one; a concurrent writer that got there first also makes this a
    /// [`SettingsError::VersionConflict`]. The device row is written first: on PostgreSQL its
    /// lock orders concurrent writers of one device (and a delete) before they touch the
    /// settings row.
    pub async fn put(
        &self,
        device_id: DeviceId,
        expected: Option<i64>,
        fields: &SettingsFields,
        patch: &DevicePatch,
        now: i64,
    ) -> Result<(SettingsRow, DeviceRow), SettingsError> {
        let device = device_id.to_string();
        let current = self.get(device_id).await?.map_or(0, |row| row.version);
        if expected.is_some_and(|expected| expected != current) {
            return Err(SettingsError::VersionConflict(current));
        }
        let mut tx = self.db().begin().await?;
        if !DeviceStore::new(self.scope).update_in(&mut tx, device_id, patch, now).await? {
            return Err(SettingsError::DeviceNotFound);
        }
        let written = if current == 0 {
            const SQL: &str = "INSERT INTO device_settings (device_id, tenant_id, display_name, timezone, notes, \
                version, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6) ON CONFLICT DO NOTHING";
            with_tx!(&mut tx, |conn| sqlx::query(SQL)
                .bind(&device)
                .bind(&self.tenant)
                .bind(&fields.display_name)
                .bind(&fields.timezone)
                .bind(&fields.notes)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected()))
        } else {
            const SQL: &str = "UPDATE device_settings SET display_name = $1, timezone = $2, notes = $3, \
                version = version + 1, updated_at = $4 WHERE tenant_id = $5 AND device_id = $6 AND version = $7";
            with_tx!(&mut tx, |conn| sqlx::query(SQL)
                .bind(&fields.display_name)
                .bind(&fields.timezone)
                .bind(&fields.notes)
                .bind(now)
                .bind(&self.tenant)
                .bind(&device)
                .bind(current)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected()))
        }
        .map_err(classify)?;
        if written == 0 {
            // The conflict's current version is read on a reader connection (the write rolls back).
            drop(tx);
            let now_current = self.get(device_id).await?.map_or(0, |row| row.version);
            return Err(SettingsError::VersionConflict(now_current));
        }
        tx.commit().await?;
        let missing = || SettingsError::Store(StoreError::Other(sqlx::Error::RowNotFound));
        let settings = self.get(device_id).await?.ok_or_else(missing)?;
        let device = DeviceStore::new(self.scope).get(device_id).await?.ok_or_else(missing)?;
        Ok((settings, device))
    }
}
