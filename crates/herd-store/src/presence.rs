//! SQL for presence: writing buffered heartbeats and the sweep that marks silent devices
//! offline. Both are cross-tenant (one statement covers every tenant's devices) and take the
//! [`System`] principal; each status change is written with its `device.status_changed` event.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use herd_domain::ids::{DeviceId, TenantId};
use herd_domain::status::DeviceStatus;
use herd_domain::Event;

use crate::cache::Touch;
use crate::{classify, with_reader, with_tx, Db, Engine, Pools, StoreError, System};

/// Rows per statement when flushing heartbeats.
pub const BATCH: usize = 1000;

/// Devices the sweep flips (with their events) per transaction. Each transaction costs a
/// commit, a counter-row bump per tenant and a round of statements, so larger batches amortise
/// more; but a batch holds SQLite's one writer until it commits, so it is bounded to keep other
/// writers' waits short. On SQLite, 1,000, 4,000 and 10,000 measured the same at the SQL level
/// (BENCHMARKS.md, "Overview and sweep"); 5,000 keeps the per-transaction costs at 200 per
/// million devices. PostgreSQL takes the same batch since its flip no longer joins (see
/// [`sweep`]): a join of the claimed ids back to `devices` was planned as a sequential scan of
/// the whole table once per batch from about 1,000 rows at 100,000 devices.
pub const SWEEP_BATCH: usize = 5_000;

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Devices whose `lastSeen` advanced.
    pub written: usize,
    /// Devices that had been swept offline in the meantime and came back online.
    pub revived: usize,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SweepOutcome {
    /// Devices marked offline (each with one event).
    pub marked_offline: usize,
    pub duration: Duration,
}

/// Writes one batch (at most [`BATCH`]) of buffered heartbeats: `(device, (tenant, lastSeen))`.
/// Cross-tenant: the buffer holds every tenant's devices, so this acts as the [`System`].
pub async fn write_last_seen(
    db: &Db,
    _system: &System,
    chunk: &[(DeviceId, (TenantId, i64))],
) -> Result<FlushOutcome, StoreError> {
    // cache: untouched — only `last_seen` moves, and a cached `last_seen` is never answered as
    // is: the heartbeat answers the later of it and its own time.
    // SQLite gets anonymous `?` placeholders, bound in order: sqlx looks each numbered `$N` up by
    // name, a linear search over the statement's names, quadratic in the parameters (see
    // `Tx::commit`).
    let written: Vec<(DeviceId,)> = match &db.pools {
        Pools::Sqlite { writer, .. } => {
            let sql = format!(
                "UPDATE devices SET last_seen = v.column2 FROM (VALUES {}) AS v WHERE devices.id = v.column1 \
                 AND devices.status = 'online' AND (devices.last_seen IS NULL OR devices.last_seen < v.column2) RETURNING devices.id",
                vec!["(?, ?)"; chunk.len()].join(", ")
            );
            let mut query = sqlx::query_as::<_, (DeviceId,)>(&sql);
            for (id, (_, at)) in chunk {
                query = query.bind(id).bind(at);
            }
            query.fetch_all(writer).await
        }
        // Two arrays, one statement text for any chunk size. The planner joins `UNNEST`'s rows
        // to `devices` by primary key; a `VALUES` list of 1,000 rows was planned as a hash join
        // over a sequential scan of every device (23 ms at 100,000 devices, each flush).
        Pools::Postgres(pool) => {
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.to_string()).collect();
            let times: Vec<i64> = chunk.iter().map(|(_, (_, at))| *at).collect();
            sqlx::query_as::<_, (DeviceId,)>(
                "UPDATE devices AS d SET last_seen = v.ts FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS v (id, ts) \
                 WHERE d.id = v.id AND d.status = 'online' AND (d.last_seen IS NULL OR d.last_seen < v.ts) RETURNING d.id"
            )
            .bind(ids)
            .bind(times)
            .fetch_all(pool)
            .await
        }
    }
    .map_err(classify)?;
    let mut outcome = FlushOutcome { written: written.len(), revived: 0 };
    if written.len() == chunk.len() {
        return Ok(outcome);
    }
    // The rest were swept offline meanwhile (or deleted, or already have a newer lastSeen):
    // bring the swept ones back online, with their event, one by one — this is rare.
    let written: HashSet<DeviceId> = written.into_iter().map(|(id,)| id).collect();
    for (device, (tenant, at)) in chunk {
        if !written.contains(device) && revive(db, *device, *tenant, *at).await? {
            outcome.revived += 1;
        }
    }
    Ok(outcome)
}

/// Marks a device online again at `at`, with its `device.status_changed` event, if it is offline.
async fn revive(db: &Db, device: DeviceId, tenant: TenantId, at: i64) -> Result<bool, StoreError> {
    const SQL: &str = "UPDATE devices SET status = 'online', last_seen = $1, updated_at = $1 \
                       WHERE tenant_id = $2 AND id = $3 AND status <> 'online' AND (last_seen IS NULL OR last_seen < $1)";
    let mut tx = db.begin().await?;
    let changed = with_tx!(&mut tx, |conn| sqlx::query(SQL)
        .bind(at)
        .bind(tenant)
        .bind(device)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    if changed == 0 {
        return Ok(false);
    }
    tx.touch(Touch::Device(device));
    let event = Event::DeviceStatusChanged {
        device_id: device,
        from: DeviceStatus::Offline,
        to: DeviceStatus::Online,
        last_seen: Some(at),
    };
    tx.record(tenant, &event, at);
    tx.commit().await?;
    Ok(true)
}

/// The sweep (DeviceStatusTask): every online device whose `lastSeen` is older than
/// `now - threshold` becomes offline, in batches, each batch in one transaction with its
/// events. A device seen exactly `threshold` ago stays online.
///
/// Exactly once with several instances: a device flips only from `online` (each batch's
/// `UPDATE` checks it again), and on PostgreSQL each batch locks its rows with `FOR UPDATE SKIP
/// LOCKED`, so two sweeps never take the same device and a concurrent heartbeat waits for (and
/// then sees) the flip.
pub async fn sweep(db: &Db, _system: &System, threshold: Duration, now: i64) -> Result<SweepOutcome, StoreError> {
    let started = Instant::now();
    let cutoff = now - i64::try_from(threshold.as_millis()).unwrap_or(i64::MAX);
    let mut outcome = SweepOutcome::default();
    match db.engine() {
        Engine::Sqlite => sweep_sqlite(db, cutoff, now, &mut outcome).await?,
        Engine::Postgres => sweep_postgres(db, cutoff, now, &mut outcome).await?,
    }
    outcome.duration = started.elapsed();
    Ok(outcome)
}

/// Stale devices claimed per round on SQLite: their rowids, 8 bytes each.
const SQLITE_CLAIM: usize = 1_000_000;

/// SQLite flips the stale devices in rowid order. The presence index hands them out in
/// `last_seen` order, which after an outage is the order the fleet last heartbeated in, unrelated
/// to where each row lies: a batch of 5,000 taken in that order rewrote 5,000 rows on ~5,000
/// different pages of `devices` and of `devices_tenant_status_idx`, each page then written to the
/// WAL and checkpointed back. So the stale devices' rowids are read first (from the partial
/// presence index alone, which holds each entry's rowid), sorted, and flipped a run of
/// neighbours at a time (BENCHMARKS.md, "The sweep in row order"). Each batch's `UPDATE` checks
/// `status` and `last_seen` again, so a device that heartbeated since the claim stays online,
/// and a rowid that no longer names a stale device flips nothing.
async fn sweep_sqlite(db: &Db, cutoff: i64, now: i64, outcome: &mut SweepOutcome) -> Result<(), StoreError> {
    loop {
        let claimed = claim_sqlite(db, cutoff).await?;
        for run in claimed.chunks(SWEEP_BATCH) {
            outcome.marked_offline += flip_sqlite(db, run, cutoff, now).await?;
        }
        if claimed.len() < SQLITE_CLAIM {
            return Ok(());
        }
    }
}

/// The rowids of (at most [`SQLITE_CLAIM`]) online devices last seen before `cutoff`, sorted.
async fn claim_sqlite(db: &Db, cutoff: i64) -> Result<Vec<i64>, StoreError> {
    let mut claimed: Vec<i64> = with_reader!(db, |pool| sqlx::query_scalar(
        "SELECT rowid FROM devices WHERE status = 'online' AND last_seen < $1 LIMIT $2"
    )
    .bind(cutoff)
    .bind(SQLITE_CLAIM as i64)
    .fetch_all(pool)
    .await)
    .map_err(classify)?;
    claimed.sort_unstable();
    Ok(claimed)
}

/// Flips those of `rowids` that are still online and stale, with their events, in one
/// transaction; returns how many it flipped.
async fn flip_sqlite(db: &Db, rowids: &[i64], cutoff: i64, now: i64) -> Result<usize, StoreError> {
    const FLIP: &str = "UPDATE devices SET status = 'offline', updated_at = $1 \
                        WHERE rowid IN (SELECT value FROM json_each($2)) AND status = 'online' AND last_seen < $3 \
                        RETURNING id, tenant_id, last_seen";
    // One JSON array parameter rather than 5,000 bound ones.
    let rowids = format!("[{}]", rowids.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
    let mut tx = db.begin().await?;
    let rows: Vec<Flipped> =
        with_tx!(&mut tx, |conn| sqlx::query_as(FLIP).bind(now).bind(rowids).bind(cutoff).fetch_all(&mut *conn).await)
            .map_err(classify)?;
    // Here only: see `record_offline`.
    for (device_id, _, _) in &rows {
        tx.touch_here(Touch::Device(*device_id));
    }
    record_offline(tx, &rows, now).await
}

/// PostgreSQL claims each batch with `FOR UPDATE SKIP LOCKED`, so sweeps of several instances
/// share the work. The claimed ids come back as an array, so the flip finds each row by primary
/// key whatever the batch and fleet size (a join with the claiming subquery was planned as a
/// hash join over a sequential scan of `devices`, once per batch).
async fn sweep_postgres(db: &Db, cutoff: i64, now: i64, outcome: &mut SweepOutcome) -> Result<(), StoreError> {
    const FLIP: &str = "UPDATE devices SET status = 'offline', updated_at = $1 WHERE id = ANY(ARRAY( \
                        SELECT id FROM devices WHERE status = 'online' AND last_seen < $2 ORDER BY last_seen LIMIT $3 FOR UPDATE SKIP LOCKED)) \
                        RETURNING id, tenant_id, last_seen";
    loop {
        let mut tx = db.begin().await?;
        let rows: Vec<Flipped> = with_tx!(&mut tx, |conn| sqlx::query_as(FLIP)
            .bind(now)
            .bind(cutoff)
            .bind(SWEEP_BATCH as i64)
            .fetch_all(&mut *conn)
            .await)
        .map_err(classify)?;
        // Here only: see `record_offline`.
        for (device_id, _, _) in &rows {
            tx.touch_here(Touch::Device(*device_id));
        }
        let flipped = record_offline(tx, &rows, now).await?;
        outcome.marked_offline += flipped;
        if flipped < SWEEP_BATCH {
            return Ok(());
        }
    }
}

/// A device the sweep flipped: its id, tenant and the `lastSeen` it went offline with.
type Flipped = (DeviceId, TenantId, Option<i64>);

/// Writes one `device.status_changed` event per flipped device and commits the batch; returns
/// how many devices it flipped. The callers evict each flipped device's cached credential with
/// `touch_here` next to their `UPDATE` (where the credential-cache invariant test looks), in
/// this instance only: another instance that still holds the device as online answers its next
/// heartbeat from the buffer, and that heartbeat's flush finds it offline and revives it (with
/// its event), as for a heartbeat that raced the sweep. So a stale `online` there is never wrong
/// for long, and a sweep sends no notifications.
async fn record_offline(mut tx: crate::Tx, rows: &[Flipped], now: i64) -> Result<usize, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    for (device_id, tenant_id, last_seen) in rows {
        let event = Event::DeviceStatusChanged {
            device_id: *device_id,
            from: DeviceStatus::Online,
            to: DeviceStatus::Offline,
            last_seen: *last_seen,
        };
        tx.record(*tenant_id, &event, now);
    }
    tx.commit().await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::with_writer;

    /// A device claimed by the sweep but seen (or flipped by someone else) before its batch is
    /// written is left as it is: the batch's `UPDATE` checks status and `lastSeen` again.
    #[tokio::test]
    async fn a_claimed_device_seen_before_its_batch_stays_online() {
        let test_db = crate::test_db::sqlite().await;
        let db = &test_db.db;
        let tenant = crate::test_db::tenant(db).await;
        let [stale, seen, gone] = [DeviceId::new(), DeviceId::new(), DeviceId::new()];
        for device in [stale, seen, gone] {
            let sql = "INSERT INTO devices (id, tenant_id, name, status, last_seen, created_at, updated_at) \
                       VALUES ($1, $2, 'd', 'online', 1000, 0, 0)";
            with_writer!(db, |pool| sqlx::query(sql).bind(device).bind(tenant).execute(pool).await.map(drop)).unwrap();
        }
        let claimed = claim_sqlite(db, 5_000).await.unwrap();
        assert_eq!(claimed.len(), 3);
        assert!(claimed.windows(2).all(|pair| pair[0] < pair[1]), "sorted");

        let written = write_last_seen(db, &System::new(), &[(seen, (tenant, 6_000))]).await.unwrap();
        assert_eq!(written.written, 1);
        let sql = "UPDATE devices SET status = 'offline' WHERE id = $1";
        with_writer!(db, |pool| sqlx::query(sql).bind(gone).execute(pool).await.map(drop)).unwrap();

        assert_eq!(flip_sqlite(db, &claimed, 5_000, 7_000).await.unwrap(), 1);
        let status = |device: DeviceId| async move {
            let sql = "SELECT status FROM devices WHERE id = $1";
            with_writer!(db, |pool| sqlx::query_scalar::<_, String>(sql).bind(device).fetch_one(pool).await).unwrap()
        };
        assert_eq!(status(stale).await, "offline");
        assert_eq!(status(seen).await, "online", "seen after the claim");
        let events = "SELECT COUNT(*) FROM events WHERE type = 'device.status_changed'";
        let events = with_writer!(db, |pool| sqlx::query_scalar::<_, i64>(events).fetch_one(pool).await).unwrap();
        assert_eq!(events, 1, "only the flip announced");
    }
}
