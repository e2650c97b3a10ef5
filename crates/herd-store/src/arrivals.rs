//! Group commit of devices coming online: the heartbeat (`POST /devices/connect`) of a device
//! that is offline flips it online with its `device.status_changed` event, and concurrent
//! flips share one transaction ([`crate::group`]): one multi-row `UPDATE`, the events as one
//! outbox write, one commit. On PostgreSQL that is one turn at the cluster-wide event-order
//! lock per group instead of one per device, which is what capped a fleet coming back after an
//! outage at ~1,070 devices/s (BENCHMARKS.md, "A million devices on PostgreSQL").
//!
//! The update flips only rows that are not online (`status <> 'online'`), so a device another
//! request brought online first is left out and its caller takes the plain heartbeat update; a
//! device named twice in one group is flipped once. A group that fails (before or at its
//! commit) answers every job with the error and the caller flips alone: that is safe to retry,
//! since a flip that did commit leaves the device online and the lone flip then changes
//! nothing.

use std::collections::HashMap;

use herd_domain::ids::{DeviceId, TenantId};
use herd_domain::status::DeviceStatus;
use herd_domain::Event;

use crate::cache::Touch;
use crate::devices::{ConnectReport, DeviceRow, COLUMNS};
use crate::group::{Group, Pending};
use crate::samples::sqlite_values_sql;
use crate::{classify, column, Db, StoreError, TxConn};

/// The most flips one group writes (7 parameters a row on SQLite; its events fit one outbox
/// statement on PostgreSQL).
const ARRIVAL_GROUP: usize = 256;

/// An offline device's heartbeat waiting for its group.
pub(crate) struct Job {
    tenant: TenantId,
    device: DeviceId,
    report: ConnectReport,
    now: i64,
}

/// The group commit of [`come_online`]: `Some(row)` when the group flipped the job's device.
pub(crate) type ArrivalGroup = Group<Job, Option<DeviceRow>>;

pub(crate) fn arrival_group() -> ArrivalGroup {
    Group::new(ARRIVAL_GROUP)
}

/// Flips `device` online at `now` with the report's fields and its `device.status_changed`
/// event, in a group with concurrent flips; committed before this answers `Some(row)`. `None`
/// when the device was not offline (or is not the tenant's) as the group wrote: nothing was
/// written for it. An error means the group failed; flipping alone is then safe.
pub(crate) async fn come_online(
    db: &Db,
    tenant: TenantId,
    device: DeviceId,
    report: &ConnectReport,
    now: i64,
) -> Result<Option<DeviceRow>, StoreError> {
    let job = Job { tenant, device, report: report.clone(), now };
    let group_db = db.clone();
    db.arrivals.submit(job, move |jobs| write(group_db.clone(), jobs)).await
}

async fn write(db: Db, jobs: Vec<Pending<Job, Option<DeviceRow>>>) {
    match flip_group(&db, &jobs).await {
        Ok(mut flipped) => {
            for pending in jobs {
                let row = flipped.remove(&pending.job.device);
                pending.answer(Ok(row));
            }
        }
        Err(error) => {
            let text = error.to_string();
            for pending in jobs {
                pending.answer(Err(StoreError::Other(sqlx::Error::Protocol(text.clone()))));
            }
        }
    }
}

/// Flips the group's devices that are not online, with their events, in one transaction:
/// the rows it flipped, by device.
async fn flip_group(
    db: &Db,
    jobs: &[Pending<Job, Option<DeviceRow>>],
) -> Result<HashMap<DeviceId, DeviceRow>, StoreError> {
    let jobs: Vec<&Job> = jobs.iter().map(|pending| &pending.job).collect();
    let mut tx = db.begin().await?;
    let rows: Vec<DeviceRow> = match &mut tx.conn {
        TxConn::Sqlite(conn) => {
            let sql = sqlite_values_sql(
                "UPDATE devices SET last_seen = v.column3, ip_address = COALESCE(v.column4, ip_address), \
                 app_version = COALESCE(v.column5, app_version), os_version = COALESCE(v.column6, os_version), \
                 firmware_version = COALESCE(v.column7, firmware_version), status = 'online', updated_at = v.column3 \
                 FROM (VALUES ",
                7,
                jobs.len(),
                &format!(
                    ") AS v WHERE devices.tenant_id = v.column1 AND devices.id = v.column2 \
                     AND devices.status <> 'online' RETURNING {COLUMNS}"
                ),
            );
            let mut query = sqlx::query_as::<_, DeviceRow>(&sql);
            for job in &jobs {
                query = query
                    .bind(job.tenant)
                    .bind(job.device)
                    .bind(job.now)
                    .bind(&job.report.ip_address)
                    .bind(&job.report.app_version)
                    .bind(&job.report.os_version)
                    .bind(&job.report.firmware_version);
            }
            query.fetch_all(&mut **conn).await
        }
        TxConn::Postgres(conn) => {
            let sql = format!(
                "UPDATE devices SET last_seen = v.v_now, ip_address = COALESCE(v.v_ip, ip_address), \
                 app_version = COALESCE(v.v_app, app_version), os_version = COALESCE(v.v_os, os_version), \
                 firmware_version = COALESCE(v.v_firmware, firmware_version), status = 'online', updated_at = v.v_now \
                 FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[]) \
                 AS v (v_tenant, v_id, v_now, v_ip, v_app, v_os, v_firmware) \
                 WHERE devices.tenant_id = v.v_tenant AND devices.id = v.v_id AND devices.status <> 'online' \
                 RETURNING {COLUMNS}"
            );
            sqlx::query_as::<_, DeviceRow>(&sql)
                .bind(column(&jobs, |job| job.tenant.to_string()))
                .bind(column(&jobs, |job| job.device.to_string()))
                .bind(column(&jobs, |job| job.now))
                .bind(column(&jobs, |job| job.report.ip_address.clone()))
                .bind(column(&jobs, |job| job.report.app_version.clone()))
                .bind(column(&jobs, |job| job.report.os_version.clone()))
                .bind(column(&jobs, |job| job.report.firmware_version.clone()))
                .fetch_all(&mut **conn)
                .await
        }
    }
    .map_err(classify)?;
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let by_device: HashMap<DeviceId, &Job> = jobs.iter().map(|job| (job.device, *job)).collect();
    let mut flipped = HashMap::with_capacity(rows.len());
    for row in rows {
        // Every flipped row is one of the jobs' devices, in the job's tenant (the update
        // matched both).
        let Some(job) = by_device.get(&row.id) else { continue };
        tx.touch(Touch::Device(row.id));
        let event = Event::DeviceStatusChanged {
            device_id: row.id,
            from: DeviceStatus::Offline,
            to: DeviceStatus::Online,
            last_seen: Some(job.now),
        };
        tx.record(job.tenant, &event, job.now);
        flipped.insert(row.id, row);
    }
    tx.commit().await?;
    Ok(flipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::with_writer;
    use tokio::sync::oneshot;

    type Answer = oneshot::Receiver<Result<Option<DeviceRow>, StoreError>>;

    fn job(tenant: TenantId, device: DeviceId, app_version: Option<&str>) -> (Pending<Job, Option<DeviceRow>>, Answer) {
        let report = ConnectReport { app_version: app_version.map(str::to_string), ..ConnectReport::default() };
        let (answer, answered) = oneshot::channel();
        (Pending { job: Job { tenant, device, report, now: 5_000 }, answer }, answered)
    }

    #[tokio::test]
    async fn a_group_flips_only_its_tenants_offline_devices_once_each_on_sqlite() {
        a_group_flips_only_its_tenants_offline_devices_once_each(&crate::test_db::sqlite().await.db).await;
    }

    #[tokio::test]
    async fn a_group_flips_only_its_tenants_offline_devices_once_each_on_postgres() {
        if let Some(test_db) = crate::test_db::postgres().await {
            a_group_flips_only_its_tenants_offline_devices_once_each(&test_db.db).await;
        }
    }

    /// Offline devices are flipped with one event each and the report's fields; a device
    /// already online, one named twice, and one named with another tenant are not flipped by
    /// those jobs (answered `None`, nothing written for them).
    async fn a_group_flips_only_its_tenants_offline_devices_once_each(db: &Db) {
        let (tenant, other) = (crate::test_db::tenant(db).await, crate::test_db::tenant(db).await);
        let [offline, online, twice, others] = [DeviceId::new(), DeviceId::new(), DeviceId::new(), DeviceId::new()];
        for (device, owner, status) in [
            (offline, tenant, "offline"),
            (online, tenant, "online"),
            (twice, tenant, "offline"),
            (others, other, "offline"),
        ] {
            let sql =
                "INSERT INTO devices (id, tenant_id, name, app_version, status, last_seen, created_at, updated_at) \
                       VALUES ($1, $2, 'd', '1.0', $3, 1000, 0, 0)";
            with_writer!(db, |pool| sqlx::query(sql)
                .bind(device)
                .bind(owner)
                .bind(status)
                .execute(pool)
                .await
                .map(drop))
            .unwrap();
        }
        let count = |sql: &'static str| async move {
            with_writer!(db, |pool| sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await).unwrap()
        };

        let (jobs, answers): (Vec<_>, Vec<_>) = [
            job(tenant, offline, Some("2.0")),
            job(tenant, online, None),
            job(tenant, twice, None),
            job(tenant, twice, None),
            job(tenant, others, None),
        ]
        .into_iter()
        .unzip();
        write(db.clone(), jobs).await;
        let mut flipped = Vec::new();
        for answer in answers {
            flipped.push(answer.await.unwrap().unwrap().map(|row| (row.id, row.app_version, row.last_seen)));
        }
        assert_eq!(flipped[0], Some((offline, Some("2.0".to_string()), Some(5_000))));
        assert_eq!(flipped[1], None, "already online: the plain heartbeat update's job");
        assert_eq!(flipped[2..4].iter().filter(|f| f.is_some()).count(), 1, "a device named twice flips once");
        assert_eq!(flipped[4], None, "another tenant's device");
        assert_eq!(count("SELECT COUNT(*) FROM devices WHERE status = 'online'").await, 3);
        assert_eq!(count("SELECT COUNT(*) FROM devices WHERE status = 'offline' AND last_seen = 1000").await, 1);
        assert_eq!(count("SELECT COUNT(*) FROM events WHERE type = 'device.status_changed'").await, 2);
        assert_eq!(count("SELECT COUNT(*) FROM devices WHERE app_version = '1.0'").await, 3, "None keeps a field");
    }
}
