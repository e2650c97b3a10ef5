//! Domain events and the durable outbox.
//!
//! [`Event`] is the closed set of everything herd announces (DESIGN.md "Events"); every
//! producer constructs a variant, so each one is a grep away. [`record`] writes an event into
//! the `events` table inside the caller's transaction: a committed change always has its
//! event, a rolled-back one never does.

use serde_json::{json, Value};

use crate::clock::from_millis;
use crate::ids::{DeviceId, EventId, TenantId};
use crate::store::{classify, StoreError, Tx};
use crate::with_tx;

/// Everything herd announces. Payloads are camelCase JSON objects.
#[derive(Debug, Clone)]
pub enum Event {
    /// A device was created (`via` is `auto-register` or `admin`).
    DeviceRegistered {
        device_id: DeviceId,
        name: String,
        via: &'static str,
    },
    /// Known identifiers registered again; the device got a fresh token.
    DeviceReregistered {
        device_id: DeviceId,
    },
    /// Presence changed.
    DeviceStatusChanged {
        device_id: DeviceId,
        from: &'static str,
        to: &'static str,
        last_seen: Option<i64>,
    },
    DeviceDeleted {
        device_id: DeviceId,
    },
}

impl Event {
    /// The `type` of the event on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::DeviceRegistered { .. } => "device.registered",
            Event::DeviceReregistered { .. } => "device.reregistered",
            Event::DeviceStatusChanged { .. } => "device.status_changed",
            Event::DeviceDeleted { .. } => "device.deleted",
        }
    }

    /// The `data` of the event on the wire.
    pub fn data(&self) -> Value {
        match self {
            Event::DeviceRegistered { device_id, name, via } => {
                json!({ "deviceId": device_id, "name": name, "via": via })
            }
            Event::DeviceReregistered { device_id } => json!({ "deviceId": device_id }),
            Event::DeviceStatusChanged { device_id, from, to, last_seen } => json!({
                "deviceId": device_id, "from": from, "to": to, "lastSeen": last_seen.map(from_millis),
            }),
            Event::DeviceDeleted { device_id } => json!({ "deviceId": device_id }),
        }
    }
}

/// Writes `event` to the outbox inside `tx`.
pub async fn record(tx: &mut Tx, tenant_id: TenantId, event: &Event, now: i64) -> Result<EventId, StoreError> {
    const SQL: &str = "INSERT INTO events (id, tenant_id, type, occurred_at, data) VALUES ($1, $2, $3, $4, $5)";
    let id = EventId::new();
    let (id_text, tenant, data) = (id.to_string(), tenant_id.to_string(), event.data().to_string());
    with_tx!(tx, |conn| sqlx::query(SQL)
        .bind(&id_text)
        .bind(&tenant)
        .bind(event.type_name())
        .bind(now)
        .bind(&data)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected()))
    .map_err(classify)?;
    Ok(id)
}
