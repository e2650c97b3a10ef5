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

use herd_domain::ids::{DeviceId, TenantId};
use herd_store::presence::{self as store, BATCH};
pub use herd_store::presence::{FlushOutcome, SweepOutcome};
use herd_store::{Db, StoreError, System};

/// Buffered `lastSeen` advances of online devices, keyed by device id.
#[derive(Debug, Default)]
pub struct HeartbeatBuffer {
    /// A std `Mutex`: held only to insert one entry or to swap the map out, never across await.
    pending: Mutex<HashMap<DeviceId, (TenantId, i64)>>,
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

    /// Writes every buffered heartbeat. On failure the unwritten ones go back into the buffer,
    /// and so they do if the flush is dropped part-way (a shutdown cancelling the job that runs
    /// it): the final flush at shutdown then writes them. A heartbeat recorded meanwhile keeps
    /// the newer `lastSeen`.
    pub async fn flush(&self, db: &Db, system: &System) -> Result<FlushOutcome, StoreError> {
        let mut taken = Taken {
            buffer: self,
            entries: {
                let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                std::mem::take(&mut *pending).into_iter().collect()
            },
            written: 0,
        };
        let mut outcome = FlushOutcome::default();
        for chunk in taken.entries.chunks(BATCH) {
            let done = store::write_last_seen(db, system, chunk).await?;
            outcome.written += done.written;
            outcome.revived += done.revived;
            taken.written += chunk.len();
        }
        Ok(outcome)
    }
}

/// Heartbeats taken out of a [`HeartbeatBuffer`] by a flush; those not yet written go back into
/// it when this is dropped, whether the flush failed or was cancelled. A chunk in flight counts
/// as unwritten: writing it again is harmless (`lastSeen` only moves forward).
struct Taken<'b> {
    buffer: &'b HeartbeatBuffer,
    entries: Vec<(DeviceId, (TenantId, i64))>,
    /// How many of `entries`, from the start, are written.
    written: usize,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for (device, (tenant, at)) in &self.entries[self.written..] {
            self.buffer.record(*device, *tenant, *at);
        }
    }
}

/// One scheduled sweep as the server runs it: write this instance's buffered heartbeats, then
/// sweep with the configured threshold at the clock's `now`, and record the figures.
pub async fn run_sweep(state: &crate::app::AppState) -> Result<SweepOutcome, StoreError> {
    state.heartbeats.flush(&state.db, &state.system).await?;
    let now = crate::clock::to_millis(state.clock.now());
    let outcome = store::sweep(&state.db, &state.system, state.settings.presence_threshold, now).await?;
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

pub(crate) mod routes;
