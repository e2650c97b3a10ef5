//! SQL for device display configurations. Every method of [`ConfigurationStore`] binds the
//! scope's tenant id.

use sqlx::FromRow;

use crate::TenantScope;
use crate::{classify, Db, StoreError};
use crate::{with_reader, with_tx, with_writer};
use herd_domain::ids::DeviceId;

/// A configuration row as stored; `desired` and `reported` are JSON documents.
#[derive(Debug, Clone, FromRow)]
pub struct ConfigurationRow {
    pub desired: String,
    pub desired_version: i64,
    pub desired_at: i64,
    pub reported: Option<String>,
    pub reported_version: Option<i64>,
    pub reported_at: Option<i64>,
}

/// Why a configuration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    /// The operator's `version` is not the current desired version (which is given).
    #[error("the desired configuration has changed: the current version is {0}")]
    VersionConflict(i64),
    /// The device reported a version that was never issued (the current one is given).
    #[error("version {reported} was never issued; the desired version is {current}")]
    UnknownVersion { reported: i64, current: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The tenant's device configurations.
pub struct ConfigurationStore<'s> {
    scope: &'s TenantScope,
    tenant: String,
}

impl<'s> ConfigurationStore<'s> {
    pub fn new(scope: &'s TenantScope) -> Self {
        Self { scope, tenant: scope.tenant_id().to_string() }
    }

    fn db(&self) -> &Db {
        self.scope.db()
    }

    /// The device's configuration row (`None` before anything was set or reported).
    pub async fn get(&self, device_id: DeviceId) -> Result<Option<ConfigurationRow>, StoreError> {
        const SQL: &str = "SELECT desired, desired_version, desired_at, reported, reported_version, reported_at \
            FROM device_configurations WHERE tenant_id = $1 AND device_id = $2";
        let device = device_id.to_string();
        with_reader!(self.db(), |pool| sqlx::query_as::<_, ConfigurationRow>(SQL)
            .bind(&self.tenant)
            .bind(&device)
            .fetch_optional(pool)
            .await)
        .map_err(classify)
    }

    /// Replaces the desired configuration and bumps its version; with `expected`, only if the
    /// current version (0 before the first) is that one. A concurrent writer that got there
    /// first also makes this a [`ConfigurationError::VersionConflict`]. The caller has checked
    /// that the device is in this tenant.
    pub async fn put_desired(
        &self,
        device_id: DeviceId,
        expected: Option<i64>,
        desired: &str,
        now: i64,
    ) -> Result<ConfigurationRow, ConfigurationError> {
        let device = device_id.to_string();
        let existing = self.get(device_id).await?;
        let current = existing.as_ref().map_or(0, |row| row.desired_version);
        if expected.is_some_and(|expected| expected != current) {
            return Err(ConfigurationError::VersionConflict(current));
        }
        let mut tx = self.db().begin().await?;
        let written = if existing.is_none() {
            const SQL: &str = "INSERT INTO device_configurations (device_id, tenant_id, desired, desired_version, \
                desired_at) VALUES ($1, $2, $3, 1, $4) ON CONFLICT DO NOTHING";
            with_tx!(&mut tx, |conn| sqlx::query(SQL)
                .bind(&device)
                .bind(&self.tenant)
                .bind(desired)
                .bind(now)
                .execute(&mut *conn)
                .await
                .map(|r| r.rows_affected()))
        } else {
            const SQL: &str = "UPDATE device_configurations SET desired = $1, desired_version = desired_version + 1, \
                desired_at = $2 WHERE tenant_id = $3 AND device_id = $4 AND desired_version = $5";
            with_tx!(&mut tx, |conn| sqlx::query(SQL)
                .bind(desired)
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
            let now_current = self.get(device_id).await?.map_or(0, |row| row.desired_version);
            return Err(ConfigurationError::VersionConflict(now_current));
        }
        tx.commit().await?;
        self.get(device_id).await?.ok_or(ConfigurationError::Store(StoreError::Other(sqlx::Error::RowNotFound)))
    }

    /// Records what the device applied (`reported`, as of desired `version`). A version above
    /// the current desired one was never issued and is refused.
    pub async fn report(
        &self,
        device_id: DeviceId,
        version: i64,
        reported: &str,
        now: i64,
    ) -> Result<ConfigurationRow, ConfigurationError> {
        // The insert (nothing desired yet: version 0) or the update, only while `version` is
        // at most the desired version at the time of writing.
        const SQL: &str = "INSERT INTO device_configurations (device_id, tenant_id, desired, desired_version, \
            desired_at, reported, reported_version, reported_at) VALUES ($1, $2, '{}', 0, $3, $4, $5, $3) \
            ON CONFLICT (device_id) DO UPDATE SET reported = excluded.reported, \
            reported_version = excluded.reported_version, reported_at = excluded.reported_at \
            WHERE device_configurations.tenant_id = excluded.tenant_id \
            AND device_configurations.desired_version >= excluded.reported_version";
        let device = device_id.to_string();
        let current = self.get(device_id).await?.map_or(0, |row| row.desired_version);
        if version > current {
            return Err(ConfigurationError::UnknownVersion { reported: version, current });
        }
        let written = with_writer!(self.db(), |pool| sqlx::query(SQL)
            .bind(&device)
            .bind(&self.tenant)
            .bind(now)
            .bind(reported)
            .bind(version)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
        .map_err(classify)?;
        let row = self.get(device_id).await?;
        match row {
            Some(row) if written == 1 => Ok(row),
            other => Err(ConfigurationError::UnknownVersion {
                reported: version,
                current: other.map_or(0, |row| row.desired_version),
            }),
        }
    }
}
