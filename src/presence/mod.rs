//! Presence (the seed's DeviceStatusTask and RECENT_THRESHOLD_MS): the heartbeat buffer that
//! keeps `POST /devices/connect` off the write path, and the sweep that marks silent devices
//! offline with one `device.status_changed` event each.
//!
//! # Durability contract of heartbeats
//! A heartbeat from a device that is already online and reports nothing new changes only
//! `lastSeen`. Such heartbeats are answered at once and their `lastSeen` is written by
//! [`HeartbeatBuffer::flush`] in one statement per batch, every `HERD_HEARTBEAT_FLUSH_INTERVAL`
//! (default 1 s), before every sweep, and at shutdown. A crash can therefore lose at most
//! one flush interval of `lastSeen` advances — never a status change, never an event: every
//! transition (offline → online, new IP or versions) is written synchronously, with its event,
//! before the request is answered. A flushed heartbeat that finds its device offline (swept in
//! between) brings it back online with its event, so the sweep stays correct with the buffer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::events::{self, Event};
use crate::ids::{DeviceId, TenantId};
use crate::store::{classify, Db, Engine, StoreError};
use crate::{with_tx, with_writer};

/// Rows per statement when flushing heartbeats or sweeping.
pub const BATCH: usize = 1000;

/// Buffered `lastSeen` advances of online devices, keyed by device id.
#[derive(Debug, Default)]
pub struct HeartbeatBuffer {
    /// A std `Mutex`: held only to insert one entry or to swap the map out, never across await.
    pending: Mutex<HashMap<DeviceId, (TenantId, i64)>>,
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushOutcome {
    /// Devices whose `lastSeen` advanced.
    pub written: usize,
    /// Devices that had been swept offline in the meantime and came back online.
    pub revived: usize,
}

impl HeartbeatBuffer {
    /// Remembers that `device` was seen at `at` (milliseconds); keeps the latest.
    pub fn record(&self, device: DeviceId, tenant: TenantId, at: i64) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = pending.entry(device).or_insert((tenant, at));
        if entry.1 < at {
            entry.1 = at;
        }
    }

    /// The buffered `lastSeen` of a device, if newer than what is stored: reads overlay it so
    /// that this instance never shows a device older than its last heartbeat.
    pub fn pending_last_seen(&self, device: &DeviceId) -> Option<i64> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(device).map(|(_, at)| *at)
    }

    /// How many devices wait to be written.
    pub fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every buffered heartbeat. On failure the unwritten ones go back into the buffer.
    pub async fn flush(&self, db: &Db) -> Result<FlushOutcome, StoreError> {
        let taken: Vec<(DeviceId, (TenantId, i64))> = {
            let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::take(&mut *pending).into_iter().collect()
        };
        let mut outcome = FlushOutcome::default();
        for (index, chunk) in taken.chunks(BATCH).enumerate() {
            match flush_chunk(db, chunk).await {
                Ok(done) => {
                    outcome.written += done.written;
                    outcome.revived += done.revived;
                }
                Err(error) => {
                    for (device, (tenant, at)) in &taken[index * BATCH..] {
                        self.record(*device, *tenant, *at);
                    }
                    return Err(error);
                }
            }
        }
        Ok(outcome)
    }
}

async fn flush_chunk(db: &Db, chunk: &[(DeviceId, (TenantId, i64))]) -> Result<FlushOutcome, StoreError> {
    let values: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
    let sql = match db.engine() {
        Engine::Sqlite => format!(
            "UPDATE devices SET last_seen = v.column2 FROM (VALUES {}) AS v WHERE devices.id = v.column1 \
             AND devices.status = 'online' AND (devices.last_seen IS NULL OR devices.last_seen < v.column2) RETURNING devices.id",
            values.join(", ")
        ),
        Engine::Postgres => format!(
            "UPDATE devices AS d SET last_seen = v.ts FROM (VALUES {}) AS v (id, ts) WHERE d.id = v.id \
             AND d.status = 'online' AND (d.last_seen IS NULL OR d.last_seen < v.ts) RETURNING d.id",
            values.join(", ")
        ),
    };
    let ids: Vec<String> = chunk.iter().map(|(device, _)| device.to_string()).collect();
    let written: Vec<(String,)> = with_writer!(db, |pool| {
        let mut query = sqlx::query_as::<_, (String,)>(&sql);
        for (id, (_, at)) in ids.iter().zip(chunk) {
            query = query.bind(id).bind(at.1);
        }
        query.fetch_all(pool).await
    })
    .map_err(classify)?;
    let mut outcome = FlushOutcome { written: written.len(), revived: 0 };
    if written.len() == chunk.len() {
        return Ok(outcome);
    }
    // The rest were swept offline meanwhile (or deleted, or already have a newer lastSeen):
    // bring the swept ones back online, with their event, one by one — this is rare.
    let written: std::collections::HashSet<String> = written.into_iter().map(|(id,)| id).collect();
    for (id, (device, (tenant, at))) in ids.iter().zip(chunk) {
        if !written.contains(id) && revive(db, *device, *tenant, *at).await? {
            outcome.revived += 1;
        }
    }
    Ok(outcome)
}

/// Marks a device online again at `at`, with its `device.status_changed` event, if it is offline.
async fn revive(db: &Db, device: DeviceId, tenant: TenantId, at: i64) -> Result<bool, StoreError> {
    const SQL: &str = "UPDATE devices SET status = 'online', last_seen = $1, updated_at = $1 \
                       WHERE tenant_id = $2 AND id = $3 AND status <> 'online' AND (last_seen IS NULL OR last_seen < $1)";
    let (tenant_text, device_text) = (tenant.to_string(), device.to_string());
    let mut tx = db.begin().await?;
    let changed = with_tx!(&mut tx, |conn| sqlx::query(SQL)
        .bind(at)
        .bind(&tenant_text)
        .bind(&device_text)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    if changed == 0 {
        return Ok(false);
    }
    let event = Event::DeviceStatusChanged { device_id: device, from: "offline", to: "online", last_seen: Some(at) };
    events::record(&mut tx, tenant, &event, at).await?;
    tx.commit().await?;
    Ok(true)
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SweepOutcome {
    /// Devices marked offline (each with one event).
    pub marked_offline: usize,
    pub duration: Duration,
}

/// The sweep (DeviceStatusTask): every online device whose `lastSeen` is older than
/// `now - threshold` becomes offline, in batches, each batch in one transaction with its
/// events. A device seen exactly `threshold` ago stays online.
///
/// Exactly once with several instances: a device flips only from `online`, and on PostgreSQL
/// each batch locks its rows with `FOR UPDATE SKIP LOCKED`, so two sweeps never take the same
/// device and a concurrent heartbeat waits for (and then sees) the flip.
pub async fn sweep(db: &Db, threshold: Duration, now: i64) -> Result<SweepOutcome, StoreError> {
    let started = Instant::now();
    let cutoff = now - i64::try_from(threshold.as_millis()).unwrap_or(i64::MAX);
    let sql = match db.engine() {
        Engine::Sqlite => "UPDATE devices SET status = 'offline', updated_at = $1 WHERE id IN \
             (SELECT id FROM devices WHERE status = 'online' AND last_seen < $2 LIMIT $3) \
             RETURNING id, tenant_id, last_seen"
            .to_string(),
        Engine::Postgres => "UPDATE devices AS d SET status = 'offline', updated_at = $1 FROM \
             (SELECT id FROM devices WHERE status = 'online' AND last_seen < $2 ORDER BY last_seen LIMIT $3 FOR UPDATE SKIP LOCKED) AS s \
             WHERE d.id = s.id RETURNING d.id, d.tenant_id, d.last_seen"
            .to_string(),
    };
    let mut outcome = SweepOutcome::default();
    loop {
        let mut tx = db.begin().await?;
        let rows: Vec<(String, String, Option<i64>)> = with_tx!(&mut tx, |conn| sqlx::query_as(&sql)
            .bind(now)
            .bind(cutoff)
            .bind(BATCH as i64)
            .fetch_all(&mut *conn)
            .await)
        .map_err(classify)?;
        if rows.is_empty() {
            break;
        }
        let mut batch = Vec::with_capacity(rows.len());
        for (id, tenant, last_seen) in &rows {
            let (Ok(device_id), Ok(tenant_id)) = (id.parse::<DeviceId>(), tenant.parse::<TenantId>()) else {
                continue;
            };
            batch.push((
                tenant_id,
                Event::DeviceStatusChanged { device_id, from: "online", to: "offline", last_seen: *last_seen },
            ));
        }
        events::record_many(&mut tx, &batch, now).await?;
        tx.commit().await?;
        outcome.marked_offline += rows.len();
        if rows.len() < BATCH {
            break;
        }
    }
    outcome.duration = started.elapsed();
    Ok(outcome)
}

/// One scheduled sweep as the server runs it: write this instance's buffered heartbeats, then
/// sweep with the configured threshold at the clock's `now`, and record the figures.
pub async fn run_sweep(state: &crate::app::AppState) -> Result<SweepOutcome, StoreError> {
    state.heartbeats.flush(&state.db).await?;
    let now = crate::clock::to_millis(state.clock.now());
    let outcome = sweep(&state.db, state.settings.presence_threshold, now).await?;
    state.metrics.observe_sweep(outcome.marked_offline, outcome.duration);
    if outcome.marked_offline > 0 {
        tracing::info!(
            marked_offline = outcome.marked_offline,
            duration_ms = outcome.duration.as_millis() as u64,
            "presence sweep"
        );
    }
    Ok(outcome)
}

pub mod routes;
